#include "xen/page_walk.hpp"

namespace hypervisor::xen {

namespace {
constexpr std::uint64_t kCr0Pg = 1ull << 31, kCr4La57 = 1ull << 12, kEferLma = 1ull << 10;
constexpr std::uint64_t kPresent = 1, kLarge = 1ull << 7;
constexpr std::uint64_t kAddrMask = 0x000ffffffffff000ull;  // bits 51:12
}  // namespace

WalkResult walk_page_tables(const common::GuestMemory& mem, const PagingState& st, std::uint64_t gva) {
    if (!(st.cr0 & kCr0Pg)) return {true, gva};
    if (!(st.efer & kEferLma)) return {false, std::nullopt};
    int levels = (st.cr4 & kCr4La57) ? 5 : 4;
    std::uint64_t table = st.cr3 & kAddrMask;
    for (int level = levels; level >= 1; --level) {
        unsigned shift = 12 + 9 * static_cast<unsigned>(level - 1);
        std::uint64_t index = (gva >> shift) & 0x1ff;
        auto entry = mem.read_obj<std::uint64_t>(common::GuestAddr(table + index * 8));
        if (!entry || !(*entry & kPresent)) return {true, std::nullopt};
        std::uint64_t e = *entry;
        if (level == 1 || ((level == 2 || level == 3) && (e & kLarge))) {
            std::uint64_t page_mask = (1ull << shift) - 1;
            return {true, (e & kAddrMask & ~page_mask) | (gva & page_mask)};
        }
        table = e & kAddrMask;
    }
    return {true, std::nullopt};
}

}  // namespace hypervisor::xen
