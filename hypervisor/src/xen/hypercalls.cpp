#include "xen/hypercalls.hpp"

#include <spdlog/spdlog.h>

#include <chrono>
#include <cstring>
#include <fmt/format.h>

#include "xen_model/abi/xen_abi.hpp"

namespace hypervisor::xen {

namespace err = xen_model::abi::err;
using common::GuestAddr;

const char* hc::name(std::uint64_t nr) {
    switch (nr) {
        case memory_op: return "memory_op";
        case xen_version: return "xen_version";
        case console_io: return "console_io";
        case grant_table_op: return "grant_table_op";
        case vm_assist: return "vm_assist";
        case vcpu_op: return "vcpu_op";
        case sched_op: return "sched_op";
        case event_channel_op: return "event_channel_op";
        case physdev_op: return "physdev_op";
        case hvm_op: return "hvm_op";
        default: return nullptr;
    }
}

Hypercalls::Hypercalls(const common::GuestMemory& mem, EventChannels& events, HypercallEnv& env,
                       HypercallConfig cfg)
    : mem_(mem), events_(events), env_(env), cfg_(std::move(cfg)) {}

bool Hypercalls::copy_in(GuestVirtual& gv, std::uint64_t gva, void* out, std::size_t len) const {
    auto* dst = static_cast<std::byte*>(out);
    while (len > 0) {
        auto gpa = gv.translate(gva);
        if (!gpa) return false;
        std::size_t chunk = std::min<std::size_t>(len, xen_model::abi::kPageSize - (gva % xen_model::abi::kPageSize));
        if (!mem_.read(GuestAddr(*gpa), std::span(dst, chunk))) return false;
        dst += chunk;
        gva += chunk;
        len -= chunk;
    }
    return true;
}

bool Hypercalls::copy_out(GuestVirtual& gv, std::uint64_t gva, const void* in, std::size_t len) const {
    const auto* src = static_cast<const std::byte*>(in);
    while (len > 0) {
        auto gpa = gv.translate(gva);
        if (!gpa) return false;
        std::size_t chunk = std::min<std::size_t>(len, xen_model::abi::kPageSize - (gva % xen_model::abi::kPageSize));
        if (!mem_.write(GuestAddr(*gpa), std::span(src, chunk))) return false;
        src += chunk;
        gva += chunk;
        len -= chunk;
    }
    return true;
}

bool Hypercalls::in_ram(std::uint64_t gpa, std::uint64_t len) const {
    for (const auto& r : cfg_.ram) {
        std::uint64_t b = r.base.value();
        if (gpa >= b && len <= r.size && gpa - b <= r.size - len) return true;
    }
    return false;
}

bool Hypercalls::self(std::uint16_t domid) const {
    return domid == xen_model::abi::kDomidSelf || domid == domid_.load();
}

std::int64_t Hypercalls::dispatch(std::uint32_t vcpu, bool user_mode, const HypercallArgs& a, GuestVirtual& gv) {
    counts_[std::min<std::uint64_t>(a.nr, kMaxHypercall)].fetch_add(1, std::memory_order_relaxed);
    if (user_mode && !cfg_.allow_user_mode) {
        // Xen refuses hypercalls from guest user space.
        if (refused_user_.fetch_add(1) < 4) spdlog::warn("xen: vCPU {}: hypercall {} from CPL3 refused", vcpu, a.nr);
        return err::kPerm;
    }
    std::int64_t rc;
    switch (a.nr) {
        case hc::xen_version: rc = xen_version(a, gv); break;
        case hc::memory_op: rc = memory_op(a, gv); break;
        case hc::hvm_op: rc = hvm_op(a, gv); break;
        case hc::vcpu_op: rc = vcpu_op(a, gv); break;
        case hc::event_channel_op: rc = event_channel_op(vcpu, a, gv); break;
        case hc::grant_table_op: rc = grant_table_op(a, gv); break;
        case hc::sched_op: rc = sched_op(a, gv); break;
        default: rc = err::kNoSys; break;
    }
    if (rc < 0 && rc != err::kNoSys)
        spdlog::debug("xen: vCPU {}: hypercall {} ({:#x}, {:#x}) -> {}", vcpu, a.nr, a.a[0], a.a[1], rc);
    return rc;
}

std::int64_t Hypercalls::xen_version(const HypercallArgs& a, GuestVirtual& gv) {
    switch (a.a[0]) {
        case xenver::version: return (kVersionMajor << 16) | kVersionMinor;
        case xenver::pagesize: return static_cast<std::int64_t>(xen_model::abi::kPageSize);
        case xenver::get_features: {
            XenFeatureInfo fi;
            if (!read(gv, a.a[1], fi)) return err::kFault;
            fi.submap = fi.submap_idx == 0 ? kFeatures : 0;
            return write(gv, a.a[1], fi) ? 0 : err::kFault;
        }
        default: return err::kNoSys;
    }
}

std::int64_t Hypercalls::memory_op(const HypercallArgs& a, GuestVirtual& gv) {
    if (a.a[0] != xenmem::add_to_physmap) return err::kNoSys;
    AddToPhysmap x;
    if (!read(gv, a.a[1], x)) return err::kFault;
    if (!self(x.domid)) return err::kSrch;
    if (x.gpfn >= (1ull << 52)) return err::kInval;
    std::uint64_t gpa = x.gpfn * xen_model::abi::kPageSize;
    switch (x.space) {
        case xenmem::space_shared_info: {
            // §3.4: the page stays guest RAM; we remember where it is and start it zeroed.
            if (x.idx != 0 || !in_ram(gpa, xen_model::abi::kPageSize)) return err::kInval;
            auto page = mem_.slice(GuestAddr(gpa), xen_model::abi::kPageSize);
            if (!page) return err::kInval;
            std::memset(page->data(), 0, page->size());
            events_.set_shared_info(GuestAddr(gpa));
            spdlog::debug("xen: shared_info at {:#x}", gpa);
            return 0;
        }
        case xenmem::space_grant_table: {
            // §3.6: frames are fixed in BAR1; the guest may only name them where they are.
            if (x.idx & xenmem::idx_grant_table_status) return err::kInval;  // v1 has no status frames
            if (x.idx >= xen_model::abi::kGrantFramesMax) return err::kInval;
            if (gpa != env_.grant_frames_gpa() + x.idx * xen_model::abi::kPageSize) return err::kInval;
            std::lock_guard l(mu_);
            grant_frames_ = std::max(grant_frames_, static_cast<std::uint32_t>(x.idx + 1));
            return 0;
        }
        default: return err::kInval;
    }
}

std::int64_t Hypercalls::hvm_op(const HypercallArgs& a, GuestVirtual& gv) {
    switch (a.a[0]) {
        case hvmop::get_param:
        case hvmop::set_param: {
            HvmParam p;
            if (!read(gv, a.a[1], p)) return err::kFault;
            if (!self(p.domid)) return err::kSrch;
            if (p.index >= hvm_param::count) return err::kInval;
            if (a.a[0] == hvmop::set_param) {
                if (p.index != hvm_param::callback_irq) return err::kPerm;
                // Linux sets 1 after choosing the per-vCPU vector ("trick toolstack"); the
                // vector is what we deliver, so the value is only recorded.
                std::lock_guard l(mu_);
                callback_irq_ = p.value;
                return 0;
            }
            switch (p.index) {
                case hvm_param::store_pfn: p.value = cfg_.store_pfn; break;
                case hvm_param::store_evtchn: p.value = cfg_.store_port; break;
                case hvm_param::callback_irq: {
                    std::lock_guard l(mu_);
                    p.value = callback_irq_;
                    break;
                }
                default: p.value = 0; break;  // no PV console; unknown known-params read 0 (§6.4)
            }
            return write(gv, a.a[1], p) ? 0 : err::kFault;
        }
        case hvmop::set_evtchn_upcall_vector: {
            HvmUpcallVector v;
            if (!read(gv, a.a[1], v)) return err::kFault;
            auto rc = events_.set_upcall_vector(v.vcpu, v.vector);
            if (rc == 0) spdlog::debug("xen: vCPU {} upcall vector {:#x}", v.vcpu, v.vector);
            return rc;
        }
        case hvmop::pagetable_dying:  // must fail, or every process exit makes a hypercall
        default: return err::kNoSys;
    }
}

std::int64_t Hypercalls::vcpu_op(const HypercallArgs& a, GuestVirtual& gv) {
    if (a.a[0] != vcpuop::register_vcpu_info) return err::kNoSys;
    if (a.a[1] >= events_.vcpus()) return err::kNoEnt;
    RegisterVcpuInfo r;
    if (!read(gv, a.a[2], r)) return err::kFault;
    if (r.offset > xen_model::abi::kPageSize - kVcpuInfoSize) return err::kInval;
    if (r.mfn >= (1ull << 52)) return err::kInval;
    std::uint64_t gpa = r.mfn * xen_model::abi::kPageSize + r.offset;
    if (!in_ram(gpa, kVcpuInfoSize)) return err::kInval;
    auto rc = events_.set_vcpu_info(static_cast<std::uint32_t>(a.a[1]), GuestAddr(gpa));
    if (rc == 0) spdlog::debug("xen: vCPU {} vcpu_info at {:#x}", a.a[1], gpa);
    return rc;
}

std::int64_t Hypercalls::event_channel_op(std::uint32_t vcpu, const HypercallArgs& a, GuestVirtual& gv) {
    const std::uint64_t arg = a.a[1];
    switch (a.a[0]) {
        case evtchnop::alloc_unbound: {
            EvtchnAllocUnbound x;
            if (!read(gv, arg, x)) return err::kFault;
            if (!self(x.dom)) return err::kPerm;
            auto p = events_.alloc_unbound(x.remote_dom);
            if (p < 0) return p;
            x.port = static_cast<std::uint32_t>(p);
            if (write(gv, arg, x)) return 0;
            events_.close(x.port);
            return err::kFault;
        }
        case evtchnop::bind_virq: {
            EvtchnBindVirq x;
            if (!read(gv, arg, x)) return err::kFault;
            auto p = events_.bind_virq(x.virq, x.vcpu);
            if (p < 0) return p;
            x.port = static_cast<std::uint32_t>(p);
            if (write(gv, arg, x)) return 0;
            events_.close(x.port);
            return err::kFault;
        }
        case evtchnop::bind_ipi: {
            EvtchnBindIpi x;
            if (!read(gv, arg, x)) return err::kFault;
            auto p = events_.bind_ipi(x.vcpu);
            if (p < 0) return p;
            x.port = static_cast<std::uint32_t>(p);
            if (write(gv, arg, x)) return 0;
            events_.close(x.port);
            return err::kFault;
        }
        case evtchnop::bind_vcpu: {
            EvtchnBindVcpu x;
            if (!read(gv, arg, x)) return err::kFault;
            return events_.bind_vcpu(x.port, x.vcpu);
        }
        case evtchnop::send: {
            EvtchnPort x;
            if (!read(gv, arg, x)) return err::kFault;
            sends_.fetch_add(1, std::memory_order_relaxed);
            auto r = events_.send(x.port);
            if (r.to_dom0) {
                sends_dom0_.fetch_add(1, std::memory_order_relaxed);
                env_.kick_dom0(x.port);
            }
            return r.rc;
        }
        case evtchnop::close: {
            EvtchnPort x;
            if (!read(gv, arg, x)) return err::kFault;
            auto r = events_.close(x.port);
            if (r.was_dom0) env_.dom0_port_closed(x.port);
            return r.rc;
        }
        case evtchnop::unmask: {
            EvtchnPort x;
            if (!read(gv, arg, x)) return err::kFault;
            return events_.unmask(x.port);
        }
        case evtchnop::status: {
            EvtchnStatus x;
            if (!read(gv, arg, x)) return err::kFault;
            if (!self(x.dom)) return err::kSrch;
            auto rc = events_.status(x.port, x);
            if (rc < 0) return rc;
            return write(gv, arg, x) ? 0 : err::kFault;
        }
        case evtchnop::bind_interdomain:  // backends live in dom0; a guest may not bind their ports
            return err::kPerm;
        case evtchnop::init_control:  // FIFO ABI refused: the guest falls back to 2-level
        case evtchnop::expand_array:
        case evtchnop::set_priority:
        default:
            (void)vcpu;
            return err::kNoSys;
    }
}

std::int64_t Hypercalls::grant_table_op(const HypercallArgs& a, GuestVirtual& gv) {
    switch (a.a[0]) {
        case gnttabop::query_size: {
            if (a.a[2] != 1) return err::kInval;
            GnttabQuerySize q;
            if (!read(gv, a.a[1], q)) return err::kFault;
            if (!self(q.dom)) {
                q.status = -3;  // GNTST_bad_domain
            } else {
                std::lock_guard l(mu_);
                q.nr_frames = std::max<std::uint32_t>(1, grant_frames_);
                q.max_nr_frames = xen_model::abi::kGrantFramesMax;
                q.status = 0;
            }
            return write(gv, a.a[1], q) ? 0 : err::kFault;
        }
        case gnttabop::set_version: {
            if (a.a[2] != 1) return err::kInval;
            GnttabSetVersion v;
            if (!read(gv, a.a[1], v)) return err::kFault;
            if (v.version != 1) return err::kNoSys;  // v1 only; the guest falls back
            return 0;
        }
        default: return err::kNoSys;
    }
}

std::int64_t Hypercalls::sched_op(const HypercallArgs& a, GuestVirtual& gv) {
    switch (a.a[0]) {
        case schedop::yield: return 0;
        case schedop::shutdown: {
            SchedShutdown s;
            if (!read(gv, a.a[1], s)) return err::kFault;
            switch (s.reason) {
                case schedop::poweroff:
                case schedop::reboot:
                case schedop::crash:
                case schedop::watchdog: env_.shutdown(s.reason); return 0;
                default: return err::kInval;  // suspend and soft reset are not offered
            }
        }
        case schedop::poll: {
            SchedPoll p;
            if (!read(gv, a.a[1], p)) return err::kFault;
            if (p.nr_ports > schedop::poll_max_ports) return err::kInval;
            std::array<std::uint32_t, schedop::poll_max_ports> ports{};
            if (!copy_in(gv, p.ports, ports.data(), std::size_t{p.nr_ports} * 4)) return err::kFault;
            // Sleep until a listed port is pending or briefly; spurious wake-ups are allowed
            // (the guest re-checks), a lost one would cost only the timeout.
            events_.wait_any_pending(std::span(ports.data(), p.nr_ports), std::chrono::milliseconds(1));
            return 0;
        }
        default: return err::kNoSys;
    }
}

std::uint64_t Hypercalls::count(std::uint64_t nr) const {
    return counts_[std::min<std::uint64_t>(nr, kMaxHypercall)].load();
}

std::uint64_t Hypercalls::total() const {
    std::uint64_t t = 0;
    for (const auto& c : counts_) t += c.load();
    return t;
}

std::string Hypercalls::summary() const {
    std::string s;
    for (std::uint64_t nr = 0; nr <= kMaxHypercall; ++nr) {
        auto n = counts_[nr].load();
        if (n == 0) continue;
        const char* name = hc::name(nr);
        if (!s.empty()) s += ", ";
        s += name ? fmt::format("{} {}", name, n)
                  : (nr == kMaxHypercall ? fmt::format("other {}", n) : fmt::format("#{} {}", nr, n));
    }
    if (s.empty()) s = "none";
    return fmt::format("{} hypercalls ({}); event-channel sends {} (to dom0 {})", total(), s, sends_.load(),
                       sends_dom0_.load());
}

}  // namespace hypervisor::xen
