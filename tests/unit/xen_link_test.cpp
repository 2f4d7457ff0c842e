// The vmm <-> dom0 link codec: round trips and what decode refuses.
#include <doctest/doctest.h>

#include <cstring>

#include "xen_model/abi/xen_abi.hpp"
#include "xen_model/link/dom0_link_codec.hpp"

using namespace xen_model::link;
using common::GuestAddr;
using common::MemoryRegion;

namespace {

constexpr std::uint64_t kMiB = 1 << 20;

// 16 MiB of RAM at 0, the 4-page special area (store page, then 2 grant frames elsewhere).
AttachMsg good_attach() {
    AttachMsg a;
    a.vcpus = 2;
    a.name = "i-0123456789";
    a.regions = {
        {MemoryRegion{GuestAddr(0), 16 * kMiB, 0}, RegionKind::Ram},
        {MemoryRegion{GuestAddr(xen_model::abi::kSpecialAreaGpa), xen_model::abi::kSpecialAreaSize, 16 * kMiB},
         RegionKind::Special},
        {MemoryRegion{GuestAddr(0xf0000000), 2 * 4096, 16 * kMiB + xen_model::abi::kSpecialAreaSize},
         RegionKind::Special},
    };
    a.memfd_size = 16 * kMiB + xen_model::abi::kSpecialAreaSize + 2 * 4096;
    a.store_gpa = xen_model::abi::kXenstorePfn << 12;
    a.store_port = 1;
    a.grant_frames = 2;
    a.grant_table_gpa = 0xf0000000;
    a.volumes = {"/tmp/a.img,size=64M", "ram0,ram,size=1M,iops=unlimited"};
    return a;
}

std::vector<std::byte> bytes_of(const Message& m) {
    auto b = encode(m);
    REQUIRE(b.has_value());
    return *b;
}

template <typename W>
W wire(const std::vector<std::byte>& b) {
    W w;
    REQUIRE(b.size() == sizeof(W));
    std::memcpy(&w, b.data(), sizeof(W));
    return w;
}

template <typename W>
std::vector<std::byte> raw(const W& w) {
    std::vector<std::byte> b(sizeof(W));
    std::memcpy(b.data(), &w, sizeof(W));
    return b;
}

}  // namespace

TEST_CASE("link: every message round-trips") {
    const AttachMsg a = good_attach();
    auto d = decode(bytes_of(a), 3);
    REQUIRE(d.has_value());
    const auto& a2 = std::get<AttachMsg>(*d);
    CHECK(a2.name == a.name);
    CHECK(a2.vcpus == 2);
    CHECK(a2.regions.size() == 3);
    CHECK(a2.regions[1].kind == RegionKind::Special);
    CHECK(a2.regions[2].region.fd_offset == a.regions[2].region.fd_offset);
    CHECK(a2.volumes == a.volumes);
    CHECK(a2.store_gpa == a.store_gpa);
    CHECK(a2.grant_frames == 2);
    CHECK(a2.grant_table_gpa == 0xf0000000);
    CHECK(fds_for(*d) == 3);

    auto r = decode(bytes_of(AttachReplyMsg{0, 7, ""}), 0);
    REQUIRE(r.has_value());
    CHECK(std::get<AttachReplyMsg>(*r).domid == 7);
    auto re = decode(bytes_of(AttachReplyMsg{-22, 0, "no such volume"}), 0);
    REQUIRE(re.has_value());
    CHECK(std::get<AttachReplyMsg>(*re).message == "no such volume");

    auto b = decode(bytes_of(BindMsg{9, 12}), 2);
    REQUIRE(b.has_value());
    CHECK(std::get<BindMsg>(*b).request_id == 9);
    CHECK(std::get<BindMsg>(*b).guest_port == 12);
    auto br = decode(bytes_of(BindReplyMsg{9, 12, -16}), 0);
    REQUIRE(br.has_value());
    CHECK(std::get<BindReplyMsg>(*br).status == -16);
    CHECK(std::get<UnbindMsg>(*decode(bytes_of(UnbindMsg{5}), 0)).guest_port == 5);
    CHECK(std::get<PortClosedMsg>(*decode(bytes_of(PortClosedMsg{6}), 0)).guest_port == 6);
}

TEST_CASE("link: sizes, types and fd counts are checked") {
    auto b = bytes_of(BindMsg{1, 3});
    CHECK_FALSE(decode(std::span(b).first(4), 2).has_value());  // shorter than the header
    CHECK_FALSE(decode(b, 0).has_value());                      // Bind needs two fds
    CHECK_FALSE(decode(b, 3).has_value());
    auto longer = b;
    longer.push_back(std::byte{0});
    CHECK_FALSE(decode(longer, 2).has_value());                 // received more than the header says
    auto w = wire<Bind>(b);
    w.hdr.size = sizeof(Bind) + 8;
    CHECK_FALSE(decode(raw(w), 2).has_value());
    w.hdr.size = sizeof(Bind);
    w.hdr.type = 99;
    auto e = decode(raw(w), 2);
    REQUIRE_FALSE(e.has_value());
    CHECK(e.error().kind == common::ErrorKind::Protocol);
    w.hdr.type = 0;
    CHECK_FALSE(decode(raw(w), 2).has_value());
    // A valid header of one type with the body size of another.
    auto u = wire<Unbind>(bytes_of(UnbindMsg{2}));
    u.hdr.type = static_cast<std::uint32_t>(MsgType::BindReply);
    CHECK_FALSE(decode(raw(u), 0).has_value());
    CHECK_FALSE(decode(bytes_of(AttachReplyMsg{0, 1, ""}), 1).has_value());  // unexpected fd
}

TEST_CASE("link: field rules (ports, pads, statuses)") {
    auto w = wire<Bind>(bytes_of(BindMsg{1, 3}));
    w.guest_port = 0;
    CHECK_FALSE(decode(raw(w), 2).has_value());
    w.guest_port = kMaxPort + 1;
    CHECK_FALSE(decode(raw(w), 2).has_value());
    auto u = wire<Unbind>(bytes_of(UnbindMsg{2}));
    u.pad = 1;
    CHECK_FALSE(decode(raw(u), 0).has_value());
    auto r = wire<AttachReply>(bytes_of(AttachReplyMsg{0, 3, ""}));
    r.domid = 0;
    CHECK_FALSE(decode(raw(r), 0).has_value());  // success without a domid
    r.status = 5;
    CHECK_FALSE(decode(raw(r), 0).has_value());  // positive status
    CHECK_FALSE(encode(BindMsg{1, 0}).has_value());
    CHECK_FALSE(encode(AttachReplyMsg{0, 0, ""}).has_value());
    CHECK(encode(AttachReplyMsg{-5, 0, std::string(500, 'x')}).has_value());  // long reasons are cut
}

TEST_CASE("link: strings must be NUL-terminated and clean") {
    auto w = wire<Attach>(bytes_of(good_attach()));
    auto bad = w;
    std::memset(bad.name, 'a', sizeof bad.name);
    CHECK_FALSE(decode(raw(bad), 3).has_value());
    bad = w;
    bad.name[sizeof bad.name - 1] = 'x';  // bytes after the NUL
    CHECK_FALSE(decode(raw(bad), 3).has_value());
    bad = w;
    std::memset(bad.volumes[0], 'v', kVolumeSpecMax);
    CHECK_FALSE(decode(raw(bad), 3).has_value());
    bad = w;
    std::strcpy(bad.volumes[5], "/tmp/unused");  // text in an unused slot
    CHECK_FALSE(decode(raw(bad), 3).has_value());
    bad = w;
    bad.name[0] = '\0';
    CHECK_FALSE(decode(raw(bad), 3).has_value());  // empty name
    auto r = wire<AttachReply>(bytes_of(AttachReplyMsg{-1, 0, "x"}));
    std::memset(r.message, 'm', sizeof r.message);
    CHECK_FALSE(decode(raw(r), 0).has_value());
    AttachMsg a = good_attach();
    a.name = std::string(kNameMax, 'n');
    CHECK_FALSE(encode(a).has_value());
    a = good_attach();
    a.volumes[0] = std::string("a\0b", 3);
    CHECK_FALSE(encode(a).has_value());
}

TEST_CASE("link: Attach counts and the region table") {
    auto w = wire<Attach>(bytes_of(good_attach()));
    auto bad = w;
    bad.version = 2;
    CHECK_FALSE(decode(raw(bad), 3).has_value());
    bad = w;
    bad.region_count = 0;
    CHECK_FALSE(decode(raw(bad), 3).has_value());
    bad = w;
    bad.region_count = kMaxRegions + 1;
    CHECK_FALSE(decode(raw(bad), 3).has_value());
    bad = w;
    bad.region_count = 2;  // slot 2 still holds a region
    CHECK_FALSE(decode(raw(bad), 3).has_value());
    bad = w;
    bad.volume_count = kMaxVolumes + 1;
    CHECK_FALSE(decode(raw(bad), 3).has_value());
    bad = w;
    bad.volume_count = 3;  // slot 2 is empty
    CHECK_FALSE(decode(raw(bad), 3).has_value());
    bad = w;
    bad.regions[1].base = 0x800000;  // overlaps the RAM region
    CHECK_FALSE(decode(raw(bad), 3).has_value());
    bad = w;
    bad.regions[1].fd_offset = 0;  // shares memfd bytes with RAM
    CHECK_FALSE(decode(raw(bad), 3).has_value());
    bad = w;
    bad.memfd_size = 8 * kMiB;  // regions past the memfd
    CHECK_FALSE(decode(raw(bad), 3).has_value());
    bad = w;
    bad.regions[0].size = 0x1234;  // not page aligned
    CHECK_FALSE(decode(raw(bad), 3).has_value());
    bad = w;
    bad.regions[0].kind = 7;
    CHECK_FALSE(decode(raw(bad), 3).has_value());
    bad = w;
    bad.regions[0].kind = 1;  // no RAM at all
    CHECK_FALSE(decode(raw(bad), 3).has_value());
    bad = w;
    bad.regions[0].base = ~0ull & ~0xfffull;  // overflows
    CHECK_FALSE(decode(raw(bad), 3).has_value());
    bad = w;
    bad.vcpus = 0;
    CHECK_FALSE(decode(raw(bad), 3).has_value());
}

TEST_CASE("link: the store page and grant frames must be Special pages") {
    auto w = wire<Attach>(bytes_of(good_attach()));
    auto bad = w;
    bad.store_gpa = 0x1000;  // RAM
    CHECK_FALSE(decode(raw(bad), 3).has_value());
    bad = w;
    bad.store_gpa += 8;  // unaligned
    CHECK_FALSE(decode(raw(bad), 3).has_value());
    bad = w;
    bad.grant_table_gpa = 0x2000;  // RAM
    CHECK_FALSE(decode(raw(bad), 3).has_value());
    bad = w;
    bad.grant_frames = 3;  // runs off its region
    CHECK_FALSE(decode(raw(bad), 3).has_value());
    bad = w;
    bad.grant_frames = 0;
    CHECK_FALSE(decode(raw(bad), 3).has_value());
    bad = w;
    bad.grant_table_gpa = bad.store_gpa;  // the same page as the store ring
    bad.grant_frames = 1;
    CHECK_FALSE(decode(raw(bad), 3).has_value());
    bad = w;
    bad.store_port = 0;
    CHECK_FALSE(decode(raw(bad), 3).has_value());
}
