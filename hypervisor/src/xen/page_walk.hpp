// A guest page-table walk in the vmm, so that a hypercall's pointer arguments cost no
// KVM_TRANSLATE ioctl (each vCPU ioctl costs about 20 us under kvm_pvm here, as much as the
// exit itself). Pure over GuestMemory: every table entry is read through it (GUEST-SHARED).
// Covers paging off and x86-64 4- and 5-level paging with 1 GiB and 2 MiB pages; for 32-bit
// paging modes it answers "not handled" and the caller asks KVM. Access rights are not checked:
// Xen's copy_from_guest does not check them for the kernel's own arguments either, and guest
// memory bounds are checked by GuestMemory on every access.
#pragma once

#include <cstdint>
#include <optional>

#include "common/guest_memory.hpp"

namespace hypervisor::xen {

struct PagingState {
    std::uint64_t cr0 = 0, cr3 = 0, cr4 = 0, efer = 0;
};

struct WalkResult {
    bool handled = false;              // false: a paging mode this walker does not do
    std::optional<std::uint64_t> gpa;  // nullopt: not mapped (or a table outside guest memory)
};

[[nodiscard]] WalkResult walk_page_tables(const common::GuestMemory& mem, const PagingState& st,
                                          std::uint64_t gva);

}  // namespace hypervisor::xen
