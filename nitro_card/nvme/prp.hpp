// The PRP walker: turns a command's PRP1/PRP2 and a transfer length into checked host views of
// guest memory (NVMe 2.0 §4.1.1 "Physical Region Page Entry and List").
//
// It is a pure function over a Translator, so unit tests pass fake memory, fuzzers call it
// directly and the card passes its GuestMemory. Everything the walk reads from the guest is
// hostile: each PRP list entry is copied once into a local before it is checked and used, and
// the walk is bounded by the transfer length, a maximum transfer size and a list-page budget.
#pragma once

#include <cstddef>
#include <cstdint>
#include <expected>
#include <span>
#include <string_view>
#include <vector>

#include "common/error.hpp"
#include "common/guest_memory.hpp"
#include "nvme/spec.hpp"

namespace nitro_card::nvme {

// What the walker needs from guest memory: a host view of [gpa, gpa + len) that exists only if
// the whole range is mapped (no wrap-around, no straddling of holes).
class Translator {
public:
    virtual ~Translator() = default;
    [[nodiscard]] virtual common::Result<std::span<std::byte>> slice(common::GuestAddr gpa,
                                                                     std::uint64_t len) const = 0;
};

// The card's translator: guest RAM as the card mapped it. `mem` must outlive it.
class GuestMemoryTranslator final : public Translator {
public:
    explicit GuestMemoryTranslator(const common::GuestMemory& mem) : mem_(mem) {}
    [[nodiscard]] common::Result<std::span<std::byte>> slice(common::GuestAddr gpa,
                                                             std::uint64_t len) const override {
        return mem_.slice(gpa, len);
    }

private:
    const common::GuestMemory& mem_;
};

// One guest-contiguous, host-contiguous piece of the transfer, in transfer order.
struct Segment {
    common::GuestAddr gpa;
    std::span<std::byte> host;  // the checked view of [gpa, gpa + host.size())
};
using SegmentList = std::vector<Segment>;

// Why a PRP walk failed. to_status() gives the completion status.
enum class PrpError : std::uint8_t {
    OffsetInvalid,  // PRP1 not dword aligned, a list pointer not qword aligned, or a data
                    // entry / chained list pointer with a non-zero page offset
    Unmapped,       // a data page or list page is not guest RAM
    TooLong,        // length over the maximum transfer size, or more list pages than budgeted
    ListLoop,       // a chained list pointer revisits a list page
    BadLimits,      // the host passed a page size that is not a power of two >= 4 KiB
};

[[nodiscard]] constexpr StatusCode to_status(PrpError e) {
    switch (e) {
        case PrpError::OffsetInvalid:
            return StatusCode::PrpOffsetInvalid;
        case PrpError::Unmapped:
            return StatusCode::DataTransferError;
        case PrpError::TooLong:
            return StatusCode::InvalidField;
        case PrpError::ListLoop:
            return StatusCode::DataTransferError;
        case PrpError::BadLimits:
            return StatusCode::InternalError;
    }
    return StatusCode::InternalError;
}

[[nodiscard]] std::string_view describe(PrpError e);

struct PrpLimits {
    std::uint64_t page_size = 4096;           // CC.MPS
    std::uint64_t max_transfer = 512 * 1024;  // what Identify MDTS advertises
};

// List pages one walk may visit. At 4 KiB pages each full list page carries 511 data entries,
// so this covers ~127 MiB, far above any MDTS the card advertises; hitting it is TooLong.
inline constexpr unsigned kMaxPrpListPages = 64;

// Maps `length` bytes described by PRP1/PRP2 (NVMe 2.0 §4.1.1):
//  * PRP1 points at the first data byte; it may carry a dword-aligned page offset.
//  * If the rest fits in one page, PRP2 is that page (offset 0).
//  * Otherwise PRP2 points at a PRP list (qword aligned, may start inside a page). Entries are
//    page addresses with offset 0; when more entries are needed than the list page holds, its
//    last entry points to the next list page (offset 0).
// Length 0 maps nothing and reads neither pointer. Guest-contiguous pages that are also
// host-contiguous come back merged. Never reads guest memory past what the length needs.
[[nodiscard]] std::expected<SegmentList, PrpError> map_prps(std::uint64_t prp1, std::uint64_t prp2,
                                                            std::uint64_t length,
                                                            const PrpLimits& limits,
                                                            const Translator& mem);

}  // namespace nitro_card::nvme
