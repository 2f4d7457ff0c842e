#include "vmm/irq_router.hpp"

#include <fmt/format.h>

namespace hypervisor {

common::Status IrqRouter::init() {
    std::lock_guard l(mu_);
    pins_.clear();
    for (std::uint32_t gsi = 0; gsi < kIoApicPins; ++gsi) {
        if (gsi < 16) {
            kvm_irq_routing_entry pic{};
            pic.gsi = gsi;
            pic.type = KVM_IRQ_ROUTING_IRQCHIP;
            pic.u.irqchip.irqchip = gsi < 8 ? KVM_IRQCHIP_PIC_MASTER : KVM_IRQCHIP_PIC_SLAVE;
            pic.u.irqchip.pin = gsi % 8;
            pins_.push_back(pic);
        }
        kvm_irq_routing_entry io{};
        io.gsi = gsi;
        io.type = KVM_IRQ_ROUTING_IRQCHIP;
        io.u.irqchip.irqchip = KVM_IRQCHIP_IOAPIC;
        io.u.irqchip.pin = gsi;
        pins_.push_back(io);
    }
    return commit_locked();
}

common::Result<std::uint32_t> IrqRouter::allocate_gsi() {
    std::lock_guard l(mu_);
    if (next_gsi_ >= 4096) return common::fail(common::Error::unsupported("out of GSIs"));
    return next_gsi_++;
}

common::Status IrqRouter::set_route(std::uint32_t gsi, std::uint64_t address, std::uint32_t data) {
    std::lock_guard l(mu_);
    kvm_irq_routing_entry e{};
    e.gsi = gsi;
    e.type = KVM_IRQ_ROUTING_MSI;
    e.u.msi.address_lo = static_cast<std::uint32_t>(address);
    e.u.msi.address_hi = static_cast<std::uint32_t>(address >> 32);
    e.u.msi.data = data;
    msi_[gsi] = e;
    return commit_locked();
}

common::Status IrqRouter::attach(std::uint32_t gsi, int eventfd) { return vm_.irqfd(eventfd, gsi, true); }
common::Status IrqRouter::detach(std::uint32_t gsi, int eventfd) { return vm_.irqfd(eventfd, gsi, false); }

common::Status IrqRouter::commit_locked() {
    std::vector<kvm_irq_routing_entry> all = pins_;
    for (const auto& [gsi, e] : msi_) all.push_back(e);
    return vm_.set_gsi_routing(all);
}

}  // namespace hypervisor
