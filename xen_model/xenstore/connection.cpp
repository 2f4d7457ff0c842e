#include "xen_model/xenstore/connection.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstddef>
#include <cstring>
#include <deque>
#include <mutex>
#include <string>

#include "xen_model/abi/xen_abi.hpp"
#include "xen_model/xenstore/wire.hpp"

namespace xen_model::xenstore {
namespace {

using abi::XenstoreInterface;
using abi::XsMsgHeader;
using abi::XsType;

constexpr std::uint32_t kRingMask = abi::kXsRingSize - 1;
constexpr std::size_t kHeaderSize = sizeof(XsMsgHeader);
// Messages waiting for room in the rsp ring. Requests are not read while this many wait (the
// guest must consume replies first; the ring is full then, so its read notifies us).
constexpr std::size_t kMaxPendingOut = 64;
// Watch events waiting to be framed; more are dropped (and counted) so that a guest that never
// reads its ring cannot grow dom0's memory.
constexpr std::size_t kMaxQueuedEvents = 128;
// Request bytes one kick may consume: a guest that keeps writing cannot hold dom0's thread.
constexpr std::size_t kKickBudget = 1u << 20;

}  // namespace

struct Connection::Impl {
    Store& store;
    DomId domid;
    std::span<std::byte> page;  // GUEST-SHARED: the xenstore_domain_interface, sliced once
    std::function<void()> notify;

    // Serving state; touched only by the thread that holds `busy`.
    std::uint32_t req_cons = 0;  // our copies: the guest's view of them is written, never trusted
    std::uint32_t rsp_prod = 0;
    std::array<char, kHeaderSize + abi::kXsPayloadMax> in{};  // the message being assembled
    std::size_t in_have = 0;
    std::uint32_t skip = 0;  // payload bytes of a refused over-long message still to discard
    std::deque<std::string> out;
    std::size_t out_off = 0;  // bytes of out.front() already in the ring
    std::atomic<bool> broken{false};  // a guest index went out of range: no longer served

    std::mutex ev_mu;  // guards events only
    std::deque<WatchEvent> events;

    std::atomic<bool> busy{false};
    std::atomic<bool> kicked{false};
    std::atomic<bool> posted{false};
    std::atomic<std::uint64_t> requests{0};
    std::atomic<std::uint64_t> errors{0};
    std::atomic<std::uint64_t> dropped{0};

    Impl(Store& s, DomId d, std::span<std::byte> p, std::function<void()> n)
        : store(s), domid(d), page(p), notify(std::move(n)) {}

    std::uint32_t* index(std::size_t off) const {
        return reinterpret_cast<std::uint32_t*>(page.data() + off);  // 4-aligned: page-aligned base
    }
    // GUEST-SHARED: an index the guest writes. Acquire = the read barrier before the data.
    std::uint32_t load_index(std::size_t off) const { return __atomic_load_n(index(off), __ATOMIC_ACQUIRE); }
    // Release = every copy to or from the ring is done before the guest sees the index move.
    void store_index(std::size_t off, std::uint32_t v) const { __atomic_store_n(index(off), v, __ATOMIC_RELEASE); }

    // Copies n bytes of a ring starting at free-running index idx (masked), across the wrap.
    void copy_from_ring(std::size_t ring_off, std::uint32_t idx, char* dst, std::size_t n) const {
        const std::size_t start = idx & kRingMask;
        const std::size_t first = std::min(n, abi::kXsRingSize - start);
        std::memcpy(dst, page.data() + ring_off + start, first);
        if (n > first) std::memcpy(dst + first, page.data() + ring_off, n - first);
    }
    void copy_to_ring(std::size_t ring_off, std::uint32_t idx, const char* src, std::size_t n) const {
        const std::size_t start = idx & kRingMask;
        const std::size_t first = std::min(n, abi::kXsRingSize - start);
        std::memcpy(page.data() + ring_off + start, src, first);
        if (n > first) std::memcpy(page.data() + ring_off, src + first, n - first);
    }

    void mark_broken(std::string_view why) {
        if (!broken.exchange(true)) spdlog::error("xenstore: dom{}: ring broken ({}); no longer served", domid, why);
    }

    // Writes as much queued output as fits (a message may be split across two writes: the
    // ring is a byte stream). Returns whether anything was written.
    bool flush() {
        bool wrote = false;
        while (!out.empty() && !broken) {
            const std::uint32_t cons = load_index(offsetof(XenstoreInterface, rsp_cons));
            const std::uint32_t used = rsp_prod - cons;
            if (used > abi::kXsRingSize) {
                mark_broken("rsp_cons ahead of rsp_prod");
                break;
            }
            const std::size_t space = abi::kXsRingSize - used;
            if (space == 0) break;
            const std::string& m = out.front();
            const std::size_t n = std::min(space, m.size() - out_off);
            copy_to_ring(offsetof(XenstoreInterface, rsp), rsp_prod, m.data() + out_off, n);
            rsp_prod += static_cast<std::uint32_t>(n);
            store_index(offsetof(XenstoreInterface, rsp_prod), rsp_prod);
            wrote = true;
            out_off += n;
            if (out_off == m.size()) {
                out.pop_front();
                out_off = 0;
            }
        }
        return wrote;
    }

    // Queued watch events become messages behind the replies already queued.
    void drain_events() {
        std::lock_guard lk(ev_mu);
        while (!events.empty() && out.size() < kMaxPendingOut + kMaxQueuedEvents) {
            auto m = wire::watch_event(events.front().path, events.front().token);
            if (m) {
                out.push_back(std::move(*m));
            } else {
                ++dropped;
                spdlog::warn("xenstore: dom{}: watch event for {} too long, dropped", domid, events.front().path);
            }
            events.pop_front();
        }
    }

    void reply_error(XsError e, std::uint32_t req_id, std::uint32_t tx_id) {
        ++errors;
        out.push_back(wire::error_reply(e, req_id, tx_id));
    }

    template <typename T>
    void reply_ok_or_error(const XsResult<T>& r, const wire::Request& q) {
        if (r) {
            out.push_back(wire::ok_reply(q.type, q.req_id, q.tx_id));
        } else {
            reply_error(r.error(), q.req_id, q.tx_id);
        }
    }

    void reply_message(XsResult<std::string> m, const wire::Request& q) {
        if (m) {
            out.push_back(std::move(*m));
        } else {
            reply_error(m.error(), q.req_id, q.tx_id);
        }
    }

    void handle(const XsMsgHeader& h, std::span<const char> payload, Connection& self) {
        ++requests;
        auto q = wire::parse_request(h, payload);
        if (!q) {
            spdlog::debug("xenstore: dom{}: request type {} refused: {}", domid, h.type, to_wire(q.error()));
            reply_error(q.error(), h.req_id, h.tx_id);
            return;
        }
        switch (q->type) {
            case XsType::Read: {
                auto v = store.read(domid, q->tx_id, q->path);
                if (!v) return reply_error(v.error(), q->req_id, q->tx_id);
                return reply_message(wire::message(XsType::Read, q->req_id, q->tx_id, *v), *q);
            }
            case XsType::Write: return reply_ok_or_error(store.write(domid, q->tx_id, q->path, q->value), *q);
            case XsType::Mkdir: return reply_ok_or_error(store.mkdir(domid, q->tx_id, q->path), *q);
            case XsType::Rm: return reply_ok_or_error(store.rm(domid, q->tx_id, q->path), *q);
            case XsType::Directory: {
                auto d = store.directory(domid, q->tx_id, q->path);
                if (!d) return reply_error(d.error(), q->req_id, q->tx_id);
                return reply_message(wire::directory_reply(q->req_id, q->tx_id, *d), *q);
            }
            case XsType::Watch: {
                // Queue OK first: the watch's first event (posted from inside watch()) lands in
                // `events` and follows the reply.
                auto r = store.watch(domid, std::string(q->path), std::string(q->token), self.shared_from_this());
                return reply_ok_or_error(r, *q);
            }
            case XsType::Unwatch: return reply_ok_or_error(store.unwatch(domid, q->path, q->token), *q);
            case XsType::TransactionStart: {
                auto id = store.transaction_start(domid);
                if (!id) return reply_error(id.error(), q->req_id, q->tx_id);
                std::string p = std::to_string(*id);
                p.push_back('\0');
                return reply_message(wire::message(XsType::TransactionStart, q->req_id, q->tx_id, p), *q);
            }
            case XsType::TransactionEnd:
                return reply_ok_or_error(store.transaction_end(domid, q->tx_id, q->commit), *q);
            case XsType::ResetWatches: {
                store.reset_watches(domid);
                std::lock_guard lk(ev_mu);
                events.clear();
                out.push_back(wire::ok_reply(q->type, q->req_id, q->tx_id));
                return;
            }
            case XsType::GetDomainPath: {
                std::string p = domain_path(q->domid);
                p.push_back('\0');
                return reply_message(wire::message(XsType::GetDomainPath, q->req_id, q->tx_id, p), *q);
            }
            default: return reply_error(XsError::NoSys, q->req_id, q->tx_id);
        }
    }

    // One step of reading the req ring: up to the end of the current header, payload or
    // discarded payload. Returns the bytes consumed (0: nothing there, or the ring is broken).
    std::size_t consume(Connection& self) {
        const std::uint32_t prod = load_index(offsetof(XenstoreInterface, req_prod));
        const std::uint32_t avail = prod - req_cons;
        if (avail == 0) return 0;
        if (avail > abi::kXsRingSize) {
            mark_broken("req_prod ahead of req_cons by more than the ring");
            return 0;
        }
        XsMsgHeader h{};
        if (in_have >= kHeaderSize) std::memcpy(&h, in.data(), kHeaderSize);
        std::size_t want;
        if (skip > 0) {
            want = skip;
        } else if (in_have < kHeaderSize) {
            want = kHeaderSize - in_have;
        } else {
            want = kHeaderSize + h.len - in_have;  // h.len <= kXsPayloadMax: checked below
        }
        const std::size_t n = std::min<std::size_t>(avail, want);
        if (skip > 0) {
            skip -= static_cast<std::uint32_t>(n);
        } else {
            copy_from_ring(offsetof(XenstoreInterface, req), req_cons, in.data() + in_have, n);
            in_have += n;
        }
        req_cons += static_cast<std::uint32_t>(n);
        store_index(offsetof(XenstoreInterface, req_cons), req_cons);
        if (skip > 0 || in_have < kHeaderSize) return n;
        std::memcpy(&h, in.data(), kHeaderSize);  // our copy: the guest cannot change it now
        if (h.len > abi::kXsPayloadMax) {
            // Refuse it and stay in step with the stream by discarding its payload as it comes.
            spdlog::warn("xenstore: dom{}: message of {} bytes refused", domid, h.len);
            ++requests;
            reply_error(XsError::TooBig, h.req_id, h.tx_id);
            skip = h.len;
            in_have = 0;
            return n;
        }
        if (in_have == kHeaderSize + h.len) {
            handle(h, std::span<const char>(in.data() + kHeaderSize, h.len), self);
            in_have = 0;
        }
        return n;
    }

    // Serves until the req ring is empty (re-checked after each step), output is blocked on the
    // guest, or the budget is spent. Returns whether anything was written to the rsp ring.
    bool serve(Connection& self) {
        bool produced = false;
        std::size_t consumed = 0;
        for (;;) {
            drain_events();
            produced |= flush();
            if (broken || out.size() >= kMaxPendingOut) break;
            const std::size_t n = consume(self);
            if (n == 0) break;
            consumed += n;
            if (consumed >= kKickBudget) {
                spdlog::warn("xenstore: dom{}: {} request bytes in one kick; yielding", domid, consumed);
                break;
            }
        }
        drain_events();
        produced |= flush();
        return produced;
    }

    // Whoever holds `busy` serves every kick and post raised meanwhile: a kick or post that
    // finds it taken (another thread, or the store posting from inside our own request)
    // leaves a flag that the holder sees before it lets go.
    void run(Connection& self) {
        for (;;) {
            bool expected = false;
            if (!busy.compare_exchange_strong(expected, true, std::memory_order_acquire)) return;
            bool produced = false;
            for (;;) {
                const bool k = kicked.exchange(false);
                const bool p = posted.exchange(false);
                if (!k && !p) break;
                produced |= serve(self);
            }
            busy.store(false, std::memory_order_release);
            if (produced && notify) notify();
            if (!kicked.load() && !posted.load()) return;
        }
    }
};

std::shared_ptr<Connection> Connection::create(Store& store, DomId domid, const common::GuestMemory& mem,
                                               common::GuestAddr ring, std::function<void()> notify) {
    if (ring.value() % abi::kPageSize != 0) {
        spdlog::error("xenstore: dom{}: ring page {:#x} not page aligned", domid, ring.value());
        return nullptr;
    }
    auto page = mem.slice(ring, abi::kPageSize);
    if (!page) {
        spdlog::error("xenstore: dom{}: ring page: {}", domid, page.error().message);
        return nullptr;
    }
    std::shared_ptr<Connection> c(new Connection());
    c->impl_ = std::make_unique<Impl>(store, domid, *page, std::move(notify));
    // Start where the page says (0 on a fresh page): a connection made again over a live ring
    // then continues it.
    c->impl_->req_cons = c->impl_->load_index(offsetof(XenstoreInterface, req_cons));
    c->impl_->rsp_prod = c->impl_->load_index(offsetof(XenstoreInterface, rsp_prod));
    return c;
}

Connection::~Connection() = default;

void Connection::on_kick() {
    impl_->kicked.store(true);
    impl_->run(*this);
}

void Connection::post(WatchEvent ev) {
    {
        std::lock_guard lk(impl_->ev_mu);
        if (impl_->events.size() >= kMaxQueuedEvents) {
            ++impl_->dropped;
            spdlog::warn("xenstore: dom{}: watch event queue full; {} dropped", impl_->domid, ev.path);
            return;
        }
        impl_->events.push_back(std::move(ev));
    }
    impl_->posted.store(true);
    impl_->run(*this);
}

std::uint64_t Connection::requests() const { return impl_->requests.load(); }
std::uint64_t Connection::errors() const { return impl_->errors.load(); }
std::uint64_t Connection::dropped_events() const { return impl_->dropped.load(); }
bool Connection::broken() const { return impl_->broken.load(); }

}  // namespace xen_model::xenstore
