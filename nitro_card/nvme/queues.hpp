// Submission and completion queues in guest memory (NVMe 2.0 §3.3.1, §4.6 phase tags), the
// shadow doorbell buffers (Doorbell Buffer Config, NVMe 1.3 §5.7), the doorbell slots the control
// thread and the I/O worker share, and the control thread's record of which I/O queues exist.
//
// Everything a ring reads from the guest is hostile: an entry is copied once into a local, and
// doorbell values (MMIO or shadow) are checked against the ring size before they become indices.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "common/error.hpp"
#include "common/fd.hpp"
#include "common/guest_memory.hpp"
#include "nvme/queue.hpp"
#include "nvme/spec.hpp"

namespace nitro_card::nvme {

// Bytes a queue of `entries` entries of 2^entry_log2 bytes occupies.
[[nodiscard]] constexpr std::uint64_t queue_bytes(std::uint32_t entries, std::uint8_t entry_log2) {
    return std::uint64_t{entries} << entry_log2;
}

// The consumer side of a submission queue. The caller passes tails it has already checked with
// doorbell_value_valid().
class SubmissionRing final {
public:
    SubmissionRing(common::GuestAddr base, std::uint32_t size) : base_(base), size_(size) {}

    [[nodiscard]] std::uint32_t size() const { return size_; }
    [[nodiscard]] std::uint32_t head() const { return head_; }
    [[nodiscard]] std::uint32_t available(std::uint32_t tail) const {
        return sq_entries_available(head_, tail, size_);
    }
    // Copies the entry at the head out of guest memory and advances the head. Fails, with the
    // head unchanged, when the slot is no longer guest RAM.
    [[nodiscard]] common::Result<SqEntry> fetch(const common::GuestMemory& mem);

private:
    common::GuestAddr base_;
    std::uint32_t size_;
    std::uint32_t head_ = 0;
};

// The producer side of a completion queue, with its phase tag (§4.6: the controller inverts it
// each time the tail wraps; the host spots new entries by it).
class CompletionRing final {
public:
    CompletionRing(common::GuestAddr base, std::uint32_t size) : base_(base), size_(size) {}

    [[nodiscard]] std::uint32_t size() const { return size_; }
    [[nodiscard]] std::uint32_t head() const { return head_; }
    [[nodiscard]] std::uint32_t tail() const { return tail_; }
    [[nodiscard]] std::uint32_t free_slots() const { return cq_free_slots(head_, tail_, size_); }

    // Takes a CQ head doorbell value. False, with the head unchanged, when the value is out of
    // range or releases entries never posted (Invalid Doorbell Write Value, §5.2.1).
    [[nodiscard]] bool update_head(std::uint32_t value);

    // Writes `entry` at the tail with the current phase tag and advances the tail. The caller
    // checked free_slots(). The dword holding the phase is stored last, with release order, so
    // a host that sees the new phase sees the whole entry. Fails when the slot is not guest RAM.
    [[nodiscard]] common::Status post(const common::GuestMemory& mem, CqEntry entry);

private:
    common::GuestAddr base_;
    std::uint32_t size_;
    std::uint32_t head_ = 0;
    std::uint32_t tail_ = 0;
    bool phase_ = true;  // the first pass writes P = 1 (§4.6)
};

// The two guest pages of Doorbell Buffer Config: shadow doorbells (PRP1) and EventIdx (PRP2),
// each laid out like the doorbell registers without the 0x1000 base. Linux never uses them for
// the admin queue (nvme/pci.c nvme_dbbuf_init skips qid 0), so neither does the controller.
struct ShadowBuffers {
    common::GuestAddr doorbells;
    common::GuestAddr event_idx;
};

// The highest qid whose slots fit in one 4 KiB shadow page at DSTRD 0.
inline constexpr std::uint16_t kMaxShadowQid = 511;

// GUEST-SHARED: one acquire load of the guest's shadow doorbell for `db` (the guest stores its
// queue entries before the shadow value). nullopt when the page is no longer guest RAM. The
// value is the guest's claim; check it before use.
[[nodiscard]] std::optional<std::uint32_t> read_shadow(const common::GuestMemory& mem,
                                                       const ShadowBuffers& buf, DoorbellRef db);
// Publishes EventIdx for `db`, followed by a full fence: the guest stores the shadow value and
// then loads EventIdx (Linux nvme_dbbuf_update_and_check_event), the controller stores EventIdx
// and then loads the shadow value, so one of the two always sees the other's store.
[[nodiscard]] bool publish_event_idx(const common::GuestMemory& mem, const ShadowBuffers& buf,
                                     DoorbellRef db, std::uint32_t value);
// Stores EventIdx for `db` without the fence: for a value that only keeps the guest from
// ringing (the controller is polling, or needs no doorbell). A guest that sees it late rings
// once more than needed, nothing worse; nothing is re-read after it.
[[nodiscard]] bool store_event_idx(const common::GuestMemory& mem, const ShadowBuffers& buf,
                                   DoorbellRef db, std::uint32_t value);
// Writes the shadow doorbell itself: only when shadow doorbells start for a queue, to carry
// over the value the registers had (as QEMU's nvme_dbbuf_config does).
[[nodiscard]] bool write_shadow(const common::GuestMemory& mem, const ShadowBuffers& buf,
                                DoorbellRef db, std::uint32_t value);

// A queue's doorbell as both threads see it. The control thread stores slow-path values (after
// checking them) and signals the eventfd; the worker waits on the eventfd and loads the value.
// Once shadow doorbells are on, the vmm puts the eventfd on a KVM ioeventfd and the guest's MMIO
// writes only signal it; the value then comes from the shadow page.
class DoorbellSlot final {
public:
    [[nodiscard]] static common::Result<std::shared_ptr<DoorbellSlot>> create();

    [[nodiscard]] int fd() const { return event_.fd(); }
    void store(std::uint32_t v) { value_.store(v, std::memory_order_release); }
    [[nodiscard]] std::uint32_t load() const { return value_.load(std::memory_order_acquire); }
    void kick() const { (void)event_.signal(); }

private:
    explicit DoorbellSlot(common::EventFd event) : event_(std::move(event)) {}
    common::EventFd event_;
    std::atomic<std::uint32_t> value_{0};
};

// The control thread's record of the I/O queues that exist: what the admin checks (Create,
// Delete) and slow-path doorbell routing need. The worker keeps its own runtime state.
struct IoCqRecord {
    std::uint32_t size = 0;
    bool interrupts = false;
    std::uint16_t vector = 0;
    unsigned sq_count = 0;  // SQs completing into it; a CQ in use cannot be deleted (§5.6)
    std::shared_ptr<DoorbellSlot> doorbell;
};

struct IoSqRecord {
    std::uint32_t size = 0;
    std::uint16_t cqid = 0;
    std::shared_ptr<DoorbellSlot> doorbell;
};

class QueueRegistry final {
public:
    explicit QueueRegistry(std::uint16_t max_qid) : sqs_(max_qid + 1u), cqs_(max_qid + 1u) {}

    [[nodiscard]] std::uint16_t max_qid() const {
        return static_cast<std::uint16_t>(sqs_.size() - 1);
    }
    // nullptr when the I/O queue does not exist (qid 0 and qids past max_qid never do).
    [[nodiscard]] const IoSqRecord* sq(std::uint16_t qid) const;
    [[nodiscard]] const IoCqRecord* cq(std::uint16_t qid) const;
    [[nodiscard]] bool empty() const;

    // Preconditions (checked by the admin code first): the qid is free; an SQ's CQ exists; a
    // deleted CQ has no SQs.
    void add_cq(std::uint16_t qid, IoCqRecord r);
    void add_sq(std::uint16_t qid, IoSqRecord r);
    void remove_sq(std::uint16_t qid);
    void remove_cq(std::uint16_t qid);
    void clear();

    template <typename F>  // F(std::uint16_t qid, const IoSqRecord&)
    void for_each_sq(F&& f) const {
        for (std::size_t q = 1; q < sqs_.size(); ++q)
            if (sqs_[q]) f(static_cast<std::uint16_t>(q), *sqs_[q]);
    }
    template <typename F>  // F(std::uint16_t qid, const IoCqRecord&)
    void for_each_cq(F&& f) const {
        for (std::size_t q = 1; q < cqs_.size(); ++q)
            if (cqs_[q]) f(static_cast<std::uint16_t>(q), *cqs_[q]);
    }

private:
    std::vector<std::optional<IoSqRecord>> sqs_;
    std::vector<std::optional<IoCqRecord>> cqs_;
};

}  // namespace nitro_card::nvme
