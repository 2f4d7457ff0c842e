// A bus of address ranges (port I/O or MMIO) and the small interface every device implements.
// The bus rejects empty, overflowing and overlapping ranges; an access that is not wholly
// inside one device's range is reported to the caller as unclaimed.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <shared_mutex>
#include <span>
#include <string>

#include "common/error.hpp"

namespace hypervisor {

class BusDevice {
public:
    virtual ~BusDevice() = default;
    // offset is relative to the range's base; data.size() is 1, 2, 4 or 8.
    virtual void read(std::uint64_t offset, std::span<std::uint8_t> data) = 0;
    virtual void write(std::uint64_t offset, std::span<const std::uint8_t> data) = 0;
};

class Bus final {
public:
    explicit Bus(std::string name) : name_(std::move(name)) {}

    common::Status add(std::uint64_t base, std::uint64_t len, std::shared_ptr<BusDevice> dev);
    // Removes the range starting at base; returns false when there was none.
    bool remove(std::uint64_t base);
    // false: no device claims [addr, addr + size) wholly.
    bool read(std::uint64_t addr, std::span<std::uint8_t> data) const;
    bool write(std::uint64_t addr, std::span<const std::uint8_t> data) const;

private:
    struct Range {
        std::uint64_t len;
        std::shared_ptr<BusDevice> dev;
    };
    // Returns the device and offset for an access, or null.
    std::pair<std::shared_ptr<BusDevice>, std::uint64_t> lookup(std::uint64_t addr,
                                                                std::uint64_t size) const;
    std::string name_;
    mutable std::shared_mutex mu_;
    std::map<std::uint64_t, Range> ranges_;
};

// Little-endian helpers for register devices.
inline std::uint64_t load_le(std::span<const std::uint8_t> d) {
    std::uint64_t v = 0;
    for (std::size_t i = d.size(); i-- > 0;) v = (v << 8) | d[i];
    return v;
}
inline void store_le(std::span<std::uint8_t> d, std::uint64_t v) {
    for (auto& b : d) {
        b = static_cast<std::uint8_t>(v);
        v >>= 8;
    }
}

}  // namespace hypervisor
