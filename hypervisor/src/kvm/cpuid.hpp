// The CPUID a vCPU sees: KVM's supported set minus a documented filter. Pure, unit-tested.
#pragma once

#include <linux/kvm.h>

#include <cstdint>
#include <vector>

namespace hypervisor {

// Filter applied to KVM_GET_SUPPORTED_CPUID, per vCPU:
//  - leaf 1: EBX[31:24] = APIC id, EBX[23:16] = vCPU count, EBX[15:8] = CLFLUSH size 8
//    (64 bytes); ECX bit 31 (hypervisor present) set; EDX bit 9 (APIC) set, since every vCPU
//    has the in-kernel local APIC (some KVMs report it clear in the supported set);
//    EDX bit 28 (HTT) set when count > 1.
//  - leaf 0xB / 0x1F: x2APIC id in EDX; one thread per core, `count` cores per package.
//  - leaf 4: cores per package (EAX[31:26]) = count - 1, threads sharing a cache reset.
//  - leaf 6 (thermal and power): cleared; the guest has no such interface.
//  - leaf 7 EDX bit 29 (IA32_ARCH_CAPABILITIES): cleared; some hosts cannot set that MSR.
//  - leaf 0xA (architectural PMU): cleared; no performance counters are offered.
std::vector<kvm_cpuid_entry2> filter_cpuid(std::vector<kvm_cpuid_entry2> supported,
                                           std::uint32_t vcpu_id, std::uint32_t vcpu_count);

// Xen mode (reference §3.2): every hypervisor leaf KVM offers (0x40000000-0x4FFFFFFF) is
// removed, so the guest sees no KVM (no kvmclock), and the Xen leaves are added at 0x40000000:
// signature "XenVMMXenVMM" with max leaf base+4, version 4.17, one hypercall page through MSR
// 0x40000000, and base+4 = VCPU_ID_PRESENT | UPCALL_VECTOR with EBX = this vCPU's index (its
// Xen vcpu_id, equal to its ACPI processor UID). Leaf 1 keeps the hypervisor bit.
std::vector<kvm_cpuid_entry2> xen_cpuid(std::vector<kvm_cpuid_entry2> filtered, std::uint32_t vcpu_id);

}  // namespace hypervisor
