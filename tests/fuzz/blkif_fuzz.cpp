// Fuzzes blkback's guest-facing parsing: the blkif request checks, and a ring page served the way
// a Vbd serves it (producer index check, copy, check, respond, push), without a disk.
//
// Input: 8 bytes of disk size in sectors, then a 4096-byte ring page (shorter input is padded
// with zeros), then the backend's starting indices (8 bytes).
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "xen_model/blkback/blkif.hpp"
#include "xen_model/blkback/ring.hpp"

using namespace xen_model;
using namespace xen_model::blkback;

namespace {

void check_invariants(const CheckedRequest& c, std::uint64_t disk_sectors) {
    if (c.op == BlkOp::Unsupported) return;
    if (c.nr_segments > abi::kBlkifMaxSegments) __builtin_trap();
    if (c.nr_segments == 0) {
        if (c.op != BlkOp::Flush || c.bytes != 0) __builtin_trap();
        return;
    }
    std::uint64_t total = 0;
    for (std::uint32_t i = 0; i < c.nr_segments; ++i) {
        const auto& s = c.seg[i];
        if (s.length == 0 || s.length % abi::kSectorSize || s.offset % abi::kSectorSize) __builtin_trap();
        if (s.offset + s.length > abi::kPageSize) __builtin_trap();
        total += s.length;
    }
    if (total != c.bytes) __builtin_trap();
    if (c.offset % abi::kSectorSize) __builtin_trap();
    const std::uint64_t disk_bytes = disk_sectors * abi::kSectorSize;  // fuzz sizes are masked below
    if (c.offset > disk_bytes || c.bytes > disk_bytes - c.offset) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    std::uint64_t disk_sectors = 0;
    std::memcpy(&disk_sectors, data, std::min<std::size_t>(size, 8));
    disk_sectors &= (1ull << 54) - 1;  // a disk of at most 2^63 bytes
    const std::uint8_t* rest = data + std::min<std::size_t>(size, 8);
    std::size_t left = size - std::min<std::size_t>(size, 8);

    alignas(4096) static std::byte page[4096];
    std::memset(page, 0, sizeof page);
    const std::size_t n = std::min<std::size_t>(left, sizeof page);
    std::memcpy(page, rest, n);
    rest += n;
    left -= n;

    // Every slot as a request on its own.
    for (std::uint32_t i = 0; i < abi::kBlkifRingEntries; ++i) {
        abi::BlkifRequest r;
        std::memcpy(&r, page + 64 + i * 112, sizeof r);
        auto c = check_request(r, disk_sectors);
        if (c) check_invariants(*c, disk_sectors);
    }

    // Served as a Vbd would, from fuzzed starting indices (a reconnect resets them to 0; here
    // any value must be safe too).
    ring::BlkifBackRing ring{std::span<std::byte>(page)};
    std::uint32_t start[2] = {0, 0};
    std::memcpy(start, rest, std::min<std::size_t>(left, sizeof start));
    ring.rsp_prod_pvt = start[0];
    ring.req_cons = start[0] + (start[1] % (abi::kBlkifRingEntries + 1));
    for (int round = 0; round < 4; ++round) {
        const std::uint32_t rp = ring.req_prod();
        if (ring::prod_bogus(rp, ring.req_cons, ring.rsp_prod_pvt, abi::kBlkifRingEntries)) break;
        std::uint32_t budget = abi::kBlkifRingEntries + 1;
        while (ring.req_cons != rp && !ring::cons_overflow(ring.req_cons, ring.rsp_prod_pvt, abi::kBlkifRingEntries)) {
            if (budget-- == 0) __builtin_trap();  // the ring bound must stop the loop
            const abi::BlkifRequest r = ring.copy_request(ring.req_cons);
            ++ring.req_cons;
            auto c = check_request(r, disk_sectors);
            const std::int16_t st = !c ? abi::kBlkifRspError
                                       : c->op == BlkOp::Unsupported ? abi::kBlkifRspEopnotsupp : abi::kBlkifRspOkay;
            ring.put_response(abi::BlkifResponse{r.id, r.operation, 0, st, 0});
        }
        (void)ring.push_responses_and_check_notify();
        if (!ring.final_check_for_requests()) break;
    }
    return 0;
}
