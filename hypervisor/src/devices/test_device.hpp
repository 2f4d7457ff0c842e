// The probe test device (1234:7e57): lets guest code at CPL3 ask for MSI-X interrupts, so
// tests can check the whole path: config space, BARs, MSI-X table, GSI routes, irqfds.
// Registers in docs/platform.md.
#pragma once

#include <atomic>
#include <memory>

#include "pci/function.hpp"
#include "pci/msix.hpp"
#include "pci/root_bus.hpp"

namespace hypervisor {

namespace testdev::reg {
inline constexpr std::uint64_t ID = 0x00, TRIGGER = 0x04, TRIGGERS = 0x08;
}
inline constexpr std::uint32_t kTestDeviceId = 0x7e570001;

class TestDevice final : public pci::Function {
public:
    [[nodiscard]] static common::Result<std::shared_ptr<TestDevice>> create(pci::RootBus& bus,
                                                                            pci::MsiController& msi);
    std::string name() const override { return "test-device"; }
    pci::ConfigSpace& config() override { return cfg_; }
    void config_written(std::uint32_t offset) override;
    void bar_read(unsigned bar, std::uint64_t offset, std::span<std::uint8_t> data) override;
    void bar_write(unsigned bar, std::uint64_t offset, std::span<const std::uint8_t> data) override;

private:
    TestDevice(std::unique_ptr<pci::Msix> msix);
    pci::ConfigSpace cfg_;
    std::unique_ptr<pci::Msix> msix_;
    std::atomic<std::uint32_t> triggers_{0};
};

}  // namespace hypervisor
