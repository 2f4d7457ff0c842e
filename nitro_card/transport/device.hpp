// A PCI device model as the card's transport sees it. One object per emulated device
// (an NVMe controller, later an ENA adapter); the transport turns protocol messages into these
// calls and never interprets registers itself.
//
// Threading: every call comes from the device's control thread, one at a time. A device with
// a data path runs it on worker threads of its own and must make these calls safe against them.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "common/error.hpp"
#include "common/fd.hpp"
#include "common/guest_memory.hpp"

namespace nitro_card {

// A doorbell the device wants on the fast path: a guest write of `size` bytes at BAR0+offset
// signals `eventfd` (the device keeps it and waits on it).
struct Doorbell {
    std::uint64_t offset;
    std::uint32_t size;
    int eventfd;
};

class Device {
public:
    virtual ~Device() = default;
    // The first 64 bytes of config space: ids, class, subsystem ids (the vmm owns the rest).
    [[nodiscard]] virtual std::vector<std::uint8_t> config_header() const = 0;
    [[nodiscard]] virtual std::uint64_t bar0_size() const = 0;
    [[nodiscard]] virtual unsigned msix_vectors() const = 0;

    // Guest RAM became reachable (DMA_MAP done) or went away (client gone, DMA_UNMAP).
    virtual void attach_memory(std::shared_ptr<const common::GuestMemory> mem) = 0;
    virtual void detach_memory() = 0;
    // MSI-X vector i is raised by signalling irqs[i]; an empty vector removes them all.
    virtual void set_irqs(std::vector<common::UniqueFd> irqs) = 0;

    // Slow-path register accesses (size 1, 2, 4 or 8).
    [[nodiscard]] virtual std::uint64_t bar0_read(std::uint64_t offset, unsigned size) = 0;
    virtual void bar0_write(std::uint64_t offset, unsigned size, std::uint64_t value) = 0;
    // The doorbells to put on ioeventfds now (may change after register writes).
    [[nodiscard]] virtual std::vector<Doorbell> doorbells() const = 0;
    // Back to power-on state; the vmm's reset, or the client went away.
    virtual void reset() = 0;
};

}  // namespace nitro_card
