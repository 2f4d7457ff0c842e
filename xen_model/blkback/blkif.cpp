#include "xen_model/blkback/blkif.hpp"

#include <fmt/format.h>

namespace xen_model::blkback {

using common::Error;
using common::ErrorKind;
using common::fail;

namespace {
Error bad(const abi::BlkifRequest& r, std::string why) {
    return Error{ErrorKind::GuestFault, fmt::format("blkif request {:#x} (op {}): {}", r.id, r.operation, why), 0};
}
}  // namespace

common::Result<CheckedRequest> check_request(const abi::BlkifRequest& req, std::uint64_t disk_sectors) {
    CheckedRequest c;
    c.operation = req.operation;
    c.id = req.id;
    switch (req.operation) {
        case abi::kBlkifOpRead: c.op = BlkOp::Read; break;
        case abi::kBlkifOpWrite: c.op = BlkOp::Write; break;
        case abi::kBlkifOpFlushDiskcache:
        case abi::kBlkifOpWriteBarrier: c.op = BlkOp::Flush; break;
        default: return c;  // EOPNOTSUPP
    }
    const std::uint32_t n = req.nr_segments;
    if (n > abi::kBlkifMaxSegments) return fail(bad(req, fmt::format("{} segments (at most {})", n, abi::kBlkifMaxSegments)));
    if (n == 0) {
        if (c.op != BlkOp::Flush) return fail(bad(req, "no segments"));
        return c;
    }
    std::uint64_t sectors = 0;
    for (std::uint32_t i = 0; i < n; ++i) {
        const abi::BlkifSegment& s = req.seg[i];
        if (s.first_sect > s.last_sect || s.last_sect >= abi::kSectorsPerPage) {
            return fail(bad(req, fmt::format("segment {}: sectors {}..{} of a page of {}", i, s.first_sect,
                                             s.last_sect, abi::kSectorsPerPage)));
        }
        const std::uint32_t nsec = std::uint32_t{s.last_sect} - s.first_sect + 1;
        c.seg[i] = BlkSegment{s.gref, std::uint32_t{s.first_sect} * abi::kSectorSize, nsec * abi::kSectorSize};
        sectors += nsec;
    }
    // sector_number is guest-chosen: compare without forming sector_number + sectors.
    if (req.sector_number > disk_sectors || sectors > disk_sectors - req.sector_number) {
        return fail(bad(req, fmt::format("sectors {:#x}+{} past the disk end {:#x}", req.sector_number, sectors,
                                         disk_sectors)));
    }
    c.nr_segments = n;
    c.offset = req.sector_number * abi::kSectorSize;
    c.bytes = sectors * abi::kSectorSize;
    return c;
}

}  // namespace xen_model::blkback
