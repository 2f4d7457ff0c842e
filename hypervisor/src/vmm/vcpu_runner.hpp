// One vCPU's thread body: KVM_RUN, decode the exit, hand it to the buses, repeat until the VM
// stops. Guest mistakes (unclaimed ports or MMIO) are logged, rate-limited, and ignored; a
// triple fault or KVM internal error ends the VM with a report of the registers and the
// failing instruction bytes.
#pragma once

#include <atomic>
#include <cstdint>

#include "common/guest_memory.hpp"
#include "devices/bus.hpp"
#include "devices/vm_control.hpp"
#include "kvm/kvm.hpp"
#include "vmm/exit.hpp"

namespace hypervisor {

// Exits that need the vCPU itself (its registers), not just a bus: the Xen hypercall
// transports. Called on the vCPU's thread.
class VcpuExitHooks {
public:
    virtual ~VcpuExitHooks() = default;
    // A port write; true when the hooks own the port (the Xen hypercall port).
    virtual bool port_write(KvmVcpu& vcpu, std::uint16_t port) = 0;
    // A filtered MSR access; false makes the guest take #GP.
    virtual bool msr(KvmVcpu& vcpu, std::uint32_t index, bool write, std::uint64_t& data) = 0;
    // KVM_EXIT_XEN (hypercall interception by KVM).
    virtual void xen_hypercall(KvmVcpu& vcpu, kvm_xen_exit& x) = 0;
};

class VcpuRunner final {
public:
    VcpuRunner(KvmVcpu vcpu, int mmap_size, Bus& pio, Bus& mmio, const common::GuestMemory& mem,
               VmControl& ctl, VcpuExitHooks* hooks = nullptr)
        : vcpu_(std::move(vcpu)), mmap_size_(static_cast<std::size_t>(mmap_size)), pio_(pio),
          mmio_(mmio), mem_(mem), ctl_(ctl), hooks_(hooks) {}

    void run_loop();
    // Makes the next KVM_RUN return immediately; the caller then kicks the thread.
    void request_exit();
    [[nodiscard]] bool exited() const { return exited_.load(); }
    [[nodiscard]] std::uint64_t exits() const { return exits_.load(); }
    // Wall time spent in the vmm handling exits (between KVM_RUN calls), and the thread's CPU
    // time (valid once exited()).
    [[nodiscard]] std::uint64_t handling_ns() const { return handling_ns_.load(); }
    [[nodiscard]] std::uint64_t cpu_ns() const { return cpu_ns_.load(); }
    // Read after the thread has stopped.
    [[nodiscard]] std::uint64_t unclaimed() const { return unclaimed_; }

private:
    // Returns false when the VM must stop.
    bool handle(const VcpuExit& e);
    void handle_pio(const PioExit& e);
    void handle_mmio(const MmioExit& e);
    void report_crash(const std::string& what);
    void note_unclaimed(const char* kind, std::uint64_t addr, std::size_t size, bool write);

    KvmVcpu vcpu_;
    std::size_t mmap_size_;
    Bus& pio_;
    Bus& mmio_;
    const common::GuestMemory& mem_;
    VmControl& ctl_;
    VcpuExitHooks* hooks_;
    std::atomic<bool> exit_requested_{false};
    std::atomic<bool> exited_{false};
    std::atomic<std::uint64_t> exits_{0};
    std::atomic<std::uint64_t> handling_ns_{0};
    std::atomic<std::uint64_t> cpu_ns_{0};
    std::uint64_t unclaimed_ = 0;
};

}  // namespace hypervisor
