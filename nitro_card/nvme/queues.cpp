#include "nvme/queues.hpp"

#include <atomic>
#include <cstring>

namespace nitro_card::nvme {

namespace {

constexpr unsigned kDstrd = 0;  // CAP.DSTRD: 4-byte doorbell stride

// A 32-bit slot of a shadow page as an atomic the guest shares. The pages are page aligned
// and the slots 4-byte aligned, so the host view is suitably aligned for atomic_ref.
std::optional<std::atomic_ref<std::uint32_t>> shadow_slot(const common::GuestMemory& mem,
                                                          common::GuestAddr page, DoorbellRef db) {
    if (db.qid > kMaxShadowQid) return std::nullopt;
    auto s = mem.slice(page + shadow_slot_offset(db, kDstrd), sizeof(std::uint32_t));
    if (!s) return std::nullopt;
    return std::atomic_ref<std::uint32_t>(*reinterpret_cast<std::uint32_t*>(s->data()));
}

}  // namespace

common::Result<SqEntry> SubmissionRing::fetch(const common::GuestMemory& mem) {
    // GUEST-SHARED: the entry is copied once; the decoder only ever sees the copy.
    auto e = mem.read_obj<SqEntry>(base_ + queue_bytes(head_, kSqEntrySizeLog2));
    if (!e) return common::fail(std::move(e.error()));
    head_ = next_index(head_, size_);
    return *e;
}

bool CompletionRing::update_head(std::uint32_t value) {
    if (!cq_head_valid(value, head_, tail_, size_)) return false;
    head_ = value;
    return true;
}

common::Status CompletionRing::post(const common::GuestMemory& mem, CqEntry entry) {
    auto slot = mem.slice(base_ + queue_bytes(tail_, kCqEntrySizeLog2), sizeof(CqEntry));
    if (!slot) return common::fail(std::move(slot.error()));
    entry.status = static_cast<std::uint16_t>((entry.status & ~1u) | (phase_ ? 1u : 0u));

    // Dwords 0-2 first, then dword 3 (command id and status with the phase tag) as one release
    // store: the host polls the phase and must not see it before the rest of the entry.
    std::memcpy(slot->data(), &entry, offsetof(CqEntry, cid));
    const std::uint32_t dw3 = std::uint32_t{entry.cid} | std::uint32_t{entry.status} << 16;
    std::atomic_ref<std::uint32_t>(
        *reinterpret_cast<std::uint32_t*>(slot->data() + offsetof(CqEntry, cid)))
        .store(dw3, std::memory_order_release);

    tail_ = next_index(tail_, size_);
    if (tail_ == 0) phase_ = !phase_;
    return {};
}

std::optional<std::uint32_t> read_shadow(const common::GuestMemory& mem, const ShadowBuffers& buf,
                                         DoorbellRef db) {
    auto slot = shadow_slot(mem, buf.doorbells, db);
    if (!slot) return std::nullopt;
    return slot->load(std::memory_order_acquire);
}

bool publish_event_idx(const common::GuestMemory& mem, const ShadowBuffers& buf, DoorbellRef db,
                       std::uint32_t value) {
    auto slot = shadow_slot(mem, buf.event_idx, db);
    if (!slot) return false;
    slot->store(value, std::memory_order_release);
    std::atomic_thread_fence(std::memory_order_seq_cst);
    return true;
}

bool store_event_idx(const common::GuestMemory& mem, const ShadowBuffers& buf, DoorbellRef db,
                     std::uint32_t value) {
    auto slot = shadow_slot(mem, buf.event_idx, db);
    if (!slot) return false;
    slot->store(value, std::memory_order_release);
    return true;
}

bool write_shadow(const common::GuestMemory& mem, const ShadowBuffers& buf, DoorbellRef db,
                  std::uint32_t value) {
    auto slot = shadow_slot(mem, buf.doorbells, db);
    if (!slot) return false;
    slot->store(value, std::memory_order_release);
    return true;
}

common::Result<std::shared_ptr<DoorbellSlot>> DoorbellSlot::create() {
    auto e = common::EventFd::create();
    if (!e) return common::fail(std::move(e.error()).context("doorbell eventfd"));
    return std::shared_ptr<DoorbellSlot>(new DoorbellSlot(std::move(*e)));
}

const IoSqRecord* QueueRegistry::sq(std::uint16_t qid) const {
    if (qid == 0 || qid >= sqs_.size() || !sqs_[qid]) return nullptr;
    return &*sqs_[qid];
}

const IoCqRecord* QueueRegistry::cq(std::uint16_t qid) const {
    if (qid == 0 || qid >= cqs_.size() || !cqs_[qid]) return nullptr;
    return &*cqs_[qid];
}

bool QueueRegistry::empty() const {
    for (std::size_t q = 1; q < sqs_.size(); ++q)
        if (sqs_[q] || cqs_[q]) return false;
    return true;
}

void QueueRegistry::add_cq(std::uint16_t qid, IoCqRecord r) {
    cqs_.at(qid) = std::move(r);
}

void QueueRegistry::add_sq(std::uint16_t qid, IoSqRecord r) {
    ++cqs_.at(r.cqid).value().sq_count;
    sqs_.at(qid) = std::move(r);
}

void QueueRegistry::remove_sq(std::uint16_t qid) {
    auto& s = sqs_.at(qid);
    if (!s) return;
    if (auto& c = cqs_.at(s->cqid); c && c->sq_count > 0) --c->sq_count;
    s.reset();
}

void QueueRegistry::remove_cq(std::uint16_t qid) {
    cqs_.at(qid).reset();
}

void QueueRegistry::clear() {
    for (auto& s : sqs_) s.reset();
    for (auto& c : cqs_) c.reset();
}

}  // namespace nitro_card::nvme
