// xenstored's tree, permissions, watches and transactions (xen_model/xenstore/store.hpp) and
// the wire parser (wire.hpp).
#include <doctest/doctest.h>

#include <algorithm>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include "xen_model/xenstore/store.hpp"
#include "xen_model/xenstore/wire.hpp"

using namespace xen_model::xenstore;
using xen_model::abi::XsMsgHeader;
using xen_model::abi::XsType;

namespace {

class RecordingSink final : public WatchSink {
public:
    void post(WatchEvent ev) override {
        std::lock_guard lk(mu_);
        events_.push_back(std::move(ev));
    }
    std::vector<WatchEvent> take() {
        std::lock_guard lk(mu_);
        return std::exchange(events_, {});
    }
    std::vector<std::string> paths() {
        std::vector<std::string> out;
        for (auto& e : take()) out.push_back(e.path);
        return out;
    }

private:
    std::mutex mu_;
    std::vector<WatchEvent> events_;
};

XsResult<wire::Request> parse(XsType t, std::string_view payload, std::uint32_t req_id = 7, std::uint32_t tx = 0) {
    XsMsgHeader h{static_cast<std::uint32_t>(t), req_id, tx, static_cast<std::uint32_t>(payload.size())};
    return wire::parse_request(h, std::span<const char>(payload.data(), payload.size()));
}

std::string_view payload_of(const std::string& msg) { return std::string_view(msg).substr(sizeof(XsMsgHeader)); }
XsMsgHeader header_of(const std::string& msg) {
    XsMsgHeader h;
    std::memcpy(&h, msg.data(), sizeof h);
    return h;
}

// A store with guest 1 and 2 set up as dom0 would: home dirs, backends in dom0's tree.
void populate(Store& s) {
    for (DomId d : {1u, 2u}) {
        auto home = domain_path(d);
        REQUIRE(s.write(0, 0, home + "/domid", std::to_string(d)));
        REQUIRE(s.set_perms(0, 0, home + "/domid", 0, {d}));
        REQUIRE(s.mkdir(0, 0, home + "/device/vbd/51712"));
        REQUIRE(s.write(0, 0, "/local/domain/0/backend/vbd/" + std::to_string(d) + "/51712/state", "1"));
    }
}

}  // namespace

TEST_CASE("xenstore wire: each request type splits into its arguments") {
    auto r = parse(XsType::Read, std::string_view("/local/domain/1/name\0", 21));
    REQUIRE(r);
    CHECK(r->path == "/local/domain/1/name");
    CHECK(r->req_id == 7);

    r = parse(XsType::Write, std::string_view("device/x\0val\0ue", 15));
    REQUIRE(r);
    CHECK(r->path == "device/x");
    CHECK(r->value == std::string_view("val\0ue", 6));  // values are bytes
    r = parse(XsType::Write, std::string_view("a\0", 2));
    REQUIRE(r);
    CHECK(r->value.empty());

    for (auto t : {XsType::Mkdir, XsType::Rm, XsType::Directory}) {
        r = parse(t, std::string_view("/a/b\0", 5));
        REQUIRE(r);
        CHECK(r->path == "/a/b");
    }
    r = parse(XsType::Watch, std::string_view("/local/domain/0/backend/vbd/1/51712/state\0FFFF8880\0", 51));
    REQUIRE(r);
    CHECK(r->path == "/local/domain/0/backend/vbd/1/51712/state");
    CHECK(r->token == "FFFF8880");
    r = parse(XsType::Unwatch, std::string_view("@releaseDomain\0t\0", 17));
    REQUIRE(r);
    CHECK(r->path == "@releaseDomain");

    CHECK(parse(XsType::TransactionStart, std::string_view("\0", 1)));
    CHECK(parse(XsType::TransactionStart, ""));
    r = parse(XsType::TransactionEnd, std::string_view("T\0", 2), 1, 5);
    REQUIRE(r);
    CHECK(r->commit);
    CHECK(r->tx_id == 5);
    r = parse(XsType::TransactionEnd, std::string_view("F\0", 2));
    REQUIRE(r);
    CHECK_FALSE(r->commit);
    CHECK(parse(XsType::ResetWatches, std::string_view("\0", 1)));
    r = parse(XsType::GetDomainPath, std::string_view("17\0", 3));
    REQUIRE(r);
    CHECK(r->domid == 17);
}

TEST_CASE("xenstore wire: malformed requests are refused") {
    // Missing NUL, embedded NUL, trailing bytes, bad characters, empty components.
    CHECK(parse(XsType::Read, "/a").error() == XsError::Inval);
    CHECK(parse(XsType::Read, std::string_view("/a\0b\0", 5)).error() == XsError::Inval);
    CHECK(parse(XsType::Read, std::string_view("/a\0x", 4)).error() == XsError::Inval);
    CHECK(parse(XsType::Read, std::string_view("\0", 1)).error() == XsError::Inval);
    CHECK(parse(XsType::Read, std::string_view("/a b\0", 5)).error() == XsError::Inval);
    CHECK(parse(XsType::Read, std::string_view("/a//b\0", 6)).error() == XsError::Inval);
    CHECK(parse(XsType::Read, std::string_view("/a/\0", 4)).error() == XsError::Inval);
    CHECK(parse(XsType::Write, "nonul").error() == XsError::Inval);
    CHECK(parse(XsType::Watch, std::string_view("/a\0tok", 6)).error() == XsError::Inval);
    CHECK(parse(XsType::Watch, std::string_view("/a\0tok\0x\0", 9)).error() == XsError::Inval);
    CHECK(parse(XsType::Watch, std::string_view("\0t\0", 3)).error() == XsError::Inval);
    CHECK(parse(XsType::TransactionStart, "x").error() == XsError::Inval);
    CHECK(parse(XsType::TransactionEnd, std::string_view("X\0", 2)).error() == XsError::Inval);
    CHECK(parse(XsType::TransactionEnd, "T").error() == XsError::Inval);
    CHECK(parse(XsType::GetDomainPath, std::string_view("01\0", 3)).error() == XsError::Inval);
    CHECK(parse(XsType::GetDomainPath, std::string_view("99999\0", 6)).error() == XsError::Inval);
    CHECK(parse(XsType::GetDomainPath, std::string_view("-1\0", 3)).error() == XsError::Inval);
    // Over-long paths: absolute 3072, relative 2048.
    std::string abs = "/" + std::string(3071, 'a');
    CHECK(wire::valid_path(abs));
    CHECK_FALSE(wire::valid_path(abs + "a"));
    CHECK(wire::valid_path(std::string(2048, 'a')));
    CHECK_FALSE(wire::valid_path(std::string(2049, 'a')));
    // Over-long messages and a header whose len disagrees with the payload.
    std::string big(5000, 'a');
    XsMsgHeader h{static_cast<std::uint32_t>(XsType::Write), 1, 0, 5000};
    CHECK(wire::parse_request(h, std::span<const char>(big.data(), big.size())).error() == XsError::TooBig);
    h.len = 10;
    CHECK(wire::parse_request(h, std::span<const char>(big.data(), 9)).error() == XsError::Inval);
    // Types a guest may not send, and types not served.
    CHECK(parse(XsType::Introduce, "").error() == XsError::Access);
    CHECK(parse(XsType::SetPerms, "").error() == XsError::Access);
    CHECK(parse(XsType::GetPerms, "").error() == XsError::NoSys);
    CHECK(parse(XsType::WatchEvent, "").error() == XsError::Inval);
    CHECK(parse(static_cast<XsType>(999), "").error() == XsError::NoSys);
}

TEST_CASE("xenstore wire: replies and events are framed") {
    auto ok = wire::ok_reply(XsType::Write, 9, 3);
    CHECK(header_of(ok).type == static_cast<std::uint32_t>(XsType::Write));
    CHECK(header_of(ok).req_id == 9);
    CHECK(header_of(ok).tx_id == 3);
    CHECK(payload_of(ok) == std::string_view("OK\0", 3));
    auto err = wire::error_reply(XsError::NoEnt, 4, 0);
    CHECK(header_of(err).type == static_cast<std::uint32_t>(XsType::Error));
    CHECK(header_of(err).len == 7);
    CHECK(payload_of(err) == std::string_view("ENOENT\0", 7));
    CHECK(to_wire(XsError::Again) == "EAGAIN");
    auto dir = wire::directory_reply(1, 0, {"a", "bc"});
    REQUIRE(dir);
    CHECK(payload_of(*dir) == std::string_view("a\0bc\0", 5));
    auto empty = wire::directory_reply(1, 0, {});
    REQUIRE(empty);
    CHECK(header_of(*empty).len == 0);
    CHECK(wire::directory_reply(1, 0, std::vector<std::string>(3000, "ab")).error() == XsError::TooBig);
    auto ev = wire::watch_event("device/vbd", "tok");
    REQUIRE(ev);
    CHECK(header_of(*ev).type == static_cast<std::uint32_t>(XsType::WatchEvent));
    CHECK(header_of(*ev).req_id == 0);
    CHECK(payload_of(*ev) == std::string_view("device/vbd\0tok\0", 15));
    CHECK(wire::watch_event(std::string(4000, 'a'), std::string(100, 'b')).error() == XsError::TooBig);
}

TEST_CASE("xenstore store: nodes, parents, directories and rm") {
    Store s;
    CHECK(s.read(0, 0, "/a").error() == XsError::NoEnt);
    REQUIRE(s.write(0, 0, "/a/b/c", "v"));
    CHECK(*s.read(0, 0, "/a/b/c") == "v");
    CHECK(*s.read(0, 0, "/a/b") == "");  // parents made on the way
    REQUIRE(s.write(0, 0, "/a/b/d", ""));
    CHECK(*s.directory(0, 0, "/a/b") == std::vector<std::string>{"c", "d"});
    REQUIRE(s.mkdir(0, 0, "/a/b"));  // exists: fine, value kept
    REQUIRE(s.write(0, 0, "/a/b/c", "w"));
    CHECK(*s.read(0, 0, "/a/b/c") == "w");
    REQUIRE(s.rm(0, 0, "/a/b"));
    CHECK(s.read(0, 0, "/a/b/c").error() == XsError::NoEnt);
    CHECK(s.directory(0, 0, "/a")->empty());
    CHECK(s.rm(0, 0, "/a/b"));  // gone, parent there: OK as in xenstored
    CHECK(s.rm(0, 0, "/x/y").error() == XsError::NoEnt);
    CHECK(s.rm(0, 0, "/").error() == XsError::Inval);
    CHECK(s.write(0, 0, "/a//b", "").error() == XsError::Inval);
    CHECK(s.write(0, 0, "/a/", "").error() == XsError::Inval);
    CHECK(s.write(0, 0, "/a/b c", "").error() == XsError::Inval);
    CHECK(s.write(0, 0, "/a", std::string(kMaxValueSize + 1, 'x')).error() == XsError::TooBig);
    CHECK(s.write(0, 0, "/a", std::string(kMaxValueSize, 'x')));
    // Relative paths are a caller's own home.
    REQUIRE(s.write(3, 0, "data/x", "1"));
    CHECK(*s.read(0, 0, "/local/domain/3/data/x") == "1");
}

TEST_CASE("xenstore store: guest permissions") {
    Store s;
    populate(s);
    // Own home: write, mkdir, read, rm below it.
    CHECK(s.write(1, 0, "/local/domain/1/device/vbd/51712/state", "1"));
    CHECK(s.write(1, 0, "/local/domain/1/data/new/node", "x"));
    CHECK(*s.read(1, 0, "/local/domain/1/device/vbd/51712/state") == "1");
    CHECK(s.directory(1, 0, "/local/domain/1/device/vbd")->size() == 1);
    CHECK(s.rm(1, 0, "/local/domain/1/data"));
    // Not the home root, not outside, not another guest's home.
    CHECK(s.rm(1, 0, "/local/domain/1").error() == XsError::Access);
    CHECK(s.write(1, 0, "/local/domain/1", "x").error() == XsError::Access);
    CHECK(s.write(1, 0, "/local/domain/2/device/x", "1").error() == XsError::Access);
    CHECK(s.write(1, 0, "/tool/x", "1").error() == XsError::Access);
    CHECK(s.mkdir(1, 0, "/local/domain/0/backend/vbd/1/51712/x").error() == XsError::Access);
    CHECK(s.rm(1, 0, "/local/domain/0/backend/vbd/1").error() == XsError::Access);
    CHECK(s.read(1, 0, "/local/domain/2/domid").error() == XsError::Access);
    CHECK(s.read(1, 0, "/local/domain/2/missing").error() == XsError::Access);
    CHECK(s.directory(1, 0, "/local/domain").error() == XsError::Access);
    CHECK(s.read(1, 0, "/").error() == XsError::Access);
    // Its backend's directory in dom0's tree is readable, another guest's is not.
    CHECK(*s.read(1, 0, "/local/domain/0/backend/vbd/1/51712/state") == "1");
    CHECK(s.read(1, 0, "/local/domain/0/backend/vbd/2/51712/state").error() == XsError::Access);
    // A node dom0 locked: readable, not writable, not removable.
    CHECK(*s.read(1, 0, "/local/domain/1/domid") == "1");
    CHECK(s.write(1, 0, "/local/domain/1/domid", "9").error() == XsError::Access);
    CHECK(s.write(1, 0, "/local/domain/1/domid/sub", "9").error() == XsError::Access);
    CHECK(s.rm(1, 0, "/local/domain/1/domid").error() == XsError::Access);
    // dom0 extends reads with set_perms; guests cannot call it.
    REQUIRE(s.write(0, 0, "/tool/shared", "s"));
    CHECK(s.read(1, 0, "/tool/shared").error() == XsError::Access);
    REQUIRE(s.set_perms(0, 0, "/tool/shared", 0, {1}));
    CHECK(*s.read(1, 0, "/tool/shared") == "s");
    CHECK(s.set_perms(1, 0, "/local/domain/1/device", 1, {2}).error() == XsError::Access);
    CHECK(s.set_perms(0, 0, "/nope", 0, {}).error() == XsError::NoEnt);
}

TEST_CASE("xenstore store: a guest's quota") {
    Store s;
    populate(s);
    const std::string value(4000, 'v');
    std::size_t ok = 0;
    XsError last{};
    for (int i = 0; i < 2000; ++i) {
        auto r = s.write(1, 0, "data/n" + std::to_string(i), value);
        if (!r) {
            last = r.error();
            break;
        }
        ++ok;
    }
    CHECK(last == XsError::NoSpc);
    CHECK(ok < kMaxBytesPerDomain / 4000);
    // Freeing gives the room back; dom0 is not limited.
    REQUIRE(s.rm(1, 0, "data"));
    CHECK(s.write(1, 0, "data/again", value));
    for (int i = 0; i < 300; ++i) REQUIRE(s.write(0, 0, "/tool/n" + std::to_string(i), value));
    // Node count limit, small values.
    REQUIRE(s.rm(1, 0, "data"));
    std::size_t nodes = 0;
    for (std::size_t i = 0; i < kMaxNodesPerDomain + 10; ++i) {
        if (!s.write(1, 0, "data/" + std::to_string(i), "")) break;
        ++nodes;
    }
    CHECK(nodes < kMaxNodesPerDomain);
    CHECK(nodes > kMaxNodesPerDomain - 20);
}

TEST_CASE("xenstore store: watches") {
    Store s;
    populate(s);
    auto dom0 = std::make_shared<RecordingSink>();
    auto g1 = std::make_shared<RecordingSink>();

    SUBCASE("fire at registration, on the node and on children") {
        auto id = s.watch(0, "/local/domain/1/device", "t0", dom0);
        REQUIRE(id);
        auto ev = dom0->take();
        REQUIRE(ev.size() == 1);
        CHECK(ev[0].path == "/local/domain/1/device");
        CHECK(ev[0].token == "t0");
        REQUIRE(s.write(1, 0, "device/vbd/51712/state", "3"));
        REQUIRE(s.write(0, 0, "/local/domain/1/devices", "x"));  // a sibling with a common prefix
        REQUIRE(s.mkdir(0, 0, "/local/domain/1/device"));        // exists: no change, no event
        REQUIRE(s.write(0, 0, "/local/domain/1/device", "v"));
        CHECK(dom0->paths() == std::vector<std::string>{"/local/domain/1/device/vbd/51712/state",
                                                        "/local/domain/1/device"});
        CHECK(s.watch(0, "/local/domain/1/device", "t0", dom0).error() == XsError::Exist);
        s.unwatch(*id);
        REQUIRE(s.write(0, 0, "/local/domain/1/device/z", "v"));
        CHECK(dom0->take().empty());
    }
    SUBCASE("rm fires for the removed node and for watches below it") {
        REQUIRE(s.watch(0, "/local/domain/1", "home", dom0));
        REQUIRE(s.watch(0, "/local/domain/1/device/vbd/51712/state", "st", dom0));
        REQUIRE(s.watch(0, "/local/domain/1/device/vbd/51712/missing", "mi", dom0));
        dom0->take();
        REQUIRE(s.rm(1, 0, "device"));
        auto ev = dom0->take();
        REQUIRE(ev.size() == 3);
        std::vector<std::pair<std::string, std::string>> got;
        for (auto& e : ev) got.emplace_back(e.path, e.token);
        std::ranges::sort(got);
        CHECK(got[0] == std::pair<std::string, std::string>{"/local/domain/1/device", "home"});
        CHECK(got[1] == std::pair<std::string, std::string>{"/local/domain/1/device/vbd/51712/missing", "mi"});
        CHECK(got[2] == std::pair<std::string, std::string>{"/local/domain/1/device/vbd/51712/state", "st"});
    }
    SUBCASE("relative watches report relative paths; unwatch by path and token") {
        REQUIRE(s.watch(1, "device", "rel", g1));
        CHECK(g1->paths() == std::vector<std::string>{"device"});
        REQUIRE(s.write(0, 0, "/local/domain/1/device/vbd/51712/backend", "/local/domain/0/backend/vbd/1/51712"));
        CHECK(g1->paths() == std::vector<std::string>{"device/vbd/51712/backend"});
        CHECK(s.unwatch(1, "/local/domain/1/device", "rel").error() == XsError::NoEnt);  // registered relative
        CHECK(s.unwatch(2, "device", "rel").error() == XsError::NoEnt);
        REQUIRE(s.unwatch(1, "device", "rel"));
        REQUIRE(s.write(0, 0, "/local/domain/1/device/q", ""));
        CHECK(g1->take().empty());
    }
    SUBCASE("a guest only hears about paths it may read") {
        REQUIRE(s.watch(1, "/local/domain", "all", g1));
        g1->take();
        REQUIRE(s.write(0, 0, "/local/domain/2/device/x", "secret"));
        REQUIRE(s.write(0, 0, "/local/domain/0/backend/vbd/2/51712/state", "4"));
        CHECK(g1->take().empty());
        REQUIRE(s.write(0, 0, "/local/domain/0/backend/vbd/1/51712/state", "4"));
        CHECK(g1->paths() == std::vector<std::string>{"/local/domain/0/backend/vbd/1/51712/state"});
    }
    SUBCASE("watch limit, reset_watches, remove_domain") {
        for (std::size_t i = 0; i < kMaxWatchesPerDomain; ++i) REQUIRE(s.watch(1, "device", std::to_string(i), g1));
        CHECK(s.watch(1, "device", "one-more", g1).error() == XsError::NoSpc);
        s.reset_watches(1);
        g1->take();
        REQUIRE(s.write(0, 0, "/local/domain/1/device/q", ""));
        CHECK(g1->take().empty());
        REQUIRE(s.watch(1, "device", "again", g1));
        REQUIRE(s.watch(0, "@releaseDomain", "rel", dom0));
        REQUIRE(s.watch(0, "/local/domain/1/device", "dev", dom0));
        dom0->take();
        g1->take();
        auto tx = s.transaction_start(1);
        REQUIRE(tx);
        s.remove_domain(1);
        auto ev = dom0->take();
        REQUIRE(ev.size() == 2);
        CHECK(ev[0].path == "/local/domain/1/device");  // the watch below the removed home
        CHECK(ev[1].path == "@releaseDomain");
        CHECK(g1->take().empty());                         // its watch went with it
        CHECK(s.read(0, 0, "/local/domain/1/domid").error() == XsError::NoEnt);
        CHECK(s.transaction_end(1, *tx, true).error() == XsError::NoEnt);
        CHECK(*s.read(0, 0, "/local/domain/2/domid") == "2");
    }
}

TEST_CASE("xenstore store: transactions") {
    Store s;
    populate(s);
    auto sink = std::make_shared<RecordingSink>();
    REQUIRE(s.watch(0, "/local/domain/1", "w", sink));
    sink->take();

    SUBCASE("isolated until commit; own writes visible; events at commit") {
        auto tx = s.transaction_start(1);
        REQUIRE(tx);
        REQUIRE(s.write(1, *tx, "device/vbd/51712/ring-ref", "8"));
        REQUIRE(s.write(1, *tx, "device/vbd/51712/state", "3"));
        CHECK(*s.read(1, *tx, "device/vbd/51712/ring-ref") == "8");
        CHECK(s.read(1, 0, "device/vbd/51712/ring-ref").error() == XsError::NoEnt);
        CHECK(s.read(0, 0, "/local/domain/1/device/vbd/51712/ring-ref").error() == XsError::NoEnt);
        CHECK(s.directory(1, *tx, "device/vbd/51712")->size() == 2);
        CHECK(sink->take().empty());
        REQUIRE(s.transaction_end(1, *tx, true));
        CHECK(*s.read(0, 0, "/local/domain/1/device/vbd/51712/ring-ref") == "8");
        CHECK(sink->paths().size() == 2);
        CHECK(s.read(1, *tx, "device").error() == XsError::NoEnt);  // the id is gone
    }
    SUBCASE("a change to what the transaction saw makes a writing commit fail with EAGAIN") {
        // xenbus_switch_state: read state, write state, commit; the backend writes it meanwhile.
        REQUIRE(s.write(1, 0, "device/vbd/51712/state", "1"));
        auto tx = s.transaction_start(1);
        REQUIRE(tx);
        CHECK(*s.read(1, *tx, "device/vbd/51712/state") == "1");
        REQUIRE(s.write(1, *tx, "device/vbd/51712/state", "3"));
        REQUIRE(s.write(0, 0, "/local/domain/1/device/vbd/51712/state", "5"));
        CHECK(s.transaction_end(1, *tx, true).error() == XsError::Again);
        CHECK(*s.read(0, 0, "/local/domain/1/device/vbd/51712/state") == "5");
        // Only read, then the read node changed: still a conflict for a writing transaction.
        tx = s.transaction_start(1);
        CHECK(*s.read(1, *tx, "device/vbd/51712/state") == "5");
        REQUIRE(s.write(1, *tx, "data/copy", "5"));
        REQUIRE(s.write(0, 0, "/local/domain/1/device/vbd/51712/state", "6"));
        CHECK(s.transaction_end(1, *tx, true).error() == XsError::Again);
        CHECK(s.read(0, 0, "/local/domain/1/data/copy").error() == XsError::NoEnt);
        // Found missing, then made by someone else.
        tx = s.transaction_start(1);
        CHECK(s.read(1, *tx, "device/vbd/51712/ring-ref").error() == XsError::NoEnt);
        REQUIRE(s.write(1, *tx, "device/vbd/51712/ring-ref", "8"));
        REQUIRE(s.write(0, 0, "/local/domain/1/device/vbd/51712/ring-ref", "9"));
        CHECK(s.transaction_end(1, *tx, true).error() == XsError::Again);
        // A child appearing under a directory the transaction listed.
        tx = s.transaction_start(1);
        CHECK(s.directory(1, *tx, "device/vbd")->size() == 1);
        REQUIRE(s.write(1, *tx, "device/vbd/51712/x", "1"));
        REQUIRE(s.mkdir(0, 0, "/local/domain/1/device/vbd/51728"));
        CHECK(s.transaction_end(1, *tx, true).error() == XsError::Again);
        // A node the transaction read and removed was written meanwhile.
        tx = s.transaction_start(1);
        CHECK(*s.read(1, *tx, "device/vbd/51728") == "");
        REQUIRE(s.rm(1, *tx, "device/vbd/51728"));
        REQUIRE(s.write(0, 0, "/local/domain/1/device/vbd/51728", "v"));
        CHECK(s.transaction_end(1, *tx, true).error() == XsError::Again);
        CHECK(*s.read(0, 0, "/local/domain/1/device/vbd/51728") == "v");
        // A node the transaction overwrote blind was removed meanwhile: its parent is gone.
        tx = s.transaction_start(1);
        REQUIRE(s.write(1, *tx, "device/vbd/51728/x", "1"));
        REQUIRE(s.rm(0, 0, "/local/domain/1/device/vbd/51728"));
        CHECK(s.transaction_end(1, *tx, true).error() == XsError::Again);
        // A transaction that only read commits: its reads were one snapshot.
        auto ro = s.transaction_start(1);
        REQUIRE(ro);
        CHECK(*s.read(1, *ro, "domid") == "1");
        REQUIRE(s.write(0, 0, "/local/domain/1/domid", "1"));
        CHECK(s.transaction_end(1, *ro, true));
    }
    SUBCASE("unrelated commits do not fail a transaction; its changes are replayed") {
        auto sink2 = std::make_shared<RecordingSink>();
        REQUIRE(s.watch(0, "/local/domain/2", "w2", sink2));
        sink2->take();
        auto t1 = s.transaction_start(1);
        auto t2 = s.transaction_start(2);
        REQUIRE(t1);
        REQUIRE(t2);
        CHECK(s.read(1, *t1, "device/vbd/51712/state").error() == XsError::NoEnt);
        REQUIRE(s.write(1, *t1, "device/vbd/51712/state", "3"));
        REQUIRE(s.write(1, *t1, "device/vbd/51712/ring-ref", "8"));
        REQUIRE(s.write(2, *t2, "device/vbd/51712/state", "3"));
        // Siblings and other guests change meanwhile, and the backend writes its own nodes.
        REQUIRE(s.write(0, 0, "/local/domain/0/backend/vbd/1/51712/state", "2"));
        REQUIRE(s.write(0, 0, "/local/domain/1/device/vbd/51712/backend-id", "0"));
        REQUIRE(s.write(2, 0, "data/noise", "x"));
        REQUIRE(s.transaction_end(2, *t2, true));
        REQUIRE(s.transaction_end(1, *t1, true));
        CHECK(*s.read(0, 0, "/local/domain/1/device/vbd/51712/state") == "3");
        CHECK(*s.read(0, 0, "/local/domain/1/device/vbd/51712/ring-ref") == "8");
        CHECK(*s.read(0, 0, "/local/domain/1/device/vbd/51712/backend-id") == "0");
        CHECK(*s.read(0, 0, "/local/domain/2/device/vbd/51712/state") == "3");
        CHECK(*s.read(0, 0, "/local/domain/2/data/noise") == "x");
        CHECK(s.directory(0, 0, "/local/domain/1/device/vbd/51712")->size() == 3);
        CHECK(sink->paths().size() == 3);  // backend-id, then the transaction's two writes
        CHECK(sink2->paths().size() == 2);
    }
    SUBCASE("abort drops the writes; ids belong to their domain; rm inside") {
        auto tx = s.transaction_start(1);
        REQUIRE(tx);
        REQUIRE(s.rm(1, *tx, "device"));
        CHECK(s.read(1, *tx, "device").error() == XsError::NoEnt);
        CHECK(s.read(2, *tx, "/local/domain/2/domid").error() == XsError::NoEnt);  // not 2's
        CHECK(s.transaction_end(2, *tx, false).error() == XsError::NoEnt);
        REQUIRE(s.transaction_end(1, *tx, false));
        CHECK(s.read(1, 0, "device/vbd/51712"));
        CHECK(sink->take().empty());
        CHECK(s.transaction_end(1, 12345, true).error() == XsError::NoEnt);
        CHECK(s.transaction_end(1, 0, true).error() == XsError::NoEnt);
    }
    SUBCASE("open transactions and their changes are capped") {
        std::vector<TxId> ids;
        for (std::size_t i = 0; i < kMaxTransactionsPerDomain; ++i) ids.push_back(*s.transaction_start(1));
        CHECK(s.transaction_start(1).error() == XsError::NoSpc);
        CHECK(s.transaction_start(2));  // another guest is not affected
        REQUIRE(s.transaction_end(1, ids.back(), false));
        auto tx = s.transaction_start(1);
        REQUIRE(tx);
        std::size_t n = 0;
        while (s.write(1, *tx, "data/x", std::to_string(n)) && n < 5000) ++n;
        CHECK(n == kMaxTransactionChanges);
    }
}
