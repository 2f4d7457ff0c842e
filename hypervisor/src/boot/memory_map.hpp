// Guest RAM regions and the E820 map that describes them. Pure.
#pragma once

#include <cstdint>
#include <vector>

#include "common/guest_memory.hpp"

namespace hypervisor {

struct E820Entry {
    std::uint64_t addr;
    std::uint64_t size;
    std::uint32_t type;  // 1 RAM, 2 reserved
};
inline constexpr std::uint32_t kE820Ram = 1;
inline constexpr std::uint32_t kE820Reserved = 2;

// RAM below the PCI hole, the rest above 4 GiB. ram_bytes must be a multiple of 4 KiB.
std::vector<common::MemoryRegion> ram_regions(std::uint64_t ram_bytes);

// The E820 map for those regions: base memory, reserved MP table and BIOS area, high RAM.
// Other regions by where they lie: between the I/O APIC and 4 GiB (the Xen special area) they
// are reserved; inside the PCI MMIO window (memory behind a BAR) they are left out.
std::vector<E820Entry> e820_map(const std::vector<common::MemoryRegion>& regions);

}  // namespace hypervisor
