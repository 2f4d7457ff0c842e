#include "boot/memory_map.hpp"

#include <algorithm>

#include "boot/layout.hpp"

namespace hypervisor {

std::vector<common::MemoryRegion> ram_regions(std::uint64_t ram_bytes) {
    std::vector<common::MemoryRegion> r;
    std::uint64_t low = std::min(ram_bytes, layout::kMmioHoleStart);
    r.push_back({common::GuestAddr(0), low, 0});
    if (ram_bytes > low) r.push_back({common::GuestAddr(layout::k4G), ram_bytes - low, low});
    return r;
}

std::vector<E820Entry> e820_map(const std::vector<common::MemoryRegion>& regions) {
    std::vector<E820Entry> m;
    for (const auto& reg : regions) {
        std::uint64_t b = reg.base.value(), e = b + reg.size;
        if (b == 0) {
            m.push_back({0, layout::kMpTable, kE820Ram});
            m.push_back({layout::kMpTable, layout::kEbdaEnd - layout::kMpTable, kE820Reserved});
            m.push_back({layout::kAcpi, layout::kHighMem - layout::kAcpi, kE820Reserved});
            if (e > layout::kHighMem) m.push_back({layout::kHighMem, e - layout::kHighMem, kE820Ram});
        } else if (b >= layout::kPciMmioEnd && b < layout::k4G) {
            m.push_back({b, e - b, kE820Reserved});  // firmware-style pages (the Xen special area)
        } else if (b >= layout::kMmioHoleStart && b < layout::kPciMmioEnd) {
            continue;  // memory behind a PCI BAR (Xen grant frames): the BAR describes it
        } else {
            m.push_back({b, e - b, kE820Ram});
        }
    }
    return m;
}

}  // namespace hypervisor
