// Minimal ACPI tables: RSDP, RSDT, XSDT, FADT (hardware-reduced), a DSDT that declares
// the UART (COM1, IRQ 4), and a MADT.
//
// Why ACPI although the design says "no ACPI": Debian's cloud kernel is built without
// CONFIG_X86_MPPARSE, so it ignores the MP table and, without a MADT, finds neither its local
// APIC nor its other CPUs. The MADT is the only way to give it SMP. PCI stays on type-1
// configuration ports: the DSDT declares no PCI root bridge, so the default Linux command line
// carries pci=lastbus=1, which makes Linux probe buses 0 and 1 itself. (pci=noacpi would do
// that too, but in a kernel without MP-table support it also disables the local APIC.)
#pragma once

#include <cstdint>
#include <vector>

#include "common/guest_memory.hpp"

namespace hypervisor {

struct AcpiOptions {
    // The FADT's IAPC_BOOT_ARCH "no VGA" flag. Linux takes a guest with Xen CPUID leaves, no
    // VGA and no CMOS RTC (which hardware-reduced ACPI implies) for a Xen PVH guest, whatever its
    // entry path; Xen mode boots Linux as an HVM guest, so it leaves the flag out.
    bool declare_no_vga = true;
};

// The tables for vcpu_count CPUs, laid out from `base` (the RSDP first, 16-byte aligned).
[[nodiscard]] std::vector<std::uint8_t> build_acpi(std::uint32_t base, std::uint32_t vcpu_count,
                                                   const AcpiOptions& options = {});

// Writes them at layout::kAcpi; returns the RSDP's address.
common::Result<std::uint64_t> write_acpi(const common::GuestMemory& mem, std::uint32_t vcpu_count,
                                         const AcpiOptions& options = {});

}  // namespace hypervisor
