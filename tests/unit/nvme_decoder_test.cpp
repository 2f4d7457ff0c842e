// The NVMe command decoder and the queue/doorbell arithmetic: pure functions over SQ entries.
#include <doctest/doctest.h>

#include <cstring>
#include <vector>

#include "nvme/command.hpp"
#include "nvme/queue.hpp"
#include "nvme/spec.hpp"

using namespace nitro_card::nvme;

// ---- command decoder -------------------------------------------------------------------------

namespace {

constexpr std::uint64_t kPage = 4096;

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
