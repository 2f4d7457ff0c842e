// A xenstore::Connection serving a ring page in real GuestMemory, driven from the guest's side
// (tests/support/xenstore_guest_ring.hpp) as Linux's xenbus does.
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "common/guest_memory.hpp"
#include "tests/support/xenstore_guest_ring.hpp"
#include "xen_model/xenstore/connection.hpp"

using namespace xen_model::xenstore;
using common::GuestAddr;
using common::GuestMemory;
using test_support::xs_request;
using test_support::XsGuestRing;
using test_support::XsMsg;
using xen_model::abi::XenstoreInterface;
using xen_model::abi::XsType;

namespace {

constexpr GuestAddr kRing{0x2000};

struct Fixture {
    GuestMemory mem = *GuestMemory::create({{GuestAddr(0), 0x10000, 0}});
    Store store;
    int notifies = 0;
    std::shared_ptr<Connection> conn;
    XsGuestRing guest{mem, kRing};

    // Indices start at `start` on both rings (a ring that has been running for a while).
    explicit Fixture(std::uint32_t start = 0) {
        for (auto off : {offsetof(XenstoreInterface, req_cons), offsetof(XenstoreInterface, req_prod),
                         offsetof(XenstoreInterface, rsp_cons), offsetof(XenstoreInterface, rsp_prod)})
            guest.set_index(off, start);
        REQUIRE(store.write(0, 0, "/local/domain/1/domid", "1"));
        REQUIRE(store.set_perms(0, 0, "/local/domain/1/domid", 0, {1}));
        REQUIRE(store.mkdir(0, 0, "/local/domain/1/device"));
        conn = Connection::create(store, 1, mem, kRing, [this] { ++notifies; });
        REQUIRE(conn);
    }
    ~Fixture() { store.remove_domain(1); }

    std::vector<XsMsg> send(std::string_view bytes) {
        guest.put(bytes);
        conn->on_kick();
        return guest.take();
    }
};

std::string z(std::string_view s) { return std::string(s) + '\0'; }
std::string two(std::string_view a, std::string_view b) { return z(a) + z(b); }
std::uint32_t t(XsType x) { return static_cast<std::uint32_t>(x); }

}  // namespace

TEST_CASE("xenstore ring: requests are answered, req_id and tx_id echoed") {
    Fixture f;
    auto r = f.send(xs_request(XsType::Write, 11, 0, z("device/vbd/51712/state") + "1"));
    REQUIRE(r.size() == 1);
    CHECK(r[0].type == t(XsType::Write));
    CHECK(r[0].req_id == 11);
    CHECK(r[0].payload == z("OK"));
    CHECK(f.notifies == 1);

    r = f.send(xs_request(XsType::Read, 12, 0, z("/local/domain/1/device/vbd/51712/state")));
    REQUIRE(r.size() == 1);
    CHECK(r[0].payload == "1");  // a value carries no NUL
    r = f.send(xs_request(XsType::Directory, 13, 0, z("device/vbd")));
    REQUIRE(r.size() == 1);
    CHECK(r[0].payload == z("51712"));
    r = f.send(xs_request(XsType::GetDomainPath, 14, 0, z("1")));
    REQUIRE(r.size() == 1);
    CHECK(r[0].payload == z("/local/domain/1"));
    r = f.send(xs_request(XsType::Read, 15, 0, z("/local/domain/2/domid")));
    REQUIRE(r.size() == 1);
    CHECK(r[0].type == t(XsType::Error));
    CHECK(r[0].req_id == 15);
    CHECK(r[0].payload == z("EACCES"));
    r = f.send(xs_request(XsType::Write, 16, 0, z("/local/domain/1/domid") + "7"));
    REQUIRE(r.size() == 1);
    CHECK(r[0].payload == z("EACCES"));
    r = f.send(xs_request(XsType::Rm, 17, 0, z("device")));
    REQUIRE(r.size() == 1);
    CHECK(r[0].payload == z("OK"));
    r = f.send(xs_request(XsType::Mkdir, 18, 0, z("device/vif")));
    REQUIRE(r.size() == 1);
    CHECK(r[0].payload == z("OK"));

    // Transactions: the id comes back as decimal text and is echoed in tx_id afterwards.
    r = f.send(xs_request(XsType::TransactionStart, 20, 0, z("")));
    REQUIRE(r.size() == 1);
    REQUIRE(r[0].type == t(XsType::TransactionStart));
    const auto tx = static_cast<std::uint32_t>(std::stoul(r[0].payload));
    CHECK(r[0].payload == z(std::to_string(tx)));
    r = f.send(xs_request(XsType::Write, 21, tx, z("device/vif/0/state") + "4"));
    REQUIRE(r.size() == 1);
    CHECK(r[0].tx_id == tx);
    CHECK(*f.store.read(0, 0, "/local/domain/1/device/vif") == "");
    CHECK(f.store.read(0, 0, "/local/domain/1/device/vif/0/state").error() == XsError::NoEnt);
    r = f.send(xs_request(XsType::TransactionEnd, 22, tx, z("T")));
    REQUIRE(r.size() == 1);
    CHECK(r[0].payload == z("OK"));
    CHECK(*f.store.read(0, 0, "/local/domain/1/device/vif/0/state") == "4");

    // Malformed and refused requests: an error reply each, and the stream goes on.
    r = f.send(xs_request(XsType::Read, 30, 0, "no-nul") + xs_request(XsType::Introduce, 31, 0, "") +
               xs_request(XsType::GetPerms, 32, 0, z("device")) + xs_request(XsType::Read, 33, 0, std::string("a\0b\0", 4)) +
               xs_request(XsType::Read, 34, 0, z("domid")));
    REQUIRE(r.size() == 5);
    CHECK(r[0].payload == z("EINVAL"));
    CHECK(r[1].payload == z("EACCES"));
    CHECK(r[2].payload == z("ENOSYS"));
    CHECK(r[3].payload == z("EINVAL"));
    CHECK(r[4].payload == "1");
    CHECK(f.conn->errors() == 6);
    CHECK(f.conn->requests() == 16);
    CHECK_FALSE(f.conn->broken());
}

TEST_CASE("xenstore ring: several messages per kick, one notification") {
    Fixture f;
    std::string batch;
    for (std::uint32_t i = 0; i < 20; ++i)
        batch += xs_request(XsType::Write, i, 0, z("data/k" + std::to_string(i)) + std::to_string(i));
    REQUIRE(batch.size() < 1024);
    auto r = f.send(batch);
    REQUIRE(r.size() == 20);
    for (std::uint32_t i = 0; i < 20; ++i) CHECK(r[i].req_id == i);
    CHECK(f.notifies == 1);
    // A kick with nothing new writes nothing and does not notify.
    f.conn->on_kick();
    CHECK(f.notifies == 1);
}

TEST_CASE("xenstore ring: a message split across the wrap point and across kicks") {
    // Start 20 bytes before the ring's end, and near the end of the 32-bit index space.
    for (std::uint32_t start : {1004u, 0xfffffff8u}) {
        Fixture f(start);
        const std::string msg = xs_request(XsType::Write, 5, 0, z("data/wrapped") + "value");
        auto r = f.send(msg.substr(0, 10));  // part of the header
        CHECK(r.empty());
        r = f.send(msg.substr(10, 15));  // header done, part of the payload, across the wrap
        CHECK(r.empty());
        CHECK(f.notifies == 0);
        r = f.send(msg.substr(25));
        REQUIRE(r.size() == 1);
        CHECK(r[0].req_id == 5);
        CHECK(r[0].payload == z("OK"));
        CHECK(*f.store.read(1, 0, "data/wrapped") == "value");
        CHECK(f.guest.index(offsetof(XenstoreInterface, req_cons)) == start + static_cast<std::uint32_t>(msg.size()));
        CHECK(f.guest.index(offsetof(XenstoreInterface, rsp_prod)) == start + 16u + 3u);
    }
}

TEST_CASE("xenstore ring: watch events after the reply, relative paths, unwatch") {
    Fixture f;
    auto r = f.send(xs_request(XsType::Watch, 1, 0, two("device", "tok")));
    REQUIRE(r.size() == 2);
    CHECK(r[0].type == t(XsType::Watch));
    CHECK(r[0].payload == z("OK"));
    CHECK(r[1].type == t(XsType::WatchEvent));
    CHECK(r[1].req_id == 0);
    CHECK(r[1].payload == two("device", "tok"));
    const int before = f.notifies;
    // dom0 changes the guest's node from another place: delivered at once, with a notification.
    REQUIRE(f.store.write(0, 0, "/local/domain/1/device/vbd/51712/backend-id", "0"));
    r = f.guest.take();
    REQUIRE(r.size() == 1);
    CHECK(r[0].payload == two("device/vbd/51712/backend-id", "tok"));
    CHECK(f.notifies == before + 1);
    r = f.send(xs_request(XsType::Unwatch, 2, 0, two("device", "tok")));
    REQUIRE(r.size() == 1);
    CHECK(r[0].payload == z("OK"));
    REQUIRE(f.store.write(0, 0, "/local/domain/1/device/x", "0"));
    CHECK(f.guest.take().empty());
    // Absolute watches report absolute paths; RESET_WATCHES drops them.
    r = f.send(xs_request(XsType::Watch, 3, 0, two("/local/domain/1/device", "abs")));
    REQUIRE(r.size() == 2);
    REQUIRE(f.store.write(0, 0, "/local/domain/1/device/y", "0"));
    r = f.guest.take();
    REQUIRE(r.size() == 1);
    CHECK(r[0].payload == two("/local/domain/1/device/y", "abs"));
    r = f.send(xs_request(XsType::ResetWatches, 4, 0, z("")));
    REQUIRE(r.size() == 1);
    REQUIRE(f.store.write(0, 0, "/local/domain/1/device/z", "0"));
    CHECK(f.guest.take().empty());
}

TEST_CASE("xenstore ring: a full rsp ring keeps events queued until the guest reads") {
    Fixture f;
    auto r = f.send(xs_request(XsType::Watch, 1, 0, two("data", "t")));
    REQUIRE(r.size() == 2);
    // 60 events of 36 bytes: more than the ring holds while the guest does not read.
    for (int i = 0; i < 60; ++i) REQUIRE(f.store.write(0, 0, "/local/domain/1/data/k" + std::to_string(100 + i), ""));
    CHECK(f.guest.rsp_pending() == 1024);  // filled up to the last byte (a message split)
    std::vector<XsMsg> got;
    for (int round = 0; round < 10 && got.size() < 60; ++round) {
        auto part = f.guest.take();  // frees the ring; Linux kicks after reading a full ring
        got.insert(got.end(), part.begin(), part.end());
        f.conn->on_kick();
    }
    auto rest = f.guest.take();
    got.insert(got.end(), rest.begin(), rest.end());
    REQUIRE(got.size() == 60);
    for (int i = 0; i < 60; ++i) CHECK(got[static_cast<std::size_t>(i)].payload == two("data/k" + std::to_string(100 + i), "t"));
    CHECK(f.conn->dropped_events() == 0);

    // Replies wait too: requests stay in the req ring while the rsp ring is full.
    for (int i = 0; i < 60; ++i) REQUIRE(f.store.write(0, 0, "/local/domain/1/data/m" + std::to_string(100 + i), ""));
    r = f.send(xs_request(XsType::Read, 77, 0, z("domid")));
    CHECK(r.size() > 20);  // events that fitted (the guest read them; the rest wait)
    std::vector<XsMsg> all = r;
    for (int round = 0; round < 10; ++round) {
        f.conn->on_kick();
        auto part = f.guest.take();
        all.insert(all.end(), part.begin(), part.end());
    }
    REQUIRE(all.size() == 61);
    CHECK(all.back().req_id == 77);  // the reply after the events queued before it
    CHECK(all.back().payload == "1");
}

TEST_CASE("xenstore ring: a guest that never reads loses events, not dom0's memory") {
    Fixture f;
    REQUIRE(f.send(xs_request(XsType::Watch, 1, 0, two("data", "t"))).size() == 2);
    for (int i = 0; i < 400; ++i) REQUIRE(f.store.write(0, 0, "/local/domain/1/data/k" + std::to_string(i), ""));
    CHECK(f.conn->dropped_events() > 0);
    CHECK_FALSE(f.conn->broken());
}

TEST_CASE("xenstore ring: an over-long message is refused and skipped") {
    Fixture f;
    // len 5000: E2BIG, then its 5000 payload bytes are discarded over several kicks.
    auto r = f.send(xs_request(XsType::Write, 9, 3, "", 5000));
    REQUIRE(r.size() == 1);
    CHECK(r[0].type == t(XsType::Error));
    CHECK(r[0].req_id == 9);
    CHECK(r[0].tx_id == 3);
    CHECK(r[0].payload == z("E2BIG"));
    std::size_t left = 5000;
    while (left > 0) {
        const std::size_t n = std::min<std::size_t>(left, f.guest.req_space());
        CHECK(f.send(std::string(n, 'x')).empty());
        left -= n;
    }
    r = f.send(xs_request(XsType::Read, 10, 0, z("domid")));
    REQUIRE(r.size() == 1);
    CHECK(r[0].payload == "1");
}

TEST_CASE("xenstore ring: indices out of range break the connection, nothing else") {
    Fixture f;
    f.guest.set_index(offsetof(XenstoreInterface, req_prod), 5000);
    f.conn->on_kick();
    CHECK(f.conn->broken());
    CHECK(f.guest.index(offsetof(XenstoreInterface, req_cons)) == 0);
    CHECK(f.guest.index(offsetof(XenstoreInterface, rsp_prod)) == 0);

    Fixture g;
    g.guest.set_index(offsetof(XenstoreInterface, rsp_cons), 2000);
    g.guest.put(xs_request(XsType::Read, 1, 0, z("domid")));
    g.conn->on_kick();
    CHECK(g.conn->broken());
}

TEST_CASE("xenstore ring: the ring address must be a page in guest memory") {
    Fixture f;
    CHECK_FALSE(Connection::create(f.store, 2, f.mem, GuestAddr(0x2100), [] {}));
    CHECK_FALSE(Connection::create(f.store, 2, f.mem, GuestAddr(0x10000), [] {}));
    CHECK_FALSE(Connection::create(f.store, 2, f.mem, GuestAddr(~0ull & ~0xfffull), [] {}));
}
