// Queue-index arithmetic for NVMe submission and completion queues (NVMe 2.0 §3.3.1), doorbell
// decoding, and the shadow-doorbell EventIdx rule (Doorbell Buffer Config, NVMe 1.3 §5.7).
//
// Indices are slot numbers in [0, size); a queue of `size` slots holds at most size - 1 entries
// because head == tail means empty. Every value written by the guest (doorbell registers, shadow
// doorbells) must pass doorbell_value_valid() / cq_head_valid() before it becomes an index.
#pragma once

#include <cstdint>
#include <optional>

#include "nvme/spec.hpp"

namespace nitro_card::nvme {

[[nodiscard]] constexpr std::uint32_t next_index(std::uint32_t i, std::uint32_t size) {
    return i + 1 == size ? 0 : i + 1;
}

// Entries between head (consumer) and tail (producer). Requires head, tail < size.
[[nodiscard]] constexpr std::uint32_t queue_entries(std::uint32_t head, std::uint32_t tail,
                                                    std::uint32_t size) {
    return tail >= head ? tail - head : size - head + tail;
}

// Commands the guest has submitted that the controller has not fetched: head is the
// controller's SQ head, tail the last valid SQ tail doorbell value.
[[nodiscard]] constexpr std::uint32_t sq_entries_available(std::uint32_t head, std::uint32_t tail,
                                                           std::uint32_t size) {
    return queue_entries(head, tail, size);
}

// Completions the controller may still post before the CQ is full: head is the guest's last
// CQ head doorbell value, tail the controller's next slot.
[[nodiscard]] constexpr std::uint32_t cq_free_slots(std::uint32_t head, std::uint32_t tail,
                                                    std::uint32_t size) {
    return size - 1 - queue_entries(head, tail, size);
}

// A doorbell value is a slot number (§3.1.4.21-22). An out-of-range value is an "Invalid
// Doorbell Write Value" error event (§5.2.1, ErrorEventInfo::InvalidDoorbellWriteValue); the
// controller ignores the write.
[[nodiscard]] constexpr bool doorbell_value_valid(std::uint32_t value, std::uint32_t size) {
    return value < size;
}

// A CQ head doorbell may only release completions the controller has posted: moving from
// old_head it may advance up to the controller's tail, never past it. Anything else is also
// an Invalid Doorbell Write Value.
[[nodiscard]] constexpr bool cq_head_valid(std::uint32_t new_head, std::uint32_t old_head,
                                           std::uint32_t tail, std::uint32_t size) {
    return doorbell_value_valid(new_head, size) &&
           queue_entries(old_head, new_head, size) <= queue_entries(old_head, tail, size);
}

// Shadow doorbells: after writing new_idx into its shadow slot (old value old_idx), the guest
// rings the MMIO doorbell only if this returns true, i.e. if event_idx, which the controller
// published, lies in [old_idx, new_idx) modulo 2^16. The controller uses the same rule to
// decide whether it still needs a doorbell, and must publish an EventIdx for both SQ and CQ
// before it sleeps. Same arithmetic as Linux's nvme_dbbuf_need_event().
[[nodiscard]] constexpr bool need_event(std::uint16_t event_idx, std::uint16_t new_idx,
                                        std::uint16_t old_idx) {
    return static_cast<std::uint16_t>(new_idx - event_idx - 1) <
           static_cast<std::uint16_t>(new_idx - old_idx);
}

// Which queue a doorbell register belongs to.
struct DoorbellRef {
    std::uint16_t qid = 0;
    bool completion = false;  // false: SQ tail doorbell; true: CQ head doorbell
    constexpr bool operator==(const DoorbellRef&) const = default;
};

// Decodes a BAR0 offset in the doorbell area. nullopt when the offset is below the doorbells,
// not on a doorbell boundary, or past queue max_qid.
[[nodiscard]] constexpr std::optional<DoorbellRef> decode_doorbell(std::uint64_t offset,
                                                                   unsigned dstrd,
                                                                   std::uint16_t max_qid) {
    if (offset < reg::DOORBELL_BASE) return std::nullopt;
    const std::uint64_t stride = doorbell_stride(dstrd);
    const std::uint64_t rel = offset - reg::DOORBELL_BASE;
    if (rel % stride != 0) return std::nullopt;
    const std::uint64_t index = rel / stride;
    const std::uint64_t qid = index / 2;
    if (qid > max_qid) return std::nullopt;
    return DoorbellRef{static_cast<std::uint16_t>(qid), (index & 1) != 0};
}

// Byte offset of a queue's slot in the shadow doorbell and EventIdx buffers: the buffers are
// laid out like the doorbell registers, without the 0x1000 base (Linux sq_idx()/cq_idx()).
[[nodiscard]] constexpr std::uint64_t shadow_slot_offset(DoorbellRef db, unsigned dstrd) {
    return (2u * std::uint64_t{db.qid} + (db.completion ? 1u : 0u)) * doorbell_stride(dstrd);
}

}  // namespace nitro_card::nvme
