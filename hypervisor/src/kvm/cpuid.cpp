#include "kvm/cpuid.hpp"

#include <algorithm>

namespace hypervisor {

std::vector<kvm_cpuid_entry2> filter_cpuid(std::vector<kvm_cpuid_entry2> entries,
                                           std::uint32_t vcpu_id, std::uint32_t vcpu_count) {
    for (auto& e : entries) {
        switch (e.function) {
            case 0x1:
                e.ebx = (vcpu_id << 24) | ((vcpu_count & 0xff) << 16) | (8u << 8);
                e.ecx |= 1u << 31;
                e.edx |= 1u << 9;  // the in-kernel local APIC is always there
                if (vcpu_count > 1) e.edx |= 1u << 28;
                else e.edx &= ~(1u << 28);
                break;
            case 0x4:
                e.eax &= 0x3ff;  // keep cache type/level bits, rewrite sharing and core counts
                e.eax |= ((vcpu_count - 1) & 0x3f) << 26;
                break;
            case 0x6:
            case 0xA:
                e.eax = e.ebx = e.ecx = e.edx = 0;
                break;
            case 0x7:
                if (e.index == 0) e.edx &= ~(1u << 29);
                break;
            case 0xB:
            case 0x1F:
                e.edx = vcpu_id;
                if (e.index == 0) {  // SMT level: one thread per core
                    e.eax = 0;
                    e.ebx = 1;
                    e.ecx = (1u << 8) | e.index;
                } else if (e.index == 1) {  // core level
                    std::uint32_t shift = 0;
                    while ((1u << shift) < vcpu_count) ++shift;
                    e.eax = shift;
                    e.ebx = vcpu_count;
                    e.ecx = (2u << 8) | e.index;
                } else {
                    e.eax = e.ebx = 0;
                    e.ecx = e.index;
                }
                break;
            default:
                break;
        }
    }
    return entries;
}

std::vector<kvm_cpuid_entry2> xen_cpuid(std::vector<kvm_cpuid_entry2> entries, std::uint32_t vcpu_id) {
    std::erase_if(entries, [](const kvm_cpuid_entry2& e) { return e.function >= 0x40000000 && e.function < 0x50000000; });
    auto leaf = [&](std::uint32_t fn, std::uint32_t a, std::uint32_t b, std::uint32_t c, std::uint32_t d) {
        kvm_cpuid_entry2 e{};
        e.function = fn;
        e.eax = a;
        e.ebx = b;
        e.ecx = c;
        e.edx = d;
        entries.push_back(e);
    };
    constexpr std::uint32_t base = 0x40000000;
    leaf(base, base + 4, 0x566e6558, 0x65584d4d, 0x4d4d566e);  // "XenV" "MMXe" "nVMM"
    leaf(base + 1, (4u << 16) | 17u, 0, 0, 0);                // Xen 4.17
    leaf(base + 2, 1, 0x40000000, 0, 0);                       // one hypercall page, its MSR
    leaf(base + 3, 0, 0, 0, 0);                                // no pvclock
    leaf(base + 4, (1u << 3) | (1u << 6), vcpu_id, 0, 0);     // VCPU_ID_PRESENT | UPCALL_VECTOR
    for (auto& e : entries)
        if (e.function == 1) e.ecx |= 1u << 31;
    return entries;
}

}  // namespace hypervisor
