// Hypercall-instruction rewriting for current Linux kernels (reference §2.3, option C): they
// call `vmmcall`/`vmcall` directly instead of a hypercall page, and this host's KVM never
// hands those to userspace. The pair xen_hypercall_amd (`0f 01 d9` at a 16-byte aligned X)
// and xen_hypercall_intel (`0f 01 c1` at X+16) is rewritten to `out %al,$0x1e; nop`
// (`e6 1e 90`), so hypercalls arrive as port I/O. Unsupported binary patching, gated behind
// --xen-patch-hypercalls. Pure functions over bytes, unit-tested and fuzzable.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "common/guest_memory.hpp"

namespace hypervisor::xen {

// Offsets (into `bytes`) of every X where the pair starts; `base` is the guest-physical
// address of bytes[0], used for the 16-byte alignment of X.
[[nodiscard]] std::vector<std::uint64_t> find_hypercall_pairs(std::span<const std::uint8_t> bytes,
                                                              std::uint64_t base);

// Rewrites both instructions of the pair at offset x (as found above). The caller ensures
// x + 19 <= bytes.size().
void patch_hypercall_pair(std::span<std::uint8_t> bytes, std::uint64_t x);

// After a PVH ELF kernel was loaded: scans its PT_LOAD segments in guest memory for the pair
// and patches it. Fails, saying how many were found, unless there is exactly one. Returns the
// guest-physical address of xen_hypercall_amd.
[[nodiscard]] common::Result<std::uint64_t> patch_loaded_kernel(const common::GuestMemory& mem,
                                                               std::span<const std::uint8_t> elf);

}  // namespace hypervisor::xen
