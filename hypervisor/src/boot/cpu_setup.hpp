// The boot CPU's initial state for each entry mode: GDT, identity page tables, registers.
#pragma once

#include <linux/kvm.h>

#include "boot/loader.hpp"
#include "common/guest_memory.hpp"

namespace hypervisor {

// GDT selectors, as the Linux boot protocol expects them (__BOOT_CS, __BOOT_DS).
inline constexpr std::uint16_t kBootCs = 0x10;
inline constexpr std::uint16_t kBootDs = 0x18;
inline constexpr std::uint16_t kBootTss = 0x20;

// Writes the GDT (null, null, code, data, TSS) and, for 64-bit entry, page tables that
// identity-map the first 4 GiB with 2 MiB pages.
common::Status write_boot_tables(const common::GuestMemory& mem, EntryMode mode);

// Segment, control and mode registers for the entry; `base` carries KVM's other fields.
[[nodiscard]] kvm_sregs boot_sregs(kvm_sregs base, EntryMode mode);
[[nodiscard]] kvm_regs boot_regs(const BootEntry& entry);

}  // namespace hypervisor
