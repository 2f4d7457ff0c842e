// Decoding a vCPU exit, apart from handling it: decode_exit() turns the kvm_run page into a
// plain value that tests can build by hand.
#pragma once

#include <linux/kvm.h>

#include <cstdint>
#include <span>
#include <variant>

namespace hypervisor {

struct PioExit {
    std::uint16_t port;
    std::uint8_t size;      // 1, 2 or 4
    bool write;
    std::uint32_t count;    // > 1 for string I/O
    std::uint64_t data_offset;  // inside the kvm_run mapping
};
struct MmioExit {
    std::uint64_t addr;
    std::uint32_t len;  // 1..8
    bool write;
};
struct ShutdownExit {};  // triple fault
struct SystemEventExit { std::uint32_t type; };
struct InternalErrorExit { std::uint32_t suberror; std::uint32_t ndata; std::uint64_t data[4]; };
struct FailEntryExit { std::uint64_t reason; };
struct HltExit {};
struct IgnoredExit {};  // KVM_EXIT_INTR and friends: just run again
struct UnknownExit { std::uint32_t reason; };
// KVM_EXIT_X86_RDMSR / WRMSR: an MSR access KVM's filter sent to userspace (the Xen
// hypercall-page MSR). The handler sets kvm_run.msr.error (1 = #GP) and, for reads, data.
struct MsrExit { std::uint32_t index; std::uint64_t data; bool write; };
// KVM_EXIT_XEN with type KVM_EXIT_XEN_HCALL: a Xen hypercall intercepted by KVM; the handler
// writes kvm_run.xen.u.hcall.result.
struct XenHcallExit {};

using VcpuExit = std::variant<PioExit, MmioExit, ShutdownExit, SystemEventExit, InternalErrorExit,
                              FailEntryExit, HltExit, IgnoredExit, UnknownExit, MsrExit, XenHcallExit>;

// mmap_size bounds the string-I/O data area; a malformed exit becomes UnknownExit.
[[nodiscard]] VcpuExit decode_exit(const kvm_run& run, std::size_t mmap_size);

}  // namespace hypervisor
