// The Xen platform PCI device and its fixed ports (reference §3.7).
//
// PlatformDevice (5853:0001, class 0xFF80, subsystem 5853:0001, rev 1, INTA#): BAR0 is 256 I/O
// ports that read as ones; BAR1 is 16 MiB of prefetchable MMIO whose first kGrantFramesMax
// pages are the grant-table frames, backed by guest-memory pages under a KVM memslot (so
// guest accesses there never exit). The rest of BAR1 reads as zero. The memslot stays where
// the vmm placed BAR1: if the guest moves BAR1, an error is logged and the frames stay at the
// old address (Linux keeps the firmware's assignment; docs/platform.md).
//
// UnplugPorts (0x10..0x13): the unplug handshake. inw(0x10) gives the magic 0x49d2, inb(0x12)
// the protocol version 1; the unplug mask, product and driver version the guest writes are
// recorded and logged. Nothing is unplugged: this VM has no emulated disks or NICs.
//
// DebugConsole (0xe9): bytes the guest writes are logged line by line.
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>

#include "devices/bus.hpp"
#include "pci/function.hpp"

namespace hypervisor::xen {

class PlatformDevice final : public pci::Function {
public:
    PlatformDevice(std::uint16_t bar0_port, std::uint64_t bar1_gpa);
    std::string name() const override { return "xen-platform"; }
    pci::ConfigSpace& config() override { return cfg_; }
    void config_written(std::uint32_t offset) override;
    void bar_read(unsigned bar, std::uint64_t offset, std::span<std::uint8_t> data) override;
    void bar_write(unsigned bar, std::uint64_t offset, std::span<const std::uint8_t> data) override;
    // Where the grant frames are (BAR1 as the vmm placed it).
    [[nodiscard]] std::uint64_t grant_frames_gpa() const { return bar1_; }

private:
    pci::ConfigSpace cfg_;
    std::uint64_t bar1_;
    bool moved_logged_ = false;  // under the root bus's lock (config_written)
};

// BAR0's ports, where the vmm placed them: read as ones, writes ignored.
class PlatformIoBar final : public BusDevice {
public:
    void read(std::uint64_t, std::span<std::uint8_t> data) override { store_le(data, ~0ull); }
    void write(std::uint64_t, std::span<const std::uint8_t>) override {}
};

class UnplugPorts final : public BusDevice {
public:
    void read(std::uint64_t offset, std::span<std::uint8_t> data) override;
    void write(std::uint64_t offset, std::span<const std::uint8_t> data) override;
    [[nodiscard]] std::uint32_t unplug_mask() const { return mask_.load(); }
    [[nodiscard]] std::uint32_t product() const { return product_.load(); }

private:
    std::atomic<std::uint32_t> mask_{0}, product_{0}, driver_version_{0};
};

class DebugConsole final : public BusDevice {
public:
    ~DebugConsole() override;
    void read(std::uint64_t, std::span<std::uint8_t> data) override { store_le(data, 0xff); }
    void write(std::uint64_t offset, std::span<const std::uint8_t> data) override;

private:
    std::mutex mu_;
    std::string line_;
};

}  // namespace hypervisor::xen
