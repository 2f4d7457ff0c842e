// The I/O worker's thread: its epoll loop, control-thread tasks, queue lifetime, fetching from
// SQs and posting to CQs. The command pipeline itself is in io_commands.cpp.
#include <pthread.h>
#include <sched.h>
#include <sys/epoll.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstring>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "nvme/io.hpp"

namespace nitro_card::nvme {

namespace {

constexpr unsigned kFetchBudget = 64;  // entries from one SQ per pass, so no SQ starves another
constexpr int kTaskPollMs = 5;         // how often a waiting control task is looked at again
constexpr int kMaxEvents = 64;
// A yield in the polling loop that returns later than this means another thread had the CPU:
// with nothing else runnable it returns within microseconds.
constexpr auto kLostCpu = std::chrono::microseconds(50);

void clear_eventfd(int fd) {
    std::uint64_t count;
    (void)!::read(fd, &count, sizeof count);
}

// Between two polling passes that found nothing. The pause hint lets a sibling hyperthread run;
// the yield hands the CPU to any other runnable thread, above all the vCPU this worker waits
// for: on an overcommitted host a worker spinning on the vCPU's CPU would hold back the very
// submission it polls for (KVM's halt polling stops when another task is runnable, for the
// same reason). With nothing else runnable the yield returns at once.
void spin_pause() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
    (void)::sched_yield();
}

}  // namespace

storage::Admission SharedRateLimiter::try_admit(storage::RateLimiter& volume, std::uint64_t bytes,
                                                storage::TimePoint now) {
    std::lock_guard lock(mu_);
    return storage::CompositeLimiter(volume, limiter_).try_admit(bytes, now);
}

storage::ThrottleStats SharedRateLimiter::stats() const {
    std::lock_guard lock(mu_);
    return limiter_.stats();
}

common::Result<std::unique_ptr<IoWorker>> IoWorker::start(IoWorkerConfig config,
                                                          ControllerCounters& counters,
                                                          std::atomic<bool>& fatal) {
    using common::Error;
    if (!config.backend) return common::fail(Error::invalid("I/O worker without a backend"));
    if (config.max_qid == 0) return common::fail(Error::invalid("I/O worker without queues"));
    if (config.thread.poll_us > kMaxPollUs)
        return common::fail(Error::invalid(
            fmt::format("polling window {} us: at most {} us", config.thread.poll_us, kMaxPollUs)));
    common::UniqueFd epoll(::epoll_create1(EPOLL_CLOEXEC));
    if (!epoll) return common::fail(Error::from_errno("epoll_create1"));
    common::UniqueFd timer(::timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC));
    if (!timer) return common::fail(Error::from_errno("timerfd_create"));
    auto wake = common::EventFd::create();
    if (!wake) return common::fail(std::move(wake.error()).context("worker wake-up eventfd"));

    auto w = std::unique_ptr<IoWorker>(new IoWorker(
        std::move(config), counters, fatal, std::move(epoll), std::move(timer), std::move(*wake)));
    for (int fd : {w->wake_.fd(), w->timer_.get(), w->backend_->completion_fd()})
        if (auto s = w->watch(fd); !s) return common::fail(std::move(s.error()));
    w->thread_ = std::thread([p = w.get()] { p->run(); });
    return w;
}

IoWorker::IoWorker(IoWorkerConfig config, ControllerCounters& counters, std::atomic<bool>& fatal,
                   common::UniqueFd epoll, common::UniqueFd timer, common::EventFd wake)
    : counters_(counters),
      fatal_(fatal),
      ns_(config.ns),
      max_transfer_(config.max_transfer),
      thread_config_(std::move(config.thread)),
      sqs_(config.max_qid + 1u),
      cqs_(config.max_qid + 1u),
      volume_limiter_(config.volume_limits),
      instance_limiter_(std::move(config.instance_limiter)),
      epoll_(std::move(epoll)),
      timer_(std::move(timer)),
      wake_(std::move(wake)),
      backend_(std::move(config.backend)) {
    // One command slot per request the backend can hold: commands beyond that wait in the SQ.
    slots_.resize(backend_->queue_depth());
    const std::size_t max_segments = max_transfer_ / 4096 + 1;
    for (std::size_t i = slots_.size(); i-- > 0;) {
        slots_[i].iov.reserve(max_segments);
        free_slots_.push_back(static_cast<std::uint32_t>(i));
    }
}

IoWorker::~IoWorker() {
    stop_.store(true, std::memory_order_release);
    (void)wake_.signal();
    if (thread_.joinable()) thread_.join();
}

// ---- control-thread requests ---------------------------------------------------------------

void IoWorker::call(std::function<bool()> step) {
    Task task{std::move(step)};
    {
        std::lock_guard lock(task_mu_);
        tasks_.push_back(&task);
    }
    (void)wake_.signal();
    std::unique_lock lock(task_mu_);
    task_cv_.wait(lock, [&] { return task.done; });
}

// Runs queued tasks in order; true when the first one is still waiting for its condition.
bool IoWorker::run_tasks() {
    for (;;) {
        Task* task = nullptr;
        {
            std::lock_guard lock(task_mu_);
            if (tasks_.empty()) return false;
            task = tasks_.front();
        }
        if (!task->step()) return true;
        {
            std::lock_guard lock(task_mu_);
            tasks_.pop_front();
            task->done = true;
        }
        task_cv_.notify_all();
    }
}

void IoWorker::set_memory(std::shared_ptr<const common::GuestMemory> mem) {
    call([this, mem = std::move(mem), started = false]() mutable {
        if (!started) {
            started = true;
            quiesce_ = true;
        }
        if (!idle()) return false;
        (void)post_all();  // what finished with the old memory goes into the old memory
        mem_ = std::move(mem);
        quiesce_ = false;
        return true;
    });
}

void IoWorker::set_irqs(std::vector<int> fds) {
    call([this, fds = std::move(fds)]() mutable {
        irqs_ = std::move(fds);
        return true;
    });
}

void IoWorker::add_cq(const IoCqSetup& setup) {
    call([this, &setup] {
        auto cq = std::make_unique<Cq>(Cq{setup.qid,
                                          CompletionRing(setup.base, setup.size),
                                          setup.interrupts,
                                          setup.vector,
                                          setup.doorbell,
                                          {},
                                          false,
                                          0});
        if (auto s = watch(cq->doorbell->fd()); !s)
            spdlog::error("nvme io: CQ {} doorbell: {}", setup.qid, s.error().message);
        if (shadow_ && mem_) {
            (void)write_shadow(*mem_, *shadow_, {setup.qid, true}, 0);
            (void)publish_event_idx(*mem_, *shadow_, {setup.qid, true}, 0);
        }
        cqs_.at(setup.qid) = std::move(cq);
        return true;
    });
}

void IoWorker::add_sq(const IoSqSetup& setup) {
    call([this, &setup] {
        auto sq =
            std::make_unique<Sq>(Sq{setup.qid, setup.cqid, SubmissionRing(setup.base, setup.size),
                                    setup.doorbell, 0, false, false, 0});
        if (auto s = watch(sq->doorbell->fd()); !s)
            spdlog::error("nvme io: SQ {} doorbell: {}", setup.qid, s.error().message);
        if (shadow_ && mem_) {
            (void)write_shadow(*mem_, *shadow_, {setup.qid, false}, 0);
            (void)publish_event_idx(*mem_, *shadow_, {setup.qid, false}, 0);
        }
        sqs_.at(setup.qid) = std::move(sq);
        return true;
    });
}

void IoWorker::delete_sq(std::uint16_t qid) {
    call([this, qid, started = false]() mutable {
        Sq* sq = sqs_.at(qid).get();
        if (sq == nullptr) return true;
        if (!started) {
            started = true;
            sq->deleting = true;
            // Commands that never reached the backend end now (NVMe 2.0 §5.6).
            std::vector<std::uint32_t> aborted;
            auto take = [&](std::deque<std::uint32_t>& q, bool only_unstarted) {
                std::erase_if(q, [&](std::uint32_t s) {
                    const Command& c = slots_[s];
                    if (c.sqid != qid || (only_unstarted && c.next_op != 0)) return false;
                    aborted.push_back(s);
                    return true;
                });
            };
            take(admit_queue_, false);
            take(submit_queue_, true);
            for (std::uint32_t s : aborted) finish(s, StatusCode::AbortSqDeleted, false);
        }
        if (sq->outstanding > 0) return false;
        (void)post_all();
        unwatch(sq->doorbell->fd());
        sqs_.at(qid).reset();
        return true;
    });
}

void IoWorker::delete_cq(std::uint16_t qid) {
    call([this, qid] {
        if (Cq* cq = cqs_.at(qid).get(); cq != nullptr) {
            unwatch(cq->doorbell->fd());
            cqs_.at(qid).reset();
        }
        return true;
    });
}

void IoWorker::set_shadow(std::optional<ShadowBuffers> buffers) {
    call([this, buffers] {
        // A ring's head follows its CQ head doorbell only when completions are posted, so it
        // can lag the register; bring it up to date before carrying it over.
        if (!shadow_ || mem_)
            for (const auto& cq : cqs_)
                if (cq) refresh_cq_head(*cq);
        shadow_ = buffers;
        if (!shadow_ || !mem_) return true;
        // Carry the register values over, and ask for a doorbell on the next update of each.
        for (const auto& sq : sqs_) {
            if (!sq) continue;
            const std::uint32_t tail = sq->doorbell->load();
            (void)write_shadow(*mem_, *shadow_, {sq->qid, false}, tail);
            (void)publish_event_idx(*mem_, *shadow_, {sq->qid, false}, tail);
            sq->event_idx = tail;
        }
        for (const auto& cq : cqs_) {
            if (!cq) continue;
            (void)write_shadow(*mem_, *shadow_, {cq->qid, true}, cq->ring.head());
            (void)publish_event_idx(*mem_, *shadow_, {cq->qid, true}, cq->ring.head());
            cq->event_idx = cq->ring.head();
        }
        return true;
    });
}

void IoWorker::set_write_cache(bool enabled) {
    call([this, enabled] {
        write_cache_ = enabled;
        return true;
    });
}

void IoWorker::reset() {
    call([this, started = false]() mutable {
        if (!started) {
            started = true;
            quiesce_ = true;
            discard_ = true;
            // Commands not at the backend are dropped now; the ones at the backend are waited
            // for, since their buffers are guest memory the backend still writes.
            for (std::uint32_t s : admit_queue_) free_slots_.push_back(s);
            for (std::uint32_t s : submit_queue_) free_slots_.push_back(s);
            admit_queue_.clear();
            submit_queue_.clear();
        }
        if (in_flight_ > 0) return false;
        drop_everything();
        quiesce_ = false;
        discard_ = false;
        return true;
    });
}

bool IoWorker::flush() {
    call([this, phase = 0]() mutable {
        if (phase == 0) {
            quiesce_ = true;
            flush_result_.reset();
            phase = 1;
        }
        if (phase == 1) {
            if (!idle()) return false;
            storage::Request flush;
            flush.op = storage::Op::Flush;
            flush.tag = kFlushTag;
            if (auto s = backend_->submit(flush); !s) {
                if (storage::is_busy(s.error())) return false;
                spdlog::error("nvme io: shutdown flush: {}", s.error().message);
                flush_result_ = false;
                quiesce_ = false;
                return true;
            }
            ++in_flight_;
            flush_pending_ = true;
            phase = 2;
        }
        if (flush_pending_) return false;
        quiesce_ = false;
        return true;
    });
    return flush_result_.value_or(false);
}

void IoWorker::drop_everything() {
    for (auto& sq : sqs_) {
        if (sq) unwatch(sq->doorbell->fd());
        sq.reset();
    }
    for (auto& cq : cqs_) {
        if (cq) unwatch(cq->doorbell->fd());
        cq.reset();
    }
    admit_queue_.clear();
    submit_queue_.clear();
    free_slots_.clear();
    for (std::size_t i = slots_.size(); i-- > 0;)
        free_slots_.push_back(static_cast<std::uint32_t>(i));
    shadow_.reset();
    write_cache_ = true;
    throttled_since_.reset();
    const itimerspec off{};
    (void)::timerfd_settime(timer_.get(), 0, &off, nullptr);
}

// ---- the loop --------------------------------------------------------------------------------

void IoWorker::run() {
    (void)::pthread_setname_np(::pthread_self(), "nvme-io");
    if (!thread_config_.cpus.empty()) {
        cpu_set_t set;
        CPU_ZERO(&set);
        for (int cpu : thread_config_.cpus)
            if (cpu >= 0 && cpu < CPU_SETSIZE) CPU_SET(cpu, &set);
        if (int e = ::pthread_setaffinity_np(::pthread_self(), sizeof set, &set); e != 0)
            spdlog::warn("nvme io: pinning the worker: {}", std::strerror(e));
    }
    if (thread_config_.on_start) thread_config_.on_start();

    const std::chrono::nanoseconds window = std::chrono::microseconds(thread_config_.poll_us);
    if (window.count() == 0) {
        // No polling: every pass publishes EventIdx and the worker sleeps once it finds the
        // queues empty.
        while (!stop_.load(std::memory_order_acquire)) {
            const bool more = serve(Doorbells::Arm);
            // A task waiting for the backend to go idle may be done now.
            const bool task_waiting = run_tasks();
            wait(more ? 0 : task_waiting ? kTaskPollMs : -1);
        }
        return;
    }

    // Polling. The order that leaves the guest no way to add work unseen while the worker
    // sleeps: (1) the window passes with no work; (2) stale eventfd signals are cleared; (3) an
    // Arm pass stores EventIdx = the tail processed for each drained SQ, fences (seq_cst) and
    // re-reads the shadow tail, fetching and repeating while it moved; (4) only a pass that
    // found nothing is followed by epoll_wait. A guest update after (3) reads the new EventIdx
    // and rings (its store, fence, load against ours), and a ring after (2) stays pending in
    // its eventfd.
    //
    // Polling pays only while the worker has a CPU of its own. When it loses the CPU while
    // spinning, it may share one with the vCPU, which polls for completions itself and, with
    // no doorbell to write, would only let the worker run at the next time slice. The window
    // then ends at once and the worker sleeps after each drain for the configured back-off, as
    // with poll_us = 0, where each doorbell wakes it (and the scheduler runs a woken thread
    // soon).
    const std::chrono::nanoseconds backoff = thread_config_.poll_backoff;
    bool polling = false;   // EventIdx is kept clear and the worker spins until poll_until
    bool spinning = false;  // the passes since spin_start found no work
    storage::TimePoint poll_until{};
    storage::TimePoint spin_start{};
    storage::TimePoint backoff_until{};
    while (!stop_.load(std::memory_order_acquire)) {
        const std::uint64_t progress = progress_;
        const bool more = serve(polling ? Doorbells::Quiet : Doorbells::Arm);
        const bool task_waiting = run_tasks();
        const bool found = progress_ != progress;
        const storage::TimePoint now = storage::Clock::now();
        const bool expired = now >= poll_until;
        if (spinning && (found || more || expired)) {
            ControllerCounters::add(counters_.poll_ns,
                                    static_cast<std::uint64_t>((now - spin_start).count()));
            spinning = false;
        }
        if (found || more) {
            if (polling && found) ControllerCounters::add(counters_.poll_hits);
            polling = now >= backoff_until;
            poll_until = now + window;
            continue;
        }
        if (polling && !expired) {
            if (!spinning) spin_start = now;
            spinning = true;
            spin_pause();
            if (backoff.count() > 0 && storage::Clock::now() - now > kLostCpu) {
                ControllerCounters::add(counters_.poll_backoffs);
                backoff_until = storage::Clock::now() + backoff;
                poll_until = now;  // the next pass ends the window
            }
            continue;
        }
        if (polling) {
            wait(0);
            polling = false;  // the next pass arms the doorbells
            continue;
        }
        wait(task_waiting ? kTaskPollMs : -1);
        const storage::TimePoint woken = storage::Clock::now();
        polling = woken >= backoff_until;
        poll_until = woken + window;
    }
}

bool IoWorker::serve(Doorbells doorbells) {
    (void)run_tasks();
    // While polling, the backend is looked at only when it holds requests: its reap costs a
    // system call. A pass that arms the doorbells always reaps, which also clears its eventfd.
    if (doorbells == Doorbells::Arm || in_flight_ > 0) reap();
    pump();
    bool more = fetch_all(doorbells);
    pump();
    more = post_all() || more;
    backend_->kick();  // what this pass submitted goes to the kernel in one system call
    return more;
}

void IoWorker::wait(int timeout_ms) {
    backend_->kick();  // nothing may sit unsubmitted while the worker sleeps
    std::array<epoll_event, kMaxEvents> events;
    const int n = ::epoll_wait(epoll_.get(), events.data(), kMaxEvents, timeout_ms);
    if (n < 0) {
        if (errno != EINTR) spdlog::error("nvme io: epoll_wait: {}", std::strerror(errno));
        return;
    }
    bool doorbell = false;
    for (int i = 0; i < n; ++i) {
        const int fd = events[static_cast<std::size_t>(i)].data.fd;
        if (fd == backend_->completion_fd()) continue;  // reap() clears it
        // Doorbells, the throttle timer and wake-ups only say "look again": every queue and the
        // admission queue are looked at on each pass.
        clear_eventfd(fd);
        doorbell = doorbell || (fd != wake_.fd() && fd != timer_.get());
    }
    // A zero timeout only clears signals; it woke nothing.
    if (doorbell && timeout_ms != 0) ControllerCounters::add(counters_.doorbell_wakeups);
}

common::Status IoWorker::watch(int fd) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = fd;
    if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &ev) != 0)
        return common::fail(common::Error::from_errno("epoll_ctl(ADD)"));
    return {};
}

void IoWorker::unwatch(int fd) {
    (void)::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, fd, nullptr);
}

// ---- fetching --------------------------------------------------------------------------------

// Fetches from every SQ, round robin; true when an SQ still had entries after its budget.
bool IoWorker::fetch_all(Doorbells doorbells) {
    // After a fatal error (CSTS.CFS) nothing more is fetched; the host resets the controller.
    if (!mem_ || quiesce_ || fatal_.load(std::memory_order_relaxed)) return false;
    bool more = false;
    const std::size_t queues = sqs_.size() - 1;
    for (std::size_t i = 0; i < queues; ++i) {
        const std::size_t qid = 1 + (next_sq_ - 1 + i) % queues;
        if (Sq* sq = sqs_[qid].get(); sq != nullptr && !sq->deleting)
            fetch_sq(*sq, doorbells, more);
    }
    next_sq_ = static_cast<std::uint16_t>(next_sq_ % queues + 1);
    return more;
}

void IoWorker::fetch_sq(Sq& sq, Doorbells doorbells, bool& more) {
    const Cq& cq = *cqs_.at(sq.cqid);  // a CQ outlives the SQs completing into it
    // Back-pressure: while the CQ is full, its SQs keep their entries.
    if (!cq.pending.empty()) return;
    unsigned budget = kFetchBudget;
    for (;;) {
        const auto tail = sq_tail(sq);
        if (!tail) {
            // An invalid tail is ignored (NVMe 2.0 §5.2.1). Before the worker may sleep, EventIdx
            // goes to the last slot processed, so the guest's next valid update rings again.
            if (shadow_ && doorbells != Doorbells::Quiet &&
                publish_event_idx(*mem_, *shadow_, {sq.qid, false}, sq.ring.head()))
                sq.event_idx = sq.ring.head();
            break;
        }
        if (!drain_sq(sq, *tail, budget, more)) break;
        if (!shadow_ || doorbells == Doorbells::Quiet) break;
        // Drained, and the worker may sleep next. Publish EventIdx = the tail processed, so the
        // guest's next update rings the doorbell, then (after the fence in publish_event_idx)
        // look at the shadow tail once more: the guest may have written it before it could see
        // the new EventIdx (Linux nvme_dbbuf_need_event; devices.md §2.6).
        if (!publish_event_idx(*mem_, *shadow_, {sq.qid, false}, *tail)) return;
        sq.event_idx = *tail;
        const auto again = sq_tail(sq);
        if (!again || *again == *tail) return;
    }
    // Polling: the worker comes back in a moment whatever the guest writes, so it asks for no
    // doorbell. An SQ the pass could not drain (no free slot, budget) is back with the next
    // backend completion or pass; it needs no doorbell either. One update may add up to
    // size - 1 entries, so EventIdx follows the head exactly.
    if (shadow_ && doorbells == Doorbells::Quiet)
        keep_event_idx_clear({sq.qid, false}, sq.event_idx, sq.ring.head(), sq.ring.size(),
                             sq.ring.size() - 1);
}

// Fetches the SQ's entries up to `tail`. True when it reached the tail; false when it stopped
// for want of a command slot (it resumes when a command finishes), at the end of the budget
// (`more` set) or on a fatal error.
bool IoWorker::drain_sq(Sq& sq, std::uint32_t tail, unsigned& budget, bool& more) {
    while (sq.ring.head() != tail) {
        if (free_slots_.empty()) return false;
        if (budget == 0) {
            more = true;
            return false;
        }
        --budget;
        auto entry = sq.ring.fetch(*mem_);
        if (!entry) {
            spdlog::error("nvme io: SQ {} entry not in guest RAM: {}", sq.qid,
                          entry.error().message);
            fatal_.store(true);
            return false;
        }
        accept(sq, *entry);
    }
    return true;
}

// The SQ tail the guest published: the shadow doorbell once Doorbell Buffer Config is on,
// else the last slow-path doorbell write. nullopt when it is not a valid slot number.
std::optional<std::uint32_t> IoWorker::sq_tail(Sq& sq) {
    std::uint32_t tail;
    if (shadow_) {
        // GUEST-SHARED: read once; only the checked copy is used.
        const auto v = read_shadow(*mem_, *shadow_, {sq.qid, false});
        if (!v) return std::nullopt;
        tail = *v;
    } else {
        tail = sq.doorbell->load();
    }
    if (!doorbell_value_valid(tail, sq.ring.size())) {
        if (!sq.complained)
            spdlog::warn("nvme io: SQ {} tail {} outside its {} entries; ignored", sq.qid, tail,
                         sq.ring.size());
        sq.complained = true;
        return std::nullopt;
    }
    return tail;
}

// Keeps a queue's EventIdx where the guest's coming updates cannot step over it, so it writes
// no doorbell: one slot behind `head` (the SQ head, or the CQ head as last read). The guest
// rings only when an update moves its value from before EventIdx to past it (Linux
// nvme_dbbuf_need_event, indices modulo the queue size): an SQ tail stays within one lap of
// the SQ head short of head - 1 (a full ring keeps one slot free), and a CQ head never passes
// the CQ tail, which is at most head - 1. `reach` is how far past `head` the guest's value can
// get before the next call; EventIdx moves only when the guest could step over the old value
// within `reach` entries or half a lap, to spare the cache line the guest reads.
void IoWorker::keep_event_idx_clear(DoorbellRef db, std::uint32_t& event_idx, std::uint32_t head,
                                    std::uint32_t size, std::uint32_t reach) {
    const std::uint32_t ahead = event_idx < size ? (event_idx + size - head) % size : 0;
    if (ahead >= std::max(size / 2, reach)) return;
    const std::uint32_t behind = (head + size - 1) % size;
    if (store_event_idx(*mem_, *shadow_, db, behind)) event_idx = behind;
}

// ---- posting ---------------------------------------------------------------------------------

// Posts held completions to every CQ with room, then raises each vector that got entries once.
// True when a CQ that held completions drained (its SQs may fetch again).
bool IoWorker::post_all() {
    if (!mem_ || discard_) return false;
    bool drained = false;
    to_raise_.clear();
    for (auto& cq : cqs_) {
        if (!cq || cq->pending.empty()) continue;
        post_cq(*cq);
        drained = drained || cq->pending.empty();
    }
    for (std::uint16_t v : to_raise_) raise(v);
    return drained;
}

void IoWorker::post_cq(Cq& cq) {
    refresh_cq_head(cq);
    if (shadow_ && cq.pending.size() <= cq.ring.free_slots()) {
        // Everything held fits: no CQ head doorbell is needed, so EventIdx goes out of the way
        // of the head updates these entries will cause. Before posting: each entry's phase is
        // a release store, so a guest that sees an entry sees this EventIdx too.
        const std::uint32_t size = cq.ring.size();
        const std::uint32_t used = (cq.ring.tail() + size - cq.ring.head()) % size;
        keep_event_idx_clear({cq.qid, true}, cq.event_idx, cq.ring.head(), size,
                             used + static_cast<std::uint32_t>(cq.pending.size()));
    }
    unsigned posted = 0;
    for (;;) {
        while (!cq.pending.empty() && cq.ring.free_slots() > 0) {
            if (auto s = cq.ring.post(*mem_, cq.pending.front()); !s) {
                // CSTS.CFS: a completion the controller cannot deliver (§3.1.4.6).
                spdlog::error("nvme io: CQ {}: {}", cq.qid, s.error().message);
                fatal_.store(true);
                cq.pending.clear();
                break;
            }
            cq.pending.pop_front();
            ++posted;
            ++progress_;
        }
        if (cq.pending.empty() || !shadow_) break;
        // Full: ask for a doorbell when the guest moves its head, then re-check the shadow
        // head in case it already did (the same drain-and-recheck as for SQs, for the CQ).
        const std::uint32_t head = cq.ring.head();
        if (!publish_event_idx(*mem_, *shadow_, {cq.qid, true}, head)) break;
        cq.event_idx = head;
        refresh_cq_head(cq);
        if (cq.ring.head() == head) break;
    }
    if (posted > 0 && cq.interrupts &&
        std::find(to_raise_.begin(), to_raise_.end(), cq.vector) == to_raise_.end())
        to_raise_.push_back(cq.vector);
}

void IoWorker::refresh_cq_head(Cq& cq) {
    std::uint32_t head;
    if (shadow_) {
        // GUEST-SHARED: read once; update_head() checks it against what was posted.
        const auto v = read_shadow(*mem_, *shadow_, {cq.qid, true});
        if (!v) return;
        head = *v;
    } else {
        head = cq.doorbell->load();
    }
    if (head == cq.ring.head()) return;
    if (!cq.ring.update_head(head)) {
        if (!cq.complained)
            spdlog::warn("nvme io: CQ {} head {} releases entries never posted; ignored", cq.qid,
                         head);
        cq.complained = true;
    }
}

void IoWorker::raise(std::uint16_t vector) {
    if (vector >= irqs_.size() || irqs_[vector] < 0) return;
    const std::uint64_t one = 1;
    if (::write(irqs_[vector], &one, sizeof one) == sizeof one)
        ControllerCounters::add(counters_.interrupts);
}

}  // namespace nitro_card::nvme
