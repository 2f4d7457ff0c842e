#include "xen/xen_domain.hpp"

#include <spdlog/spdlog.h>

#include <fmt/format.h>

#include "xen/page_walk.hpp"
#include "xen_model/abi/xen_abi.hpp"

namespace hypervisor::xen {

using common::Error;
using common::fail;

namespace {

// Translates through translate_page() once per page, remembering the last page for structs
// that span a call.
class PageCachedVirtual : public GuestVirtual {
public:
    std::optional<std::uint64_t> translate(std::uint64_t gva) final {
        const std::uint64_t page = gva & ~0xfffull;
        if (!have_ || page != page_) {
            auto gpa = translate_page(page);
            if (!gpa) return std::nullopt;
            page_ = page;
            gpa_page_ = *gpa & ~0xfffull;
            have_ = true;
        }
        return gpa_page_ | (gva & 0xfff);
    }

protected:
    virtual std::optional<std::uint64_t> translate_page(std::uint64_t page) = 0;

private:
    bool have_ = false;
    std::uint64_t page_ = 0, gpa_page_ = 0;
};

// KVM_TRANSLATE on the calling vCPU.
class VcpuVirtual final : public PageCachedVirtual {
public:
    explicit VcpuVirtual(const KvmVcpu& v) : vcpu_(v) {}

private:
    std::optional<std::uint64_t> translate_page(std::uint64_t page) override {
        auto gpa = vcpu_.translate(page);
        return gpa ? std::optional<std::uint64_t>(*gpa) : std::nullopt;
    }
    const KvmVcpu& vcpu_;
};

// The vmm's own page walk over the registers KVM synced into kvm_run (no ioctl), falling back
// to KVM_TRANSLATE for paging modes the walker does not do.
class SyncedVirtual final : public PageCachedVirtual {
public:
    SyncedVirtual(const KvmVcpu& v, const common::GuestMemory& mem, const PagingState& st)
        : vcpu_(v), mem_(mem), st_(st) {}

private:
    std::optional<std::uint64_t> translate_page(std::uint64_t page) override {
        auto w = walk_page_tables(mem_, st_, page);
        if (w.handled) return w.gpa;
        auto gpa = vcpu_.translate(page);
        return gpa ? std::optional<std::uint64_t>(*gpa) : std::nullopt;
    }
    const KvmVcpu& vcpu_;
    const common::GuestMemory& mem_;
    PagingState st_;
};

}  // namespace

std::vector<std::uint8_t> hypercall_page() {
    std::vector<std::uint8_t> p(xen_model::abi::kPageSize, 0xcc);
    for (std::uint32_t i = 0; i < xen_model::abi::kPageSize / kStubSize; ++i) {
        std::uint8_t* s = p.data() + i * kStubSize;
        s[0] = 0xb8;  // mov $i, %eax
        s[1] = static_cast<std::uint8_t>(i);
        s[2] = s[3] = s[4] = 0;
        s[5] = 0xe6;  // out %al, $0x1e
        s[6] = static_cast<std::uint8_t>(kHypercallPort);
        s[7] = 0xc3;  // ret
    }
    return p;
}

XenDomain::XenDomain(KvmVm& vm, const common::GuestMemory& mem, VmControl& ctl, XenDomainConfig cfg)
    : vm_(vm), mem_(mem), ctl_(ctl), cfg_(std::move(cfg)), events_(mem, cfg_.vcpus, *this) {}

common::Result<std::unique_ptr<XenDomain>> XenDomain::create(const KvmSystem& sys, KvmVm& vm,
                                                             const common::GuestMemory& mem, VmControl& ctl,
                                                             XenDomainConfig cfg) {
    std::unique_ptr<XenDomain> d(new XenDomain(vm, mem, ctl, std::move(cfg)));
    auto port = d->events_.preallocate_dom0();
    if (port < 0) return fail(Error::invalid("no event channel for xenstore"));
    d->store_port_ = static_cast<std::uint32_t>(port);
    HypercallConfig hc;
    hc.ram = d->cfg_.ram;
    hc.store_port = d->store_port_;
    hc.store_pfn = xen_model::abi::kXenstorePfn;
    hc.allow_user_mode = d->cfg_.allow_user_mode;
    d->hcalls_ = std::make_unique<Hypercalls>(mem, d->events_, *d, std::move(hc));

    // Transport a: KVM intercepts the hypercall instructions itself. This host's KVM reports
    // KVM_CAP_XEN_HVM = 0, so this branch is untested here.
    int xen_caps = sys.check_extension(KVM_CAP_XEN_HVM);
    if (xen_caps & KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL) {
        if (auto s = vm.xen_intercept_hypercalls(kHypercallMsr); s) {
            spdlog::info("xen: hypercalls intercepted by KVM (KVM_EXIT_XEN)");
            return d;
        } else {
            spdlog::warn("xen: {}; using the hypercall page instead", s.error().message);
        }
    }
    // Transport b: the hypercall page, filled by us when the guest writes the MSR.
    if (sys.check_extension(KVM_CAP_X86_USER_SPACE_MSR) && sys.check_extension(KVM_CAP_X86_MSR_FILTER)) {
        if (auto s = vm.enable_user_space_msr(); !s) return fail(std::move(s.error()));
        if (auto s = vm.filter_msr_writes(kHypercallMsr); !s) return fail(std::move(s.error()));
        spdlog::debug("xen: hypercall page through MSR {:#x}", kHypercallMsr);
    } else {
        // Without MSR exits only patched kernels (--xen-patch-hypercalls) can call us.
        spdlog::warn("xen: this KVM cannot pass MSR writes to userspace: no hypercall page; only a kernel "
                     "patched with --xen-patch-hypercalls (or a guest calling port {:#x}) can make hypercalls",
                     kHypercallPort);
    }
    return d;
}

XenDomain::~XenDomain() {
    {
        std::lock_guard l(hk_mu_);
        hk_stop_ = true;
    }
    hk_cv_.notify_all();
    if (housekeeping_.joinable()) housekeeping_.join();
    dom0_.reset();
}

common::Status XenDomain::start_dom0(Dom0Config cfg) {
    cfg.store_port = store_port_;
    cfg.store_gpa = xen_model::abi::kXenstorePfn * xen_model::abi::kPageSize;
    cfg.grant_table_gpa = cfg_.grant_frames_gpa;
    cfg.grant_frames = xen_model::abi::kGrantFramesMax;
    auto l = Dom0Link::start(cfg, mem_, events_);
    if (!l) return fail(std::move(l.error()));
    dom0_ = std::move(*l);
    hcalls_->set_domid(dom0_->domid());
    return {};
}

void XenDomain::start_housekeeping() {
    housekeeping_ = std::thread([this] {
        std::unique_lock l(hk_mu_);
        while (!hk_cv_.wait_for(l, std::chrono::milliseconds(20), [this] { return hk_stop_; }))
            events_.housekeeping_tick();
    });
}

void XenDomain::log_summary() const {
    auto s = events_.stats();
    spdlog::info("xen: {}", hcalls_->summary());
    spdlog::info("xen: {} ports raised, {} upcalls ({} re-sent by the timer, {} lost before shared_info), "
                 "dom0 kicks {}, dom0 notifications {}",
                 s.raises, s.upcalls, s.rekicks, s.lost, dom0_ ? dom0_->kicks() : 0,
                 dom0_ ? dom0_->notifies() : 0);
    // What the guest left untaken: after a hang this names the event it never saw.
    for (const auto& line : events_.pending_report()) spdlog::info("xen: at the end: {}", line);
}

bool XenDomain::port_write(KvmVcpu& vcpu, std::uint16_t port) {
    if (port != kHypercallPort) return false;
    kvm_run* run = vcpu.run_state();
    if ((run->kvm_valid_regs & kSyncRegs) == kSyncRegs) {
        // Fast path: KVM copied the registers into kvm_run at the exit, and writes RAX back
        // at the next KVM_RUN (with the same RIP, as KVM_SET_REGS would).
        auto& r = run->s.regs.regs;
        const auto& sr = run->s.regs.sregs;
        bool user = sr.ss.dpl == 3 || (sr.cs.selector & 3) == 3;
        HypercallArgs a{r.rax, {r.rdi, r.rsi, r.rdx, r.r10, r.r8}};
        SyncedVirtual gv(vcpu, mem_, PagingState{sr.cr0, sr.cr3, sr.cr4, sr.efer});
        r.rax = static_cast<std::uint64_t>(hcalls_->dispatch(vcpu.id(), user, a, gv));
        run->kvm_dirty_regs |= KVM_SYNC_X86_REGS;
        return true;
    }
    // Without KVM_CAP_SYNC_REGS: KVM_GET_REGS / KVM_SET_REGS (each ioctl costs about as much as
    // the exit under kvm_pvm).
    auto regs = vcpu.get_regs();
    if (!regs) {
        ctl_.request_stop(StopReason::HostError, kStatusHostError,
                          fmt::format("vCPU {}: reading registers for a hypercall failed", vcpu.id()));
        return true;
    }
    // The privilege level matters only when CPL3 callers are refused; the probe skips the
    // KVM_GET_SREGS (one ioctl less per hypercall).
    bool user = false;
    if (!cfg_.allow_user_mode) {
        auto sregs = vcpu.get_sregs();
        if (!sregs) {
            ctl_.request_stop(StopReason::HostError, kStatusHostError,
                              fmt::format("vCPU {}: reading segment registers for a hypercall failed", vcpu.id()));
            return true;
        }
        user = sregs->ss.dpl == 3 || (sregs->cs.selector & 3) == 3;
    }
    HypercallArgs a{regs->rax, {regs->rdi, regs->rsi, regs->rdx, regs->r10, regs->r8}};
    VcpuVirtual gv(vcpu);
    auto rc = hcalls_->dispatch(vcpu.id(), user, a, gv);
    regs->rax = static_cast<std::uint64_t>(rc);
    if (auto s = vcpu.set_regs(*regs); !s)
        ctl_.request_stop(StopReason::HostError, kStatusHostError,
                          fmt::format("vCPU {}: returning a hypercall result: {}", vcpu.id(), s.error().message));
    return true;
}

bool XenDomain::msr(KvmVcpu& vcpu, std::uint32_t index, bool write, std::uint64_t& data) {
    if (index != kHypercallMsr || !write) return false;
    // The value is the page's guest-physical address plus the page index (one page here).
    std::uint64_t gpa = data & ~0xfffull;
    if ((data & 0xfff) != 0) return false;
    bool in_ram = false;
    for (const auto& r : cfg_.ram)
        if (gpa >= r.base.value() && gpa - r.base.value() + xen_model::abi::kPageSize <= r.size) in_ram = true;
    if (!in_ram) {
        spdlog::warn("xen: vCPU {}: hypercall page at {:#x} is not guest RAM", vcpu.id(), gpa);
        return false;
    }
    auto page = hypercall_page();
    if (!mem_.write(common::GuestAddr(gpa), std::as_bytes(std::span(page)))) return false;
    spdlog::debug("xen: vCPU {}: hypercall page at {:#x}", vcpu.id(), gpa);
    return true;
}

void XenDomain::xen_hypercall(KvmVcpu& vcpu, kvm_xen_exit& x) {
    // Untested on this host (KVM_CAP_XEN_HVM = 0).
    auto& h = x.u.hcall;
    HypercallArgs a{h.input, {h.params[0], h.params[1], h.params[2], h.params[3], h.params[4]}};
    VcpuVirtual gv(vcpu);
    h.result = static_cast<std::uint64_t>(hcalls_->dispatch(vcpu.id(), h.cpl == 3, a, gv));
}

void XenDomain::kick_dom0(std::uint32_t port) {
    if (dom0_) dom0_->kick(port);
}

void XenDomain::dom0_port_closed(std::uint32_t port) {
    if (dom0_) dom0_->port_closed(port);
}

void XenDomain::shutdown(std::uint32_t reason) {
    switch (reason) {
        case schedop::poweroff:
            ctl_.request_stop(StopReason::Shutdown, 0, "guest powered off (SCHEDOP_shutdown)");
            break;
        case schedop::reboot:
            ctl_.request_stop(StopReason::Reset, 0, "guest rebooted (SCHEDOP_shutdown)");
            break;
        default:
            ctl_.request_stop(StopReason::GuestCrash, kStatusGuestCrash,
                              fmt::format("guest crashed (SCHEDOP_shutdown reason {})", reason));
            break;
    }
}

void XenDomain::upcall(std::uint32_t vcpu, std::uint8_t vector) {
    // §3.8: fixed, edge MSI; the APIC id sits in address bits 19:12.
    std::uint64_t addr = 0xfee00000ull | (std::uint64_t{vcpu} << 12);
    if (auto s = vm_.signal_msi(addr, vector); !s && msi_failures_.fetch_add(1) < 4)
        spdlog::warn("xen: upcall to vCPU {}: {}", vcpu, s.error().message);
}

}  // namespace hypervisor::xen
