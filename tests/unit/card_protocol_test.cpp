#include <doctest/doctest.h>

#include <dirent.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "common/card_protocol.hpp"
#include "common/fd.hpp"
#include "common/guest_memory.hpp"
#include "common/unix_socket.hpp"

using namespace common;
using namespace common::card;

namespace {

std::pair<UnixSocket, UnixSocket> socket_pair() {
    auto p = UnixSocket::pair();
    REQUIRE(p.has_value());
    return std::move(*p);
}

std::vector<std::byte> enc(const Message& m, std::size_t fds = 0, const Capabilities& limits = {}) {
    auto b = encode(m, fds, limits);
    REQUIRE_MESSAGE(b.has_value(), b.error().message);
    return std::move(*b);
}

template <typename T>
void patch(std::vector<std::byte>& b, std::size_t off, T v) {
    REQUIRE(off + sizeof v <= b.size());
    std::memcpy(b.data() + off, &v, sizeof v);
}

// Decoding must fail with a Protocol error whose text contains `what`.
void expect_bad(std::span<const std::byte> b, std::size_t fds, std::string_view what,
                const Capabilities& limits = {}) {
    auto r = decode(b, fds, limits);
    INFO("expected: ", std::string(what));
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().kind == ErrorKind::Protocol);
    CHECK(r.error().errno_value != 0);
    CHECK_MESSAGE(r.error().message.find(what) != std::string::npos, r.error().message);
}

// Sends msg with fds over a socketpair and returns what arrived.
ReceivedMessage over_socket(const Message& msg, std::span<const int> fds = {}) {
    auto [a, b] = socket_pair();
    auto s = send_message(a, msg, fds);
    REQUIRE_MESSAGE(s.has_value(), s.error().message);
    auto r = recv_message(b, {}, 1000);
    REQUIRE_MESSAGE(r.has_value(), r.error().message);
    CHECK(r->msg == msg);
    CHECK(r->fds.size() == fds.size());
    return std::move(*r);
}

std::size_t open_fd_count() {
    std::size_t n = 0;
    if (DIR* d = ::opendir("/proc/self/fd")) {
        while (::readdir(d)) ++n;
        ::closedir(d);
    }
    return n;
}

Message cmd(Body b, std::uint16_t id = 7) {
    return Message{id, false, std::move(b)};
}
Message rep(Body b, std::uint16_t id = 7) {
    return Message{id, false, std::move(b)};
}

DmaMapRequest dma(std::uint64_t addr, std::uint64_t size, std::uint64_t offset = 0) {
    return DmaMapRequest{kDmaRead | kDmaWrite, offset, GuestAddr(addr), size};
}

std::vector<std::byte> bytes_of(std::initializer_list<int> v) {
    std::vector<std::byte> out;
    for (int x : v) out.push_back(static_cast<std::byte>(x));
    return out;
}

}  // namespace

// ---- Socket transport ----

TEST_CASE("unix socket: a socketpair keeps message boundaries and passes an eventfd") {
    auto [a, b] = socket_pair();
    auto ev = EventFd::create();
    REQUIRE(ev.has_value());
    auto one = bytes_of({1, 2, 3});
    auto two = bytes_of({4, 5});
    int fds[] = {ev->fd()};
    REQUIRE(a.send(one, fds));
    REQUIRE(a.send(two));

    std::vector<std::byte> buf(64);
    auto r1 = b.recv(buf, 4, 1000);
    REQUIRE(r1.has_value());
    CHECK(r1->size == 3);
    REQUIRE(r1->fds.size() == 1);
    CHECK(r1->fds[0].get() != ev->fd());
    // The same eventfd object: a signal through the received fd is seen by the original.
    std::uint64_t v = 5;
    REQUIRE(::write(r1->fds[0].get(), &v, sizeof v) == sizeof v);
    auto got = ev->consume();
    REQUIRE(got.has_value());
    CHECK(*got == 5);

    auto r2 = b.recv(buf, 4, 1000);
    REQUIRE(r2.has_value());
    CHECK(r2->size == 2);
    CHECK(r2->fds.empty());
}

TEST_CASE("unix socket: oversized messages, surplus fds, timeouts and close are errors") {
    auto [a, b] = socket_pair();
    std::vector<std::byte> buf(8);
    SUBCASE("truncated message") {
        REQUIRE(a.send(std::vector<std::byte>(9, std::byte{1})));
        auto r = b.recv(buf, 0, 1000);
        REQUIRE_FALSE(r.has_value());
        CHECK(r.error().errno_value == EMSGSIZE);
    }
    SUBCASE("more fds than allowed, and the surplus is not leaked") {
        auto e1 = EventFd::create();
        auto e2 = EventFd::create();
        REQUIRE((e1 && e2));
        const std::size_t before = open_fd_count();
        int fds[] = {e1->fd(), e2->fd(), e1->fd()};
        REQUIRE(a.send(bytes_of({1}), fds));
        auto r = b.recv(buf, 1, 1000);
        REQUIRE_FALSE(r.has_value());
        CHECK(r.error().message.find("more than 1 fds") != std::string::npos);
        CHECK(open_fd_count() == before);
    }
    SUBCASE("fds when none are allowed") {
        auto e1 = EventFd::create();
        REQUIRE(e1);
        int fds[] = {e1->fd()};
        REQUIRE(a.send(bytes_of({1}), fds));
        CHECK_FALSE(b.recv(buf, 0, 1000).has_value());
    }
    SUBCASE("timeout") {
        auto r = b.recv(buf, 0, 10);
        REQUIRE_FALSE(r.has_value());
        CHECK(is_timeout(r.error()));
    }
    SUBCASE("peer closed") {
        a = UnixSocket();
        auto r = b.recv(buf, 0, 1000);
        REQUIRE_FALSE(r.has_value());
        CHECK(is_peer_closed(r.error()));
        auto s = b.send(bytes_of({1}));
        REQUIRE_FALSE(s.has_value());
        CHECK(is_peer_closed(s.error()));
    }
    SUBCASE("empty sends are refused") {
        CHECK_FALSE(a.send({}).has_value());
    }
}

TEST_CASE("unix socket: listen, connect and accept by path; errors name the path") {
    char dir_template[] = "/tmp/card_sock_XXXXXX";
    REQUIRE(::mkdtemp(dir_template) != nullptr);
    const std::string path = std::string(dir_template) + "/card.sock";
    {
        auto l = UnixSocket::listen(path);
        REQUIRE_MESSAGE(l.has_value(), l.error().message);
        CHECK(::access(path.c_str(), F_OK) == 0);
        auto again = UnixSocket::listen(path);
        REQUIRE_FALSE(again.has_value());
        CHECK(again.error().message.find(path) != std::string::npos);

        auto timed = l->accept(10);
        REQUIRE_FALSE(timed.has_value());
        CHECK(is_timeout(timed.error()));

        auto c = UnixSocket::connect(path);
        REQUIRE_MESSAGE(c.has_value(), c.error().message);
        auto s = l->accept(1000);
        REQUIRE_MESSAGE(s.has_value(), s.error().message);
        REQUIRE(send_message(*c, cmd(DeviceResetRequest{}, 3)));
        auto m = recv_message(*s, {}, 1000);
        REQUIRE(m.has_value());
        CHECK(m->msg.id == 3);
        CHECK(std::holds_alternative<DeviceResetRequest>(m->msg.body));
    }
    CHECK(::access(path.c_str(), F_OK) != 0);  // the listener removed its path
    auto missing = UnixSocket::connect(path);
    REQUIRE_FALSE(missing.has_value());
    CHECK(missing.error().message.find(path) != std::string::npos);
    auto too_long = UnixSocket::listen("/tmp/" + std::string(200, 'x'));
    REQUIRE_FALSE(too_long.has_value());
    CHECK(too_long.error().message.find("longer than") != std::string::npos);
    ::rmdir(dir_template);
}

// ---- Round trips ----

TEST_CASE("card protocol: every message without fds survives encode, send, receive, decode") {
    VersionInfo v;
    v.minor = 3;
    v.caps.max_msg_fds = 17;
    IrqInfoReply irq{};
    irq.index = kPciMsixIrqIndex;
    irq.flags = kIrqInfoEventfd | kIrqInfoMaskable;
    irq.count = 64;
    SetIrqsRequest none{};
    none.flags = kIrqSetDataNone | kIrqSetActionTrigger;
    none.start = 0;
    none.count = 0;
    const Message msgs[] = {
        cmd(VersionRequest{v}),
        rep(VersionReply{v}),
        rep(DmaMapReply{}),
        cmd(DmaUnmapRequest{GuestAddr(0x10000), 0x4000}),
        rep(DmaUnmapReply{GuestAddr(0x10000), 0x4000}),
        cmd(DeviceGetInfoRequest{}),
        rep(DeviceGetInfoReply{kDeviceFlagPci | kDeviceFlagReset, 9, 5}),
        cmd(RegionInfoRequest{kPciConfigRegionIndex}),
        rep(RegionInfoReply{kPciBar0RegionIndex, kRegionFlagRead | kRegionFlagWrite, 0x4000, 0}),
        cmd(RegionIoFdsRequest{0, {}}),
        rep(RegionIoFdsReply{0, {}}),
        cmd(IrqInfoRequest{kPciMsixIrqIndex}),
        rep(irq),
        cmd(none),
        rep(SetIrqsReply{}),
        cmd(RegionReadRequest{0, 0x1c, 4}),
        rep(RegionReadReply{0, 0x1c, bytes_of({1, 0, 0, 0})}),
        cmd(RegionWriteRequest{kPciConfigRegionIndex, 0x10, bytes_of({0xff, 0xff, 0xff, 0xff})}),
        rep(RegionWriteReply{kPciConfigRegionIndex, 0x10, 4}),
        Message{9, true, RegionWriteRequest{0, 0x1000, std::vector<std::byte>(kMaxDataXfer)}},
        cmd(DeviceResetRequest{}),
        rep(DeviceResetReply{}),
        rep(ErrorReply{Command::DmaMap, EEXIST}),
    };
    for (const auto& m : msgs) {
        CAPTURE(command_name(m.command()));
        CAPTURE(m.is_reply());
        over_socket(m);
    }
}

TEST_CASE("card protocol: DMA_MAP passes the guest-RAM memfd") {
    auto mem = MemFd::create("guest-ram", 0x10000);
    REQUIRE(mem.has_value());
    auto map = Mmap::map_shared(mem->fd(), 0x10000, 0, PROT_READ | PROT_WRITE);
    REQUIRE(map.has_value());
    std::memcpy(map->data() + 0x2000, "card", 4);

    int fds[] = {mem->fd()};
    auto r = over_socket(cmd(dma(0x100000, 0x8000, 0x2000)), fds);
    const auto& m = std::get<DmaMapRequest>(r.msg.body);
    auto theirs = Mmap::map_shared(r.fds[0].get(), m.size, m.offset, PROT_READ | PROT_WRITE);
    REQUIRE(theirs.has_value());
    CHECK(std::memcmp(theirs->data(), "card", 4) == 0);
    std::memcpy(theirs->data() + 8, "back", 4);
    CHECK(std::memcmp(map->data() + 0x2008, "back", 4) == 0);
}

TEST_CASE("card protocol: SET_IRQS and IO_FDS pass eventfds in order") {
    std::vector<EventFd> evs;
    std::vector<int> fds;
    for (int i = 0; i < 3; ++i) {
        auto e = EventFd::create();
        REQUIRE(e.has_value());
        fds.push_back(e->fd());
        evs.push_back(std::move(*e));
    }
    SUBCASE("SET_IRQS: fd i is vector start+i") {
        auto r = over_socket(
            cmd(SetIrqsRequest{kIrqSetDataEventfd | kIrqSetActionTrigger, kPciMsixIrqIndex, 4, 3}),
            fds);
        for (std::size_t i = 0; i < 3; ++i) {
            std::uint64_t v = i + 1;
            REQUIRE(::write(r.fds[i].get(), &v, sizeof v) == sizeof v);
        }
        for (std::size_t i = 0; i < 3; ++i) {
            auto got = evs[i].consume();
            REQUIRE(got.has_value());
            CHECK(*got == i + 1);
        }
    }
    SUBCASE("IO_FDS sent by the vmm, one fd shared by two sub-regions") {
        RegionIoFdsRequest req{
            0,
            {IoFdEntry{0x1000, 4, 0, 0, 0}, IoFdEntry{0x1008, 4, 1, kIoFdDatamatch, 0x1},
             IoFdEntry{0x1008, 4, 1, kIoFdDatamatch, 0x2}, IoFdEntry{0x1010, 0, 2, 0, 0}}};
        auto r = over_socket(cmd(req), fds);
        std::uint64_t v = 1;
        REQUIRE(::write(r.fds[2].get(), &v, sizeof v) == sizeof v);
        CHECK(*evs[2].consume() == 1);
        CHECK(*evs[0].consume() == 0);
    }
    SUBCASE("IO_FDS returned by the card, and the mmap fd of REGION_INFO") {
        over_socket(
            rep(RegionIoFdsReply{0,
                                 {IoFdEntry{0x1000, 4, 0, 0, 0}, IoFdEntry{0x1004, 4, 1, 0, 0},
                                  IoFdEntry{0x1008, 4, 2, 0, 0}}}),
            fds);
        int one[] = {fds[0]};
        over_socket(rep(RegionInfoReply{0, kRegionFlagRead | kRegionFlagMmap, 0x2000, 0x1000}),
                    one);
    }
}

// ---- Malformed input ----

TEST_CASE("card protocol: header problems") {
    auto good = enc(cmd(DeviceResetRequest{}));
    expect_bad(std::span(good).first(0), 0, "shorter than the 16-byte header");
    expect_bad(std::span(good).first(15), 0, "shorter than the 16-byte header");
    auto longer = good;
    longer.push_back(std::byte{0});
    expect_bad(longer, 0, "header says 16 bytes, message has 17");
    auto b = good;
    patch<std::uint32_t>(b, 4, 4096);
    expect_bad(b, 0, "header says 4096");
    for (std::uint16_t c : std::initializer_list<std::uint16_t>{0, 11, 12, 14, 15, 0xffff}) {
        b = good;
        patch(b, 2, c);
        expect_bad(b, 0, "unknown command");
    }
    b = good;
    patch<std::uint32_t>(b, 8, 0x40);
    expect_bad(b, 0, "unknown bits");
    patch<std::uint32_t>(b, 8, 0x2);
    expect_bad(b, 0, "unknown message type");
    patch<std::uint32_t>(b, 8, kFlagTypeReply | kFlagNoReply);
    expect_bad(b, 0, "no_reply set on a reply");
    patch<std::uint32_t>(b, 8, kFlagTypeCommand | kFlagError);
    expect_bad(b, 0, "error bit set on a command");
    patch<std::uint32_t>(b, 8, kFlagTypeCommand);
    patch<std::uint32_t>(b, 12, 5);
    expect_bad(b, 0, "without the error bit");
    expect_bad(good, 1, "1 fds attached, expected 0");
    expect_bad(good, 65, "65 fds exceed the limit of 64");

    // Larger than the negotiated maximum, even if internally consistent.
    Capabilities small;
    small.max_msg_size = 64;
    small.max_data_xfer = 32;
    REQUIRE(validate_capabilities(small));
    auto fds2 =
        enc(rep(RegionIoFdsReply{0, {IoFdEntry{0, 4, 0, 0, 0}, IoFdEntry{4, 4, 0, 0, 0}}}), 1);
    CHECK(decode(fds2, 1).has_value());
    expect_bad(fds2, 1, "message of 112 bytes exceeds the limit of 64", small);
}

TEST_CASE("card protocol: error replies") {
    auto req = cmd(DmaMapRequest{dma(0, 0x1000)}, 42);
    auto e = error_reply(req, EEXIST);
    CHECK(e.id == 42);
    CHECK(e.is_reply());
    CHECK(e.command() == Command::DmaMap);
    auto b = enc(e);
    CHECK(b.size() == kHeaderSize);
    auto d = decode(b, 0);
    REQUIRE(d.has_value());
    CHECK(std::get<ErrorReply>(d->body).error == EEXIST);
    CHECK(std::get<ErrorReply>(error_reply(req, 0).body).error == EINVAL);
    CHECK(std::get<ErrorReply>(error_reply(req, Error{ErrorKind::Protocol, "x", ENOSPC}).body)
              .error == ENOSPC);

    // A peer may refuse a command it does not know.
    auto raw = enc(cmd(DeviceResetRequest{}, 5));
    patch<std::uint16_t>(raw, 2, 99);
    auto h = parse_header(raw);
    REQUIRE(h.has_value());
    auto nosys = decode(enc(error_reply(*h, ENOSYS)), 0);
    REQUIRE(nosys.has_value());
    CHECK(nosys->id == 5);
    CHECK(static_cast<unsigned>(std::get<ErrorReply>(nosys->body).command) == 99);

    // An error reply is the header alone.
    b.push_back(std::byte{0});
    patch<std::uint32_t>(b, 4, static_cast<std::uint32_t>(b.size()));
    expect_bad(b, 0, "error reply carries 1 payload bytes");
}

TEST_CASE("card protocol: DMA_MAP ranges, alignment and fds") {
    auto good = enc(cmd(dma(0x100000, 0x10000, 0x2000)), 1);
    CHECK(decode(good, 1).has_value());
    expect_bad(good, 0, "0 fds attached, expected 1");
    expect_bad(good, 2, "2 fds attached, expected 1");

    auto with = [&](std::size_t off, std::uint64_t v) {
        auto b = good;
        patch(b, kHeaderSize + off, v);
        return b;
    };
    // Payload: argsz@0 flags@4 offset@8 addr@16 size@24.
    expect_bad(with(24, 0), 1, "is empty");
    expect_bad(with(16, 0x100001), 1, "not 4 KiB aligned");
    expect_bad(with(24, 0x1001), 1, "not 4 KiB aligned");
    expect_bad(with(8, 0x10), 1, "memfd offset 0x10 is not 4 KiB aligned");
    expect_bad(with(16, 0xffff'ffff'ffff'f000ull), 1, "wraps around");
    expect_bad(with(8, 0xffff'ffff'ffff'f000ull), 1, "memfd range");
    expect_bad(with(8, 0x7fff'ffff'ffff'f000ull), 1, "memfd range");  // past off_t
    auto b = good;
    patch<std::uint32_t>(b, kHeaderSize + 4, 0);
    expect_bad(b, 1, "neither read nor write");
    patch<std::uint32_t>(b, kHeaderSize + 4, 0x4 | kDmaRead);
    expect_bad(b, 1, "unknown bits");
    b = good;
    patch<std::uint32_t>(b, kHeaderSize, 40);
    expect_bad(b, 1, "argsz 40");
    b = good;
    b.erase(b.end() - 8, b.end());
    patch<std::uint32_t>(b, 4, static_cast<std::uint32_t>(b.size()));
    expect_bad(b, 1, "payload is 24 bytes, expected 32");

    // The sender refuses to encode what the receiver would refuse.
    auto r = encode(cmd(dma(0x1000, 0)), 1);
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().message.find("is empty") != std::string::npos);

    auto unmap = enc(cmd(DmaUnmapRequest{GuestAddr(0x1000), 0x1000}));
    patch<std::uint64_t>(unmap, kHeaderSize + 16, 0x800);
    expect_bad(unmap, 0, "not 4 KiB aligned");
    patch<std::uint64_t>(unmap, kHeaderSize + 16, 0x1000);
    patch<std::uint32_t>(unmap, kHeaderSize + 4, 1);
    expect_bad(unmap, 0, "flags 0x1 must be 0");
}

TEST_CASE("card protocol: REGION_READ/WRITE counts and lengths") {
    auto rd = enc(cmd(RegionReadRequest{0, 0x10, 4}));
    // Payload: offset@0 region@8 count@12.
    auto b = rd;
    patch<std::uint32_t>(b, kHeaderSize + 12, 0);
    expect_bad(b, 0, "count 0 is not in [1, 4096]");
    patch<std::uint32_t>(b, kHeaderSize + 12, kMaxDataXfer + 1);
    expect_bad(b, 0, "count 4097");
    Capabilities small;
    small.max_data_xfer = 8;
    patch<std::uint32_t>(b, kHeaderSize + 12, 16);
    expect_bad(b, 0, "count 16 is not in [1, 8]", small);
    b = rd;
    patch<std::uint64_t>(b, kHeaderSize, ~0ull - 1);
    expect_bad(b, 0, "overflows");
    b = rd;
    patch<std::uint32_t>(b, kHeaderSize + 8, kMaxRegions);
    expect_bad(b, 0, "region index 32");

    auto wr = enc(cmd(RegionWriteRequest{0, 0x10, bytes_of({1, 2, 3, 4})}));
    b = wr;
    patch<std::uint32_t>(b, kHeaderSize + 12, 8);
    expect_bad(b, 0, "payload is 20 bytes, expected 24");
    b = wr;
    patch<std::uint32_t>(b, kHeaderSize + 12, 2);
    expect_bad(b, 0, "payload is 20 bytes, expected 18");
    expect_bad(std::span(wr).first(kHeaderSize + 8), 0, "header says");

    CHECK_FALSE(encode(cmd(RegionWriteRequest{0, 0, std::vector<std::byte>(kMaxDataXfer + 1)}), 0)
                    .has_value());
    CHECK_FALSE(encode(rep(RegionReadReply{0, 0, {}}), 0).has_value());
}

TEST_CASE("card protocol: SET_IRQS flags, ranges and fd counts") {
    SetIrqsRequest s{kIrqSetDataEventfd | kIrqSetActionTrigger, kPciMsixIrqIndex, 0, 3};
    auto good = enc(cmd(s), 3);
    CHECK(decode(good, 3).has_value());
    CHECK(decode(good, 0).has_value());  // de-assign
    expect_bad(good, 2, "2 fds attached for 3 interrupts");
    expect_bad(good, 4, "4 fds attached for 3 interrupts");
    // Payload: argsz@0 flags@4 index@8 start@12 count@16.
    auto b = good;
    patch<std::uint32_t>(b, kHeaderSize + 4,
                         kIrqSetDataEventfd | kIrqSetActionTrigger | kIrqSetActionMask);
    expect_bad(b, 3, "exactly one ACTION_ bit");
    patch<std::uint32_t>(b, kHeaderSize + 4,
                         kIrqSetDataEventfd | kIrqSetDataNone | kIrqSetActionMask);
    expect_bad(b, 3, "exactly one DATA_ bit");
    patch<std::uint32_t>(b, kHeaderSize + 4, kIrqSetDataBool | kIrqSetActionMask);
    expect_bad(b, 3, "DATA_BOOL is not supported");
    b = good;
    patch<std::uint32_t>(b, kHeaderSize + 12, kMaxIrqsPerIndex - 2);
    expect_bad(b, 3, "exceed the limit of 2048");
    patch<std::uint32_t>(b, kHeaderSize + 12, 0xffff'fffe);
    expect_bad(b, 3, "exceed the limit");
    b = good;
    patch<std::uint32_t>(b, kHeaderSize + 8, kNumIrqIndexes);
    expect_bad(b, 3, "IRQ index 5");
    CHECK_FALSE(encode(cmd(SetIrqsRequest{kIrqSetDataNone | kIrqSetActionTrigger, 2, 0, 1}), 1)
                    .has_value());
}

TEST_CASE("card protocol: IO_FDS sub-regions are checked against the fds") {
    RegionIoFdsReply r{
        0, {IoFdEntry{0x1000, 4, 0, 0, 0}, IoFdEntry{0x1004, 2, 1, kIoFdDatamatch, 0xffff}}};
    auto good = enc(rep(r), 2);
    expect_bad(good, 1, "fd_index 1 but 1 fds attached");
    expect_bad(good, 3, "fd 2 is not used");
    const std::size_t e1 =
        kHeaderSize + 16 +
        40;  // second entry: offset@0 size@8 fd_index@16 type@20 flags@24 pad@28 dm@32
    auto b = good;
    patch<std::uint64_t>(b, e1 + 8, 3);
    expect_bad(b, 2, "size 3 is not 0, 1, 2, 4 or 8");
    b = good;
    patch<std::uint64_t>(b, e1 + 32, 0x10000);
    expect_bad(b, 2, "wider than 2 bytes");
    b = good;
    patch<std::uint32_t>(b, e1 + 20, 1);
    expect_bad(b, 2, "not ioeventfd");
    b = good;
    patch<std::uint32_t>(b, e1 + 28, 1);
    expect_bad(b, 2, "padding");
    b = good;
    patch<std::uint64_t>(b, e1, ~0ull - 1);
    expect_bad(b, 2, "overflows");
    b = good;
    patch<std::uint32_t>(b, kHeaderSize + 12, 3);  // count no longer matches the payload
    expect_bad(b, 2, "3 sub-regions need 136 bytes");
    patch<std::uint32_t>(b, kHeaderSize + 12, 0xffff'ffff);
    expect_bad(b, 2, "sub-regions need");
    b = good;
    patch<std::uint32_t>(b, kHeaderSize, 16);
    expect_bad(b, 2, "argsz 16");
}

TEST_CASE("card protocol: request fields that must be zero, reply limits, VERSION caps") {
    auto info = enc(cmd(RegionInfoRequest{1}));
    patch<std::uint64_t>(info, kHeaderSize + 16, 0x1000);
    expect_bad(info, 0, "must be zero");
    auto rinfo = enc(rep(RegionInfoReply{0, kRegionFlagRead, 0x1000, 0}));
    patch<std::uint32_t>(rinfo, kHeaderSize + 4, kRegionFlagRead | kRegionFlagCaps);
    expect_bad(rinfo, 0, "capability chains");
    patch<std::uint32_t>(rinfo, kHeaderSize + 4, kRegionFlagRead | kRegionFlagMmap);
    expect_bad(rinfo, 0, "with 0 fds attached");
    CHECK(decode(rinfo, 1).has_value());
    auto dev = enc(rep(DeviceGetInfoReply{kDeviceFlagPci, 9, 5}));
    patch<std::uint32_t>(dev, kHeaderSize + 8, 1000);
    expect_bad(dev, 0, "1000 regions");

    VersionInfo v;
    auto ver = enc(cmd(VersionRequest{v}));
    // Payload: major@0 minor@2 max_msg_size@4 max_msg_fds@8 max_data_xfer@12 max_dma_maps@16.
    auto b = ver;
    patch<std::uint32_t>(b, kHeaderSize + 8, 0);
    expect_bad(b, 0, "max_msg_fds 0");
    b = ver;
    patch<std::uint32_t>(b, kHeaderSize + 4, 100);
    expect_bad(b, 0, "max_msg_size 100");
    b = ver;
    patch<std::uint32_t>(b, kHeaderSize + 12, 1u << 20);
    expect_bad(b, 0, "max_data_xfer");
}

TEST_CASE("card protocol: version negotiation takes the smaller of each") {
    VersionInfo vmm, card;
    vmm.minor = 2;
    vmm.caps.max_msg_fds = 32;
    card.caps.max_msg_size = 8192;
    card.caps.max_data_xfer = 1024;
    auto a = negotiate(vmm, card);
    auto b = negotiate(card, vmm);
    REQUIRE((a && b));
    CHECK(*a == *b);
    CHECK(a->minor == 0);
    CHECK(a->caps.max_msg_fds == 32);
    CHECK(a->caps.max_msg_size == 8192);
    CHECK(a->caps.max_data_xfer == 1024);
    card.major = kProtocolMajor + 1;
    auto bad = negotiate(vmm, card);
    REQUIRE_FALSE(bad.has_value());
    CHECK(bad.error().errno_value == ENOTSUP);
}

TEST_CASE("card protocol: recv_message closes the fds of a message it rejects") {
    auto [a, b] = socket_pair();
    auto ev = EventFd::create();
    REQUIRE(ev.has_value());
    const std::size_t before = open_fd_count();
    int fds[] = {ev->fd(), ev->fd()};
    REQUIRE(a.send(enc(cmd(DeviceResetRequest{})), fds));  // RESET takes no fds
    auto r = recv_message(b, {}, 1000);
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().message.find("2 fds attached, expected 0") != std::string::npos);
    CHECK(open_fd_count() == before);
}

// ---- DMA map table ----

TEST_CASE("dma map table: overlaps are refused, adjacency is fine, unmap must be exact") {
    DmaMapTable t(4);
    REQUIRE(t.map(dma(0x10000, 0x10000, 0)));
    CHECK(t.map(dma(0x20000, 0x1000, 0x10000)).has_value());  // adjacent above
    CHECK(t.map(dma(0xf000, 0x1000, 0x11000)).has_value());   // adjacent below
    for (auto [addr, size] : {std::pair{0x10000ull, 0x1000ull},
                              {0x1f000ull, 0x2000ull},
                              {0x8000ull, 0x9000ull},
                              {0x0ull, 0x100000ull},
                              {0x18000ull, 0x1000ull}}) {
        auto s = t.map(dma(addr, size, 0x40000));
        REQUIRE_FALSE(s.has_value());
        CHECK(s.error().errno_value == EEXIST);
        CHECK(s.error().message.find("overlaps") != std::string::npos);
    }
    CHECK(t.size() == 3);
    CHECK(t.map(dma(0x1000, 0x1000, 0x1000)).has_value());
    auto full = t.map(dma(0x100000, 0x1000, 0x2000));
    REQUIRE_FALSE(full.has_value());
    CHECK(full.error().errno_value == ENOSPC);
    CHECK_FALSE(t.map(dma(0x200000, 0x800, 0)).has_value());  // misaligned

    REQUIRE(t.find(GuestAddr(0x1fff8), 8) != nullptr);
    CHECK(t.find(GuestAddr(0x1fff8), 8)->addr == GuestAddr(0x10000));
    CHECK(t.find(GuestAddr(0x1fff8), 16) == nullptr);  // straddles two mappings
    CHECK(t.find(GuestAddr(0x2000), 1) == nullptr);
    CHECK(t.find(GuestAddr(~0ull), 2) == nullptr);

    auto partial = t.unmap(GuestAddr(0x10000), 0x1000);
    REQUIRE_FALSE(partial.has_value());
    CHECK(partial.error().errno_value == ENOENT);
    CHECK_FALSE(t.unmap(GuestAddr(0x11000), 0xf000).has_value());
    CHECK(t.size() == 4);
    REQUIRE(t.unmap(GuestAddr(0x10000), 0x10000));
    CHECK(t.size() == 3);
    CHECK(t.map(dma(0x18000, 0x1000, 0x40000)).has_value());  // the hole is free again
}

TEST_CASE("dma map table: its regions rebuild guest memory from a received memfd") {
    auto vm =
        GuestMemory::create({{GuestAddr(0), 0x20000, 0}, {GuestAddr(0x100000), 0x10000, 0x20000}});
    REQUIRE(vm.has_value());
    REQUIRE(vm->write_obj(GuestAddr(0x100010), std::uint64_t{0xfeedface}));

    auto [vmm_end, card_end] = socket_pair();
    for (const auto& r : vm->table().regions()) {
        int fds[] = {vm->memfd().fd()};
        REQUIRE(send_message(
            vmm_end, cmd(DmaMapRequest{kDmaRead | kDmaWrite, r.fd_offset, r.base, r.size}), fds));
    }
    DmaMapTable table;
    UniqueFd ram;
    for (int i = 0; i < 2; ++i) {
        auto m = recv_message(card_end, {}, 1000);
        REQUIRE(m.has_value());
        REQUIRE(table.map(std::get<DmaMapRequest>(m->msg.body)));
        ram = std::move(m->fds[0]);
    }
    auto regions = table.memory_regions();
    REQUIRE(regions.size() == 2);
    CHECK(regions[1].base == GuestAddr(0x100000));
    CHECK(regions[1].fd_offset == 0x20000);
    auto memfd = MemFd::adopt(std::move(ram));
    REQUIRE(memfd.has_value());
    auto card = GuestMemory::attach(std::move(*memfd), regions);
    REQUIRE_MESSAGE(card.has_value(), card.error().message);
    auto v = card->read_obj<std::uint64_t>(GuestAddr(0x100010));
    REQUIRE(v.has_value());
    CHECK(*v == 0xfeedface);
}
