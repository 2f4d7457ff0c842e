// The VM's GSI routing table: the in-kernel PIC and I/O APIC pins as KVM sets them up by
// default, plus one MSI route per MSI-X vector. KVM_SET_GSI_ROUTING replaces the whole table,
// so every change rewrites it from this copy.
//
// Lock order: mu_ only.
#pragma once

#include <linux/kvm.h>

#include <map>
#include <mutex>

#include "kvm/kvm.hpp"
#include "pci/msix.hpp"

namespace hypervisor {

class IrqRouter final : public pci::MsiController {
public:
    explicit IrqRouter(KvmVm& vm) : vm_(vm) {}
    // Installs the default pin routes. Call once, after the irqchip exists.
    common::Status init();

    common::Result<std::uint32_t> allocate_gsi() override;
    common::Status set_route(std::uint32_t gsi, std::uint64_t address, std::uint32_t data) override;
    common::Status attach(std::uint32_t gsi, int eventfd) override;
    common::Status detach(std::uint32_t gsi, int eventfd) override;

    static constexpr std::uint32_t kIoApicPins = 24;

private:
    common::Status commit_locked();
    KvmVm& vm_;
    std::mutex mu_;
    std::vector<kvm_irq_routing_entry> pins_;
    std::map<std::uint32_t, kvm_irq_routing_entry> msi_;
    std::uint32_t next_gsi_ = kIoApicPins;
};

}  // namespace hypervisor
