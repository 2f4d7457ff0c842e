#include "nvme/prp.hpp"

#include <algorithm>
#include <array>
#include <bit>
#include <cstring>

namespace nitro_card::nvme {

namespace {

constexpr std::uint64_t kPrpEntrySize = 8;

// Collects checked segments, merging a page onto the previous segment when it continues it in
// both guest and host address space (two guest-adjacent pages may sit in different regions).
class SegmentBuilder {
public:
    SegmentBuilder(const Translator& mem, SegmentList& out) : mem_(mem), out_(out) {}

    [[nodiscard]] bool add(std::uint64_t gpa, std::uint64_t len) {
        auto view = mem_.slice(common::GuestAddr(gpa), len);
        if (!view || view->size() != len) return false;
        if (!out_.empty()) {
            auto& last = out_.back();
            const bool guest_next = last.gpa.value() + last.host.size() == gpa;
            const bool host_next = last.host.data() + last.host.size() == view->data();
            if (guest_next && host_next) {
                last.host = std::span<std::byte>(last.host.data(), last.host.size() + len);
                return true;
            }
        }
        out_.push_back(Segment{common::GuestAddr(gpa), *view});
        return true;
    }

private:
    const Translator& mem_;
    SegmentList& out_;
};

}  // namespace

std::string_view describe(PrpError e) {
    switch (e) {
        case PrpError::OffsetInvalid:
            return "PRP entry with an invalid offset";
        case PrpError::Unmapped:
            return "PRP points outside guest memory";
        case PrpError::TooLong:
            return "transfer longer than the maximum";
        case PrpError::ListLoop:
            return "PRP list chain revisits a list page";
        case PrpError::BadLimits:
            return "invalid page size";
    }
    return "unknown PRP error";
}

std::expected<SegmentList, PrpError> map_prps(std::uint64_t prp1, std::uint64_t prp2,
                                              std::uint64_t length, const PrpLimits& limits,
                                              const Translator& mem) {
    const std::uint64_t page = limits.page_size;
    if (page < 4096 || !std::has_single_bit(page)) return std::unexpected(PrpError::BadLimits);
    if (length == 0) return SegmentList{};
    if (length > limits.max_transfer) return std::unexpected(PrpError::TooLong);
    const std::uint64_t offset_mask = page - 1;

    // NVMe 2.0 §4.1.1: bits 1:0 of a PRP entry are 00b; a controller may report a set bit as
    // PRP Offset Invalid, which is kinder than silently ignoring it.
    if (prp1 & 0x3) return std::unexpected(PrpError::OffsetInvalid);

    SegmentList out;
    out.reserve(std::min<std::uint64_t>(length / page + 2, 256));
    SegmentBuilder segments(mem, out);

    const std::uint64_t first = std::min(length, page - (prp1 & offset_mask));
    if (!segments.add(prp1, first)) return std::unexpected(PrpError::Unmapped);
    std::uint64_t remaining = length - first;
    if (remaining == 0) return out;

    if (remaining <= page) {
        // Exactly two pages: PRP2 is the second data page, so it has no offset.
        if (prp2 & offset_mask) return std::unexpected(PrpError::OffsetInvalid);
        if (!segments.add(prp2, remaining)) return std::unexpected(PrpError::Unmapped);
        return out;
    }

    // PRP2 is a PRP list pointer. It may start inside a page (Linux hands out 256-byte lists
    // for short transfers), but entries are 8 bytes, so it must be qword aligned: a list
    // running up to the page end then never has an entry straddling the page boundary.
    if (prp2 & (kPrpEntrySize - 1)) return std::unexpected(PrpError::OffsetInvalid);

    std::array<std::uint64_t, kMaxPrpListPages> visited{};
    unsigned list_pages = 0;
    std::uint64_t list = prp2;
    while (remaining > 0) {
        const std::uint64_t list_page = list & ~offset_mask;
        if (std::find(visited.begin(), visited.begin() + list_pages, list_page) !=
            visited.begin() + list_pages)
            return std::unexpected(PrpError::ListLoop);
        if (list_pages == kMaxPrpListPages) return std::unexpected(PrpError::TooLong);
        visited[list_pages++] = list_page;

        const std::uint64_t slots = (page - (list & offset_mask)) / kPrpEntrySize;
        const std::uint64_t needed = (remaining + page - 1) / page;
        const bool chains = needed > slots;  // then the last slot points to the next list page
        const std::uint64_t reads = std::min(slots, needed);

        // Only the entries this transfer needs are read, so a short list that ends right
        // before a hole is fine.
        auto view = mem.slice(common::GuestAddr(list), reads * kPrpEntrySize);
        if (!view || view->size() != reads * kPrpEntrySize)
            return std::unexpected(PrpError::Unmapped);

        for (std::uint64_t i = 0; i < reads; ++i) {
            // GUEST-SHARED: the guest can rewrite the list while we walk it; read each entry
            // exactly once into a local and use only the local.
            std::uint64_t entry;
            std::memcpy(&entry, view->data() + i * kPrpEntrySize, sizeof entry);
            if (entry & offset_mask) return std::unexpected(PrpError::OffsetInvalid);
            if (chains && i == slots - 1) {
                list = entry;
                break;
            }
            const std::uint64_t chunk = std::min(remaining, page);
            if (!segments.add(entry, chunk)) return std::unexpected(PrpError::Unmapped);
            remaining -= chunk;
        }
    }
    return out;
}

}  // namespace nitro_card::nvme
