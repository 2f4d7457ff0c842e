#include "support/nvme_driver_mock.hpp"

#include <atomic>
#include <cstring>
#include <stdexcept>
#include <thread>

#include <unistd.h>

#include <fmt/format.h>

namespace testsupport {

using nvme::AdminOpcode;
using nvme::CqEntry;
using nvme::IoOpcode;
using nvme::SqEntry;
using nvme::StatusCode;

namespace {

constexpr std::uint8_t opcode(AdminOpcode o) {
    return static_cast<std::uint8_t>(o);
}
constexpr std::uint8_t opcode(IoOpcode o) {
    return static_cast<std::uint8_t>(o);
}

// Polls `f` in 1 ms steps until it yields a value or kNvmeWait passes.
template <typename F>
auto poll_until(F&& f) -> decltype(f()) {
    const auto deadline = std::chrono::steady_clock::now() + kNvmeWait;
    for (;;) {
        if (auto v = f()) return v;
        if (std::chrono::steady_clock::now() >= deadline) return f();
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
}

}  // namespace

// ---- command builders ----------------------------------------------------------------------

SqEntry admin_cmd(AdminOpcode opc) {
    SqEntry e{};
    e.opc = opcode(opc);
    return e;
}

SqEntry identify_cmd(nvme::Cns cns, std::uint32_t nsid, std::uint64_t prp1) {
    auto e = admin_cmd(AdminOpcode::Identify);
    e.nsid = nsid;
    e.prp1 = prp1;
    e.cdw10 = static_cast<std::uint8_t>(cns);
    return e;
}

SqEntry set_features_cmd(nvme::FeatureId fid, std::uint32_t cdw11) {
    auto e = admin_cmd(AdminOpcode::SetFeatures);
    e.cdw10 = static_cast<std::uint8_t>(fid);
    e.cdw11 = cdw11;
    return e;
}

SqEntry get_features_cmd(nvme::FeatureId fid, std::uint32_t select) {
    auto e = admin_cmd(AdminOpcode::GetFeatures);
    e.cdw10 = static_cast<std::uint8_t>(fid) | select << 8;
    return e;
}

SqEntry create_cq_cmd(std::uint16_t qid, std::uint32_t entries, std::uint64_t base,
                      std::uint16_t vector, bool interrupts) {
    auto e = admin_cmd(AdminOpcode::CreateIoCq);
    e.prp1 = base;
    e.cdw10 = qid | ((entries - 1) & 0xffff) << 16;
    e.cdw11 = kCreateQueuePc | (interrupts ? kCreateCqIen : 0) | std::uint32_t{vector} << 16;
    return e;
}

SqEntry create_sq_cmd(std::uint16_t qid, std::uint32_t entries, std::uint64_t base,
                      std::uint16_t cqid) {
    auto e = admin_cmd(AdminOpcode::CreateIoSq);
    e.prp1 = base;
    e.cdw10 = qid | ((entries - 1) & 0xffff) << 16;
    e.cdw11 = kCreateQueuePc | std::uint32_t{cqid} << 16;
    return e;
}

SqEntry dbbuf_cmd(std::uint64_t shadow, std::uint64_t event_idx) {
    auto e = admin_cmd(AdminOpcode::DoorbellBufferConfig);
    e.prp1 = shadow;
    e.prp2 = event_idx;
    return e;
}

SqEntry io_cmd(IoOpcode opc, std::uint64_t slba, std::uint32_t blocks, std::uint64_t prp1,
               std::uint64_t prp2) {
    SqEntry e{};
    e.opc = opcode(opc);
    e.nsid = 1;
    e.prp1 = prp1;
    e.prp2 = prp2;
    e.cdw10 = static_cast<std::uint32_t>(slba);
    e.cdw11 = static_cast<std::uint32_t>(slba >> 32);
    e.cdw12 = (blocks - 1) & 0xffff;
    return e;
}

SqEntry flush_cmd() {
    SqEntry e{};
    e.opc = opcode(IoOpcode::Flush);
    e.nsid = 1;
    return e;
}

// ---- memory --------------------------------------------------------------------------------

NvmeDriverMock::NvmeDriverMock(const common::GuestMemory& mem, RegisterPort& regs,
                               std::uint64_t heap_base, std::uint64_t heap_end)
    : mem_(mem), regs_(regs), next_(heap_base), end_(heap_end) {}

std::uint64_t NvmeDriverMock::alloc(std::uint64_t bytes) {
    const std::uint64_t at = next_;
    const std::uint64_t rounded = (bytes + kNvmePage - 1) / kNvmePage * kNvmePage;
    if (rounded > end_ - next_) throw std::runtime_error("driver mock: guest heap exhausted");
    next_ += rounded;
    auto s = host(at, rounded);
    std::memset(s.data(), 0, s.size());
    return at;
}

std::span<std::byte> NvmeDriverMock::host(std::uint64_t gpa, std::uint64_t len) const {
    auto s = mem_.slice(common::GuestAddr(gpa), len);
    if (!s) throw std::runtime_error(fmt::format("driver mock: {}", s.error().message));
    return *s;
}

std::pair<std::uint64_t, std::uint64_t> NvmeDriverMock::prps(std::uint64_t gpa, std::uint64_t len) {
    const std::uint64_t first = std::min(len, kNvmePage - gpa % kNvmePage);
    if (len <= first) return {gpa, 0};
    const std::uint64_t second = gpa + first;
    if (len - first <= kNvmePage) return {gpa, second};
    // One list page holds 512 entries, which covers far more than MDTS; no chaining needed.
    const std::uint64_t list = alloc(kNvmePage);
    std::uint64_t i = 0;
    for (std::uint64_t at = second; at < gpa + len; at += kNvmePage) put(list + 8 * i++, at);
    return {gpa, list};
}

// ---- registers and bring-up ----------------------------------------------------------------

std::uint64_t NvmeDriverMock::rd64(std::uint64_t off) {
    const std::uint64_t lo = rd32(off);
    return lo | std::uint64_t{rd32(off + 4)} << 32;
}

void NvmeDriverMock::wr64(std::uint64_t off, std::uint64_t v) {
    wr32(off, static_cast<std::uint32_t>(v));
    wr32(off + 4, static_cast<std::uint32_t>(v >> 32));
}

bool NvmeDriverMock::disable() {
    wr32(nvme::reg::CC, 0);
    return poll_until([&] { return nvme::csts::RDY.get(rd32(nvme::reg::CSTS)) == 0; });
}

bool NvmeDriverMock::enable(std::uint32_t depth) {
    if (rd32(nvme::reg::CSTS) == 0xffffffff) return false;
    cap_ = rd64(nvme::reg::CAP);
    if (!disable()) return false;
    admin_depth_ = depth;
    asq_ = alloc(depth * sizeof(SqEntry));
    acq_ = alloc(depth * sizeof(CqEntry));
    wr32(nvme::reg::AQA, nvme::aqa::ASQS.put(depth - 1) | nvme::aqa::ACQS.put(depth - 1));
    wr64(nvme::reg::ASQ, asq_);
    wr64(nvme::reg::ACQ, acq_);
    wr32(nvme::reg::CC, kCc);
    if (rd32(nvme::reg::CC) != kCc) return false;
    wr32(nvme::reg::CC, kCc | nvme::cc::EN.put(1));
    admin_tail_ = admin_head_ = 0;
    admin_phase_ = true;
    admin_done_.clear();
    shadow_ = event_idx_ = 0;
    doorbell_fds_.clear();
    return poll_until([&] {
        const std::uint32_t csts = rd32(nvme::reg::CSTS);
        return nvme::csts::RDY.get(csts) == 1 && nvme::csts::CFS.get(csts) == 0;
    });
}

// ---- admin queue ---------------------------------------------------------------------------

std::optional<CqEntry> NvmeDriverMock::cqe_at(std::uint64_t gpa, bool phase) const {
    // GUEST-SHARED (from the driver's side): the controller writes the entry concurrently and
    // stores dword 3, with the phase tag, last.
    auto dw3_bytes = host(gpa + offsetof(CqEntry, cid), 4);
    const std::uint32_t dw3 =
        std::atomic_ref<std::uint32_t>(*reinterpret_cast<std::uint32_t*>(dw3_bytes.data()))
            .load(std::memory_order_acquire);
    if (((dw3 >> 16) & 1u) != (phase ? 1u : 0u)) return std::nullopt;
    return get<CqEntry>(gpa);
}

std::uint16_t NvmeDriverMock::admin_submit(SqEntry e) {
    e.cid = next_admin_cid_++;
    put(asq_ + admin_tail_ * sizeof(SqEntry), e);
    admin_tail_ = nvme::next_index(admin_tail_, admin_depth_);
    wr32(nvme::sq_tail_doorbell(0, 0), admin_tail_);
    return e.cid;
}

void NvmeDriverMock::drain_admin() {
    bool consumed = false;
    while (auto c = cqe_at(acq_ + admin_head_ * sizeof(CqEntry), admin_phase_)) {
        if (c->sqid != 0) throw std::runtime_error(fmt::format("admin CQE with SQ id {}", c->sqid));
        admin_done_[c->cid] = *c;
        admin_head_ = nvme::next_index(admin_head_, admin_depth_);
        if (admin_head_ == 0) admin_phase_ = !admin_phase_;
        consumed = true;
    }
    if (consumed) wr32(nvme::cq_head_doorbell(0, 0), admin_head_);
}

std::optional<CqEntry> NvmeDriverMock::admin_try(std::uint16_t cid) {
    drain_admin();
    auto it = admin_done_.find(cid);
    if (it == admin_done_.end()) return std::nullopt;
    const CqEntry c = it->second;
    admin_done_.erase(it);
    return c;
}

CqEntry NvmeDriverMock::admin_wait(std::uint16_t cid) {
    if (auto c = poll_until([&] { return admin_try(cid); })) return *c;
    throw std::runtime_error(
        fmt::format("admin command cid {:#x}: no completion within {} ms", cid, kNvmeWait.count()));
}

// ---- I/O queues ----------------------------------------------------------------------------

std::pair<StatusCode, StatusCode> NvmeDriverMock::create_queue(IoQueue& q, std::uint16_t qid,
                                                               std::uint32_t entries,
                                                               std::uint16_t vector,
                                                               bool interrupts) {
    q = IoQueue{};
    q.qid = qid;
    q.sq_entries = q.cq_entries = entries;
    q.cq = alloc(entries * sizeof(CqEntry));
    q.sq = alloc(entries * sizeof(SqEntry));
    const StatusCode cq = admin_status(create_cq_cmd(qid, entries, q.cq, vector, interrupts));
    if (cq != StatusCode::Success) return {cq, StatusCode::Success};
    return {cq, admin_status(create_sq_cmd(qid, entries, q.sq, qid))};
}

StatusCode NvmeDriverMock::enable_shadow_doorbells() {
    const std::uint64_t shadow = alloc(kNvmePage), event_idx = alloc(kNvmePage);
    const StatusCode s = admin_status(dbbuf_cmd(shadow, event_idx));
    if (s == StatusCode::Success) shadow_ = shadow, event_idx_ = event_idx;
    return s;
}

std::uint32_t NvmeDriverMock::shadow_value(std::uint16_t qid, bool cq) const {
    return get<std::uint32_t>(shadow_ + nvme::shadow_slot_offset({qid, cq}, 0));
}

std::uint32_t NvmeDriverMock::event_idx(std::uint16_t qid, bool cq) const {
    auto b = host(event_idx_ + nvme::shadow_slot_offset({qid, cq}, 0), 4);
    return std::atomic_ref<std::uint32_t>(*reinterpret_cast<std::uint32_t*>(b.data()))
        .load(std::memory_order_acquire);
}

bool NvmeDriverMock::wait_event_idx(std::uint16_t qid, bool cq, std::uint32_t value) {
    return poll_until([&] { return event_idx(qid, cq) == value; });
}

void NvmeDriverMock::set_doorbell_fds(std::vector<std::pair<std::uint64_t, common::UniqueFd>> fds) {
    doorbell_fds_.clear();
    for (auto& [offset, fd] : fds) doorbell_fds_[offset] = std::move(fd);
}

void NvmeDriverMock::publish(std::uint16_t qid, bool cq, std::uint32_t value, std::uint32_t old) {
    const std::uint64_t reg = cq ? nvme::cq_head_doorbell(qid, 0) : nvme::sq_tail_doorbell(qid, 0);
    if (shadow_ == 0) {
        wr32(reg, value);
        ++mmio_doorbells_;
        return;
    }
    auto slot = host(shadow_ + nvme::shadow_slot_offset({qid, cq}, 0), 4);
    std::atomic_ref<std::uint32_t>(*reinterpret_cast<std::uint32_t*>(slot.data()))
        .store(value, std::memory_order_seq_cst);
    // The store above and the EventIdx load below are ordered by a full barrier, as in
    // nvme_dbbuf_update_and_check_event; the controller orders its side the same way.
    std::atomic_thread_fence(std::memory_order_seq_cst);
    const auto ei = static_cast<std::uint16_t>(event_idx(qid, cq));
    if (!nvme::need_event(ei, static_cast<std::uint16_t>(value), static_cast<std::uint16_t>(old))) {
        ++skipped_doorbells_;
        return;
    }
    if (auto it = doorbell_fds_.find(reg); it != doorbell_fds_.end()) {
        const std::uint64_t one = 1;
        if (::write(it->second.get(), &one, sizeof one) != sizeof one)
            throw std::runtime_error(fmt::format("doorbell eventfd at {:#x}: write failed", reg));
        ++ioeventfd_doorbells_;
        return;
    }
    wr32(reg, value);  // no ioeventfd registered: the write exits to the vmm
    ++mmio_doorbells_;
}

std::uint16_t NvmeDriverMock::io_put(IoQueue& q, SqEntry e) {
    e.cid = q.next_cid++;
    put(q.sq + q.tail * sizeof(SqEntry), e);
    q.tail = nvme::next_index(q.tail, q.sq_entries);
    return e.cid;
}

void NvmeDriverMock::io_ring(IoQueue& q, std::uint32_t old_tail) {
    publish(q.qid, false, q.tail, old_tail);
}

std::uint16_t NvmeDriverMock::io_submit(IoQueue& q, const SqEntry& e) {
    const std::uint32_t old = q.tail;
    const std::uint16_t cid = io_put(q, e);
    io_ring(q, old);
    return cid;
}

std::optional<CqEntry> NvmeDriverMock::io_poll(IoQueue& q) {
    const auto c = cqe_at(q.cq + q.head * sizeof(CqEntry), q.phase);
    if (!c) return std::nullopt;
    const std::uint32_t old = q.head;
    q.head = nvme::next_index(q.head, q.cq_entries);
    if (q.head == 0) q.phase = !q.phase;
    publish(q.qid, true, q.head, old);
    return c;
}

CqEntry NvmeDriverMock::io_wait(IoQueue& q) {
    if (auto c = poll_until([&] { return io_poll(q); })) return *c;
    std::string doorbells = fmt::format("SQ tail {}, CQ head {}", q.tail, q.head);
    if (shadow_ != 0)
        doorbells += fmt::format("; shadow SQ tail {} EventIdx {}, CQ head {} EventIdx {}",
                                 shadow_value(q.qid, false), event_idx(q.qid, false),
                                 shadow_value(q.qid, true), event_idx(q.qid, true));
    throw std::runtime_error(fmt::format("I/O queue {}: no completion within {} ms ({})", q.qid,
                                         kNvmeWait.count(), doorbells));
}

CqEntry NvmeDriverMock::io(IoQueue& q, const SqEntry& e) {
    const std::uint16_t cid = io_submit(q, e);
    const CqEntry c = io_wait(q);
    if (c.cid != cid || c.sqid != q.qid)
        throw std::runtime_error(fmt::format("I/O queue {}: CQE for cid {} sq {}, expected cid {}",
                                             q.qid, c.cid, c.sqid, cid));
    return c;
}

}  // namespace testsupport
