// blkback's pure parts: shared-ring index arithmetic (wrap at 2^32, event-index notification)
// and the checks on one blkif request.
#include <doctest/doctest.h>

#include <vector>

#include "xen_model/blkback/blkif.hpp"
#include "xen_model/blkback/ring.hpp"

using namespace xen_model;
using namespace xen_model::blkback;

TEST_CASE("ring: index arithmetic wraps at 2^32") {
    CHECK(ring::unconsumed(5, 3) == 2);
    CHECK(ring::unconsumed(2, 0xfffffffe) == 4);
    CHECK_FALSE(ring::prod_overflow(0xfffffff0u + 32, 0xfffffff0u, 32));  // exactly full, wrapped
    CHECK(ring::prod_overflow(0xfffffff0u + 33, 0xfffffff0u, 32));
    CHECK(ring::prod_overflow(0xfffffff0u - 1, 0xfffffff0u, 32));  // behind the responses: bogus
    CHECK_FALSE(ring::prod_bogus(10, 10, 3, 32));
    CHECK_FALSE(ring::prod_bogus(12, 10, 3, 32));
    CHECK(ring::prod_bogus(5, 10, 3, 32));   // moved back behind consumed requests
    CHECK(ring::prod_bogus(36, 10, 3, 32));  // too far ahead
    CHECK_FALSE(ring::prod_bogus(2, 0xfffffffeu, 0xfffffff0u, 32));
        CHECK(ring::cons_overflow(32, 0, 32));
    CHECK_FALSE(ring::cons_overflow(31, 0, 32));
    CHECK(ring::cons_overflow(0x10u, 0xfffffff0u, 32));
}

TEST_CASE("ring: notify only when rsp_event lies in what was just pushed") {
    CHECK(ring::need_notify(0, 1, 1));       // the frontend waits for the first response
    CHECK_FALSE(ring::need_notify(1, 2, 1)); // it asked for 1, which was already pushed earlier
    CHECK(ring::need_notify(1, 5, 3));
    CHECK_FALSE(ring::need_notify(1, 5, 6)); // wants to hear about the 6th only
    CHECK(ring::need_notify(1, 5, 5));
    CHECK_FALSE(ring::need_notify(5, 5, 5)); // nothing pushed
    // Across the wrap.
    CHECK(ring::need_notify(0xfffffffeu, 2, 0xffffffffu));
    CHECK(ring::need_notify(0xfffffffeu, 2, 1));
    CHECK_FALSE(ring::need_notify(0xfffffffeu, 2, 3));
}

TEST_CASE("ring: BackRing over a page (final check and push)") {
    alignas(4096) static std::byte page[4096];
    std::fill(std::begin(page), std::end(page), std::byte{0});
    auto* sring = reinterpret_cast<abi::SringHeader*>(page);
    sring->req_event = 1;
    sring->rsp_event = 1;
    ring::BlkifBackRing r{std::span<std::byte>(page)};
    CHECK_FALSE(r.final_check_for_requests());
    CHECK(sring->req_event == 1);  // req_cons + 1
    abi::BlkifRequest req{};
    req.id = 77;
    std::memcpy(page + 64 + 0 * 112, &req, sizeof req);
    sring->req_prod = 1;
    CHECK(r.final_check_for_requests());
    CHECK(r.copy_request(r.req_cons).id == 77);
    ++r.req_cons;
    r.put_response(abi::BlkifResponse{77, 0, 0, 0, 0});
    CHECK(r.push_responses_and_check_notify());  // rsp_event 1 is in [0, 1)
    CHECK(sring->rsp_prod == 1);
    r.put_response(abi::BlkifResponse{78, 0, 0, 0, 0});
    CHECK_FALSE(r.push_responses_and_check_notify());  // the frontend did not re-arm
    sring->rsp_event = 3;
    r.put_response(abi::BlkifResponse{79, 0, 0, 0, 0});
    CHECK(r.push_responses_and_check_notify());
    // Slot 32 is slot 0 again.
    r.rsp_prod_pvt = 32;
    r.put_response(abi::BlkifResponse{99, 0, 0, 0, 0});
    abi::BlkifResponse back;
    std::memcpy(&back, page + 64, sizeof back);
    CHECK(back.id == 99);
}

namespace {
abi::BlkifRequest rw(std::uint8_t op, std::uint64_t sector, std::vector<std::pair<std::uint8_t, std::uint8_t>> segs) {
    abi::BlkifRequest r{};
    r.operation = op;
    r.id = 0x1234;
    r.sector_number = sector;
    r.nr_segments = static_cast<std::uint8_t>(segs.size());
    for (std::size_t i = 0; i < segs.size() && i < abi::kBlkifMaxSegments; ++i) {
        r.seg[i] = abi::BlkifSegment{static_cast<std::uint32_t>(100 + i), segs[i].first, segs[i].second, 0};
    }
    return r;
}
constexpr std::uint64_t kDisk = 2048;  // 1 MiB
}  // namespace

TEST_CASE("blkif: good requests") {
    auto c = check_request(rw(abi::kBlkifOpRead, 8, {{0, 7}, {2, 3}}), kDisk);
    REQUIRE(c.has_value());
    CHECK(c->op == BlkOp::Read);
    CHECK(c->writes_guest());
    CHECK(c->offset == 8 * 512);
    CHECK(c->bytes == (8 + 2) * 512);
    CHECK(c->nr_segments == 2);
    CHECK(c->seg[1].offset == 1024);
    CHECK(c->seg[1].length == 1024);
    CHECK(c->seg[1].gref == 101);

    auto w = check_request(rw(abi::kBlkifOpWrite, kDisk - 8, {{0, 7}}), kDisk);  // the last page
    REQUIRE(w.has_value());
    CHECK_FALSE(w->writes_guest());

    auto f = check_request(rw(abi::kBlkifOpFlushDiskcache, 0xffffffffffffull, {}), kDisk);  // sector ignored
    REQUIRE(f.has_value());
    CHECK(f->op == BlkOp::Flush);
    CHECK_FALSE(f->has_data());
    auto b = check_request(rw(abi::kBlkifOpWriteBarrier, 0, {{0, 0}}), kDisk);
    REQUIRE(b.has_value());
    CHECK(b->op == BlkOp::Flush);
    CHECK(b->has_data());

    auto u = check_request(rw(abi::kBlkifOpDiscard, 0, {}), kDisk);
    REQUIRE(u.has_value());
    CHECK(u->op == BlkOp::Unsupported);
    CHECK(check_request(rw(abi::kBlkifOpIndirect, 0, {}), kDisk)->op == BlkOp::Unsupported);
    CHECK(check_request(rw(200, 0, {}), kDisk)->op == BlkOp::Unsupported);
    auto eleven = check_request(rw(abi::kBlkifOpWrite, 0, std::vector<std::pair<std::uint8_t, std::uint8_t>>(11, {0, 7})), kDisk);
    REQUIRE(eleven.has_value());
    CHECK(eleven->bytes == 11 * 4096);
}

TEST_CASE("blkif: bad requests are errors") {
    CHECK_FALSE(check_request(rw(abi::kBlkifOpRead, 0, {}), kDisk).has_value());  // no segments
    auto twelve = rw(abi::kBlkifOpRead, 0, {{0, 7}});
    twelve.nr_segments = 12;
    CHECK_FALSE(check_request(twelve, kDisk).has_value());
    twelve.nr_segments = 255;
    CHECK_FALSE(check_request(twelve, kDisk).has_value());
    CHECK_FALSE(check_request(rw(abi::kBlkifOpRead, 0, {{3, 2}}), kDisk).has_value());  // first > last
    CHECK_FALSE(check_request(rw(abi::kBlkifOpRead, 0, {{0, 8}}), kDisk).has_value());  // past the page
    CHECK_FALSE(check_request(rw(abi::kBlkifOpWrite, kDisk - 7, {{0, 7}}), kDisk).has_value());
    CHECK_FALSE(check_request(rw(abi::kBlkifOpWrite, kDisk, {{0, 0}}), kDisk).has_value());
    CHECK_FALSE(check_request(rw(abi::kBlkifOpWrite, ~0ull, {{0, 0}}), kDisk).has_value());  // would wrap
    CHECK_FALSE(check_request(rw(abi::kBlkifOpWrite, ~0ull - 2, {{0, 7}}), ~0ull).has_value());
    auto e = check_request(rw(abi::kBlkifOpWriteBarrier, kDisk, {{0, 7}}), kDisk);  // flush with data past the end
    REQUIRE_FALSE(e.has_value());
    CHECK(e.error().kind == common::ErrorKind::GuestFault);
}
