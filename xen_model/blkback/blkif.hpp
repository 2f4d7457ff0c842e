// Checking one blkif request (io/blkif.h) copied out of the ring: a pure function, fuzzed.
//
// Rules (the Linux blkback ones, for what we advertise):
//   READ, WRITE: 1..11 segments; each segment first_sect <= last_sect <= 7 of its page;
//     the segments form one contiguous range of the disk starting at sector_number, which
//     must lie inside the disk.
//   FLUSH_DISKCACHE and WRITE_BARRIER: a flush; with segments the data is written first (the
//     same checks as WRITE), then flushed. 0 segments: sector_number is ignored.
//   any other operation: answered EOPNOTSUPP (not an error of the ring).
#pragma once

#include <array>
#include <cstdint>

#include "common/error.hpp"
#include "xen_model/abi/xen_abi.hpp"

namespace xen_model::blkback {

enum class BlkOp : std::uint8_t { Read, Write, Flush, Unsupported };

struct BlkSegment {
    std::uint32_t gref = 0;
    std::uint32_t offset = 0;  // bytes into the granted page
    std::uint32_t length = 0;  // bytes, a multiple of 512
};

struct CheckedRequest {
    BlkOp op = BlkOp::Unsupported;
    std::uint8_t operation = 0;  // as the guest wrote it, echoed in the response
    std::uint64_t id = 0;
    std::uint64_t offset = 0;    // bytes into the disk
    std::uint64_t bytes = 0;     // total of the segments
    std::uint32_t nr_segments = 0;
    std::array<BlkSegment, abi::kBlkifMaxSegments> seg{};
    // For Flush: whether dom0 writes data into the disk before flushing (segments present).
    [[nodiscard]] bool has_data() const noexcept { return nr_segments != 0; }
    // dom0 writes guest pages only for a READ.
    [[nodiscard]] bool writes_guest() const noexcept { return op == BlkOp::Read; }
};

// Checks req (already copied out of guest memory) for a disk of disk_sectors 512-byte sectors.
// An error (kind GuestFault) means an ERROR response; id and operation of the answer come from
// the request itself, so the caller keeps them.
[[nodiscard]] common::Result<CheckedRequest> check_request(const abi::BlkifRequest& req, std::uint64_t disk_sectors);

}  // namespace xen_model::blkback
