// The back end of a Xen shared ring (io/ring.h) over a granted page: index arithmetic as pure
// functions (free-running u32 indices, so every comparison is a wrap-safe difference) and the
// BackRing that applies them to the page.
//
// The frontend owns req_prod and rsp_event; the backend owns req_event and rsp_prod. A
// notification is due only when the other side's event index lies in the range just produced:
// without that, wake-ups get lost (too few) or every response interrupts (too many).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <type_traits>

#include "xen_model/abi/xen_abi.hpp"

namespace xen_model::blkback::ring {

// Requests produced and not yet consumed.
[[nodiscard]] constexpr std::uint32_t unconsumed(std::uint32_t req_prod, std::uint32_t req_cons) noexcept {
    return req_prod - req_cons;
}

// The frontend claims more outstanding requests than the ring holds (Linux blkback's
// RING_REQUEST_PROD_OVERFLOW: "Frontend provided bogus ring requests").
[[nodiscard]] constexpr bool prod_overflow(std::uint32_t req_prod, std::uint32_t rsp_prod_pvt,
                                           std::uint32_t size) noexcept {
    return req_prod - rsp_prod_pvt > size;
}

// The producer index cannot be trusted: more requests outstanding than the ring holds, or an
// index moved back behind requests already consumed (serving on would walk ~2^32 slots).
[[nodiscard]] constexpr bool prod_bogus(std::uint32_t req_prod, std::uint32_t req_cons, std::uint32_t rsp_prod_pvt,
                                        std::uint32_t size) noexcept {
    return prod_overflow(req_prod, rsp_prod_pvt, size) || req_cons - rsp_prod_pvt > req_prod - rsp_prod_pvt;
}

// Every slot holds a request or an unanswered one: consuming another would overwrite a slot
// whose response is still owed (RING_REQUEST_CONS_OVERFLOW).
[[nodiscard]] constexpr bool cons_overflow(std::uint32_t req_cons, std::uint32_t rsp_prod_pvt,
                                           std::uint32_t size) noexcept {
    return req_cons - rsp_prod_pvt >= size;
}

// RING_PUSH_RESPONSES_AND_CHECK_NOTIFY's test: the frontend asked to be woken at rsp_event, and
// [old_prod, new_prod) was just published.
[[nodiscard]] constexpr bool need_notify(std::uint32_t old_prod, std::uint32_t new_prod,
                                         std::uint32_t rsp_event) noexcept {
    return static_cast<std::uint32_t>(new_prod - rsp_event) < static_cast<std::uint32_t>(new_prod - old_prod);
}

// A one-page ring of N slots of type Slot (a union of request and response in C; here the
// larger of the two sizes), entries at offset 64.
template <typename Req, typename Rsp>
class BackRing final {
public:
    static constexpr std::size_t kSlot = sizeof(Req) > sizeof(Rsp) ? sizeof(Req) : sizeof(Rsp);
    static constexpr std::uint32_t kSize = abi::ring_entries(kSlot);
    static_assert(std::is_trivially_copyable_v<Req> && std::is_trivially_copyable_v<Rsp>);

    // page: the granted ring page, 4096 bytes, 8-byte aligned. A new ring starts at index 0 (the
    // frontend initialises the indices before it grants the page).
    explicit BackRing(std::span<std::byte> page) noexcept : page_(page) {}

    // GUEST-SHARED: the frontend's producer index (acquire: entries are read after it).
    [[nodiscard]] std::uint32_t req_prod() const noexcept { return load(offsetof(abi::SringHeader, req_prod)); }
    [[nodiscard]] std::uint32_t rsp_event() const noexcept { return load(offsetof(abi::SringHeader, rsp_event)); }

    // Copies request slot idx out of the page; the caller checks the copy.
    [[nodiscard]] Req copy_request(std::uint32_t idx) const noexcept {
        Req r;
        std::memcpy(&r, slot(idx), sizeof(Req));
        return r;
    }

    // Writes the next response (rsp_prod_pvt) without publishing it.
    void put_response(const Rsp& rsp) noexcept {
        std::memcpy(slot(rsp_prod_pvt), &rsp, sizeof(Rsp));
        ++rsp_prod_pvt;
    }

    // RING_PUSH_RESPONSES_AND_CHECK_NOTIFY: publishes the responses written so far; true when
    // the frontend must be notified.
    [[nodiscard]] bool push_responses_and_check_notify() noexcept {
        const std::uint32_t old_prod = load(offsetof(abi::SringHeader, rsp_prod));
        const std::uint32_t new_prod = rsp_prod_pvt;
        store(offsetof(abi::SringHeader, rsp_prod), new_prod);  // release: responses before index
        std::atomic_thread_fence(std::memory_order_seq_cst);    // index before reading rsp_event
        return need_notify(old_prod, new_prod, rsp_event());
    }

    // RING_FINAL_CHECK_FOR_REQUESTS: true if requests are waiting; otherwise asks the frontend
    // to notify on the next one and checks once more, closing the race with a request that
    // arrived just before req_event was written.
    [[nodiscard]] bool final_check_for_requests() noexcept {
        if (unconsumed(req_prod(), req_cons) != 0) return true;
        store(offsetof(abi::SringHeader, req_event), req_cons + 1);
        std::atomic_thread_fence(std::memory_order_seq_cst);
        return unconsumed(req_prod(), req_cons) != 0;
    }

    std::uint32_t req_cons = 0;      // next request to consume
    std::uint32_t rsp_prod_pvt = 0;  // next response slot, published by push

private:
    [[nodiscard]] std::byte* slot(std::uint32_t idx) const noexcept {
        return page_.data() + sizeof(abi::SringHeader) + std::size_t{idx & (kSize - 1)} * kSlot;
    }
    [[nodiscard]] std::uint32_t load(std::size_t off) const noexcept {
        return std::atomic_ref<std::uint32_t>(*reinterpret_cast<std::uint32_t*>(page_.data() + off))
            .load(std::memory_order_acquire);
    }
    void store(std::size_t off, std::uint32_t v) noexcept {
        std::atomic_ref<std::uint32_t>(*reinterpret_cast<std::uint32_t*>(page_.data() + off))
            .store(v, std::memory_order_release);
    }

    std::span<std::byte> page_;
};

using BlkifBackRing = BackRing<abi::BlkifRequest, abi::BlkifResponse>;
static_assert(BlkifBackRing::kSize == abi::kBlkifRingEntries);

}  // namespace xen_model::blkback::ring
