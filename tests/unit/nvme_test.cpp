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

SqEntry sqe(std::uint8_t opc) {
    SqEntry e{};
    e.opc = opc;
    e.cid = 0x1234;
    return e;
}

template <typename T, typename V>
T as(const V& v) {
    REQUIRE(std::holds_alternative<T>(v));
    return std::get<T>(v);
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

// ---- command decoder -------------------------------------------------------------------------

namespace {

AdminLimits admin_limits() {
    AdminLimits l;
    l.page_size = kPage;
    l.max_queue_entries = 1024;
    l.max_io_qid = 4;
    l.interrupt_vectors = 5;
    l.max_transfer = 512 * 1024;
    return l;
}

StatusCode admin_error(const SqEntry& e) {
    auto r = decode_admin(e, admin_limits());
    REQUIRE_FALSE(r.has_value());
    return r.error();
}

// Linux's Create I/O CQ for qid 1: 64 entries, PC | IEN, vector 1.
SqEntry create_cq(std::uint16_t qid, std::uint16_t qsize, std::uint32_t flags, std::uint16_t iv,
                  std::uint64_t base = 0x20000) {
    auto e = sqe(static_cast<std::uint8_t>(AdminOpcode::CreateIoCq));
    e.prp1 = base;
    e.cdw10 = qid | std::uint32_t{qsize} << 16;
    e.cdw11 = flags | std::uint32_t{iv} << 16;
    return e;
}

SqEntry create_sq(std::uint16_t qid, std::uint16_t qsize, std::uint32_t flags, std::uint16_t cqid) {
    auto e = sqe(static_cast<std::uint8_t>(AdminOpcode::CreateIoSq));
    e.prp1 = 0x30000;
    e.cdw10 = qid | std::uint32_t{qsize} << 16;
    e.cdw11 = flags | std::uint32_t{cqid} << 16;
    return e;
}

const NamespaceGeometry kNamespaces[] = {{1 << 20, 9}};  // 512 MiB of 512-byte blocks

IoLimits io_limits() {
    return IoLimits{kNamespaces, 512 * 1024};
}

StatusCode io_error(const SqEntry& e) {
    auto r = decode_io(e, io_limits());
    REQUIRE_FALSE(r.has_value());
    return r.error();
}

SqEntry rw(IoOpcode op, std::uint64_t slba, std::uint16_t nlb, std::uint32_t nsid = 1) {
    auto e = sqe(static_cast<std::uint8_t>(op));
    e.nsid = nsid;
    e.cdw10 = static_cast<std::uint32_t>(slba);
    e.cdw11 = static_cast<std::uint32_t>(slba >> 32);
    e.cdw12 = nlb;
    e.prp1 = 0x1000;
    e.prp2 = 0x8000;
    return e;
}

}  // namespace

TEST_CASE("decode admin: Identify") {
    auto e = sqe(static_cast<std::uint8_t>(AdminOpcode::Identify));
    e.nsid = 1;
    e.cdw10 = 0x0001 << 16 | 0x03;  // CNTID 1, CNS 3
    e.cdw11 = 0x00u << 24;
    e.prp1 = 0x5000;
    auto r = decode_admin(e, admin_limits());
    REQUIRE(r.has_value());
    auto id = as<Identify>(*r);
    CHECK(id.cns == Cns::NamespaceDescriptorList);
    CHECK(id.cntid == 1);
    CHECK(id.csi == 0);
    CHECK(id.nsid == 1);
    CHECK(id.dptr.prp1 == 0x5000);
}

TEST_CASE("decode admin: Create I/O CQ and its field checks") {
    auto r = decode_admin(create_cq(1, 63, 0x3, 1), admin_limits());
    REQUIRE(r.has_value());
    auto c = as<CreateIoCq>(*r);
    CHECK(c.qid == 1);
    CHECK(c.entries == 64);
    CHECK(c.base == 0x20000);
    CHECK(c.interrupts_enabled);
    CHECK(c.vector == 1);

    CHECK(admin_error(create_cq(0, 63, 0x3, 1)) == StatusCode::InvalidQueueIdentifier);
    CHECK(admin_error(create_cq(5, 63, 0x3, 1)) == StatusCode::InvalidQueueIdentifier);
    CHECK(admin_error(create_cq(1, 0, 0x3, 1)) == StatusCode::InvalidQueueSize);
    CHECK(admin_error(create_cq(1, 1024, 0x3, 1)) == StatusCode::InvalidQueueSize);
    CHECK(decode_admin(create_cq(1, 1023, 0x3, 1), admin_limits()).has_value());
    CHECK(admin_error(create_cq(1, 63, 0x2, 1)) == StatusCode::InvalidField);  // PC = 0
    CHECK(admin_error(create_cq(1, 63, 0x3, 5)) == StatusCode::InvalidInterruptVector);
    CHECK(decode_admin(create_cq(1, 63, 0x1, 5), admin_limits()).has_value());  // IEN = 0
    CHECK(admin_error(create_cq(1, 63, 0x3, 1, 0x20010)) == StatusCode::PrpOffsetInvalid);
}

TEST_CASE("decode admin: Create I/O SQ and its field checks") {
    auto r = decode_admin(create_sq(1, 63, 0x1 | 2u << 1, 1), admin_limits());
    REQUIRE(r.has_value());
    auto s = as<CreateIoSq>(*r);
    CHECK(s.qid == 1);
    CHECK(s.entries == 64);
    CHECK(s.cqid == 1);
    CHECK(s.priority == 2);
    CHECK(s.base == 0x30000);

    CHECK(admin_error(create_sq(0, 63, 0x1, 1)) == StatusCode::InvalidQueueIdentifier);
    CHECK(admin_error(create_sq(1, 0, 0x1, 1)) == StatusCode::InvalidQueueSize);
    CHECK(admin_error(create_sq(1, 63, 0x0, 1)) == StatusCode::InvalidField);
    CHECK(admin_error(create_sq(1, 63, 0x1, 0)) == StatusCode::CompletionQueueInvalid);
    CHECK(admin_error(create_sq(1, 63, 0x1, 9)) == StatusCode::CompletionQueueInvalid);
    // A CQ id that is in range but was never created decodes; the controller refuses it.
    CHECK(decode_admin(create_sq(2, 63, 0x1, 3), admin_limits()).has_value());
}

TEST_CASE("decode admin: Delete I/O SQ/CQ refuse the admin queue") {
    auto e = sqe(static_cast<std::uint8_t>(AdminOpcode::DeleteIoSq));
    e.cdw10 = 3;
    CHECK(as<DeleteIoSq>(decode_admin(e, admin_limits()).value()).qid == 3);
    e.cdw10 = 0;
    CHECK(admin_error(e) == StatusCode::InvalidQueueIdentifier);
    auto c = sqe(static_cast<std::uint8_t>(AdminOpcode::DeleteIoCq));
    c.cdw10 = 2;
    CHECK(as<DeleteIoCq>(decode_admin(c, admin_limits()).value()).qid == 2);
    c.cdw10 = 0x10000 | 7;  // qid 7 > max; upper half reserved
    CHECK(admin_error(c) == StatusCode::InvalidQueueIdentifier);
}

TEST_CASE("decode admin: Get Log Page") {
    auto e = sqe(static_cast<std::uint8_t>(AdminOpcode::GetLogPage));
    e.nsid = kBroadcastNsid;
    e.cdw10 = 127u << 16 | 1u << 15 | 0x02;  // NUMDL 127, RAE, SMART
    e.cdw12 = 0x200;
    e.prp1 = 0x6000;
    auto g = as<GetLogPage>(decode_admin(e, admin_limits()).value());
    CHECK(g.lid == LogPageId::SmartHealth);
    CHECK(g.retain_async_event);
    CHECK(g.dwords == 128);
    CHECK(g.bytes() == 512);
    CHECK(g.offset == 0x200);
    CHECK(g.nsid == kBroadcastNsid);

    e.cdw11 = 1;  // NUMDU 1: 64 Ki + 128 dwords
    CHECK(as<GetLogPage>(decode_admin(e, admin_limits()).value()).dwords == 0x10080);
    e.cdw11 = 0xffff;  // 16 GiB: over MDTS
    CHECK(admin_error(e) == StatusCode::InvalidField);
    e.cdw11 = 0;
    e.cdw12 = 0x202;  // LPO not dword aligned
    CHECK(admin_error(e) == StatusCode::InvalidField);
}

TEST_CASE("decode admin: Set/Get Features, Abort, AER, Doorbell Buffer Config") {
    auto s = sqe(static_cast<std::uint8_t>(AdminOpcode::SetFeatures));
    s.cdw10 = 1u << 31 | 0x07;
    s.cdw11 = 0x00030003;
    auto sf = as<SetFeatures>(decode_admin(s, admin_limits()).value());
    CHECK(sf.fid == FeatureId::NumberOfQueues);
    CHECK(sf.save);
    CHECK(sf.cdw11 == 0x00030003);

    auto g = sqe(static_cast<std::uint8_t>(AdminOpcode::GetFeatures));
    g.cdw10 = 3u << 8 | 0x0b;
    auto gf = as<GetFeatures>(decode_admin(g, admin_limits()).value());
    CHECK(gf.fid == FeatureId::AsyncEventConfiguration);
    CHECK(gf.select == FeatureSelect::Capabilities);
    g.cdw10 = 4u << 8 | 0x0b;  // reserved SEL
    CHECK(admin_error(g) == StatusCode::InvalidField);

    auto a = sqe(static_cast<std::uint8_t>(AdminOpcode::Abort));
    a.cdw10 = 0x0042u << 16 | 1;
    auto ab = as<Abort>(decode_admin(a, admin_limits()).value());
    CHECK(ab.sqid == 1);
    CHECK(ab.cid == 0x42);

    auto aer = sqe(static_cast<std::uint8_t>(AdminOpcode::AsyncEventRequest));
    CHECK(std::holds_alternative<AsyncEventRequest>(decode_admin(aer, admin_limits()).value()));

    auto d = sqe(static_cast<std::uint8_t>(AdminOpcode::DoorbellBufferConfig));
    d.prp1 = 0x7000;
    d.prp2 = 0x9000;
    auto db = as<DoorbellBufferConfig>(decode_admin(d, admin_limits()).value());
    CHECK(db.shadow == 0x7000);
    CHECK(db.eventidx == 0x9000);
    d.prp2 = 0x9008;
    CHECK(admin_error(d) == StatusCode::InvalidField);
}

TEST_CASE("decode admin: unknown opcodes, fused commands and SGLs are refused") {
    CHECK(admin_error(sqe(0x7f)) == StatusCode::InvalidOpcode);
    CHECK(admin_error(sqe(0x80)) == StatusCode::InvalidOpcode);  // Format NVM
    CHECK(admin_error(sqe(static_cast<std::uint8_t>(AdminOpcode::KeepAlive))) ==
          StatusCode::InvalidOpcode);
    auto e = sqe(static_cast<std::uint8_t>(AdminOpcode::Identify));
    e.flags = 0x01;  // fused, first
    CHECK(admin_error(e) == StatusCode::InvalidField);
    e.flags = 0x40;  // PSDT: SGL
    CHECK(admin_error(e) == StatusCode::InvalidField);
    e.flags = 0x04;  // reserved
    CHECK(admin_error(e) == StatusCode::InvalidField);
}

TEST_CASE("decode io: Read and Write") {
    auto e = rw(IoOpcode::Read, 0x100, 7);
    auto r = as<ReadWrite>(decode_io(e, io_limits()).value());
    CHECK_FALSE(r.write);
    CHECK(r.nsid == 1);
    CHECK(r.slba == 0x100);
    CHECK(r.blocks == 8);
    CHECK(r.bytes == 4096);
    CHECK_FALSE(r.fua);
    CHECK(r.dptr.prp1 == 0x1000);
    CHECK(r.dptr.prp2 == 0x8000);

    auto w = rw(IoOpcode::Write, 0x100, 0);
    w.cdw12 |= 1u << 30 | 1u << 31;  // FUA and Limited Retry (ignored)
    auto wr = as<ReadWrite>(decode_io(w, io_limits()).value());
    CHECK(wr.write);
    CHECK(wr.fua);
    CHECK(wr.bytes == 512);
}

TEST_CASE("decode io: namespace, LBA range and transfer size checks") {
    CHECK(io_error(rw(IoOpcode::Read, 0, 0, 0)) == StatusCode::InvalidNamespace);
    CHECK(io_error(rw(IoOpcode::Read, 0, 0, 2)) == StatusCode::InvalidNamespace);
    CHECK(io_error(rw(IoOpcode::Read, 0, 0, kBroadcastNsid)) == StatusCode::InvalidNamespace);

    const std::uint64_t last = (1 << 20) - 8;
    CHECK(decode_io(rw(IoOpcode::Read, last, 7), io_limits()).has_value());  // ends at the end
    CHECK(io_error(rw(IoOpcode::Read, last + 1, 7)) == StatusCode::LbaOutOfRange);
    CHECK(io_error(rw(IoOpcode::Write, 1 << 20, 0)) == StatusCode::LbaOutOfRange);
    CHECK(io_error(rw(IoOpcode::Read, ~0ull, 1)) == StatusCode::LbaOutOfRange);  // would wrap

    CHECK(decode_io(rw(IoOpcode::Read, 0, 1023), io_limits()).has_value());  // 512 KiB
    CHECK(io_error(rw(IoOpcode::Read, 0, 1024)) == StatusCode::InvalidField);

    const NamespaceGeometry broken[] = {{1 << 20, 40}};
    auto r = decode_io(rw(IoOpcode::Read, 0, 0), IoLimits{broken, 512 * 1024});
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error() == StatusCode::InternalError);
}

TEST_CASE("decode io: Flush, Write Zeroes, Dataset Management") {
    auto f = sqe(static_cast<std::uint8_t>(IoOpcode::Flush));
    f.nsid = 1;
    CHECK(as<Flush>(decode_io(f, io_limits()).value()).nsid == 1);
    f.nsid = kBroadcastNsid;
    CHECK(io_error(f) == StatusCode::InvalidNamespace);

    auto z = rw(IoOpcode::WriteZeroes, 0x10, 0xffff);
    z.cdw12 |= 1u << 25;
    auto wz = as<WriteZeroes>(decode_io(z, io_limits()).value());
    CHECK(wz.blocks == 0x10000);  // no data transfer, so no MDTS limit
    CHECK(wz.deallocate);
    CHECK_FALSE(wz.fua);
    CHECK(io_error(rw(IoOpcode::WriteZeroes, (1 << 20) - 1, 1)) == StatusCode::LbaOutOfRange);

    auto d = sqe(static_cast<std::uint8_t>(IoOpcode::DatasetManagement));
    d.nsid = 1;
    d.cdw10 = 255;
    d.cdw11 = 1u << 2;  // AD
    d.prp1 = 0x4000;
    auto dsm = as<DatasetManagement>(decode_io(d, io_limits()).value());
    CHECK(dsm.ranges == 256);
    CHECK(dsm.bytes() == 4096);
    CHECK(dsm.deallocate);
    CHECK_FALSE(dsm.integral_read);
    CHECK(dsm.dptr.prp1 == 0x4000);
}

TEST_CASE("decode io: unsupported opcodes and flags") {
    CHECK(io_error(rw(IoOpcode::Compare, 0, 0)) == StatusCode::InvalidOpcode);
    CHECK(io_error(rw(IoOpcode::WriteUncorrectable, 0, 0)) == StatusCode::InvalidOpcode);
    CHECK(io_error(sqe(0x7d)) == StatusCode::InvalidOpcode);  // zone append
    auto e = rw(IoOpcode::Read, 0, 0);
    e.flags = 0x80;  // PSDT: SGL, but SGLS = 0
    CHECK(io_error(e) == StatusCode::InvalidField);
    e.flags = 0x02;  // fused, second
    CHECK(io_error(e) == StatusCode::InvalidField);
}

TEST_CASE("decode: LBA range helper never overflows") {
    CHECK(lba_range_valid(0, 10, 10));
    CHECK_FALSE(lba_range_valid(0, 11, 10));
    CHECK(lba_range_valid(10, 0, 10));
    CHECK_FALSE(lba_range_valid(11, 0, 10));
    CHECK_FALSE(lba_range_valid(~0ull, 2, ~0ull));
    CHECK_FALSE(lba_range_valid(5, ~0ull, 10));
}

// ---- queues and doorbells --------------------------------------------------------------------

TEST_CASE("queue: entries, free slots and wrap-around") {
    CHECK(sq_entries_available(0, 0, 32) == 0);
    CHECK(sq_entries_available(5, 10, 32) == 5);
    CHECK(sq_entries_available(30, 2, 32) == 4);
    CHECK(sq_entries_available(1, 0, 32) == 31);
    CHECK(cq_free_slots(0, 0, 32) == 31);
    CHECK(cq_free_slots(0, 31, 32) == 0);  // full: one slot always stays empty
    CHECK(cq_free_slots(10, 9, 32) == 0);
    CHECK(cq_free_slots(10, 12, 32) == 29);
    CHECK(next_index(30, 32) == 31);
    CHECK(next_index(31, 32) == 0);
}

TEST_CASE("queue: doorbell values are checked against size and posted completions") {
    CHECK(doorbell_value_valid(31, 32));
    CHECK_FALSE(doorbell_value_valid(32, 32));
    CHECK_FALSE(doorbell_value_valid(0xffffffff, 32));

    // Posted CQ entries are [5, 10): the head may move within them, not past the tail.
    CHECK(cq_head_valid(5, 5, 10, 32));
    CHECK(cq_head_valid(7, 5, 10, 32));
    CHECK(cq_head_valid(10, 5, 10, 32));
    CHECK_FALSE(cq_head_valid(11, 5, 10, 32));
    CHECK_FALSE(cq_head_valid(4, 5, 10, 32));
    CHECK_FALSE(cq_head_valid(40, 5, 10, 32));
    // Wrapped: posted [30, 3).
    CHECK(cq_head_valid(31, 30, 3, 32));
    CHECK(cq_head_valid(0, 30, 3, 32));
    CHECK(cq_head_valid(3, 30, 3, 32));
    CHECK_FALSE(cq_head_valid(4, 30, 3, 32));
    CHECK_FALSE(cq_head_valid(29, 30, 3, 32));
}

TEST_CASE("queue: EventIdx rule matches 'event index crossed', modulo 2^16") {
    CHECK(need_event(5, 6, 4));
    CHECK(need_event(4, 6, 4));        // event at the old value: crossed
    CHECK_FALSE(need_event(6, 6, 4));  // event at the new value: not yet
    CHECK_FALSE(need_event(10, 6, 4));
    CHECK_FALSE(need_event(3, 6, 4));
    CHECK_FALSE(need_event(5, 4, 4));  // no movement, no event
    CHECK(need_event(0xffff, 0x0002, 0xfffe));
    CHECK(need_event(0x0001, 0x0002, 0xfffe));
    CHECK_FALSE(need_event(0x0002, 0x0002, 0xfffe));
    CHECK_FALSE(need_event(0xfffd, 0x0002, 0xfffe));

    // Against the definition: event_idx in [old, new) going forward from old.
    for (std::uint32_t old_idx : {0u, 1u, 100u, 0xfff0u, 0xffffu})
        for (std::uint32_t step : {0u, 1u, 2u, 17u, 300u})
            for (std::uint32_t ev = 0; ev < 0x10000; ev += 37) {
                const auto o = static_cast<std::uint16_t>(old_idx);
                const auto n = static_cast<std::uint16_t>(old_idx + step);
                const auto e = static_cast<std::uint16_t>(ev);
                const bool crossed =
                    static_cast<std::uint16_t>(e - o) < static_cast<std::uint16_t>(n - o);
                REQUIRE(need_event(e, n, o) == crossed);
            }
}

TEST_CASE("queue: doorbell offsets decode to queues; shadow slots mirror them") {
    CHECK(decode_doorbell(0x1000, 0, 4) == DoorbellRef{0, false});
    CHECK(decode_doorbell(0x1004, 0, 4) == DoorbellRef{0, true});
    CHECK(decode_doorbell(0x1008, 0, 4) == DoorbellRef{1, false});
    CHECK(decode_doorbell(0x1024, 0, 4) == DoorbellRef{4, true});
    CHECK_FALSE(decode_doorbell(0x1028, 0, 4).has_value());  // qid 5 > max
    CHECK_FALSE(decode_doorbell(0x1002, 0, 4).has_value());
    CHECK_FALSE(decode_doorbell(0x0ffc, 0, 4).has_value());
    CHECK(decode_doorbell(0x1010, 2, 4) == DoorbellRef{0, true});  // 16-byte stride
    CHECK_FALSE(decode_doorbell(0x1004, 2, 4).has_value());

    CHECK(shadow_slot_offset({0, false}, 0) == 0);
    CHECK(shadow_slot_offset({1, true}, 0) == 12);
    CHECK(shadow_slot_offset({1, true}, 0) == cq_head_doorbell(1, 0) - reg::DOORBELL_BASE);
    CHECK(shadow_slot_offset({2, false}, 1) == sq_tail_doorbell(2, 1) - reg::DOORBELL_BASE);
}
