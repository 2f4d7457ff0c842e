// The Xen ABI of one VM, assembled (reference §7): event channels, the hypercall dispatcher,
// the hypercall transports, the upcall MSIs, the housekeeping timer and the link to dom0.
//
// Transports, all ending in Hypercalls::dispatch on the calling vCPU's thread:
//  a. KVM_EXIT_XEN, when KVM_CAP_XEN_HVM offers INTERCEPT_HCALL (KVM then writes the hypercall
//     page itself). Not offered by this host's KVM, so this path is untested here.
//  b. The hypercall page: guest writes of MSR 0x40000000 exit through an MSR filter; the vmm
//     fills the named page with `mov $nr,%eax; out %al,$0x1e; ret` stubs, 32 bytes apart.
//  c. Patched `vmmcall`/`vmcall` (--xen-patch-hypercalls, hypercall_patch.hpp), which also
//     arrive as `out %al,$0x1e`.
// A hypercall at port 0x1e reads RAX and RDI, RSI, RDX, R10, R8 and writes RAX back; RIP is never
// changed. Where KVM offers KVM_CAP_SYNC_REGS (regs and sregs) the vmm asks it to copy the
// registers into kvm_run at every exit (enable_sync_regs), reads them there, walks the guest's
// page tables itself (page_walk.hpp) and marks RAX dirty: a hypercall then costs no ioctl
// beyond the exit. Under kvm_pvm every vCPU ioctl (KVM_GET_REGS, KVM_SET_REGS, KVM_TRANSLATE)
// costs about 20 us, as much as the exit. Otherwise KVM_GET_REGS/KVM_SET_REGS and KVM_TRANSLATE.
#pragma once

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>

#include "devices/vm_control.hpp"
#include "kvm/kvm.hpp"
#include "vmm/vcpu_runner.hpp"
#include "xen/dom0_link.hpp"
#include "xen/event_channels.hpp"
#include "xen/hypercalls.hpp"

namespace hypervisor::xen {

struct XenDomainConfig {
    std::uint32_t vcpus = 1;
    bool allow_user_mode = false;           // the probe guest's CPL3 frontend
    std::vector<common::MemoryRegion> ram;  // guest RAM (not the special regions)
    std::uint64_t grant_frames_gpa = 0;     // BAR1 of the platform device
};

class XenDomain final : public VcpuExitHooks, public HypercallEnv, public UpcallSink {
public:
    // Chooses the transport (a, else b) and pre-allocates the xenstore port.
    [[nodiscard]] static common::Result<std::unique_ptr<XenDomain>> create(const KvmSystem& sys, KvmVm& vm,
                                                                           const common::GuestMemory& mem,
                                                                           VmControl& ctl, XenDomainConfig cfg);
    ~XenDomain() override;

    // Starts dom0 and attaches this VM (store port and page filled in here).
    common::Status start_dom0(Dom0Config cfg);
    // The re-kick timer (§3.8), every 20 ms until destruction.
    void start_housekeeping();
    // Logs the hypercall counts (used by the benchmarks: "vmm exits per I/O").
    void log_summary() const;

    [[nodiscard]] std::uint32_t store_port() const { return store_port_; }
    [[nodiscard]] Hypercalls& hypercalls() { return *hcalls_; }
    [[nodiscard]] EventChannels& events() { return events_; }

    // VcpuExitHooks
    bool port_write(KvmVcpu& vcpu, std::uint16_t port) override;
    bool msr(KvmVcpu& vcpu, std::uint32_t index, bool write, std::uint64_t& data) override;
    void xen_hypercall(KvmVcpu& vcpu, kvm_xen_exit& x) override;
    // HypercallEnv
    void kick_dom0(std::uint32_t port) override;
    void dom0_port_closed(std::uint32_t port) override;
    void shutdown(std::uint32_t reason) override;
    [[nodiscard]] std::uint64_t grant_frames_gpa() const override { return cfg_.grant_frames_gpa; }
    // UpcallSink: a fixed MSI to the vCPU's local APIC (APIC id = vCPU index).
    void upcall(std::uint32_t vcpu, std::uint8_t vector) override;

private:
    XenDomain(KvmVm& vm, const common::GuestMemory& mem, VmControl& ctl, XenDomainConfig cfg);

    KvmVm& vm_;
    const common::GuestMemory& mem_;
    VmControl& ctl_;
    XenDomainConfig cfg_;
    EventChannels events_;
    std::unique_ptr<Hypercalls> hcalls_;
    std::uint32_t store_port_ = 0;
    std::unique_ptr<Dom0Link> dom0_;
    std::atomic<std::uint64_t> msi_failures_{0};
    std::mutex hk_mu_;
    std::condition_variable hk_cv_;
    bool hk_stop_ = false;
    std::thread housekeeping_;
};

inline constexpr std::uint64_t kSyncRegs = KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS;
// Asks KVM to sync registers into kvm_run at every exit when it can (the fast hypercall path).
inline bool enable_sync_regs(const KvmSystem& sys, KvmVcpu& vcpu) {
    if ((static_cast<std::uint64_t>(sys.check_extension(KVM_CAP_SYNC_REGS)) & kSyncRegs) != kSyncRegs) return false;
    vcpu.run_state()->kvm_valid_regs = kSyncRegs;
    return true;
}

// Builds the hypercall page: stub i at 32*i is `mov $i,%eax; out %al,$0x1e; ret`, the rest int3.
std::vector<std::uint8_t> hypercall_page();

}  // namespace hypervisor::xen
