#include "xen_model/blkback/vbd.hpp"

#include <poll.h>
#include <sys/epoll.h>
#include <sys/timerfd.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <chrono>
#include <deque>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "xen_model/blkback/blkif.hpp"
#include "xen_model/blkback/ring.hpp"

namespace xen_model::blkback {

using common::Error;
using common::fail;
using common::Result;
using common::Status;
using nitro_card::storage::Completion;
using nitro_card::storage::Op;
using State = abi::XenbusState;

namespace {

constexpr std::uint32_t kRingSize = ring::BlkifBackRing::kSize;
// Guest mistakes are logged at warn this many times per Vbd, then at debug: a hostile guest
// must not flood dom0's log.
constexpr std::uint64_t kWarnBudget = 16;
// How long a teardown waits for the backend to finish the I/O it was given.
constexpr auto kDrainTimeout = std::chrono::seconds(30);

struct InboxEvent {
    enum class Kind { FrontendChanged, BindReply, PortClosed, Stop } kind;
    std::uint32_t value = 0;  // request id or port
    std::int32_t status = 0;
};

// Events for the Vbd's thread; shared with the watch sink, which may outlive the Vbd briefly.
struct Inbox {
    explicit Inbox(common::EventFd w) : wake(std::move(w)) {}
    std::mutex mu;
    std::deque<InboxEvent> q;
    common::EventFd wake;
    void push(InboxEvent e) {
        {
            std::lock_guard lk(mu);
            // The handler reads the current state, so one pending change stands for many: a
            // guest that rewrites its state node in a loop cannot grow the queue.
            const bool coalesce = e.kind == InboxEvent::Kind::FrontendChanged &&
                                  std::any_of(q.begin(), q.end(), [](const InboxEvent& x) {
                                      return x.kind == InboxEvent::Kind::FrontendChanged;
                                  });
            if (!coalesce) q.push_back(e);
        }
        (void)wake.signal();
    }
    std::deque<InboxEvent> take() {
        std::lock_guard lk(mu);
        return std::exchange(q, {});
    }
};

class InboxSink final : public xenstore::WatchSink {
public:
    explicit InboxSink(std::shared_ptr<Inbox> inbox) : inbox_(std::move(inbox)) {}
    void post(xenstore::WatchEvent) override { inbox_->push({InboxEvent::Kind::FrontendChanged}); }

private:
    std::shared_ptr<Inbox> inbox_;
};

std::optional<std::uint32_t> parse_u32(std::string_view s) {
    std::uint32_t v = 0;
    auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (ec != std::errc() || p != s.data() + s.size() || s.empty()) return std::nullopt;
    return v;
}

enum Token : std::uint64_t { kTokInbox = 1, kTokKick, kTokCompletion, kTokTimer };

}  // namespace

struct Vbd::Impl {
    Impl(xenstore::Store& s, grant::GrantTable& g, PortBinder& b, VbdConfig c)
        : store(s), grants(g), binder(b), cfg(std::move(c)), limiter(cfg.limits) {}

    // ---- set-up (creating thread) ----
    Status start();
    Status write_nodes();

    // ---- the Vbd's thread ----
    void run();
    void on_frontend_changed();
    void connect();
    void on_bind_reply(std::uint32_t request_id, std::int32_t status);
    void on_port_closed(std::uint32_t p);
    void fatal(const std::string& why);
    void disconnect(bool unbind);
    void set_state(State s);
    void serve();
    void dispatch();
    void on_completion(const Completion& c);
    void respond(std::uint64_t id, std::uint8_t operation, std::int16_t status);
    void publish();
    void arm_timer(nitro_card::storage::TimePoint at);
    void guest_warn(const std::string& msg);
    bool epoll_add(int fd, std::uint64_t token);
    void epoll_del(int fd);
    template <typename F>
    void update_stats(F&& f) {
        std::lock_guard lk(stats_mu);
        f(stats);
    }

    xenstore::Store& store;
    grant::GrantTable& grants;
    PortBinder& binder;
    VbdConfig cfg;
    std::uint32_t devid = 0;
    std::uint64_t sectors = 0;
    std::string be, fe;
    nitro_card::storage::RateLimiter limiter;

    std::shared_ptr<Inbox> inbox;
    xenstore::WatchId watch_id = 0;
    bool watching = false;
    common::UniqueFd epoll;
    common::UniqueFd timer;
    std::thread thread;

    // Connection state, owned by the thread.
    enum class Conn { Idle, Binding, Connected } conn = Conn::Idle;
    State be_state = State::Unknown;
    grant::GrantMapping ring_map;
    std::optional<ring::BlkifBackRing> ring;
    std::uint32_t port = 0;
    std::optional<common::EventFd> kick, notify;
    std::uint32_t bind_request = 0;
    std::uint32_t bind_counter = 0;
    bool broken = false;
    bool responses_unpublished = false;
    std::uint64_t warnings = 0;

    struct Pending {
        CheckedRequest req;
        bool admitted = false;
    };
    std::deque<Pending> pending;  // consumed, admitted in order
    enum class Stage : std::uint8_t { Data, FlushAfterData, FlushOnly };
    struct Slot {
        bool used = false;
        Stage stage = Stage::Data;
        CheckedRequest req;
        std::vector<grant::GrantMapping> maps;
        std::array<iovec, abi::kBlkifMaxSegments> iov{};
    };
    std::array<Slot, kRingSize> slots{};
    std::uint32_t in_flight = 0;

    mutable std::mutex stats_mu;
    VbdStats stats;
};

Status Vbd::Impl::start() {
    devid = abi::xvd_number(cfg.disk);
    sectors = cfg.backend->size_bytes() / abi::kSectorSize;
    be = fmt::format("/local/domain/0/backend/vbd/{}/{}", cfg.domid, devid);
    fe = fmt::format("/local/domain/{}/device/vbd/{}", cfg.domid, devid);
    auto wake = common::EventFd::create();
    if (!wake) return fail(std::move(wake.error()));
    inbox = std::make_shared<Inbox>(std::move(*wake));
    epoll.reset(::epoll_create1(EPOLL_CLOEXEC));
    if (!epoll) return fail(Error::from_errno("epoll_create1"));
    timer.reset(::timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK));
    if (!timer) return fail(Error::from_errno("timerfd_create"));
    if (!epoll_add(inbox->wake.fd(), kTokInbox) || !epoll_add(timer.get(), kTokTimer) ||
        !epoll_add(cfg.backend->completion_fd(), kTokCompletion)) {
        return fail(Error::from_errno("epoll_ctl"));
    }
    if (auto s = write_nodes(); !s) return s;
    auto w = store.watch(0, fe + "/state", fmt::format("vbd-{}-{}", cfg.domid, devid), std::make_shared<InboxSink>(inbox));
    if (!w) return fail(Error::invalid(fmt::format("{}: watching the frontend state: {}", fe, xenstore::to_wire(w.error()))));
    watch_id = *w;
    watching = true;
    thread = std::thread([this] { run(); });
    return {};
}

Status Vbd::Impl::write_nodes() {
    const std::pair<std::string, std::string> nodes[] = {
        {be + "/frontend", fe},
        {be + "/frontend-id", std::to_string(cfg.domid)},
        {be + "/online", "1"},
        {be + "/hotplug-status", "connected"},
        {be + "/sectors", std::to_string(sectors)},
        {be + "/sector-size", std::to_string(abi::kSectorSize)},
        {be + "/info", "0"},
        {be + "/mode", "w"},
        {be + "/feature-flush-cache", "1"},
        {fe + "/backend", be},
        {fe + "/backend-id", "0"},
        {fe + "/state", std::to_string(static_cast<std::uint32_t>(State::Initialising))},
        {fe + "/virtual-device", std::to_string(devid)},
        {fe + "/device-type", "disk"},
        // Last: the frontend may act on it at once.
        {be + "/state", std::to_string(static_cast<std::uint32_t>(State::InitWait))},
    };
    for (const auto& [path, value] : nodes) {
        if (auto r = store.write(0, 0, path, value); !r) {
            return fail(Error::invalid(fmt::format("writing {}: {}", path, xenstore::to_wire(r.error()))));
        }
    }
    be_state = State::InitWait;
    return {};
}

bool Vbd::Impl::epoll_add(int fd, std::uint64_t token) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = token;
    return ::epoll_ctl(epoll.get(), EPOLL_CTL_ADD, fd, &ev) == 0;
}

void Vbd::Impl::epoll_del(int fd) { (void)::epoll_ctl(epoll.get(), EPOLL_CTL_DEL, fd, nullptr); }

void Vbd::Impl::guest_warn(const std::string& msg) {
    if (++warnings <= kWarnBudget) {
        spdlog::warn("vbd {}/{}: {}{}", cfg.domid, devid, msg, warnings == kWarnBudget ? " (further ones at debug level)" : "");
    } else {
        spdlog::debug("vbd {}/{}: {}", cfg.domid, devid, msg);
    }
}

void Vbd::Impl::run() {
    for (;;) {
        std::array<epoll_event, 8> evs;
        const int n = ::epoll_wait(epoll.get(), evs.data(), static_cast<int>(evs.size()), -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            spdlog::error("vbd {}/{}: epoll_wait: {}", cfg.domid, devid, std::strerror(errno));
            return;
        }
        for (int i = 0; i < n; ++i) {
            switch (evs[static_cast<std::size_t>(i)].data.u64) {
                case kTokInbox: {
                    (void)inbox->wake.consume();
                    for (const auto& e : inbox->take()) {
                        switch (e.kind) {
                            case InboxEvent::Kind::Stop:
                                disconnect(true);
                                return;
                            case InboxEvent::Kind::FrontendChanged: on_frontend_changed(); break;
                            case InboxEvent::Kind::BindReply: on_bind_reply(e.value, e.status); break;
                            case InboxEvent::Kind::PortClosed: on_port_closed(e.value); break;
                        }
                    }
                    break;
                }
                case kTokKick:
                    if (kick) (void)kick->consume();
                    serve();
                    break;
                case kTokCompletion:
                    cfg.backend->poll_completions([this](const Completion& c) { on_completion(c); });
                    dispatch();
                    publish();
                    break;
                case kTokTimer: {
                    std::uint64_t ticks = 0;
                    (void)!::read(timer.get(), &ticks, sizeof(ticks));
                    dispatch();
                    publish();
                    break;
                }
                default: break;
            }
        }
    }
}

void Vbd::Impl::set_state(State s) {
    be_state = s;
    if (auto r = store.write(0, 0, be + "/state", std::to_string(static_cast<std::uint32_t>(s))); !r) {
        spdlog::error("vbd {}/{}: writing the backend state: {}", cfg.domid, devid, xenstore::to_wire(r.error()));
    }
}

void Vbd::Impl::on_frontend_changed() {
    auto v = store.read(0, 0, fe + "/state");
    std::uint32_t st = 0;  // a missing or garbled node counts as Unknown
    if (v) st = parse_u32(*v).value_or(0);
    spdlog::debug("vbd {}/{}: frontend state {}, backend {}", cfg.domid, devid, st, static_cast<std::uint32_t>(be_state));
    switch (static_cast<State>(st)) {
        case State::Initialising:
            if (be_state == State::Closed) {
                spdlog::info("vbd {}/{}: frontend restarts; waiting for it again", cfg.domid, devid);
                set_state(State::InitWait);
            }
            break;
        case State::Initialised:
        case State::Connected:
            if (conn == Conn::Idle && be_state == State::InitWait) connect();
            break;
        case State::Closing:
            disconnect(true);
            if (be_state != State::Closed) set_state(State::Closing);
            break;
        case State::Closed:
            disconnect(true);
            set_state(State::Closed);
            break;
        default:
            if (st == 0 && be_state == State::Connected) disconnect(true);
            break;
    }
}

void Vbd::Impl::fatal(const std::string& why) {
    spdlog::error("vbd {}/{}: {}; closing the device", cfg.domid, devid, why);
    disconnect(true);
    (void)store.write(0, 0, be + "/error", why);
    set_state(State::Closing);
}

void Vbd::Impl::connect() {
    auto read_fe = [&](const char* key) -> std::optional<std::string> {
        auto r = store.read(0, 0, fe + "/" + key);
        if (!r) return std::nullopt;
        return *r;
    };
    auto ring_ref = read_fe("ring-ref");
    auto evtchn = read_fe("event-channel");
    auto protocol = read_fe("protocol");
    auto order = read_fe("ring-page-order");
    if (!ring_ref || !parse_u32(*ring_ref)) return fatal("frontend gave no valid ring-ref");
    if (!evtchn || !parse_u32(*evtchn) || *parse_u32(*evtchn) == 0) return fatal("frontend gave no valid event-channel");
    // Only the 64-bit layout is implemented; a frontend without the key would mean x86_32-abi.
    if (!protocol) return fatal("frontend wrote no protocol (x86_32-abi is not supported)");
    if (*protocol != "x86_64-abi") return fatal(fmt::format("unsupported protocol '{}'", *protocol));
    if (order && parse_u32(*order).value_or(1) != 0) return fatal("multi-page rings were not offered");

    auto m = grants.map(*parse_u32(*ring_ref), grant::Access::Write);
    if (!m) return fatal(fmt::format("mapping the ring: {}", m.error().message));
    ring_map = std::move(*m);
    ring.emplace(ring_map.page());
    broken = false;
    auto k = common::EventFd::create();
    auto nt = common::EventFd::create();
    if (!k || !nt) return fatal("creating eventfds failed");
    kick.emplace(std::move(*k));
    notify.emplace(std::move(*nt));
    port = *parse_u32(*evtchn);
    bind_request = (cfg.disk << 16) | (++bind_counter & 0xffff);
    conn = Conn::Binding;
    if (auto s = binder.bind(bind_request, port, kick->fd(), notify->fd()); !s) {
        return fatal(fmt::format("asking the vmm to bind port {}: {}", port, s.error().message));
    }
}

void Vbd::Impl::on_bind_reply(std::uint32_t request_id, std::int32_t status) {
    if (conn != Conn::Binding || request_id != bind_request) return;  // stale or another Vbd's
    if (status != 0) return fatal(fmt::format("the vmm refused to bind port {} ({})", port, status));
    if (!epoll_add(kick->fd(), kTokKick)) return fatal("epoll_ctl on the kick eventfd failed");
    conn = Conn::Connected;
    update_stats([](VbdStats& s) { ++s.connects; s.ring_broken = false; });
    set_state(State::Connected);
    spdlog::info("vbd {}/{}: connected (ring ref {}, port {}, {} sectors, {})", cfg.domid, devid, ring_map.ref(), port,
                 sectors, cfg.description);
    serve();  // requests may already be waiting
}

void Vbd::Impl::on_port_closed(std::uint32_t p) {
    if (conn == Conn::Idle || p != port) return;
    spdlog::info("vbd {}/{}: the guest closed port {}", cfg.domid, devid, p);
    disconnect(false);
}

void Vbd::Impl::disconnect(bool unbind) {
    if (conn == Conn::Idle && !ring) return;
    if (kick && conn == Conn::Connected) epoll_del(kick->fd());
    // The backend still writes into granted pages: wait for it before releasing them.
    const auto deadline = std::chrono::steady_clock::now() + kDrainTimeout;
    while (in_flight > 0 && std::chrono::steady_clock::now() < deadline) {
        cfg.backend->kick();
        pollfd pfd{cfg.backend->completion_fd(), POLLIN, 0};
        (void)::poll(&pfd, 1, 100);
        cfg.backend->poll_completions([this](const Completion& c) { on_completion(c); });
    }
    if (in_flight > 0) spdlog::error("vbd {}/{}: {} requests still in the backend after teardown", cfg.domid, devid, in_flight);
    publish();
    pending.clear();
    for (auto& s : slots) s.maps.clear();
    ring.reset();
    ring_map.release();
    if (unbind && port != 0 && conn != Conn::Idle) binder.unbind(port);
    kick.reset();
    notify.reset();
    port = 0;
    conn = Conn::Idle;
    broken = false;
    (void)::timerfd_settime(timer.get(), 0, nullptr, nullptr);
}

void Vbd::Impl::respond(std::uint64_t id, std::uint8_t operation, std::int16_t status) {
    if (!ring) return;
    ring->put_response(abi::BlkifResponse{id, operation, 0, status, 0});
    responses_unpublished = true;
    update_stats([&](VbdStats& s) {
        ++s.requests;
        if (status == abi::kBlkifRspError) ++s.errors;
        if (status == abi::kBlkifRspEopnotsupp) ++s.unsupported;
    });
}

void Vbd::Impl::publish() {
    if (!ring || !responses_unpublished) return;
    responses_unpublished = false;
    if (ring->push_responses_and_check_notify() && notify) {
        (void)notify->signal();
        update_stats([](VbdStats& s) { ++s.notifications; });
    }
}

void Vbd::Impl::serve() {
    if (conn != Conn::Connected || !ring || broken) return;
    for (;;) {
        const std::uint32_t rp = ring->req_prod();  // GUEST-SHARED
        if (ring::prod_bogus(rp, ring->req_cons, ring->rsp_prod_pvt, kRingSize)) {
            spdlog::error("vbd {}/{}: frontend provided bogus ring requests (req_prod {}, req_cons {}, rsp_prod {}); "
                          "ring stopped until it reconnects",
                          cfg.domid, devid, rp, ring->req_cons, ring->rsp_prod_pvt);
            broken = true;
            update_stats([](VbdStats& s) { s.ring_broken = true; });
            break;
        }
        // At most one ring's worth per pass, whatever the indices say.
        for (std::uint32_t budget = kRingSize;
             budget > 0 && ring->req_cons != rp && !ring::cons_overflow(ring->req_cons, ring->rsp_prod_pvt, kRingSize);
             --budget) {
            const abi::BlkifRequest raw = ring->copy_request(ring->req_cons);  // GUEST-SHARED: copied once
            ++ring->req_cons;
            auto c = check_request(raw, sectors);
            if (!c) {
                guest_warn(c.error().message);
                respond(raw.id, raw.operation, abi::kBlkifRspError);
            } else if (c->op == BlkOp::Unsupported) {
                guest_warn(fmt::format("operation {} is not supported", raw.operation));
                respond(raw.id, raw.operation, abi::kBlkifRspEopnotsupp);
            } else {
                pending.push_back(Pending{*c, false});
            }
        }
        dispatch();
        publish();
        if (!ring->final_check_for_requests()) break;
    }
}

void Vbd::Impl::arm_timer(nitro_card::storage::TimePoint at) {
    const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(at.time_since_epoch()).count();
    itimerspec its{};
    its.it_value.tv_sec = static_cast<time_t>(ns / 1'000'000'000);
    its.it_value.tv_nsec = static_cast<long>(ns % 1'000'000'000);
    if (its.it_value.tv_sec == 0 && its.it_value.tv_nsec == 0) its.it_value.tv_nsec = 1;
    (void)::timerfd_settime(timer.get(), TFD_TIMER_ABSTIME, &its, nullptr);
}

void Vbd::Impl::dispatch() {
    while (!pending.empty() && ring) {
        Pending& p = pending.front();
        if (!p.admitted) {
            const auto adm = limiter.try_admit(p.req.bytes, nitro_card::storage::Clock::now());
            const auto ls = limiter.stats();
            update_stats([&](VbdStats& s) {
                s.throttled_requests = ls.throttled_requests;
                s.throttled_ns = ls.throttled_ns;
            });
            if (!adm) {
                arm_timer(adm.retry_at);
                return;
            }
            p.admitted = true;
        }
        std::uint32_t idx = 0;
        while (idx < kRingSize && slots[idx].used) ++idx;
        if (idx == kRingSize) return;  // cannot happen: at most kRingSize requests are owed
        Slot& slot = slots[idx];
        slot.req = p.req;
        slot.maps.clear();
        bool mapped = true;
        const auto access = p.req.writes_guest() ? grant::Access::Write : grant::Access::Read;
        for (std::uint32_t i = 0; i < p.req.nr_segments; ++i) {
            auto m = grants.map(p.req.seg[i].gref, access);
            if (!m) {
                guest_warn(fmt::format("request {:#x} segment {}: {}", p.req.id, i, m.error().message));
                mapped = false;
                break;
            }
            slot.iov[i] = iovec{m->page().data() + p.req.seg[i].offset, p.req.seg[i].length};
            slot.maps.push_back(std::move(*m));
        }
        if (!mapped) {
            slot.maps.clear();  // released before the response
            respond(p.req.id, p.req.operation, abi::kBlkifRspError);
            pending.pop_front();
            continue;
        }
        nitro_card::storage::Request r;
        r.tag = idx;
        if (p.req.op == BlkOp::Flush && !p.req.has_data()) {
            r.op = Op::Flush;
            slot.stage = Stage::FlushOnly;
        } else {
            r.op = p.req.op == BlkOp::Read ? Op::Read : Op::Write;
            r.offset = p.req.offset;
            r.length = p.req.bytes;
            r.iov = std::span<const iovec>(slot.iov.data(), p.req.nr_segments);
            slot.stage = p.req.op == BlkOp::Flush ? Stage::FlushAfterData : Stage::Data;
        }
        if (auto s = cfg.backend->submit(r); !s) {
            slot.maps.clear();
            if (nitro_card::storage::is_busy(s.error())) return;  // retried after a completion
            guest_warn(fmt::format("request {:#x}: {}", p.req.id, s.error().message));
            respond(p.req.id, p.req.operation, abi::kBlkifRspError);
            pending.pop_front();
            continue;
        }
        slot.used = true;
        ++in_flight;
        pending.pop_front();
    }
}

void Vbd::Impl::on_completion(const Completion& c) {
    if (c.tag >= kRingSize || !slots[c.tag].used) {
        spdlog::error("vbd {}/{}: completion for unknown tag {}", cfg.domid, devid, c.tag);
        return;
    }
    Slot& slot = slots[c.tag];
    if (c.status == 0 && slot.stage == Stage::FlushAfterData) {
        slot.maps.clear();
        slot.stage = Stage::FlushOnly;
        nitro_card::storage::Request r;
        r.op = Op::Flush;
        r.tag = c.tag;
        if (cfg.backend->submit(r)) return;
        slot.stage = Stage::Data;
        update_stats([&](VbdStats& s) { s.bytes_written += slot.req.bytes; });
        slot.used = false;
        --in_flight;
        respond(slot.req.id, slot.req.operation, abi::kBlkifRspError);
        return;
    }
    slot.maps.clear();  // grants end before the response is published
    slot.used = false;
    --in_flight;
    const bool ok = c.status == 0;
    if (!ok) guest_warn(fmt::format("request {:#x}: backend error {}", slot.req.id, c.status));
    update_stats([&](VbdStats& s) {
        switch (slot.req.op) {
            case BlkOp::Read: ++s.reads; if (ok) s.bytes_read += slot.req.bytes; break;
            case BlkOp::Write: ++s.writes; if (ok) s.bytes_written += slot.req.bytes; break;
            case BlkOp::Flush: ++s.flushes; if (ok) s.bytes_written += slot.req.bytes; break;
            case BlkOp::Unsupported: break;
        }
    });
    respond(slot.req.id, slot.req.operation, ok ? abi::kBlkifRspOkay : abi::kBlkifRspError);
}

// ---- Vbd ----

Result<std::unique_ptr<Vbd>> Vbd::create(xenstore::Store& store, grant::GrantTable& grants, PortBinder& binder,
                                         VbdConfig config) {
    if (!config.backend) return fail(Error::invalid("vbd without a backend"));
    if (config.disk >= 16) return fail(Error::invalid(fmt::format("disk index {} (xvda..xvdp)", config.disk)));
    auto impl = std::make_unique<Impl>(store, grants, binder, std::move(config));
    if (auto s = impl->start(); !s) return fail(std::move(s.error()));
    return std::unique_ptr<Vbd>(new Vbd(std::move(impl)));
}

Vbd::Vbd(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Vbd::~Vbd() {
    if (impl_->thread.joinable()) {
        impl_->inbox->push({InboxEvent::Kind::Stop});
        impl_->thread.join();
    }
    if (impl_->watching) impl_->store.unwatch(impl_->watch_id);
}

std::uint32_t Vbd::devid() const noexcept { return impl_->devid; }
std::string Vbd::backend_path() const { return impl_->be; }
std::string Vbd::frontend_path() const { return impl_->fe; }

void Vbd::on_bind_reply(std::uint32_t request_id, std::int32_t status) {
    impl_->inbox->push({InboxEvent::Kind::BindReply, request_id, status});
}

void Vbd::on_port_closed(std::uint32_t port) { impl_->inbox->push({InboxEvent::Kind::PortClosed, port, 0}); }

VbdStats Vbd::stats() const {
    std::lock_guard lk(impl_->stats_mu);
    return impl_->stats;
}

}  // namespace xen_model::blkback
