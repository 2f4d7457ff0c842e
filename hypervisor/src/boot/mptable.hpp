// Intel MultiProcessor Specification 1.4 tables: how a guest without ACPI finds its CPUs,
// its I/O APIC and its interrupt wiring.
#pragma once

#include <cstdint>
#include <vector>

#include "common/guest_memory.hpp"

namespace hypervisor {

// Builds the floating pointer + configuration table for vcpu_count CPUs (APIC ids 0..n-1,
// CPU 0 the bootstrap processor), the I/O APIC (id = vcpu_count) and ISA IRQs 0..15 wired
// to the same I/O APIC pins. Returns the bytes to place at `base`; the pointer comes first.
[[nodiscard]] std::vector<std::uint8_t> build_mptable(std::uint32_t base, std::uint32_t vcpu_count);

// Writes the table at layout::kMpTable and a copy of the floating pointer in the BIOS area.
common::Status write_mptable(const common::GuestMemory& mem, std::uint32_t vcpu_count);

// Largest vCPU count whose table fits in the last KiB of base memory.
inline constexpr std::uint32_t kMaxMpCpus = 32;

}  // namespace hypervisor
