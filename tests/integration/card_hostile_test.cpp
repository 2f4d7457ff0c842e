// A hostile guest and a hostile vmm against a real nitro-card: each bad command is answered with
// the status the NVMe spec gives it, each bad message with a protocol error (or nothing), and
// after each the card still serves a good command on the same connection.
#include <doctest/doctest.h>

#include <cerrno>
#include <cstring>
#include <thread>

#include "card_fixture.hpp"
#include "nvme/identify.hpp"

using namespace integration;
using namespace testsupport;
using nitro_card::nvme::AdminOpcode;
using nitro_card::nvme::AsyncEventType;
using nitro_card::nvme::Cns;
using nitro_card::nvme::CqEntry;
using nitro_card::nvme::ErrorEventInfo;
using nitro_card::nvme::IdentifyController;
using nitro_card::nvme::IdentifyNamespace;
using nitro_card::nvme::IoOpcode;
using nitro_card::nvme::LogPageId;
using nitro_card::nvme::SqEntry;
using nitro_card::nvme::StatusCode;
namespace card = common::card;
namespace cap = nitro_card::nvme::cap;

namespace {

constexpr std::uint64_t kPage = kNvmePage;
// Guest-physical addresses with no RAM behind them: the gap above the low region, the last
// page below 4 GiB, and far above the high region.
constexpr std::uint64_t kHoleGpa = kLowRamBytes + 48 * kMiB;
constexpr std::uint64_t kBelowHighGpa = kHighRamBase - kPage;
constexpr std::uint64_t kFarGpa = 1ull << 46;

bool transfer_refused(StatusCode s) {
    return s == StatusCode::DataTransferError || s == StatusCode::InvalidField;
}

// A card with one 16 MiB volume, enabled, with I/O queue 1 (64 entries, vector 1) and an
// Asynchronous Event Request held.
class ServedGuest {
public:
    ServedGuest() : card_({"size=16M"}), vm_(card_.socket(0)) {
        vm_.attach();
        REQUIRE(d().enable());
        const std::uint64_t idbuf = d().alloc(kPage);
        REQUIRE(d().admin_status(identify_cmd(Cns::Controller, 0, idbuf)) == StatusCode::Success);
        max_transfer_ = kPage << d().get<IdentifyController>(idbuf).mdts;
        REQUIRE(d().admin_status(identify_cmd(Cns::Namespace, 1, idbuf)) == StatusCode::Success);
        blocks_ = d().get<IdentifyNamespace>(idbuf).nsze;
        const auto [cq, sq] = d().create_queue(q_, 1, 64, 1, true);
        REQUIRE(cq == StatusCode::Success);
        REQUIRE(sq == StatusCode::Success);
        aer_ = d().admin_submit(admin_cmd(AdminOpcode::AsyncEventRequest));
        buf_ = d().alloc(max_transfer_ + kPage);
        spare_ = d().alloc(kPage);
    }

    NvmeDriverMock& d() { return vm_.driver(); }
    Vmm& vm() { return vm_; }
    Card& card() { return card_; }
    IoQueue& q() { return q_; }
    std::uint64_t buf() const { return buf_; }
    std::uint64_t max_transfer() const { return max_transfer_; }
    std::uint64_t blocks() const { return blocks_; }
    std::uint16_t aer() const { return aer_; }
    void new_aer() { aer_ = d().admin_submit(admin_cmd(AdminOpcode::AsyncEventRequest)); }

    StatusCode io(const SqEntry& e) { return d().io_status(q_, e); }

    // A good write and read of one page, checked, and the card process alive.
    void still_serving() {
        INFO("card log:\n" << card_.log());
        const unsigned seed = ++seed_;
        fill_pattern(d().host(spare_, kPage), seed);
        CHECK(io(io_cmd(IoOpcode::Write, 64, 8, spare_)) == StatusCode::Success);
        std::memset(d().host(spare_, kPage).data(), 0, kPage);
        CHECK(io(io_cmd(IoOpcode::Read, 64, 8, spare_)) == StatusCode::Success);
        const auto got = d().host(spare_, kPage);
        CHECK(std::vector<std::byte>(got.begin(), got.end()) == pattern(kPage, seed));
        CHECK(card_.process().running());
    }

private:
    Card card_;
    Vmm vm_;
    IoQueue q_;
    std::uint64_t max_transfer_ = 0, blocks_ = 0, buf_ = 0, spare_ = 0;
    std::uint16_t aer_ = 0;
    unsigned seed_ = 0;
};

// The (type, info, log page) an Asynchronous Event Request completed with (§5.2).
struct AsyncEvent {
    unsigned type, info, log;
};
AsyncEvent event_of(const CqEntry& c) {
    return {c.dw0 & 0x7, (c.dw0 >> 8) & 0xff, (c.dw0 >> 16) & 0xff};
}

}  // namespace

TEST_CASE("hostile guest: PRPs outside guest RAM, looping and over-long PRP lists") {
    ServedGuest g;
    NvmeDriverMock& d = g.d();

    SUBCASE("PRP1 outside guest RAM") {
        for (std::uint64_t gpa : {kHoleGpa, kBelowHighGpa, kFarGpa}) {
            INFO("PRP1 " << std::hex << gpa);
            CHECK(transfer_refused(g.io(io_cmd(IoOpcode::Read, 0, 8, gpa))));
            CHECK(transfer_refused(g.io(io_cmd(IoOpcode::Write, 0, 8, gpa))));
        }
        // Straddling the end of the low region: the first half is RAM, the second is not.
        CHECK(transfer_refused(
            g.io(io_cmd(IoOpcode::Read, 0, 8, kLowRamBytes - 2048, kLowRamBytes))));
        g.still_serving();
    }
    SUBCASE("PRP2 and a PRP list entry outside guest RAM") {
        CHECK(transfer_refused(g.io(io_cmd(IoOpcode::Read, 0, 16, g.buf(), kHoleGpa))));
        const std::uint64_t list = d.alloc(kPage);
        d.put(list, g.buf() + kPage);
        d.put(list + 8, kFarGpa);  // the second list entry
        CHECK(transfer_refused(g.io(io_cmd(IoOpcode::Read, 0, 24, g.buf(), list))));
        // The list pointer itself outside guest RAM.
        CHECK(transfer_refused(g.io(io_cmd(IoOpcode::Read, 0, 24, g.buf(), kHoleGpa))));
        g.still_serving();
    }
    SUBCASE("a PRP list whose chain pointer loops back to its own page") {
        // PRP2 points at the last two slots of a page: a 16 KiB transfer needs three list
        // entries, so slot 2 must chain, and it chains back to the same page (NVMe 2.0 §4.1.1).
        const std::uint64_t list_page = d.alloc(kPage);
        const std::uint64_t prp2 = list_page + kPage - 16;
        d.put(prp2, g.buf() + kPage);
        d.put(prp2 + 8, list_page);
        const StatusCode s = g.io(io_cmd(IoOpcode::Read, 0, 32, g.buf(), prp2));
        CHECK(transfer_refused(s));
        g.still_serving();
    }
    SUBCASE("transfers over MDTS, with a full PRP list") {
        const auto over = static_cast<std::uint32_t>(g.max_transfer() / kLba + 1);
        const auto [p1, p2] = d.prps(g.buf(), g.max_transfer() + kLba);
        CHECK(g.io(io_cmd(IoOpcode::Read, 0, over, p1, p2)) == StatusCode::InvalidField);
        CHECK(g.io(io_cmd(IoOpcode::Write, 0, over, p1, p2)) == StatusCode::InvalidField);
        CHECK(g.io(io_cmd(IoOpcode::Read, 0, 0x10000, p1, p2)) == StatusCode::InvalidField);
        // Exactly MDTS is fine.
        const auto max = static_cast<std::uint32_t>(g.max_transfer() / kLba);
        CHECK(g.io(io_cmd(IoOpcode::Read, 0, max, p1, p2)) == StatusCode::Success);
        g.still_serving();
    }
}

TEST_CASE("hostile guest: bad queue creation, doorbells, LBAs and Identify CNS") {
    ServedGuest g;
    NvmeDriverMock& d = g.d();
    const std::uint64_t mqes = cap::MQES.get(d.cap());
    const std::uint64_t qmem = d.alloc((mqes + 2) * 64);

    SUBCASE("Create I/O CQ/SQ with QSIZE 0 or above MQES, and an SQ on a missing CQ") {
        CHECK(d.admin_status(create_cq_cmd(2, 1, qmem, 2, true)) == StatusCode::InvalidQueueSize);
        CHECK(d.admin_status(create_cq_cmd(2, static_cast<std::uint32_t>(mqes + 2), qmem, 2,
                                           true)) == StatusCode::InvalidQueueSize);
        CHECK(d.admin_status(create_sq_cmd(2, 16, qmem, 3)) == StatusCode::CompletionQueueInvalid);
        CHECK(d.admin_status(create_sq_cmd(2, 1, qmem, 1)) == StatusCode::InvalidQueueSize);
        // A CQ whose ring is not guest RAM.
        CHECK(transfer_refused(d.admin_status(create_cq_cmd(2, 16, kHoleGpa, 2, true))));
        // The same qid with sane parameters works afterwards.
        CHECK(d.admin_status(create_cq_cmd(2, 16, qmem, 2, true)) == StatusCode::Success);
        CHECK(d.admin_status(create_sq_cmd(2, 16, qmem + kPage, 2)) == StatusCode::Success);
        g.still_serving();
    }
    SUBCASE("doorbells beyond the queue size or of missing queues raise error events") {
        // NVMe 2.0 §5.2.1: the write is ignored; the held AER completes with an Error status
        // event naming the Error Information log page.
        d.wr32(nitro_card::nvme::sq_tail_doorbell(1, 0), 64);  // 64-entry queue: slots 0..63
        const CqEntry first = d.admin_wait(g.aer());
        CHECK(status_of(first) == StatusCode::Success);
        const AsyncEvent e1 = event_of(first);
        CHECK(e1.type == static_cast<unsigned>(AsyncEventType::ErrorStatus));
        CHECK(e1.info == static_cast<unsigned>(ErrorEventInfo::InvalidDoorbellWriteValue));
        CHECK(e1.log == static_cast<unsigned>(LogPageId::ErrorInformation));
        g.still_serving();

        // Reading the log (RAE = 0) re-arms error events; a doorbell of a queue that does not
        // exist is the next one.
        const std::uint64_t log = d.alloc(kPage);
        SqEntry get_log = admin_cmd(AdminOpcode::GetLogPage);
        get_log.nsid = 0xffffffff;
        get_log.prp1 = log;
        const std::uint32_t numdl = 64 / 4 - 1;  // 64 bytes, 0-based dwords
        get_log.cdw10 = static_cast<std::uint8_t>(LogPageId::ErrorInformation) | numdl << 16;
        CHECK(d.admin_status(get_log) == StatusCode::Success);
        g.new_aer();
        d.wr32(nitro_card::nvme::cq_head_doorbell(3, 0), 0);
        const AsyncEvent e2 = event_of(d.admin_wait(g.aer()));
        CHECK(e2.info == static_cast<unsigned>(ErrorEventInfo::InvalidDoorbellRegister));
        g.still_serving();

        // A CQ head that releases entries never posted is ignored as well.
        d.wr32(nitro_card::nvme::cq_head_doorbell(1, 0), (g.q().head + 10) % 64);
        g.still_serving();
    }
    SUBCASE("LBA ranges past the end of the namespace") {
        const std::uint64_t n = g.blocks();
        CHECK(g.io(io_cmd(IoOpcode::Read, n, 1, g.buf())) == StatusCode::LbaOutOfRange);
        CHECK(g.io(io_cmd(IoOpcode::Write, n - 4, 8, g.buf())) == StatusCode::LbaOutOfRange);
        CHECK(g.io(io_cmd(IoOpcode::Read, ~std::uint64_t{0}, 8, g.buf())) ==
              StatusCode::LbaOutOfRange);
        CHECK(g.io(io_cmd(IoOpcode::Read, n - 8, 8, g.buf())) == StatusCode::Success);
        g.still_serving();
    }
    SUBCASE("Identify CNS 6 (I/O command set controller) and an unknown CNS") {
        const std::uint64_t buf = d.alloc(kPage);
        CHECK(d.admin_status(identify_cmd(Cns::CsController, 0, buf)) == StatusCode::InvalidField);
        CHECK(d.admin_status(identify_cmd(static_cast<Cns>(0x55), 0, buf)) ==
              StatusCode::InvalidField);
        // An Identify whose buffer is not guest RAM.
        CHECK(transfer_refused(d.admin_status(identify_cmd(Cns::Controller, 0, kHoleGpa))));
        g.still_serving();
    }
}

// NVMe 2.0 §3.1.4.21/§5.2.1: a doorbell value outside the queue is ignored; the queue goes on
// with the next valid value. Through shadow doorbells that means the card must still ask for a
// doorbell (EventIdx) on the guest's next update once it has stopped polling.
//
TEST_CASE("hostile guest: a shadow SQ tail beyond the queue size is ignored") {
    ServedGuest g;
    NvmeDriverMock& d = g.d();
    REQUIRE(d.enable_shadow_doorbells() == StatusCode::Success);
    (void)g.vm().register_doorbell_fds();
    IoQueue& q = g.q();
    const std::uint32_t good_tail = q.tail;
    // The guest scribbles an impossible tail and rings; the card must not fetch anything.
    q.tail = 200;
    d.io_ring(q, good_tail);
    q.tail = good_tail;
    // Long enough for any polling window to end, so the card goes back to waiting for doorbells.
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    g.still_serving();
}

namespace {

struct ErrorSeen {
    std::uint16_t id;
    std::uint32_t error;
};

// Sends a REGION_READ of VS under a chosen id as raw bytes and reads until its reply arrives;
// everything before it must be an error reply (to earlier garbage). Returns those.
std::vector<ErrorSeen> call_after_garbage(CardClient& client, std::uint16_t id) {
    card::Message m{id, false, card::RegionReadRequest{card::kPciBar0RegionIndex, 0x08, 4}};
    auto bytes = card::encode(m, 0, client.limits());
    REQUIRE(bytes.has_value());
    REQUIRE(client.send_raw(*bytes).has_value());
    std::vector<ErrorSeen> errors;
    for (;;) {
        auto r = client.recv_raw(kWait);
        REQUIRE_MESSAGE(r.has_value(), r.error().message);
        auto h = card::parse_header(*r);
        REQUIRE(h.has_value());
        if (h->id == id && (h->flags & card::kFlagError) == 0) {
            auto reply = card::decode(*r, 0, client.limits());
            REQUIRE(reply.has_value());
            const auto* rr = std::get_if<card::RegionReadReply>(&reply->body);
            REQUIRE(rr != nullptr);
            REQUIRE(rr->data.size() == 4);
            std::uint32_t vs;
            std::memcpy(&vs, rr->data.data(), 4);
            CHECK(vs == nitro_card::nvme::version(1, 4, 0));
            return errors;
        }
        CHECK((h->flags & card::kFlagError) != 0);
        CHECK(h->error != 0);
        errors.push_back({h->id, h->error});
    }
}

std::vector<std::byte> header(std::uint16_t id, std::uint16_t command, std::uint32_t size,
                              std::uint32_t flags, std::size_t total) {
    std::vector<std::byte> b(total);
    std::memcpy(b.data(), &id, 2);
    std::memcpy(b.data() + 2, &command, 2);
    std::memcpy(b.data() + 4, &size, 4);
    std::memcpy(b.data() + 8, &flags, 4);
    return b;
}

}  // namespace

TEST_CASE("hostile vmm: an overlapping DMA_MAP and garbage on the socket") {
    ServedGuest g;
    CardClient& client = g.vm().client();
    const common::GuestMemory& mem = g.vm().mem();

    SUBCASE("DMA_MAP over an existing mapping is refused with EEXIST") {
        for (auto [addr, size] :
             {std::pair{std::uint64_t{0}, kPage}, std::pair{kLowRamBytes - kPage, 2 * kPage},
              std::pair{kHighRamBase, kHighRamBytes}}) {
            auto s = client.dma_map(mem.memfd().fd(), 0, common::GuestAddr(addr), size);
            REQUIRE_FALSE(s.has_value());
            CHECK(s.error().errno_value == EEXIST);
        }
        // The mappings are intact: unmapping and mapping the high region again works, and
        // data still moves through both regions.
        CHECK(client.dma_unmap(common::GuestAddr(kHighRamBase), kHighRamBytes).has_value());
        CHECK(client
                  .dma_map(mem.memfd().fd(), kLowRamBytes, common::GuestAddr(kHighRamBase),
                           kHighRamBytes)
                  .has_value());
        fill_pattern(g.d().host(kHighRamBase, kPage), 77);
        CHECK(g.io(io_cmd(IoOpcode::Write, 128, 8, kHighRamBase)) == StatusCode::Success);
        CHECK(read_file(g.card().volume(0), 128 * kLba, kPage) == pattern(kPage, 77));
        g.still_serving();
    }
    SUBCASE("a DMA_MAP refused for its memfd leaves the earlier mappings working") {
        // The card keeps one memfd for all of guest RAM. A mapping from another memfd that
        // cannot hold the table is refused, and must not replace the memfd the earlier
        // mappings live in: a later DMA_UNMAP re-maps what is left from that memfd.
        auto other = common::MemFd::create("not-guest-ram", kPage);
        REQUIRE(other.has_value());
        auto s = client.dma_map(other->fd(), 0, common::GuestAddr(kFarGpa), kPage);
        REQUIRE_FALSE(s.has_value());
        CHECK(s.error().errno_value == EINVAL);
        g.still_serving();
        CHECK(client.dma_unmap(common::GuestAddr(kHighRamBase), kHighRamBytes).has_value());
        g.still_serving();  // the low region, where the queues and buffers are, still maps
    }
    SUBCASE("garbage bytes get an error reply or are dropped; the connection stays up") {
        // Noise: answered with an error reply or dropped, either is fine.
        for (const auto& noise : {pattern(7, 1), pattern(64, 2), pattern(4096, 3)}) {
            REQUIRE(client.send_raw(noise).has_value());
            CHECK(call_after_garbage(client, 0x6000).size() <= 1);
        }
        // A readable header with a bad message behind it: the error reply carries its id
        // (vfio-user "Error replies"), so the vmm can tell which request failed.
        struct Bad {
            std::vector<std::byte> bytes;
            std::uint32_t errno_value;  // 0: any
        };
        const std::vector<Bad> bad{
            {header(0x4001, 2, 999, 0, 16), 0},           // size field lies
            {header(0x4002, 99, 16, 0, 16), ENOSYS},      // unknown command
            {header(0x4003, 9, 32, 0, 32), 0},            // REGION_READ, bad payload
            {header(0x4004, 2, 16 + 32, 0, 16 + 32), 0},  // DMA_MAP without its fd
            {header(0x4005, 9, 16, 0xffff, 16), 0},       // unknown flag bits
        };
        std::uint16_t id = 0x6001;
        for (const auto& b : bad) {
            std::uint16_t bad_id;
            std::memcpy(&bad_id, b.bytes.data(), 2);
            INFO("garbage id " << std::hex << bad_id);
            REQUIRE(client.send_raw(b.bytes).has_value());
            const auto errors = call_after_garbage(client, id++);
            REQUIRE(errors.size() == 1);
            CHECK(errors[0].id == bad_id);
            if (b.errno_value != 0) CHECK(errors[0].error == b.errno_value);
        }
        g.still_serving();
    }
}
