// PCI bus 0 behind a host bridge: configuration mechanism #1 on ports 0xCF8/0xCFC, BAR
// placement in the MMIO window, and the BAR windows kept on the MMIO bus as the guest
// enables, disables or moves them.
//
// Lock order: mu_ (this) before the MMIO bus's lock; functions' own locks are taken inside
// their methods and never call back here.
#pragma once

#include <array>
#include <memory>
#include <mutex>
#include <optional>

#include "common/error.hpp"
#include "devices/bus.hpp"
#include "pci/function.hpp"

namespace hypervisor::pci {

inline constexpr std::uint16_t kConfigAddressPort = 0xcf8;
inline constexpr std::uint16_t kConfigDataPort = 0xcfc;

class RootBus final {
public:
    RootBus(Bus& mmio, std::uint64_t window_base, std::uint64_t window_end);

    // Places the function in the next free slot and assigns its BARs (naturally aligned).
    // Returns the device number.
    [[nodiscard]] common::Result<unsigned> add(std::shared_ptr<Function> fn);
    // Next BAR address for a BAR of `size` bytes (used by functions when they are built).
    [[nodiscard]] common::Result<std::uint64_t> allocate_mmio(std::uint64_t size);

    // Port handlers for 0xCF8 (4 bytes) and 0xCFC..0xCFF.
    std::shared_ptr<BusDevice> address_port();
    std::shared_ptr<BusDevice> data_port();

    // Config access by bus/device/function/offset (also used by tests).
    std::uint32_t config_read(unsigned dev, unsigned fn, std::uint32_t offset, unsigned size);
    void config_write(unsigned dev, unsigned fn, std::uint32_t offset, unsigned size, std::uint32_t v);

private:
    struct Slot {
        std::shared_ptr<Function> fn;
        std::array<std::optional<std::uint64_t>, 6> mapped{};
    };
    void remap_locked(Slot& s);

    Bus& mmio_;
    std::uint64_t next_mmio_, window_end_;
    std::mutex mu_;
    std::uint32_t address_ = 0;
    std::array<Slot, 32> slots_{};
};

// The host bridge at 00:00.0.
class HostBridge final : public Function {
public:
    HostBridge();
    std::string name() const override { return "host-bridge"; }
    ConfigSpace& config() override { return cfg_; }
    void bar_read(unsigned, std::uint64_t, std::span<std::uint8_t> d) override { store_le(d, 0); }
    void bar_write(unsigned, std::uint64_t, std::span<const std::uint8_t>) override {}

private:
    ConfigSpace cfg_;
};

}  // namespace hypervisor::pci
