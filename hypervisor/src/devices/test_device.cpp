#include "devices/test_device.hpp"

namespace hypervisor {

namespace {
constexpr std::uint64_t kBarSize = 4096;
constexpr std::uint32_t kPbaOffset = 0x800;
constexpr unsigned kVectors = 2;
}  // namespace

TestDevice::TestDevice(std::unique_ptr<pci::Msix> msix)
    : cfg_(pci::PciIds{0x1234, 0x7e57, 0xff0000}), msix_(std::move(msix)) {}

common::Result<std::shared_ptr<TestDevice>> TestDevice::create(pci::RootBus& bus, pci::MsiController& msi) {
    auto msix = pci::Msix::create(msi, kVectors);
    if (!msix) return common::fail(std::move(msix.error()));
    auto bar0 = bus.allocate_mmio(kBarSize);
    if (!bar0) return common::fail(std::move(bar0.error()));
    auto bar1 = bus.allocate_mmio(kBarSize);
    if (!bar1) return common::fail(std::move(bar1.error()));
    auto dev = std::shared_ptr<TestDevice>(new TestDevice(std::move(*msix)));
    dev->cfg_.add_bar(0, kBarSize, pci::BarKind::Mem32, *bar0);
    dev->cfg_.add_bar(1, kBarSize, pci::BarKind::Mem32, *bar1);
    dev->msix_->add_capability(dev->cfg_, 1, 0, kPbaOffset);
    return dev;
}

void TestDevice::config_written(std::uint32_t) { msix_->config_written(cfg_); }

void TestDevice::bar_read(unsigned bar, std::uint64_t off, std::span<std::uint8_t> d) {
    if (bar == 1) {
        if (off < msix_->table_bytes()) return msix_->table_read(off, d);
        if (off >= kPbaOffset && off - kPbaOffset < msix_->pba_bytes()) return msix_->pba_read(off - kPbaOffset, d);
        return store_le(d, 0);
    }
    switch (off) {
        case testdev::reg::ID: return store_le(d, kTestDeviceId);
        case testdev::reg::TRIGGERS: return store_le(d, triggers_.load());
        default: return store_le(d, 0);
    }
}

void TestDevice::bar_write(unsigned bar, std::uint64_t off, std::span<const std::uint8_t> d) {
    if (bar == 1) {
        if (off < msix_->table_bytes()) msix_->table_write(off, d);
        return;  // the PBA is read-only
    }
    if (off == testdev::reg::TRIGGER) {
        auto v = static_cast<unsigned>(load_le(d));
        if (v >= msix_->vectors()) return;  // out-of-range vector: ignored
        // Only raise the vector when the guest enabled bus mastering, as real MSI-X requires.
        if (!(cfg_.command() & pci::kCommandMaster)) return;
        triggers_.fetch_add(1);
        msix_->trigger(v);
    }
}

}  // namespace hypervisor
