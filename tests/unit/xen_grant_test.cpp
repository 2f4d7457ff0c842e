// dom0's grant-table checks (Xen §3.6): who may map what, and that the in-use flags are set while
// a mapping lives and cleared when it goes.
#include <doctest/doctest.h>

#include "xen_model/abi/xen_abi.hpp"
#include "xen_model/grant/grant_table.hpp"

using namespace xen_model;
using common::GuestAddr;
using common::GuestMemory;
using common::MemoryRegion;
using grant::Access;

namespace {

constexpr std::uint64_t kRamSize = 1 << 20;
constexpr std::uint64_t kTableGpa = 0xf0000000;
constexpr std::uint64_t kStoreGpa = abi::kXenstorePfn << 12;

struct Fixture {
    GuestMemory mem = [] {
        auto m = GuestMemory::create({{GuestAddr(0), kRamSize, 0},
                                      {GuestAddr(kStoreGpa), 4096, 0},
                                      {GuestAddr(kTableGpa), 4096, 0}});
        REQUIRE(m.has_value());
        return std::move(*m);
    }();
    std::unique_ptr<grant::GrantTable> table = [this] {
        auto t = grant::GrantTable::create(mem, GuestAddr(kTableGpa), 1, {{GuestAddr(0), kRamSize, 0}});
        REQUIRE(t.has_value());
        return std::move(*t);
    }();

    void set(std::uint32_t ref, std::uint16_t flags, std::uint16_t domid, std::uint32_t frame) const {
        REQUIRE(mem.write_obj(GuestAddr(kTableGpa + ref * 8), abi::GrantEntryV1{flags, domid, frame}));
    }
    std::uint16_t flags(std::uint32_t ref) const {
        return mem.read_obj<abi::GrantEntryV1>(GuestAddr(kTableGpa + ref * 8))->flags;
    }
};

}  // namespace

TEST_CASE("grant: a good grant maps its page and the in-use flags follow the mapping") {
    Fixture f;
    f.set(8, abi::kGtfPermitAccess, 0, 0x10);
    {
        auto m = f.table->map(8, Access::Write);
        REQUIRE(m.has_value());
        CHECK(m->gpa().value() == 0x10000);
        CHECK(m->page().size() == 4096);
        CHECK(f.flags(8) == (abi::kGtfPermitAccess | abi::kGtfReading | abi::kGtfWriting));
        m->page()[5] = std::byte{0xab};
        CHECK(*f.mem.read_obj<std::uint8_t>(GuestAddr(0x10005)) == 0xab);
        CHECK(f.table->pinned() == 1);
    }
    CHECK(f.flags(8) == abi::kGtfPermitAccess);
    CHECK(f.table->pinned() == 0);

    auto r = f.table->map(8, Access::Read);
    REQUIRE(r.has_value());
    CHECK(f.flags(8) == (abi::kGtfPermitAccess | abi::kGtfReading));
    r->release();
    CHECK(f.flags(8) == abi::kGtfPermitAccess);
    CHECK_FALSE(r->valid());
}

TEST_CASE("grant: several mappings of one ref share the flags") {
    Fixture f;
    f.set(9, abi::kGtfPermitAccess, 0, 0x11);
    auto a = f.table->map(9, Access::Read);
    auto b = f.table->map(9, Access::Write);
    REQUIRE(a.has_value());
    REQUIRE(b.has_value());
    CHECK(f.flags(9) == (abi::kGtfPermitAccess | abi::kGtfReading | abi::kGtfWriting));
    b->release();
    CHECK(f.flags(9) == (abi::kGtfPermitAccess | abi::kGtfReading));  // the reader still uses it
    grant::GrantMapping moved = std::move(*a);
    CHECK(f.flags(9) == (abi::kGtfPermitAccess | abi::kGtfReading));
    moved.release();
    CHECK(f.flags(9) == abi::kGtfPermitAccess);
}

TEST_CASE("grant: refusals leave the entry untouched") {
    Fixture f;
    auto refused = [&](std::uint32_t ref, Access acc) {
        const auto before = f.flags(ref);
        auto m = f.table->map(ref, acc);
        CHECK_FALSE(m.has_value());
        if (!m) CHECK(m.error().kind == common::ErrorKind::GuestFault);
        CHECK(f.flags(ref) == before);
        CHECK(f.table->pinned() == 0);
    };
    SUBCASE("granted to another domain") {
        f.set(10, abi::kGtfPermitAccess, 3, 0x10);
        refused(10, Access::Read);
    }
    SUBCASE("not permitted") {
        f.set(10, abi::kGtfInvalid, 0, 0x10);
        refused(10, Access::Read);
        f.set(10, 2, 0, 0x10);  // GTF_accept_transfer
        refused(10, Access::Read);
    }
    SUBCASE("read-only grant for a page dom0 writes (a blkif READ)") {
        f.set(10, abi::kGtfPermitAccess | abi::kGtfReadonly, 0, 0x10);
        refused(10, Access::Write);
        auto ok = f.table->map(10, Access::Read);  // reading it is fine
        CHECK(ok.has_value());
    }
    SUBCASE("sub-page") {
        f.set(10, abi::kGtfPermitAccess | abi::kGtfSubPage, 0, 0x10);
        refused(10, Access::Read);
    }
    SUBCASE("frame outside RAM") {
        f.set(10, abi::kGtfPermitAccess, 0, static_cast<std::uint32_t>(kRamSize >> 12));  // just past RAM
        refused(10, Access::Write);
        f.set(10, abi::kGtfPermitAccess, 0, 0xffffffff);
        refused(10, Access::Write);
    }
    SUBCASE("frame inside a Special region") {
        f.set(10, abi::kGtfPermitAccess, 0, static_cast<std::uint32_t>(kTableGpa >> 12));  // the table itself
        refused(10, Access::Write);
        f.set(10, abi::kGtfPermitAccess, 0, static_cast<std::uint32_t>(abi::kXenstorePfn));
        refused(10, Access::Read);
    }
    SUBCASE("ref past the table") {
        auto m = f.table->map(abi::kGrantEntriesPerFrame, Access::Read);
        CHECK_FALSE(m.has_value());
        CHECK_FALSE(f.table->map(0xffffffff, Access::Read).has_value());
    }
    CHECK(f.table->stats().maps <= 1);
}

TEST_CASE("grant: the table must be in guest memory") {
    Fixture f;
    CHECK_FALSE(grant::GrantTable::create(f.mem, GuestAddr(kTableGpa), 2, {}).has_value());  // past the region
    CHECK_FALSE(grant::GrantTable::create(f.mem, GuestAddr(kTableGpa + 8), 1, {}).has_value());
    CHECK_FALSE(grant::GrantTable::create(f.mem, GuestAddr(kTableGpa), 0, {}).has_value());
}
