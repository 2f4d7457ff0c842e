#include "xen/platform_device.hpp"

#include <spdlog/spdlog.h>

#include "xen/xen_defs.hpp"

namespace hypervisor::xen {

PlatformDevice::PlatformDevice(std::uint16_t bar0_port, std::uint64_t bar1_gpa)
    : cfg_(pci::PciIds{kPlatformVendor, kPlatformDevice, kPlatformClass, 1, kPlatformVendor, kPlatformDevice}),
      bar1_(bar1_gpa) {
    cfg_.add_bar(0, kPlatformBar0Size, pci::BarKind::Io, bar0_port);
    cfg_.add_bar(1, kPlatformBar1Size, pci::BarKind::Mem32, bar1_gpa, true);
    cfg_.set_interrupt_pin(1);
    cfg_.write(pci::reg::COMMAND, 2, pci::kCommandIo | pci::kCommandMemory);
}

void PlatformDevice::config_written(std::uint32_t offset) {
    if (offset != pci::reg::BAR0 + 4) return;
    auto now = cfg_.bar_address(1);
    bool probing = now == (~(kPlatformBar1Size - 1) & 0xfffffff0ull);
    if (now != bar1_ && !probing && !moved_logged_) {
        moved_logged_ = true;
        spdlog::error("xen-platform: the guest moved BAR1 from {:#x} to {:#x}; the grant frames stay at {:#x}",
                      bar1_, now, bar1_);
    }
}

void PlatformDevice::bar_read(unsigned bar, std::uint64_t, std::span<std::uint8_t> data) {
    store_le(data, bar == 0 ? ~0ull : 0);
}

void PlatformDevice::bar_write(unsigned, std::uint64_t, std::span<const std::uint8_t>) {}

void UnplugPorts::read(std::uint64_t offset, std::span<std::uint8_t> data) {
    if (offset == 0 && data.size() >= 2) return store_le(data, kUnplugMagic);
    if (offset == 2 && data.size() == 1) return store_le(data, kUnplugProtocol);
    store_le(data, ~0ull);
}

void UnplugPorts::write(std::uint64_t offset, std::span<const std::uint8_t> data) {
    auto v = static_cast<std::uint32_t>(load_le(data));
    if (offset == 0 && data.size() == 2) {
        mask_.store(v);
        spdlog::info("xen-platform: unplug mask {:#x} (no emulated disks or NICs here: nothing unplugged)", v);
    } else if (offset == 0 && data.size() == 4) {
        driver_version_.store(v);
        spdlog::debug("xen-platform: driver version {}", v);
    } else if (offset == 2 && data.size() == 2) {
        product_.store(v);
        spdlog::debug("xen-platform: product {}", v);
    }
}

DebugConsole::~DebugConsole() {
    if (!line_.empty()) spdlog::info("guest (port 0xe9): {}", line_);
}

void DebugConsole::write(std::uint64_t, std::span<const std::uint8_t> data) {
    std::lock_guard l(mu_);
    for (auto b : data) {
        if (b == '\n' || line_.size() >= 256) {
            spdlog::info("guest (port 0xe9): {}", line_);
            line_.clear();
            if (b == '\n') continue;
        }
        if (b != '\r') line_.push_back(static_cast<char>(b));
    }
}

}  // namespace hypervisor::xen
