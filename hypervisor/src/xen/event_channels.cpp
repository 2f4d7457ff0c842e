#include "xen/event_channels.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <cstring>

#include "xen_model/abi/xen_abi.hpp"

namespace hypervisor::xen {

namespace err = xen_model::abi::err;
using common::GuestAddr;

EventChannels::EventChannels(const common::GuestMemory& mem, std::uint32_t vcpus, UpcallSink& sink)
    : mem_(mem), sink_(sink), ports_(kMaxPorts), vcpu_(vcpus) {}

void EventChannels::set_shared_info(GuestAddr gpa) {
    std::lock_guard l(mu_);
    shared_info_ = gpa;
}

std::optional<GuestAddr> EventChannels::shared_info() const {
    std::lock_guard l(mu_);
    return shared_info_;
}

std::optional<GuestAddr> EventChannels::vcpu_info_locked(std::uint32_t vcpu) const {
    if (vcpu >= vcpu_.size()) return std::nullopt;
    if (vcpu_[vcpu].info) return vcpu_[vcpu].info;
    if (shared_info_ && vcpu < kLegacyVcpus) return *shared_info_ + vcpu * kVcpuInfoSize;
    return std::nullopt;
}

std::int64_t EventChannels::set_vcpu_info(std::uint32_t vcpu, GuestAddr gpa) {
    if (vcpu >= vcpu_.size()) return err::kNoEnt;
    if (gpa.value() % 8) return err::kInval;  // pending_sel is updated with 64-bit atomics
    auto dst = mem_.slice(gpa, kVcpuInfoSize);
    if (!dst) return err::kInval;
    std::lock_guard l(mu_);
    // GUEST-SHARED: Xen copies the current vcpu_info into the new area.
    if (auto old = vcpu_info_locked(vcpu)) {
        if (auto src = mem_.slice(*old, kVcpuInfoSize); src && *old != gpa)
            std::memmove(dst->data(), src->data(), kVcpuInfoSize);
    }
    vcpu_[vcpu].info = gpa;
    auto* pending = reinterpret_cast<std::uint8_t*>(dst->data() + kVcpuUpcallPending);
    if (std::atomic_ref<std::uint8_t>(*pending).load() != 0) inject_locked(vcpu);
    return 0;
}

std::int64_t EventChannels::set_upcall_vector(std::uint32_t vcpu, std::uint8_t vector) {
    if (vcpu >= vcpu_.size()) return err::kNoEnt;
    if (vector != 0 && vector < 0x10) return err::kInval;
    std::lock_guard l(mu_);
    vcpu_[vcpu].vector = vector;
    // Events raised before the vector was known are delivered now.
    if (auto info = vcpu_info_locked(vcpu)) {
        if (auto p = mem_.slice(*info, 1); p && std::atomic_ref<std::uint8_t>(*reinterpret_cast<std::uint8_t*>(p->data())).load())
            inject_locked(vcpu);
    }
    return 0;
}

std::int64_t EventChannels::alloc_locked() {
    for (std::uint32_t p = 1; p < kMaxPorts; ++p)
        if (ports_[p].kind == Kind::Free) return p;
    return err::kNoSpc;
}

std::int64_t EventChannels::alloc_unbound(std::uint16_t remote_dom) {
    if (remote_dom != xen_model::abi::kDom0) return err::kSrch;  // the only other domain is dom0
    std::lock_guard l(mu_);
    auto p = alloc_locked();
    if (p < 0) return p;
    ports_[static_cast<std::size_t>(p)] = Port{Kind::Unbound, 0, 0, remote_dom};
    return p;
}

std::int64_t EventChannels::bind_virq(std::uint32_t virq, std::uint32_t vcpu) {
    if (virq >= kNrVirqs || vcpu >= vcpu_.size()) return err::kInval;
    std::lock_guard l(mu_);
    for (const auto& port : ports_)
        if (port.kind == Kind::Virq && port.virq == virq && port.vcpu == vcpu) return err::kExist;
    auto p = alloc_locked();
    if (p < 0) return p;
    ports_[static_cast<std::size_t>(p)] = Port{Kind::Virq, vcpu, virq, 0};
    return p;
}

std::int64_t EventChannels::bind_ipi(std::uint32_t vcpu) {
    if (vcpu >= vcpu_.size()) return err::kNoEnt;
    std::lock_guard l(mu_);
    auto p = alloc_locked();
    if (p < 0) return p;
    ports_[static_cast<std::size_t>(p)] = Port{Kind::Ipi, vcpu, 0, 0};
    return p;
}

std::int64_t EventChannels::bind_vcpu(std::uint32_t port, std::uint32_t vcpu) {
    if (!valid_port(port)) return err::kInval;
    if (vcpu >= vcpu_.size()) return err::kNoEnt;
    std::lock_guard l(mu_);
    auto& p = ports_[port];
    // Xen rebinds interdomain and unbound ports; per-vCPU VIRQs and IPIs stay where they are.
    if (p.kind != Kind::Unbound && p.kind != Kind::Dom0) return err::kInval;
    p.vcpu = vcpu;
    if (bit_locked(kSharedPending, port) && !bit_locked(kSharedMask, port)) deliver_locked(port, vcpu);
    return 0;
}

EventChannels::CloseResult EventChannels::close(std::uint32_t port) {
    if (!valid_port(port)) return {err::kInval, false};
    std::lock_guard l(mu_);
    auto& p = ports_[port];
    if (p.kind == Kind::Free) return {err::kInval, false};
    bool dom0 = p.kind == Kind::Dom0;
    p = Port{};
    // A closed port must not look pending to whoever reuses it.
    if (auto* w = word_locked(kSharedPending, port))
        std::atomic_ref<std::uint64_t>(*w).fetch_and(~(1ull << (port % 64)));
    return {0, dom0};
}

EventChannels::SendResult EventChannels::send(std::uint32_t port) {
    if (!valid_port(port)) return {err::kInval, false};
    std::unique_lock l(mu_);
    const auto p = ports_[port];
    switch (p.kind) {
        case Kind::Dom0: return {0, true};
        case Kind::Unbound: return {0, false};  // nobody listens yet: dropped, as on Xen
        case Kind::Ipi: break;
        case Kind::Virq:
        case Kind::Free: return {err::kInval, false};
    }
    l.unlock();
    raise(port);
    return {0, false};
}

std::int64_t EventChannels::unmask(std::uint32_t port) {
    if (!valid_port(port)) return err::kInval;
    std::lock_guard l(mu_);
    auto* m = word_locked(kSharedMask, port);
    if (!m) return 0;  // no shared_info yet: nothing to unmask
    std::uint64_t bit = 1ull << (port % 64);
    // §3.5: clear the mask; if it was masked and the port is pending, steps 3-5.
    std::uint64_t old = std::atomic_ref<std::uint64_t>(*m).fetch_and(~bit);
    const auto& p = ports_[port];
    if ((old & bit) && p.kind != Kind::Free && bit_locked(kSharedPending, port)) deliver_locked(port, p.vcpu);
    return 0;
}

std::int64_t EventChannels::status(std::uint32_t port, EvtchnStatus& out) const {
    if (!valid_port(port)) return err::kInval;
    std::lock_guard l(mu_);
    const auto& p = ports_[port];
    out.vcpu = p.vcpu;
    out.u_dom = 0;
    out.u_port = 0;
    switch (p.kind) {
        case Kind::Free: out.status = evtchn_stat::closed; break;
        case Kind::Unbound: out.status = evtchn_stat::unbound; out.u_dom = p.remote_dom; break;
        case Kind::Dom0: out.status = evtchn_stat::interdomain; out.u_dom = xen_model::abi::kDom0; break;
        case Kind::Virq:
            out.status = evtchn_stat::virq;
            out.u_dom = static_cast<std::uint16_t>(p.virq);
            break;
        case Kind::Ipi: out.status = evtchn_stat::ipi; break;
    }
    return 0;
}

std::int64_t EventChannels::preallocate_dom0() {
    std::lock_guard l(mu_);
    auto p = alloc_locked();
    if (p < 0) return p;
    ports_[static_cast<std::size_t>(p)] = Port{Kind::Dom0, 0, 0, xen_model::abi::kDom0};
    return p;
}

std::int64_t EventChannels::bind_dom0(std::uint32_t port) {
    if (!valid_port(port)) return err::kInval;
    std::lock_guard l(mu_);
    auto& p = ports_[port];
    if (p.kind == Kind::Dom0) return err::kBusy;
    if (p.kind != Kind::Unbound || p.remote_dom != xen_model::abi::kDom0) return err::kInval;
    p.kind = Kind::Dom0;
    return 0;
}

bool EventChannels::unbind_dom0(std::uint32_t port) {
    if (!valid_port(port)) return false;
    std::lock_guard l(mu_);
    auto& p = ports_[port];
    if (p.kind != Kind::Dom0) return false;
    p.kind = Kind::Unbound;
    return true;
}

bool EventChannels::bound_to_dom0(std::uint32_t port) const {
    if (!valid_port(port)) return false;
    std::lock_guard l(mu_);
    return ports_[port].kind == Kind::Dom0;
}

std::uint64_t* EventChannels::word_locked(std::uint64_t offset, std::uint32_t port) const {
    if (!shared_info_ || port >= kMaxPorts) return nullptr;
    auto s = mem_.slice(*shared_info_ + offset + (port / 64) * 8, 8);
    if (!s) return nullptr;
    return reinterpret_cast<std::uint64_t*>(s->data());
}

bool EventChannels::bit_locked(std::uint64_t offset, std::uint32_t port) const {
    auto* w = word_locked(offset, port);
    return w && (std::atomic_ref<std::uint64_t>(*w).load() >> (port % 64)) & 1;
}

bool EventChannels::pending(std::uint32_t port) const {
    std::lock_guard l(mu_);
    return valid_port(port) && bit_locked(kSharedPending, port);
}

bool EventChannels::masked(std::uint32_t port) const {
    std::lock_guard l(mu_);
    return valid_port(port) && bit_locked(kSharedMask, port);
}

void EventChannels::raise(std::uint32_t port) {
    if (!valid_port(port)) return;
    std::lock_guard l(mu_);
    const auto& p = ports_[port];
    if (p.kind == Kind::Free || p.kind == Kind::Unbound) return;
    auto* w = word_locked(kSharedPending, port);
    if (!w) {
        ++stats_.lost;
        return;
    }
    // Step 1: set pending; if it was already set, the guest has yet to see it.
    std::uint64_t bit = 1ull << (port % 64);
    if (std::atomic_ref<std::uint64_t>(*w).fetch_or(bit) & bit) return;
    ++stats_.raises;
    poll_cv_.notify_all();
    // Step 2: a masked port stays pending until unmasked.
    if (bit_locked(kSharedMask, port)) return;
    deliver_locked(port, p.vcpu);
}

void EventChannels::deliver_locked(std::uint32_t port, std::uint32_t vcpu) {
    auto info = vcpu_info_locked(vcpu);
    if (!info) {
        ++stats_.lost;
        return;
    }
    auto sel = mem_.slice(*info + kVcpuPendingSel, 8);
    auto up = mem_.slice(*info + kVcpuUpcallPending, 1);
    if (!sel || !up) {
        ++stats_.lost;
        return;
    }
    // Steps 3 and 4. Step 5 (inject) runs even when both were already set (§3.8 mitigation: a
    // lost MSI would otherwise leave upcall_pending at 1 and suppress every later injection).
    std::atomic_ref<std::uint64_t>(*reinterpret_cast<std::uint64_t*>(sel->data())).fetch_or(1ull << (port / 64));
    std::atomic_ref<std::uint8_t>(*reinterpret_cast<std::uint8_t*>(up->data())).exchange(1);
    inject_locked(vcpu);
}

void EventChannels::inject_locked(std::uint32_t vcpu) {
    if (vcpu >= vcpu_.size() || vcpu_[vcpu].vector == 0) return;
    ++stats_.upcalls;
    sink_.upcall(vcpu, vcpu_[vcpu].vector);
}

void EventChannels::housekeeping_tick() {
    std::lock_guard l(mu_);
    for (std::uint32_t v = 0; v < vcpu_.size(); ++v) {
        auto info = vcpu_info_locked(v);
        bool now = false;
        if (info) {
            if (auto up = mem_.slice(*info + kVcpuUpcallPending, 1))
                now = std::atomic_ref<std::uint8_t>(*reinterpret_cast<std::uint8_t*>(up->data())).load() != 0;
        }
        if (now && vcpu_[v].seen_pending && vcpu_[v].vector) {
            ++stats_.rekicks;
            inject_locked(v);
        }
        vcpu_[v].seen_pending = now;
    }
}

bool EventChannels::wait_any_pending(std::span<const std::uint32_t> ports, std::chrono::microseconds timeout) {
    std::unique_lock l(mu_);
    auto any = [&] {
        for (auto p : ports)
            if (valid_port(p) && bit_locked(kSharedPending, p)) return true;
        return false;
    };
    return poll_cv_.wait_for(l, timeout, any);
}

std::vector<std::string> EventChannels::pending_report() const {
    std::lock_guard l(mu_);
    std::vector<std::string> out;
    auto kind_name = [](Kind k) {
        switch (k) {
            case Kind::Free: return "closed";
            case Kind::Unbound: return "unbound";
            case Kind::Dom0: return "dom0";
            case Kind::Virq: return "virq";
            case Kind::Ipi: return "ipi";
        }
        return "?";
    };
    for (std::uint32_t port = 1; port < kMaxPorts; ++port) {
        if (!bit_locked(kSharedPending, port)) continue;
        const auto& p = ports_[port];
        out.push_back(fmt::format("port {} ({}, vCPU {}) pending, {}", port, kind_name(p.kind), p.vcpu,
                                  bit_locked(kSharedMask, port) ? "masked" : "unmasked"));
    }
    for (std::uint32_t v = 0; v < vcpu_.size(); ++v) {
        auto info = vcpu_info_locked(v);
        if (!info) continue;
        auto sel = mem_.slice(*info + kVcpuPendingSel, 8);
        auto up = mem_.slice(*info + kVcpuUpcallPending, 1);
        if (!sel || !up) continue;
        // GUEST-SHARED: read once each, for the log only.
        const auto sel_v = std::atomic_ref<std::uint64_t>(*reinterpret_cast<std::uint64_t*>(sel->data())).load();
        const auto up_v = std::atomic_ref<std::uint8_t>(*reinterpret_cast<std::uint8_t*>(up->data())).load();
        if (sel_v != 0 || up_v != 0)
            out.push_back(fmt::format("vCPU {}: upcall_pending {}, pending_sel {:#x}, vector {:#x}", v, up_v, sel_v,
                                      vcpu_[v].vector));
    }
    return out;
}

EventStats EventChannels::stats() const {
    std::lock_guard l(mu_);
    return stats_;
}

}  // namespace hypervisor::xen
