// MSI-X for a PCI function (PCI 3.0 §6.8.2): the capability, the vector table and the pending
// bit array, mapped onto the platform's MSI routes and irqfds.
//
// Each vector owns an eventfd. The device side (this process or the card) signals it; while
// the vector is deliverable the eventfd is an irqfd on the vector's GSI, so the interrupt never
// passes through the vmm. While masked the irqfd is detached: a signal stays in the eventfd and
// shows as the pending bit; unmasking re-attaches and delivers it.
//
// Lock order: mu_ only; MsiController calls are made under it and must not call back.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <vector>

#include "common/error.hpp"
#include "common/fd.hpp"
#include "pci/config_space.hpp"

namespace hypervisor::pci {

// What MSI-X needs from the platform (KVM GSI routing and irqfds; a fake in unit tests).
class MsiController {
public:
    virtual ~MsiController() = default;
    [[nodiscard]] virtual common::Result<std::uint32_t> allocate_gsi() = 0;
    virtual common::Status set_route(std::uint32_t gsi, std::uint64_t address, std::uint32_t data) = 0;
    virtual common::Status attach(std::uint32_t gsi, int eventfd) = 0;
    virtual common::Status detach(std::uint32_t gsi, int eventfd) = 0;
};

inline constexpr std::uint32_t kMsixEntrySize = 16;
inline constexpr std::uint16_t kMsixEnable = 0x8000, kMsixFunctionMask = 0x4000;

class Msix final {
public:
    // vectors: 1..2048. The table lives in BAR `bir` at table_offset, the PBA at pba_offset.
    [[nodiscard]] static common::Result<std::unique_ptr<Msix>> create(MsiController& ctl, unsigned vectors);

    // Adds the capability to cfg (table and PBA locations as given) and returns its offset.
    std::uint8_t add_capability(ConfigSpace& cfg, std::uint8_t bir, std::uint32_t table_offset,
                                std::uint32_t pba_offset);
    // Call after every config-space write: picks up enable and function-mask changes.
    void config_written(const ConfigSpace& cfg);

    // Table and PBA accesses, offsets relative to their starts. Wrong sizes read as zero.
    void table_read(std::uint64_t offset, std::span<std::uint8_t> data);
    void table_write(std::uint64_t offset, std::span<const std::uint8_t> data);
    void pba_read(std::uint64_t offset, std::span<std::uint8_t> data);

    [[nodiscard]] unsigned vectors() const { return static_cast<unsigned>(vec_.size()); }
    // The eventfd a device signals to raise vector i.
    [[nodiscard]] int eventfd(unsigned i) const { return vec_.at(i).efd.fd(); }
    void trigger(unsigned i);
    [[nodiscard]] std::uint64_t table_bytes() const { return vec_.size() * kMsixEntrySize; }
    [[nodiscard]] std::uint64_t pba_bytes() const { return ((vec_.size() + 63) / 64) * 8; }

private:
    struct Vector {
        common::EventFd efd;
        std::uint32_t gsi = 0;
        std::uint32_t addr_lo = 0, addr_hi = 0, data = 0;
        std::uint32_t ctrl = 1;  // masked at reset (§6.8.2.9)
        bool attached = false;
        bool pending = false;
        std::uint64_t routed_addr = ~0ull;
        std::uint32_t routed_data = 0;
    };
    Msix(MsiController& ctl, std::vector<Vector> v) : ctl_(ctl), vec_(std::move(v)) {}
    void update_locked(unsigned i);
    void collect_pending_locked(unsigned i);

    MsiController& ctl_;
    std::mutex mu_;
    std::vector<Vector> vec_;
    std::uint8_t cap_ = 0;
    bool enabled_ = false, function_masked_ = false;
};

}  // namespace hypervisor::pci
