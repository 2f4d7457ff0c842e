// Thin RAII wrappers over /dev/kvm: the system handle, a VM, a vCPU.
//
// Each wrapper owns its fd (and the vCPU its kvm_run mapping). Methods return Status/Result;
// callers decide whether an error is the guest's fault or a broken host invariant.
#pragma once

#include <linux/kvm.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/error.hpp"
#include "common/fd.hpp"

namespace hypervisor {

using common::Result;
using common::Status;

class KvmVm;
class KvmVcpu;

class KvmSystem final {
public:
    // Opens /dev/kvm (or path) and checks the API version and the capabilities we rely on.
    [[nodiscard]] static Result<KvmSystem> open(const std::string& path = "/dev/kvm");

    [[nodiscard]] int check_extension(long cap) const;
    [[nodiscard]] Result<std::vector<kvm_cpuid_entry2>> supported_cpuid() const;
    [[nodiscard]] int vcpu_mmap_size() const { return vcpu_mmap_size_; }
    // The name of the KVM module behind /dev/kvm when it is not hardware-backed (kvm_pvm).
    [[nodiscard]] const std::optional<std::string>& software_module() const { return soft_module_; }
    [[nodiscard]] Result<KvmVm> create_vm() const;

private:
    KvmSystem(common::UniqueFd fd, int mmap_size, std::optional<std::string> soft)
        : fd_(std::move(fd)), vcpu_mmap_size_(mmap_size), soft_module_(std::move(soft)) {}
    common::UniqueFd fd_;
    int vcpu_mmap_size_ = 0;
    std::optional<std::string> soft_module_;
};

class KvmVm final {
public:
    [[nodiscard]] int fd() const { return fd_.get(); }

    Status set_user_memory_region(std::uint32_t slot, std::uint64_t gpa, std::uint64_t size,
                                  void* host);
    // In-kernel PIC, IOAPIC and local APICs, plus the PIT.
    Status create_irqchip();
    Status create_pit();
    // Puts both 8259s in the state firmware leaves them in: vector bases 0x08 and 0x70, every
    // line masked. Guests that use the PIC program it; others never see its stray vectors.
    Status mask_pic();
    Status set_tss_addr(std::uint64_t gpa);
    Status set_identity_map_addr(std::uint64_t gpa);
    // Replaces the whole GSI routing table.
    Status set_gsi_routing(const std::vector<kvm_irq_routing_entry>& entries);
    Status irqfd(int eventfd, std::uint32_t gsi, bool assign);
    // Doorbells: a guest write of `len` bytes at `addr` signals `eventfd` (datamatch optional).
    Status ioeventfd(int eventfd, std::uint64_t addr, std::uint32_t len, bool pio, bool assign,
                     std::optional<std::uint64_t> datamatch = std::nullopt);
    Status irq_line(std::uint32_t irq, bool level);
    // The guests' TSC rate in kHz (KVM_GET_TSC_KHZ on the VM), or an error on kernels without it.
    [[nodiscard]] Result<std::uint32_t> tsc_khz() const;
    Status signal_msi(std::uint64_t address, std::uint32_t data);
    // MSR accesses denied by the filter exit to userspace (KVM_CAP_X86_USER_SPACE_MSR with
    // KVM_MSR_EXIT_REASON_FILTER); then guest writes of MSR `index` are denied, so they exit.
    Status enable_user_space_msr();
    Status filter_msr_writes(std::uint32_t index);
    // KVM_XEN_HVM_CONFIG with INTERCEPT_HCALL: KVM fills the hypercall page on a write of
    // `msr` and hands every Xen hypercall to userspace as KVM_EXIT_XEN.
    Status xen_intercept_hypercalls(std::uint32_t msr);
    [[nodiscard]] Result<KvmVcpu> create_vcpu(std::uint32_t id, int mmap_size);

private:
    friend class KvmSystem;
    explicit KvmVm(common::UniqueFd fd) : fd_(std::move(fd)) {}
    common::UniqueFd fd_;
};

class KvmVcpu final {
public:
    KvmVcpu(KvmVcpu&&) noexcept = default;
    KvmVcpu& operator=(KvmVcpu&&) noexcept = default;
    ~KvmVcpu() = default;

    [[nodiscard]] int fd() const { return fd_.get(); }
    [[nodiscard]] std::uint32_t id() const { return id_; }
    [[nodiscard]] kvm_run* run_state() const { return reinterpret_cast<kvm_run*>(run_map_.data()); }

    // KVM_RUN: returns 0, or -errno (EINTR when kicked by a signal).
    [[nodiscard]] int run();

    [[nodiscard]] Result<kvm_regs> get_regs() const;
    Status set_regs(const kvm_regs& r);
    [[nodiscard]] Result<kvm_sregs> get_sregs() const;
    Status set_sregs(const kvm_sregs& s);
    Status set_cpuid(const std::vector<kvm_cpuid_entry2>& entries);
    Status set_fpu(const kvm_fpu& f);
    Status set_lapic_lint(bool lint0_extint, bool lint1_nmi);
    // Reads guest-virtual memory through the vCPU's page tables (for error reports).
    [[nodiscard]] Result<std::uint64_t> translate(std::uint64_t gva) const;

private:
    friend class KvmVm;
    KvmVcpu(common::UniqueFd fd, common::Mmap run, std::uint32_t id)
        : fd_(std::move(fd)), run_map_(std::move(run)), id_(id) {}
    common::UniqueFd fd_;
    common::Mmap run_map_;
    std::uint32_t id_ = 0;
};

}  // namespace hypervisor
