// The real xen-dom0 driven by a fake vmm and a hand-written guest (tests/integration/dom0_fixture):
// attach, xenstore nodes, the vbd handshake, blkif I/O against the backing file, several
// domains, hostile guests and vmms, and the process lifecycle.
#include <doctest/doctest.h>

#include <signal.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <thread>

#include "dom0_fixture.hpp"

using namespace dom0_it;
using namespace xen_model;
using common::GuestAddr;

namespace {

constexpr std::uint64_t kData = 0x200000;   // data pages: kData + i * 4096, refs 16 + i
constexpr std::uint64_t kCanary = 0x1ff000; // the page before them
constexpr std::uint64_t kCanary2 = kData + 16 * 4096;  // and after them
constexpr std::uint32_t kRef0 = 16;

std::vector<std::byte> pattern(std::size_t n, std::uint8_t seed) {
    std::vector<std::byte> v(n);
    for (std::size_t i = 0; i < n; ++i) v[i] = std::byte(static_cast<std::uint8_t>(seed + i * 7 + (i >> 9)));
    return v;
}

std::vector<std::byte> guest_bytes(Guest& g, std::uint64_t gpa, std::size_t n) {
    std::vector<std::byte> v(n);
    REQUIRE(g.mem().read(GuestAddr(gpa), v));
    return v;
}

void fill_canaries(Guest& g) {
    std::vector<std::byte> cc(4096, std::byte{0xcc});
    REQUIRE(g.mem().write(GuestAddr(kCanary), cc));
    REQUIRE(g.mem().write(GuestAddr(kCanary2), cc));
}

bool canaries_intact(Guest& g) {
    auto a = guest_bytes(g, kCanary, 4096), b = guest_bytes(g, kCanary2, 4096);
    auto cc = [](std::byte x) { return x == std::byte{0xcc}; };
    return std::all_of(a.begin(), a.end(), cc) && std::all_of(b.begin(), b.end(), cc);
}

// A connected guest with one 4 MiB volume in dom0's dir.
struct Connected {
    Guest g;
    std::string vol;
    Front front{g};
    Connected(Dom0& d, const std::string& volname, const std::string& opts = "size=4M,iops=unlimited,mbps=unlimited") {
        vol = d.dir().file(volname);
        auto r = g.attach(d.socket(), {vol + "," + opts});
        REQUIRE(r.status == 0);
        std::string why;
        REQUIRE_MESSAGE(front.connect(&why), why, "\n", d.log());
        for (std::uint32_t i = 0; i < 16; ++i) g.grant(kRef0 + i, kData + i * 4096ull);
        fill_canaries(g);
    }
};

}  // namespace

TEST_CASE("dom0: attach creates the domain's xenstore nodes") {
    Dom0 d;
    Guest g;
    auto r = g.attach(d.socket(), {d.dir().file("a.img") + ",size=4M", d.dir().file("b.img") + ",size=1M"}, "i-nodes");
    REQUIRE(r.status == 0);
    CHECK(r.domid == 1);
    const std::string p = fmt::format("/local/domain/{}", r.domid);
    CHECK(g.xs_read(p + "/domid") == "1");
    CHECK(g.xs_read(p + "/name") == "i-nodes");
    CHECK(g.xs_read(p + "/store/port") == std::to_string(kStorePort));
    CHECK(g.xs_read(p + "/store/ring-ref") == std::to_string(abi::kXenstorePfn));
    CHECK(g.xs_read(p + "/control/shutdown") == "");
    CHECK_FALSE(g.xs_read(p + "/memory/target").has_value());
    // The guest may read but not change what dom0 says about it; its own directories it may.
    CHECK_FALSE(g.xs_write(p + "/domid", "0"));
    CHECK_FALSE(g.xs_write(p + "/store/ring-ref", "1"));
    CHECK(g.xs_read(p + "/domid") == "1");
    CHECK(g.xs_write(p + "/data/x", "y"));
    CHECK(g.xs_write(p + "/control/shutdown", "poweroff"));
    CHECK(g.xs_read(p + "/device/vbd/51712/backend") == "/local/domain/0/backend/vbd/1/51712");
    CHECK(g.xs_read(p + "/device/vbd/51728/virtual-device") == "51728");
    CHECK(g.xs_read(p + "/device/vbd/51712/state") == "1");
    const std::string be = "/local/domain/0/backend/vbd/1/51712";
    CHECK(g.xs_read(be + "/sectors") == std::to_string(4 * kMiB / 512));
    CHECK(g.xs_read(be + "/sector-size") == "512");
    CHECK(g.xs_read(be + "/feature-flush-cache") == "1");
    CHECK(g.xs_read(be + "/state") == "2");
    CHECK(g.xs_read("/local/domain/0/backend/vbd/1/51728/sectors") == std::to_string(kMiB / 512));
    CHECK(g.xs_read(be + "/frontend") == p + "/device/vbd/51712");
}

TEST_CASE("dom0: READ, WRITE and FLUSH through the ring reach the file and guest memory") {
    Dom0 d;
    Connected c(d, "rw.img");
    auto& g = c.g;
    CHECK(g.grant_flags(Front::kRingRef) == (abi::kGtfPermitAccess | abi::kGtfReading | abi::kGtfWriting));

    // WRITE: page 0 whole, page 1 sectors 2..3 → 10 sectors at sector 8.
    auto data0 = pattern(4096, 1), data1 = pattern(4096, 99);
    REQUIRE(g.mem().write(GuestAddr(kData), data0));
    REQUIRE(g.mem().write(GuestAddr(kData + 4096), data1));
    auto st = c.front.roundtrip(blk_req(abi::kBlkifOpWrite, 1, 8, {{kRef0, 0, 7}, {kRef0 + 1, 2, 3}}));
    REQUIRE(st.has_value());
    CHECK(*st == abi::kBlkifRspOkay);
    auto file = read_file(c.vol, 8 * 512, 5 * 1024);
    REQUIRE(file.size() == 5 * 1024);
    CHECK(std::equal(data0.begin(), data0.end(), file.begin()));
    CHECK(std::equal(data1.begin() + 1024, data1.begin() + 2048, file.begin() + 4096));
    CHECK(g.grant_flags(kRef0) == abi::kGtfPermitAccess);  // released before the response
    CHECK(g.grant_flags(kRef0 + 1) == abi::kGtfPermitAccess);

    // READ it back into pages 2 and 3 (sector offsets inside the pages too).
    std::vector<std::byte> zeros(8192);
    REQUIRE(g.mem().write(GuestAddr(kData + 2 * 4096), zeros));
    st = c.front.roundtrip(blk_req(abi::kBlkifOpRead, 2, 8, {{kRef0 + 2, 0, 7}, {kRef0 + 3, 5, 6}}));
    REQUIRE(st.has_value());
    CHECK(*st == abi::kBlkifRspOkay);
    CHECK(guest_bytes(g, kData + 2 * 4096, 4096) == data0);
    auto back = guest_bytes(g, kData + 3 * 4096, 4096);
    CHECK(std::equal(back.begin() + 5 * 512, back.begin() + 7 * 512, data1.begin() + 1024));
    CHECK(std::all_of(back.begin(), back.begin() + 5 * 512, [](std::byte b) { return b == std::byte{0}; }));
    CHECK(g.grant_flags(kRef0 + 2) == abi::kGtfPermitAccess);

    // FLUSH without data, WRITE_BARRIER with data.
    CHECK(c.front.roundtrip(blk_req(abi::kBlkifOpFlushDiskcache, 3, 0, {})) == abi::kBlkifRspOkay);
    auto data4 = pattern(4096, 42);
    REQUIRE(g.mem().write(GuestAddr(kData + 4 * 4096), data4));
    CHECK(c.front.roundtrip(blk_req(abi::kBlkifOpWriteBarrier, 4, 100, {{kRef0 + 4, 0, 7}})) == abi::kBlkifRspOkay);
    CHECK(read_file(c.vol, 100 * 512, 4096) == data4);
    CHECK(c.front.notifications_seen() >= 1);
    CHECK(canaries_intact(g));

    // A batch of 32 requests at once (the whole ring), one kick.
    for (std::uint32_t i = 0; i < 32; ++i) {
        c.front.post(blk_req(abi::kBlkifOpRead, 100 + i, i * 8, {{kRef0 + (i % 8), 0, 7}}), false);
    }
    c.front.kick();
    std::vector<std::uint64_t> ids;
    for (int i = 0; i < 32; ++i) {
        auto rsp = c.front.wait_response();
        REQUIRE(rsp.has_value());
        CHECK(rsp->status == abi::kBlkifRspOkay);
        ids.push_back(rsp->id);
    }
    std::sort(ids.begin(), ids.end());
    CHECK(ids.front() == 100);
    CHECK(ids.back() == 131);
    CHECK(std::adjacent_find(ids.begin(), ids.end()) == ids.end());
}

TEST_CASE("dom0: two domains at once get their own ids and disks") {
    Dom0 d;
    Connected a(d, "a.img");
    Connected b(d, "b.img");
    CHECK(a.g.domid() != b.g.domid());
    auto da = pattern(4096, 3), db = pattern(4096, 200);
    REQUIRE(a.g.mem().write(GuestAddr(kData), da));
    REQUIRE(b.g.mem().write(GuestAddr(kData), db));
    CHECK(a.front.roundtrip(blk_req(abi::kBlkifOpWrite, 1, 0, {{kRef0, 0, 7}})) == abi::kBlkifRspOkay);
    CHECK(b.front.roundtrip(blk_req(abi::kBlkifOpWrite, 1, 0, {{kRef0, 0, 7}})) == abi::kBlkifRspOkay);
    CHECK(read_file(a.vol, 0, 4096) == da);
    CHECK(read_file(b.vol, 0, 4096) == db);
    // A guest cannot read the other's nodes.
    CHECK_FALSE(a.g.xs_read(fmt::format("/local/domain/{}/name", b.g.domid())).has_value());
    // One goes away; the other keeps working.
    a.g.close_link();
    CHECK(d.wait_log(fmt::format("domain {} ('i-test') detached", a.g.domid())));
    CHECK(b.front.roundtrip(blk_req(abi::kBlkifOpRead, 2, 0, {{kRef0 + 1, 0, 7}})) == abi::kBlkifRspOkay);
    CHECK(guest_bytes(b.g, kData + 4096, 4096) == db);
    // Its per-Vbd counters are in the log.
    CHECK(d.log().find("xvda") != std::string::npos);
}

TEST_CASE("dom0: hostile requests get error responses and touch nothing outside granted pages") {
    Dom0 d;
    Connected c(d, "h.img");
    Connected other(d, "o.img");
    auto& g = c.g;
    const auto before = guest_bytes(g, kData + 8 * 4096, 4096);
    auto status = [&](const abi::BlkifRequest& r) { return c.front.roundtrip(r); };

    // A ref past the grant table, and unused refs.
    CHECK(status(blk_req(abi::kBlkifOpRead, 1, 0, {{kGrantFrames * 512 + 3, 0, 7}})) == abi::kBlkifRspError);
    CHECK(status(blk_req(abi::kBlkifOpRead, 2, 0, {{200, 0, 7}})) == abi::kBlkifRspError);
    // Granted to another domain.
    g.grant(40, kData + 8 * 4096, false, 7);
    CHECK(status(blk_req(abi::kBlkifOpRead, 3, 0, {{40, 0, 7}})) == abi::kBlkifRspError);
    // Read-only grant for a READ (dom0 would write the page); fine for a WRITE.
    g.grant(41, kData + 8 * 4096, true);
    CHECK(status(blk_req(abi::kBlkifOpRead, 4, 0, {{41, 0, 7}})) == abi::kBlkifRspError);
    CHECK(status(blk_req(abi::kBlkifOpWrite, 5, 0, {{41, 0, 7}})) == abi::kBlkifRspOkay);
    // A grant whose frame is the grant table itself, or the xenstore page.
    g.grant(42, kGrantGpa);
    CHECK(status(blk_req(abi::kBlkifOpRead, 6, 0, {{42, 0, 7}})) == abi::kBlkifRspError);
    g.grant(43, kStoreGpa);
    CHECK(status(blk_req(abi::kBlkifOpRead, 7, 0, {{43, 0, 7}})) == abi::kBlkifRspError);
    // A grant whose frame is past RAM.
    g.grant(44, 0x40000000);
    CHECK(status(blk_req(abi::kBlkifOpRead, 8, 0, {{44, 0, 7}})) == abi::kBlkifRspError);
    // A good segment followed by a bad one: nothing is read into the good page.
    std::vector<std::byte> marker(4096, std::byte{0x5a});
    REQUIRE(g.mem().write(GuestAddr(kData + 9 * 4096), marker));
    CHECK(status(blk_req(abi::kBlkifOpRead, 9, 0, {{kRef0 + 9, 0, 7}, {40, 0, 7}})) == abi::kBlkifRspError);
    CHECK(guest_bytes(g, kData + 9 * 4096, 4096) == marker);
    CHECK(g.grant_flags(kRef0 + 9) == abi::kGtfPermitAccess);
    // 12 segments, first > last, last past the page, past the disk.
    auto twelve = blk_req(abi::kBlkifOpRead, 10, 0, {{kRef0, 0, 7}});
    twelve.nr_segments = 12;
    CHECK(status(twelve) == abi::kBlkifRspError);
    CHECK(status(blk_req(abi::kBlkifOpRead, 11, 0, {{kRef0, 5, 4}})) == abi::kBlkifRspError);
    CHECK(status(blk_req(abi::kBlkifOpRead, 12, 0, {{kRef0, 0, 8}})) == abi::kBlkifRspError);
    CHECK(status(blk_req(abi::kBlkifOpRead, 13, 4 * kMiB / 512 - 4, {{kRef0, 0, 7}})) == abi::kBlkifRspError);
    CHECK(status(blk_req(abi::kBlkifOpWrite, 14, ~0ull - 1, {{kRef0, 0, 7}})) == abi::kBlkifRspError);
    // Unknown and unadvertised operations.
    CHECK(status(blk_req(abi::kBlkifOpDiscard, 15, 0, {})) == abi::kBlkifRspEopnotsupp);
    CHECK(status(blk_req(abi::kBlkifOpIndirect, 16, 0, {})) == abi::kBlkifRspEopnotsupp);
    CHECK(status(blk_req(77, 17, 0, {})) == abi::kBlkifRspEopnotsupp);
    CHECK(guest_bytes(g, kData + 8 * 4096, 4096) == before);  // no READ landed in the refused page
    CHECK(canaries_intact(g));
    // Still serving good requests.
    CHECK(status(blk_req(abi::kBlkifOpRead, 18, 0, {{kRef0, 0, 7}})) == abi::kBlkifRspOkay);
    for (std::uint32_t ref : {40u, 41u, 42u, 43u, 44u}) CHECK((g.grant_flags(ref) & (abi::kGtfReading | abi::kGtfWriting)) == 0);

    // A producer index past the ring: logged, that ring stops; the other domain goes on.
    c.front.set_req_prod(1000);
    c.front.kick();
    CHECK(d.wait_log("frontend provided bogus ring requests"));
    CHECK_FALSE(c.front.wait_response(std::chrono::milliseconds(200)).has_value());
    CHECK(canaries_intact(g));
    CHECK(other.front.roundtrip(blk_req(abi::kBlkifOpRead, 1, 0, {{kRef0, 0, 7}})) == abi::kBlkifRspOkay);
}

TEST_CASE("dom0: a frontend without protocol is refused; one that closes and reconnects is served again") {
    Dom0 d;
    Guest g;
    REQUIRE(g.attach(d.socket(), {d.dir().file("p.img") + ",size=1M"}).status == 0);
    Front f(g);
    std::string why;
    CHECK_FALSE(f.connect(&why, ""));
    CHECK(d.wait_log("wrote no protocol"));
    CHECK(g.xs_wait(f.be() + "/state", "5"));

    Dom0 d2;
    Guest g2;
    REQUIRE(g2.attach(d2.socket(), {d2.dir().file("q.img") + ",size=1M"}).status == 0);
    Front f2(g2);
    REQUIRE_MESSAGE(f2.connect(&why), why);
    g2.grant(kRef0, kData);
    CHECK(f2.roundtrip(blk_req(abi::kBlkifOpRead, 1, 0, {{kRef0, 0, 7}})) == abi::kBlkifRspOkay);
    REQUIRE(g2.xs_write(f2.fe() + "/state", "5"));
    CHECK(g2.xs_wait(f2.be() + "/state", "5"));
    // dom0 closes its end of the port.
    auto un = link::recv_message(g2.link(), static_cast<int>(kWait.count()));
    REQUIRE(un.has_value());
    CHECK(std::holds_alternative<link::UnbindMsg>(un->msg));
    CHECK(g2.grant_flags(Front::kRingRef) == abi::kGtfPermitAccess);  // the ring grant is released
    REQUIRE(g2.xs_write(f2.fe() + "/state", "6"));
    CHECK(g2.xs_wait(f2.be() + "/state", "6"));
    REQUIRE(g2.xs_write(f2.fe() + "/state", "1"));
    CHECK(g2.xs_wait(f2.be() + "/state", "2"));
    g2.ports.clear();
    REQUIRE_MESSAGE(f2.connect(&why), why);
    CHECK(f2.roundtrip(blk_req(abi::kBlkifOpRead, 2, 0, {{kRef0, 0, 7}})) == abi::kBlkifRspOkay);
}

TEST_CASE("dom0: bad Attach and garbage on the link") {
    Dom0 d;
    SUBCASE("an unopenable volume is refused with a message and nothing is left") {
        Guest g;
        auto r = g.attach(d.socket(), {"/nonexistent-dir/x.img,size=1M"});
        CHECK(r.status < 0);
        CHECK(r.message.find("nonexistent") != std::string::npos);
        Guest g2;
        auto r2 = g2.attach(d.socket(), {d.dir().file("ok.img") + ",size=1M"});
        REQUIRE(r2.status == 0);
        CHECK(r2.domid > r.domid);
        CHECK_FALSE(g2.xs_read("/local/domain/1/name").has_value());
    }
    SUBCASE("a bad volume spec") {
        Guest g;
        CHECK(g.attach(d.socket(), {"x.img,size=12Q"}).status < 0);
    }
    SUBCASE("garbage bytes as the first message") {
        auto s = common::card::UnixSocket::connect(d.socket());
        REQUIRE(s.has_value());
        const char junk[] = "GET / HTTP/1.0\r\n\r\n";
        REQUIRE(s->send(std::as_bytes(std::span(junk))));
        auto r = link::recv_message(*s, static_cast<int>(kWait.count()));
        REQUIRE(r.has_value());
        CHECK(std::get<link::AttachReplyMsg>(r->msg).status < 0);
    }
    SUBCASE("a wrong message after Attach ends that domain only") {
        Connected a(d, "a.img");
        Connected b(d, "b.img");
        const int fds[] = {0, 1};
        REQUIRE(link::send_message(a.g.link(), link::BindMsg{1, 3}, fds));  // dom0 sends Bind, not the vmm
        CHECK(d.wait_log(fmt::format("domain {} ('i-test') detached", a.g.domid())));
        CHECK(b.front.roundtrip(blk_req(abi::kBlkifOpRead, 1, 0, {{kRef0, 0, 7}})) == abi::kBlkifRspOkay);
        std::string err;
        CHECK_FALSE(b.g.xs(abi::XsType::Read, fmt::format("/local/domain/0/backend/vbd/{}/51712/state", a.g.domid()) +
                                                   std::string(1, '\0'), &err).has_value());
    }
    CHECK(d.process().running());
}

TEST_CASE("dom0: lifecycle (exit when idle, SIGTERM)") {
    {
        Dom0 d({"--exit-when-idle"});
        {
            Connected c(d, "x.img");
            CHECK(c.front.roundtrip(blk_req(abi::kBlkifOpFlushDiskcache, 1, 0, {})) == abi::kBlkifRspOkay);
        }
        CHECK(d.process().wait(kWait) == 0);
        CHECK(d.log().find("requests (") != std::string::npos);
    }
    {
        Dom0 d;
        Connected c(d, "y.img");
        d.process().signal(SIGTERM);
        CHECK(d.process().wait(kWait) == 0);
        CHECK(d.log().find("detached") != std::string::npos);
    }
}

TEST_CASE("dom0: the volume's rate limit holds I/O back") {
    Dom0 d;
    Connected c(d, "r.img", "size=4M,iops=20,mbps=unlimited");
    // The bucket starts with one second's tokens (20); the next 10 take about half a second.
    const auto t0 = std::chrono::steady_clock::now();
    for (std::uint64_t i = 0; i < 30; ++i) {
        CHECK(c.front.roundtrip(blk_req(abi::kBlkifOpRead, i, 0, {{kRef0, 0, 0}})) == abi::kBlkifRspOkay);
    }
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count();
    CHECK(ms >= 400);
    c.g.close_link();
    CHECK(d.wait_log("throttled 1"));
}
