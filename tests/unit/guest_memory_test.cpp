#include <doctest/doctest.h>

#include <fcntl.h>
#include <unistd.h>

#include "common/guest_memory.hpp"

using common::GuestAddr;
using common::GuestMemory;
using common::MemoryRegion;

namespace {
GuestMemory two_regions() {
    // 64 KiB at 0 and 64 KiB at 1 MiB: a hole between them.
    auto m = GuestMemory::create({{GuestAddr(0), 0x10000, 0}, {GuestAddr(0x100000), 0x10000, 0}});
    REQUIRE(m.has_value());
    return std::move(*m);
}
}  // namespace

TEST_CASE("guest memory: accesses inside a region succeed and round-trip") {
    auto mem = two_regions();
    REQUIRE(mem.write_obj(GuestAddr(0x1000), std::uint64_t{0x1122334455667788}));
    auto v = mem.read_obj<std::uint64_t>(GuestAddr(0x1000));
    REQUIRE(v.has_value());
    CHECK(*v == 0x1122334455667788);
    CHECK(mem.slice(GuestAddr(0x100000), 0x10000).has_value());
    CHECK(mem.slice(GuestAddr(0xfff8), 8).has_value());
}

TEST_CASE("guest memory: unmapped, cross-region and overflowing ranges are refused") {
    auto mem = two_regions();
    CHECK_FALSE(mem.slice(GuestAddr(0x10000), 1).has_value());          // in the hole
    CHECK_FALSE(mem.slice(GuestAddr(0xfff8), 9).has_value());           // runs off region 0
    CHECK_FALSE(mem.slice(GuestAddr(0xffff), 0x100000).has_value());    // spans the hole
    CHECK_FALSE(mem.slice(GuestAddr(0x10fff9), 8).has_value());         // runs off region 1
    CHECK_FALSE(mem.slice(GuestAddr(~0ull - 3), 8).has_value());        // wraps around
    CHECK_FALSE(mem.slice(GuestAddr(0x1000), ~0ull).has_value());       // huge length
    CHECK_FALSE(mem.read_obj<std::uint32_t>(GuestAddr(0x200000)).has_value());
    auto e = mem.slice(GuestAddr(0x10000), 4);
    REQUIRE_FALSE(e.has_value());
    CHECK(e.error().kind == common::ErrorKind::OutOfRange);
    CHECK(e.error().message.find("0x10000") != std::string::npos);
}

TEST_CASE("guest memory: GuestAddr checked_add detects overflow") {
    GuestAddr out;
    CHECK(GuestAddr(10).checked_add(5, out));
    CHECK(out.value() == 15);
    CHECK_FALSE(GuestAddr(~0ull).checked_add(1, out));
}

TEST_CASE("region table: rejects empty, unaligned, overlapping and oversized regions") {
    using common::RegionTable;
    CHECK_FALSE(RegionTable::validate({}, 0x1000).has_value());
    CHECK_FALSE(RegionTable::validate({{GuestAddr(0), 0, 0}}, 0x1000).has_value());
    CHECK_FALSE(RegionTable::validate({{GuestAddr(0x10), 0x1000, 0}}, 0x1000).has_value());
    CHECK_FALSE(RegionTable::validate({{GuestAddr(0), 0x2000, 0}}, 0x1000).has_value());
    CHECK_FALSE(RegionTable::validate({{GuestAddr(0), 0x2000, 0}, {GuestAddr(0x1000), 0x1000, 0x2000}}, 0x4000)
                    .has_value());
    CHECK_FALSE(RegionTable::validate({{GuestAddr(0), 0x1000, 0}, {GuestAddr(0x4000), 0x1000, 0}}, 0x4000)
                    .has_value());  // two regions on the same memfd bytes
    CHECK_FALSE(RegionTable::validate({{GuestAddr(~0ull & ~0xfffull), 0x2000, 0}}, 0x2000).has_value());
    auto ok = RegionTable::validate({{GuestAddr(0x4000), 0x1000, 0x1000}, {GuestAddr(0), 0x1000, 0}}, 0x2000);
    REQUIRE(ok.has_value());
    CHECK(ok->regions().front().base.value() == 0);  // sorted
    CHECK(ok->total_size() == 0x2000);
}

TEST_CASE("guest memory: another view rebuilt from the memfd sees the same bytes") {
    auto mem = two_regions();
    REQUIRE(mem.write_obj(GuestAddr(0x100010), std::uint32_t{0xfeedbeef}));
    // As the card or dom0 would: receive the fd (here: dup it) and the region table.
    auto fd = common::MemFd::adopt(common::UniqueFd(::dup(mem.memfd().fd())));
    REQUIRE(fd.has_value());
    auto other = GuestMemory::attach(std::move(*fd), mem.table().regions());
    REQUIRE(other.has_value());
    auto v = other->read_obj<std::uint32_t>(GuestAddr(0x100010));
    REQUIRE(v.has_value());
    CHECK(*v == 0xfeedbeef);
    REQUIRE(other->write_obj(GuestAddr(0x20), std::uint16_t{0xabcd}));
    CHECK(*mem.read_obj<std::uint16_t>(GuestAddr(0x20)) == 0xabcd);
    // A table that does not fit the received memfd is refused.
    auto fd2 = common::MemFd::adopt(common::UniqueFd(::dup(mem.memfd().fd())));
    REQUIRE(fd2.has_value());
    CHECK_FALSE(GuestMemory::attach(std::move(*fd2), {{GuestAddr(0), 0x40000, 0}}).has_value());
}

TEST_CASE("RAII: UniqueFd closes on destruction and moves ownership") {
    int raw;
    {
        auto f = common::UniqueFd::open("/dev/null", O_RDONLY);
        REQUIRE(f.has_value());
        raw = f->get();
        common::UniqueFd g = std::move(*f);
        CHECK_FALSE(f->valid());
        CHECK(g.get() == raw);
    }
    CHECK(::fcntl(raw, F_GETFD) == -1);
    auto missing = common::UniqueFd::open("/nonexistent/x", O_RDONLY);
    REQUIRE_FALSE(missing.has_value());
    CHECK(missing.error().message.find("/nonexistent/x") != std::string::npos);
}

TEST_CASE("RAII: EventFd counts signals and reads back zero when empty") {
    auto e = common::EventFd::create(true);
    REQUIRE(e.has_value());
    CHECK(*e->consume() == 0);
    REQUIRE(e->signal(3));
    REQUIRE(e->signal());
    CHECK(*e->consume() == 4);
    CHECK(*e->consume() == 0);
}
