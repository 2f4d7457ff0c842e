// The controller's I/O path: one worker thread that owns the block backend and serves every I/O
// queue pair of one controller from an epoll loop.
//
// Per pass the worker reaps backend completions, fetches new commands from each SQ (the tail
// comes from the shadow doorbell page once Doorbell Buffer Config is on, else from the last
// slow-path doorbell write), decodes them (command.hpp), waits for the rate limiter, maps PRPs
// (prp.hpp) and submits to the backend; finished commands become CQEs, posted while the CQ has
// room, and each CQ's MSI-X vector is raised once per batch.
//
// Adaptive polling (IoThreadConfig::poll_us > 0): after a pass that did work the worker keeps
// passing over its queues, re-reading the shadow tails and the backend, until poll_us pass with
// no work; any work restarts the window. Meanwhile each SQ's and CQ's EventIdx stays where the
// guest's updates cannot step over it, so the guest writes no doorbell (no VM exit). When the
// window runs out, the worker publishes EventIdx = the tail it processed, fences, re-reads the
// tail (devices.md §2.6) and only then sleeps in epoll; a wake-up starts a new window. A
// worker that loses its CPU while spinning (the host is overcommitted) stops polling for
// IoThreadConfig::poll_backoff and sleeps after each drain instead.
//
// Threading: the public methods are for the controller's control thread only. Each hands a step
// to the worker and returns once the worker has carried it out, so all queue, command and
// memory state below is touched by the worker thread alone; the control thread never shares it.
// The only cross-thread data are DoorbellSlot values (atomics), the counters (atomics), the task
// list (task_mu_) and the instance limiter (its own mutex).
//
// Lock order: task_mu_ and SharedRateLimiter's mutex are leaves; neither is held while taking
// the other or while calling into the backend.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "common/error.hpp"
#include "common/fd.hpp"
#include "common/guest_memory.hpp"
#include "nvme/command.hpp"
#include "nvme/controller_info.hpp"
#include "nvme/queues.hpp"
#include "storage/backend.hpp"
#include "storage/rate_limiter.hpp"

namespace nitro_card::nvme {

// An instance-wide limiter that several controllers (each with its own worker) share. The
// storage limiters are single-threaded; this one serialises admissions with a mutex.
class SharedRateLimiter final {
public:
    explicit SharedRateLimiter(const storage::Limits& limits) : limiter_(limits) {}

    // Admits an I/O only when both the volume's limiter and this one admit it
    // (storage::CompositeLimiter). `volume` belongs to the calling worker.
    [[nodiscard]] storage::Admission try_admit(storage::RateLimiter& volume, std::uint64_t bytes,
                                               storage::TimePoint now);
    [[nodiscard]] storage::ThrottleStats stats() const;

private:
    mutable std::mutex mu_;
    storage::RateLimiter limiter_;
};

// How long the worker polls after work before it sleeps, unless configured. It covers a
// guest's turnaround from a completion to its next submission many times over; 1000 us did no
// better with the probe's nvme-bench (QD1 and QD32 random reads) and only spins longer after
// the last I/O.
inline constexpr unsigned kDefaultPollUs = 200;
// Longer windows are a configuration mistake: the worker would burn a CPU while the guest idles.
inline constexpr unsigned kMaxPollUs = 100'000;

// Where the worker runs: CPUs to pin it to (empty: anywhere), a hook that runs on the worker
// thread before it serves anything (a seccomp policy, a scheduler class, a name), how long it
// keeps polling after work (0: it sleeps in epoll as soon as its queues are empty), and how
// long it stops polling after it lost its CPU while spinning (another thread, perhaps the
// vCPU it waits for, wanted that CPU). Zero keeps it polling even then: for a worker pinned to
// a CPU of its own.
struct IoThreadConfig {
    std::vector<int> cpus;
    std::function<void()> on_start;
    unsigned poll_us = kDefaultPollUs;  // at most kMaxPollUs
    std::chrono::milliseconds poll_backoff{100};
};

struct IoWorkerConfig {
    std::unique_ptr<storage::BlockBackend> backend;
    storage::Limits volume_limits = storage::Limits::unlimited();
    std::shared_ptr<SharedRateLimiter> instance_limiter;  // null: volume limits only
    NamespaceGeometry ns;
    std::uint64_t max_transfer = 0;  // MDTS in bytes
    std::uint16_t max_qid = 0;
    IoThreadConfig thread;
};

struct IoCqSetup {
    std::uint16_t qid = 0;
    common::GuestAddr base;
    std::uint32_t size = 0;
    bool interrupts = false;
    std::uint16_t vector = 0;
    std::shared_ptr<DoorbellSlot> doorbell;
};

struct IoSqSetup {
    std::uint16_t qid = 0;
    std::uint16_t cqid = 0;
    common::GuestAddr base;
    std::uint32_t size = 0;
    std::shared_ptr<DoorbellSlot> doorbell;
};

class IoWorker final {
public:
    // Starts the thread. `counters` and `fatal` (set when a CQE cannot be written: CSTS.CFS)
    // must outlive the worker.
    [[nodiscard]] static common::Result<std::unique_ptr<IoWorker>> start(
        IoWorkerConfig config, ControllerCounters& counters, std::atomic<bool>& fatal);
    // Stops and joins the thread; requests still in the backend finish in its destructor.
    ~IoWorker();
    IoWorker(const IoWorker&) = delete;
    IoWorker& operator=(const IoWorker&) = delete;

    // Guest RAM for the data path, or nullptr. Before the memory changes, commands already at
    // the backend finish (their buffers point into the old mapping) and their CQEs are posted;
    // commands still waiting for admission stay queued and are mapped in the new memory.
    void set_memory(std::shared_ptr<const common::GuestMemory> mem);
    // MSI-X eventfds by vector; the caller keeps them open until the next call.
    void set_irqs(std::vector<int> fds);

    // Queue lifetime (the admin code checked the command first).
    void add_cq(const IoCqSetup& cq);
    void add_sq(const IoSqSetup& sq);
    // Stops fetching from the SQ, completes its unsubmitted commands with Command Aborted due
    // to SQ Deletion, waits for its submitted ones, then forgets it (NVMe 2.0 §5.6).
    void delete_sq(std::uint16_t qid);
    // Forgets the CQ and any completions it still held.
    void delete_cq(std::uint16_t qid);

    // Shadow doorbells on (for all existing and future I/O queues) or off.
    void set_shadow(std::optional<ShadowBuffers> buffers);
    // Volatile write cache enabled (Set Features 06h). When disabled, every write is followed by
    // a backend flush before it completes.
    void set_write_cache(bool enabled);

    // Controller reset: waits for commands at the backend, then drops every queue, command and
    // held completion without posting anything (after CC.EN = 0 the guest may reuse the memory).
    void reset();
    // Shutdown (CC.SHN): waits for commands at the backend, then flushes the backend. True when
    // the flush succeeded.
    [[nodiscard]] bool flush();

private:
    // The backend tag of the shutdown flush; command tags are generation << 32 | slot.
    static constexpr std::uint64_t kFlushTag = ~std::uint64_t{0};

    // One command between fetch and completion.
    struct BackendOp {
        storage::Op op = storage::Op::Read;
        std::uint64_t offset = 0;
        std::uint64_t length = 0;
    };
    struct Command {
        std::uint32_t generation = 0;
        std::uint16_t sqid = 0;
        std::uint16_t cid = 0;
        IoCommand io;
        std::uint64_t limiter_bytes = 0;
        std::vector<iovec> iov;      // Read/Write buffers, mapped at admission
        std::vector<BackendOp> ops;  // run one after the other
        std::size_t next_op = 0;
        bool throttled = false;
    };
    struct Sq {
        std::uint16_t qid = 0;
        std::uint16_t cqid = 0;
        SubmissionRing ring;
        std::shared_ptr<DoorbellSlot> doorbell;
        std::uint32_t outstanding = 0;  // fetched, CQE not yet queued
        bool deleting = false;
        bool complained = false;      // logged a bad shadow tail already
        std::uint32_t event_idx = 0;  // the EventIdx last published (the worker's own copy)
    };
    struct Cq {
        std::uint16_t qid = 0;
        CompletionRing ring;
        bool interrupts = false;
        std::uint16_t vector = 0;
        std::shared_ptr<DoorbellSlot> doorbell;
        std::deque<CqEntry> pending;  // completions waiting for room, in order
        bool complained = false;
        std::uint32_t event_idx = 0;  // the EventIdx last published (the worker's own copy)
    };
    // A control-thread request: called on the worker until it returns true.
    struct Task {
        std::function<bool()> step;
        bool done = false;
    };

    IoWorker(IoWorkerConfig config, ControllerCounters& counters, std::atomic<bool>& fatal,
             common::UniqueFd epoll, common::UniqueFd timer, common::EventFd wake);

    // What a pass does with an SQ's EventIdx once it has drained the SQ.
    enum class Doorbells : std::uint8_t {
        Arm,    // the worker may sleep next: publish the tail processed, fence, re-read the tail
        Quiet,  // the worker keeps polling: keep EventIdx out of the guest's way
    };

    // io_worker.cpp: thread, loop, tasks, queues, fetching and posting.
    void call(std::function<bool()> step);
    [[nodiscard]] bool run_tasks();
    void run();
    // One pass over the backend, the SQs and the CQs. True when a queue still has work beyond
    // its budget or a full CQ drained, so the next pass must come at once.
    [[nodiscard]] bool serve(Doorbells doorbells);
    void wait(int timeout_ms);
    [[nodiscard]] common::Status watch(int fd);
    void unwatch(int fd);
    [[nodiscard]] bool fetch_all(Doorbells doorbells);
    void fetch_sq(Sq& sq, Doorbells doorbells, bool& more);
    [[nodiscard]] bool drain_sq(Sq& sq, std::uint32_t tail, unsigned& budget, bool& more);
    [[nodiscard]] std::optional<std::uint32_t> sq_tail(Sq& sq);
    void keep_event_idx_clear(DoorbellRef db, std::uint32_t& event_idx, std::uint32_t head,
                              std::uint32_t size, std::uint32_t reach);
    [[nodiscard]] bool post_all();
    void post_cq(Cq& cq);
    void refresh_cq_head(Cq& cq);
    void raise(std::uint16_t vector);
    [[nodiscard]] bool idle() const { return in_flight_ == 0 && submit_queue_.empty(); }
    void drop_everything();

    // io_commands.cpp: the command pipeline.
    void accept(Sq& sq, const SqEntry& entry);
    void pump();
    void admit();
    [[nodiscard]] StatusCode prepare(Command& c);
    [[nodiscard]] StatusCode prepare_dsm(Command& c, const DatasetManagement& d);
    enum class Submit : std::uint8_t { Sent, Busy, Failed };
    [[nodiscard]] Submit submit_next(std::uint32_t slot);
    void reap();
    void on_backend_done(const storage::Completion& done);
    void finish(std::uint32_t slot, StatusCode status, bool dnr);
    void complete(Sq& sq, std::uint16_t cid, StatusCode status, bool dnr);
    void arm_timer(storage::TimePoint at);

    ControllerCounters& counters_;
    std::atomic<bool>& fatal_;
    NamespaceGeometry ns_;
    std::uint64_t max_transfer_;
    IoThreadConfig thread_config_;

    // Worker-thread state.
    std::shared_ptr<const common::GuestMemory> mem_;
    std::vector<int> irqs_;
    std::vector<std::uint16_t> to_raise_;   // vectors with new CQEs in this batch
    std::vector<std::unique_ptr<Sq>> sqs_;  // by qid; [0] unused
    std::vector<std::unique_ptr<Cq>> cqs_;
    std::uint16_t next_sq_ = 1;  // round-robin start
    std::optional<ShadowBuffers> shadow_;
    bool write_cache_ = true;
    bool quiesce_ = false;  // no fetching, no admission
    bool discard_ = false;  // finished commands post nothing (reset)
    std::vector<Command> slots_;
    std::vector<std::uint32_t> free_slots_;
    std::deque<std::uint32_t> admit_queue_;   // waiting for the limiter (and memory)
    std::deque<std::uint32_t> submit_queue_;  // admitted, next op waits for the backend
    std::uint32_t in_flight_ = 0;             // ops at the backend
    std::optional<storage::TimePoint> throttled_since_;
    bool flush_pending_ = false;
    std::optional<bool> flush_result_;
    // Commands fetched, backend completions and CQEs posted so far: a pass that changed it did
    // work, which (re)starts the polling window.
    std::uint64_t progress_ = 0;

    storage::RateLimiter volume_limiter_;
    std::shared_ptr<SharedRateLimiter> instance_limiter_;
    common::UniqueFd epoll_;
    common::UniqueFd timer_;
    common::EventFd wake_;
    std::thread thread_;
    std::atomic<bool> stop_{false};
    std::mutex task_mu_;
    std::condition_variable task_cv_;
    std::deque<Task*> tasks_;
    // Declared last so it is destroyed first: its destructor waits for requests whose buffers
    // point into mem_.
    std::unique_ptr<storage::BlockBackend> backend_;
};

}  // namespace nitro_card::nvme
