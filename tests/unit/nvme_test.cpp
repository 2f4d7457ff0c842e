#include <doctest/doctest.h>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <vector>

#include "nvme/command.hpp"
#include "nvme/identify.hpp"
#include "nvme/prp.hpp"
#include "nvme/queue.hpp"
#include "nvme/spec.hpp"

using namespace nitro_card::nvme;
using common::GuestAddr;

namespace {

constexpr std::uint64_t kPage = 4096;

// Guest RAM for the walker: three regions with a hole, and host offsets chosen so that regions
// B and C are adjacent in guest space but not in host space.
//   A: gpa [0, 4 MiB)                 host [0, 4 MiB)
//   hole: gpa [4 MiB, 5 MiB)
//   B: gpa [5 MiB, 5 MiB + 64 KiB)    host [4 MiB, 4 MiB + 64 KiB)
//   C: gpa [5 MiB + 64 KiB, +64 KiB)  host [4 MiB + 128 KiB, ...)
class FakeRam final : public Translator {
public:
    static constexpr std::uint64_t kHole = 0x400000, kB = 0x500000, kC = 0x510000;

    FakeRam() : ram_(0x430000) {}

    common::Result<std::span<std::byte>> slice(GuestAddr gpa, std::uint64_t len) const override {
        ++calls;
        for (const auto& r : regions_) {
            if (gpa.value() < r.gpa) continue;
            const std::uint64_t off = gpa.value() - r.gpa;
            if (off < r.size && len <= r.size - off)
                return std::span<std::byte>(ram_.data() + r.host + off, len);
        }
        return common::fail(common::Error::out_of_range("unmapped"));
    }

    void put64(std::uint64_t gpa, std::uint64_t v) {
        auto s = slice(GuestAddr(gpa), 8);
        REQUIRE(s.has_value());
        std::memcpy(s->data(), &v, 8);
    }
    // Writes a PRP list of entries starting at gpa.
    void put_list(std::uint64_t gpa, const std::vector<std::uint64_t>& entries) {
        for (std::size_t i = 0; i < entries.size(); ++i) put64(gpa + 8 * i, entries[i]);
    }
    std::byte* host(std::uint64_t gpa) { return slice(GuestAddr(gpa), 1).value().data(); }

    mutable int calls = 0;

private:
    struct Region {
        std::uint64_t gpa, size, host;
    };
    std::vector<Region> regions_{{0, kHole, 0}, {kB, 0x10000, 0x400000}, {kC, 0x10000, 0x420000}};
    mutable std::vector<std::byte> ram_;
};

std::uint64_t total(const SegmentList& s) {
    return std::accumulate(s.begin(), s.end(), std::uint64_t{0},
                           [](std::uint64_t a, const Segment& g) { return a + g.host.size(); });
}

// n pages from first_gpa, each step bytes after the previous one.
std::vector<std::uint64_t> pages(std::uint64_t first_gpa, std::size_t n,
                                 std::uint64_t step = kPage) {
    std::vector<std::uint64_t> v(n);
    for (std::size_t i = 0; i < n; ++i) v[i] = first_gpa + i * step;
    return v;
}

// The same n pages in descending order: no page follows the one before it, so nothing merges.
std::vector<std::uint64_t> pages_descending(std::uint64_t first_gpa, std::size_t n) {
    auto v = pages(first_gpa, n);
    std::reverse(v.begin(), v.end());
    return v;
}

PrpLimits limits(std::uint64_t max_transfer = 512 * 1024) {
    return PrpLimits{kPage, max_transfer};
}

}  // namespace

// ---- spec data -------------------------------------------------------------------------------

TEST_CASE("nvme spec: entry and identify layouts have the spec's sizes") {
    CHECK(sizeof(SqEntry) == 64);
    CHECK(sizeof(CqEntry) == 16);
    CHECK(sizeof(IdentifyController) == 4096);
    CHECK(sizeof(IdentifyNamespace) == 4096);
    CHECK(offsetof(IdentifyController, oacs) == 256);
    CHECK(offsetof(IdentifyController, subnqn) == 768);
    CHECK(offsetof(IdentifyNamespace, lbaf) == 128);
    CHECK(sizeof(SmartLog) == 512);
    CHECK(sizeof(ErrorLogEntry) == 64);
    CHECK(sizeof(DsmRange) == 16);
}

TEST_CASE("nvme spec: register fields compose CAP/CC/CSTS as Linux decodes them") {
    const std::uint64_t capv = cap::MQES.put(1023) | cap::CQR.put(1) | cap::TO.put(20) |
                               cap::DSTRD.put(0) | cap::CSS.put(cap::CSS_NVM) | cap::MPSMIN.put(0) |
                               cap::MPSMAX.put(4);
    CHECK((capv & 0xffff) == 1023);      // NVME_CAP_MQES
    CHECK(((capv >> 24) & 0xff) == 20);  // NVME_CAP_TIMEOUT
    CHECK(((capv >> 37) & 0xff) == 1);   // NVME_CAP_CSS: NVM
    CHECK(((capv >> 52) & 0xf) == 4);    // NVME_CAP_MPSMAX
    CHECK(cap::MQES.get(capv) == 1023);

    // What Linux writes to enable: EN | CSS NVM | MPS 0 | IOSQES 6 | IOCQES 4.
    const std::uint32_t ccv = 1u | 6u << 16 | 4u << 20;
    CHECK(cc::EN.get(ccv) == 1);
    CHECK(cc::IOSQES.get(ccv) == 6);
    CHECK(cc::IOCQES.get(ccv) == 4);
    CHECK(page_size_from_mps(cc::MPS.get(ccv)) == 4096);
    CHECK(cc::SHN.replace(ccv, cc::SHN_NORMAL) == (ccv | 1u << 14));
    CHECK(csts::SHST.put(csts::SHST_COMPLETE) == 0x8);
    CHECK(aqa::ACQS.get(0x001f001f) == 31);
    CHECK(version(1, 4, 0) == 0x10400);
}

TEST_CASE("nvme spec: register lookup and doorbell offsets") {
    REQUIRE(find_register(reg::CC) != nullptr);
    CHECK(find_register(reg::CC)->name == "CC");
    CHECK(find_register(0x04)->name == "CAP");  // upper half of the 64-bit CAP
    CHECK(find_register(0x2c)->name == "ASQ");
    CHECK(find_register(0x18) == nullptr);  // reserved
    CHECK(find_register(0x1000) == nullptr);
    CHECK(sq_tail_doorbell(0, 0) == 0x1000);
    CHECK(cq_head_doorbell(0, 0) == 0x1004);
    CHECK(sq_tail_doorbell(1, 0) == 0x1008);
    CHECK(cq_head_doorbell(1, 1) == 0x1018);
}

TEST_CASE("nvme spec: status field packs phase, SC, SCT and DNR") {
    CHECK(status_field(StatusCode::Success, true) == 0x0001);
    // Linux: (status >> 1) == NVME_SC_DNR | NVME_SC_INVALID_FIELD
    CHECK(status_field(StatusCode::InvalidField, true, true) == 0x8005);
    CHECK((status_field(StatusCode::InvalidField, false, true) >> 1) == 0x4002);
    const auto f = status_field(StatusCode::InvalidQueueIdentifier, false);
    CHECK(f == 0x0202);
    CHECK(status_type(StatusCode::InvalidQueueIdentifier) == StatusCodeType::CommandSpecific);
    CHECK(status_value(StatusCode::InvalidQueueIdentifier) == 0x01);
    CHECK(status_type(StatusCode::UnrecoveredReadError) == StatusCodeType::MediaAndDataIntegrity);
    CHECK(status_code(f) == StatusCode::InvalidQueueIdentifier);
    CHECK_FALSE(status_phase(f));
    CHECK(status_dnr(status_field(StatusCode::LbaOutOfRange, true, true)));
    CHECK(async_event_result(AsyncEventType::ErrorStatus,
                             static_cast<std::uint8_t>(ErrorEventInfo::InvalidDoorbellWriteValue),
                             LogPageId::ErrorInformation) == 0x10100);
}

TEST_CASE("nvme identify: ASCII fields are space padded and cut to fit") {
    IdentifyController id{};
    put_ascii(id.sn, "vol0123");
    CHECK(std::string_view(id.sn, 20) == "vol0123             ");
    put_ascii(id.fr, "1.0-very-long-revision");
    CHECK(std::string_view(id.fr, 8) == "1.0-very");
}

// ---- PRP walker ------------------------------------------------------------------------------

TEST_CASE("prp: a transfer inside PRP1's page keeps the offset and ignores PRP2") {
    FakeRam ram;
    auto s = map_prps(0x1010, 0xdeadbeef, 0x100, limits(), ram);
    REQUIRE(s.has_value());
    REQUIRE(s->size() == 1);
    CHECK((*s)[0].gpa == GuestAddr(0x1010));
    CHECK((*s)[0].host.size() == 0x100);
    CHECK((*s)[0].host.data() == ram.host(0x1010));

    auto to_end = map_prps(0x1800, 0xdeadbeef, 0x800, limits(), ram);
    REQUIRE(to_end.has_value());
    CHECK(total(*to_end) == 0x800);
}

TEST_CASE("prp: two pages use PRP2 as the second data page") {
    FakeRam ram;
    auto apart = map_prps(0x1800, 0x5000, 0x1000, limits(), ram);
    REQUIRE(apart.has_value());
    REQUIRE(apart->size() == 2);
    CHECK((*apart)[0].host.size() == 0x800);
    CHECK((*apart)[1].gpa == GuestAddr(0x5000));
    CHECK((*apart)[1].host.size() == 0x800);

    // Guest- and host-adjacent pages merge into one segment.
    auto adjacent = map_prps(0x1000, 0x2000, 0x2000, limits(), ram);
    REQUIRE(adjacent.has_value());
    REQUIRE(adjacent->size() == 1);
    CHECK((*adjacent)[0].host.size() == 0x2000);

    // PRP2 as a data pointer must not have an offset.
    auto bad = map_prps(0x1000, 0x2008, 0x2000, limits(), ram);
    REQUIRE_FALSE(bad.has_value());
    CHECK(bad.error() == PrpError::OffsetInvalid);
}

TEST_CASE("prp: guest-adjacent pages in different host regions stay separate") {
    FakeRam ram;
    auto s = map_prps(FakeRam::kC - kPage, FakeRam::kC, 2 * kPage, limits(), ram);
    REQUIRE(s.has_value());
    REQUIRE(s->size() == 2);
    CHECK((*s)[1].gpa == GuestAddr(FakeRam::kC));
    CHECK((*s)[1].host.data() == ram.host(FakeRam::kC));
}

TEST_CASE("prp: a list in one page, in entry order") {
    FakeRam ram;
    ram.put_list(0x8000, {0x10000, 0x12000, 0x11000});
    auto s = map_prps(0x1000, 0x8000, 4 * kPage, limits(), ram);
    REQUIRE(s.has_value());
    REQUIRE(s->size() == 4);  // no two of these pages follow each other
    CHECK((*s)[0].gpa == GuestAddr(0x1000));
    CHECK((*s)[1].gpa == GuestAddr(0x10000));
    CHECK((*s)[2].gpa == GuestAddr(0x12000));
    CHECK((*s)[3].gpa == GuestAddr(0x11000));
    CHECK((*s)[3].host.size() == kPage);
    CHECK((*s)[3].host.data() == ram.host(0x11000));
    CHECK(total(*s) == 4 * kPage);
}

TEST_CASE("prp: last list entry may be partial and PRP1 offset shortens the first page") {
    FakeRam ram;
    ram.put_list(0x8000, {0x10000, 0x20000});
    // 0x200 bytes in PRP1's page, then 0x1000 and 0x100.
    auto s = map_prps(0x1e00, 0x8000, 0x1300, limits(), ram);
    REQUIRE(s.has_value());
    REQUIRE(s->size() == 3);
    CHECK((*s)[0].host.size() == 0x200);
    CHECK((*s)[1].host.size() == 0x1000);
    CHECK((*s)[2].gpa == GuestAddr(0x20000));
    CHECK((*s)[2].host.size() == 0x100);
}

TEST_CASE("prp: a list pointer with an offset (Linux's 256-byte list blocks)") {
    FakeRam ram;
    ram.put_list(0x8f00, pages(0x30000, 8, 2 * kPage));
    auto s = map_prps(0x1000, 0x8f00, 9 * kPage, limits(), ram);
    REQUIRE(s.has_value());
    CHECK(s->size() == 9);
    CHECK(total(*s) == 9 * kPage);
    CHECK(s->back().gpa == GuestAddr(0x30000 + 7 * 2 * kPage));

    // Entries are 8 bytes: a list pointer that is not qword aligned is refused.
    auto bad = map_prps(0x1000, 0x8f04, 9 * kPage, limits(), ram);
    REQUIRE_FALSE(bad.has_value());
    CHECK(bad.error() == PrpError::OffsetInvalid);
}

TEST_CASE("prp: a full list page chains through its last entry") {
    FakeRam ram;
    // 1 page via PRP1 + 511 entries in list page 0x8000 + 3 entries in list page 0x9000.
    const std::size_t n = 511 + 3;
    auto data = pages(0x100000, n);
    std::vector<std::uint64_t> first(data.begin(), data.begin() + 511);
    first.push_back(0x9000);  // chain
    ram.put_list(0x8000, first);
    ram.put_list(0x9000, {data.begin() + 511, data.end()});
    const std::uint64_t len = (1 + n) * kPage;
    auto s = map_prps(0x100000 - kPage, 0x8000, len, limits(4 << 20), ram);
    REQUIRE(s.has_value());
    CHECK(total(*s) == len);
    REQUIRE(s->size() == 1);  // every page follows the previous one
    CHECK((*s)[0].gpa == GuestAddr(0x100000 - kPage));

    // The same chain with scattered pages gives one segment per page.
    auto scattered = pages_descending(0x100000, n);
    std::vector<std::uint64_t> first2(scattered.begin(), scattered.begin() + 511);
    first2.push_back(0x9000);
    ram.put_list(0x8000, first2);
    ram.put_list(0x9000, {scattered.begin() + 511, scattered.end()});
    auto s2 = map_prps(0x1000, 0x8000, len, limits(4 << 20), ram);
    REQUIRE(s2.has_value());
    CHECK(s2->size() == 1 + n);
    CHECK(s2->back().gpa == GuestAddr(scattered.back()));
}

TEST_CASE("prp: a list page that fits exactly uses its last entry as data") {
    FakeRam ram;
    auto data = pages_descending(0x100000, 512);
    ram.put_list(0x8000, data);
    auto s = map_prps(0x1000, 0x8000, 513 * kPage, limits(4 << 20), ram);
    REQUIRE(s.has_value());
    CHECK(s->size() == 513);
    CHECK(s->back().gpa == GuestAddr(data.back()));
}

TEST_CASE("prp: a list starting in the last slot of a page chains at once") {
    FakeRam ram;
    ram.put64(0x8ff8, 0x9000);
    ram.put_list(0x9000, {0x20000, 0x22000});
    auto s = map_prps(0x1000, 0x8ff8, 3 * kPage, limits(), ram);
    REQUIRE(s.has_value());
    REQUIRE(s->size() == 3);
    CHECK((*s)[2].gpa == GuestAddr(0x22000));
}

TEST_CASE("prp: misaligned PRP1 and list entries are PRP Offset Invalid") {
    FakeRam ram;
    auto low_bits = map_prps(0x1002, 0, 0x10, limits(), ram);
    REQUIRE_FALSE(low_bits.has_value());
    CHECK(low_bits.error() == PrpError::OffsetInvalid);
    CHECK(to_status(low_bits.error()) == StatusCode::PrpOffsetInvalid);
    CHECK(map_prps(0x1004, 0, 0x10, limits(), ram).has_value());  // dword aligned is fine

    ram.put_list(0x8000, {0x10000, 0x11010});
    auto entry = map_prps(0x1000, 0x8000, 3 * kPage, limits(), ram);
    REQUIRE_FALSE(entry.has_value());
    CHECK(entry.error() == PrpError::OffsetInvalid);

    // A chained list pointer must be page aligned too.
    ram.put64(0x9ff8, 0xa008);
    auto chain = map_prps(0x1000, 0x9ff8, 3 * kPage, limits(), ram);
    REQUIRE_FALSE(chain.has_value());
    CHECK(chain.error() == PrpError::OffsetInvalid);
}

TEST_CASE("prp: pages and lists outside guest memory are Data Transfer Error") {
    FakeRam ram;
    auto prp1 = map_prps(FakeRam::kHole + 0x100, 0, 0x100, limits(), ram);
    REQUIRE_FALSE(prp1.has_value());
    CHECK(prp1.error() == PrpError::Unmapped);
    CHECK(to_status(prp1.error()) == StatusCode::DataTransferError);

    // The first page runs to the end of region A; the second page is in the hole.
    auto prp2 = map_prps(FakeRam::kHole - 0x800, FakeRam::kHole, 0x1000, limits(), ram);
    REQUIRE_FALSE(prp2.has_value());
    CHECK(prp2.error() == PrpError::Unmapped);

    ram.put_list(0x8000, {0x10000, FakeRam::kHole + kPage});
    auto entry = map_prps(0x1000, 0x8000, 3 * kPage, limits(), ram);
    REQUIRE_FALSE(entry.has_value());
    CHECK(entry.error() == PrpError::Unmapped);

    auto list = map_prps(0x1000, FakeRam::kHole, 3 * kPage, limits(), ram);
    REQUIRE_FALSE(list.has_value());
    CHECK(list.error() == PrpError::Unmapped);

    auto top = map_prps(0xfffffffffffff000ull, 0, 0x1000, limits(), ram);
    REQUIRE_FALSE(top.has_value());
    CHECK(top.error() == PrpError::Unmapped);
}

TEST_CASE("prp: only the entries the length needs are read") {
    FakeRam ram;
    // Two entries right before the hole: a walk must not touch the bytes after them.
    ram.put_list(FakeRam::kHole - 16, {0x10000, 0x11000});
    auto s = map_prps(0x1000, FakeRam::kHole - 16, 3 * kPage, limits(), ram);
    REQUIRE(s.has_value());
    CHECK(total(*s) == 3 * kPage);
}

TEST_CASE("prp: a chain that loops back ends with an error") {
    FakeRam ram;
    auto data = pages(0x100000, 511);
    auto self = data;
    self.push_back(0x8000);  // the last entry points at its own page
    ram.put_list(0x8000, self);
    const int before = ram.calls;
    auto s = map_prps(0x1000, 0x8000, 2000 * kPage, limits(16 << 20), ram);
    REQUIRE_FALSE(s.has_value());
    CHECK(s.error() == PrpError::ListLoop);
    CHECK(ram.calls - before < 600);  // gave up on the second visit

    // A two-page cycle: 0xa000 -> 0xb000 -> 0xa000.
    auto a = data, b = data;
    a.push_back(0xb000);
    b.push_back(0xa000);
    ram.put_list(0xa000, a);
    ram.put_list(0xb000, b);
    auto cycle = map_prps(0x1000, 0xa000, 2000 * kPage, limits(16 << 20), ram);
    REQUIRE_FALSE(cycle.has_value());
    CHECK(cycle.error() == PrpError::ListLoop);
}

TEST_CASE("prp: length bounds") {
    FakeRam ram;
    auto over = map_prps(0x1000, 0x8000, 512 * 1024 + 1, limits(), ram);
    REQUIRE_FALSE(over.has_value());
    CHECK(over.error() == PrpError::TooLong);
    CHECK(to_status(over.error()) == StatusCode::InvalidField);

    ram.put_list(0x8000, pages(0x100000, 127));
    auto exact = map_prps(0x1000, 0x8000, 512 * 1024, limits(), ram);
    REQUIRE(exact.has_value());
    CHECK(total(*exact) == 512 * 1024);

    ram.calls = 0;
    auto zero = map_prps(0x1003, 0x7, 0, limits(), ram);
    REQUIRE(zero.has_value());
    CHECK(zero->empty());
    CHECK(ram.calls == 0);

    auto bad_page = map_prps(0x1000, 0, 0x10, PrpLimits{3000, 512 * 1024}, ram);
    REQUIRE_FALSE(bad_page.has_value());
    CHECK(bad_page.error() == PrpError::BadLimits);
}

TEST_CASE("prp: larger memory pages follow CC.MPS") {
    FakeRam ram;
    // 8 KiB pages: a 12 KiB transfer at offset 0x1000 is one page plus a second page.
    auto s = map_prps(0x11000, 0x20000, 0x3000, PrpLimits{8192, 512 * 1024}, ram);
    REQUIRE(s.has_value());
    REQUIRE(s->size() == 2);
    CHECK((*s)[0].host.size() == 0x1000);
    CHECK((*s)[1].host.size() == 0x2000);
    auto bad = map_prps(0x11000, 0x21000, 0x3000, PrpLimits{8192, 512 * 1024}, ram);
    REQUIRE_FALSE(bad.has_value());
    CHECK(bad.error() == PrpError::OffsetInvalid);
}

TEST_CASE("prp: the card's GuestMemory works as the translator") {
    auto mem = common::GuestMemory::create(
        {{GuestAddr(0), 0x10000, 0}, {GuestAddr(0x100000), 0x10000, 0x10000}});
    REQUIRE(mem.has_value());
    GuestMemoryTranslator tr(*mem);
    REQUIRE(mem->write_obj(GuestAddr(0x2000), std::uint64_t{0x100000}));
    REQUIRE(mem->write_obj(GuestAddr(0x2008), std::uint64_t{0x101000}));
    auto s = map_prps(0x1000, 0x2000, 3 * kPage, limits(), tr);
    REQUIRE(s.has_value());
    REQUIRE(s->size() == 2);  // the two listed pages are adjacent in guest and host
    CHECK((*s)[1].gpa == GuestAddr(0x100000));
    CHECK((*s)[1].host.size() == 2 * kPage);
    CHECK(map_prps(0x10000, 0, 16, limits(), tr).error() == PrpError::Unmapped);
}
