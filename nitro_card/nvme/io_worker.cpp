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
#include <cstring>

#include <spdlog/spdlog.h>

#include "nvme/io.hpp"

namespace nitro_card::nvme {

namespace {

constexpr unsigned kFetchBudget = 64;  // entries from one SQ per pass, so no SQ starves another
constexpr int kTaskPollMs = 5;         // how often a waiting control task is looked at again
constexpr int kMaxEvents = 64;

void clear_eventfd(int fd) {
    std::uint64_t count;
    (void)!::read(fd, &count, sizeof count);
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
                                          false});
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
                                    setup.doorbell, 0, false, false});
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
        shadow_ = buffers;
        if (!shadow_ || !mem_) return true;
        // Carry the register values over, and ask for a doorbell on the next update of each.
        for (const auto& sq : sqs_) {
            if (!sq) continue;
            const std::uint32_t tail = sq->doorbell->load();
            (void)write_shadow(*mem_, *shadow_, {sq->qid, false}, tail);
            (void)publish_event_idx(*mem_, *shadow_, {sq->qid, false}, tail);
        }
        for (const auto& cq : cqs_) {
            if (!cq) continue;
            (void)write_shadow(*mem_, *shadow_, {cq->qid, true}, cq->ring.head());
            (void)publish_event_idx(*mem_, *shadow_, {cq->qid, true}, cq->ring.head());
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

    while (!stop_.load(std::memory_order_acquire)) {
        (void)run_tasks();
        reap();
        pump();
        bool more = fetch_all();
        pump();
        more = post_all() || more;
        // A task waiting for the backend to go idle may be done now.
        const bool task_waiting = run_tasks();
        wait(more ? 0 : task_waiting ? kTaskPollMs : -1);
    }
}

void IoWorker::wait(int timeout_ms) {
    std::array<epoll_event, kMaxEvents> events;
    const int n = ::epoll_wait(epoll_.get(), events.data(), kMaxEvents, timeout_ms);
    if (n < 0) {
        if (errno != EINTR) spdlog::error("nvme io: epoll_wait: {}", std::strerror(errno));
        return;
    }
    for (int i = 0; i < n; ++i) {
        const int fd = events[static_cast<std::size_t>(i)].data.fd;
        if (fd == backend_->completion_fd()) continue;  // reap() clears it
        // Doorbells, the throttle timer and wake-ups only say "look again": every queue and the
        // admission queue are looked at on each pass.
        clear_eventfd(fd);
    }
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
bool IoWorker::fetch_all() {
    // After a fatal error (CSTS.CFS) nothing more is fetched; the host resets the controller.
    if (!mem_ || quiesce_ || fatal_.load(std::memory_order_relaxed)) return false;
    bool more = false;
    const std::size_t queues = sqs_.size() - 1;
    for (std::size_t i = 0; i < queues; ++i) {
        const std::size_t qid = 1 + (next_sq_ - 1 + i) % queues;
        if (Sq* sq = sqs_[qid].get(); sq != nullptr && !sq->deleting) fetch_sq(*sq, more);
    }
    next_sq_ = static_cast<std::uint16_t>(next_sq_ % queues + 1);
    return more;
}

void IoWorker::fetch_sq(Sq& sq, bool& more) {
    const Cq& cq = *cqs_.at(sq.cqid);  // a CQ outlives the SQs completing into it
    // Back-pressure: while the CQ is full, its SQs keep their entries.
    if (!cq.pending.empty()) return;
    unsigned budget = kFetchBudget;
    for (;;) {
        const auto tail = sq_tail(sq);
        if (!tail) return;
        while (sq.ring.head() != *tail) {
            if (free_slots_.empty()) return;  // resumes when a command finishes
            if (budget == 0) {
                more = true;
                return;
            }
            --budget;
            auto entry = sq.ring.fetch(*mem_);
            if (!entry) {
                spdlog::error("nvme io: SQ {} entry not in guest RAM: {}", sq.qid,
                              entry.error().message);
                fatal_.store(true);
                return;
            }
            accept(sq, *entry);
        }
        if (!shadow_) return;
        // Drained. Publish EventIdx = the tail processed, so the guest's next update rings the
        // doorbell, then look at the shadow tail once more: the guest may have written it
        // before it could see the new EventIdx (Linux nvme_dbbuf_need_event; devices.md §2.6).
        if (!publish_event_idx(*mem_, *shadow_, {sq.qid, false}, *tail)) return;
        const auto again = sq_tail(sq);
        if (!again || *again == *tail) return;
    }
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
        }
        if (cq.pending.empty() || !shadow_) break;
        // Full: ask for a doorbell when the guest moves its head, then re-check the shadow
        // head in case it already did (the same drain-and-recheck as for SQs, for the CQ).
        const std::uint32_t head = cq.ring.head();
        if (!publish_event_idx(*mem_, *shadow_, {cq.qid, true}, head)) break;
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
