// The emulator's host (a scenario with host.card_on_host): a few CPUs that the operating system's
// scheduler shares among the guests' vCPU threads and the I/O threads (each instance's card
// worker, or its dom0 thread, and the kernel worker of an io_uring backend). On this machine a
// probe guest's vCPU busy-polls for completions, so its thread always wants a CPU; the I/O
// threads want one only while they have work (or poll for it).
//
// The scheduler as the model sees it, one run queue per CPU as in Linux:
// - a thread keeps to its CPUs: all of them, or its instance's share (host.pin_instances);
// - a vCPU thread holds a CPU until an I/O thread takes it away, then waits on that CPU's queue
//   until the CPU is given up (or another CPU goes idle and pulls it), and is back in its guest
//   host_switch_us after it has it again. While it is not in its guest the guest does nothing:
//   its submissions and the completions it polls for wait (CpuPool's gate);
// - an I/O thread that wakes runs on an idle CPU after the wake-up latency (mean host_wake_us:
//   an IPI to a halted CPU of this virtual machine, the context switch). With no
//   CPU idle it queues on its waker's CPU (Linux's wake-affine placement: the doorbell or the
//   event-channel send is signalled on the guest's own vCPU thread, an io_uring completion on
//   the thread that submitted): if a thread polls there, that one yields at once; if a vCPU
//   thread runs there, it is preempted after the scheduler's wake-up preemption delay
//   (mean host_preempt_us), or at once when the waker is that vCPU thread coming
//   back from a VM exit handled in the vmm (the return to user space is where the kernel
//   switches to the woken thread; an ioeventfd doorbell is signalled in the kernel and the vCPU
//   goes on in the guest); if an I/O thread works there, it waits for it to sleep;
// - a CPU given up goes to a thread queued on it, else to the vCPU thread queued on it, else to
//   one queued on another CPU (idle balancing), else it idles;
// - an I/O thread that has held a CPU for a time slice (host_slice_us: a tick) while others wait
//   there goes back to that queue's end (checked between its work items, which are microseconds).
// The latencies are Erlang-distributed (host_wake_shape, host_preempt_shape: 1 is exponential).

// ServiceThread is one I/O thread: work items in passes, then it polls for more (the card's
// adaptive polling) or sleeps. A thread that wakes on a CPU where another thread polls takes that
// CPU at once (the poller's loop calls sched_yield between passes); so does a vCPU thread waiting
// on its CPU when it starts to poll, and the thread gets the CPU back only after that vCPU
// thread's slice. A poller that loses its CPU so, or to anything else on this shared machine (a
// rate, from the calibration), stops polling for a back-off and sleeps after each drain
// meanwhile, as the card worker does (nitro_card/nvme/io.hpp).
#pragma once

#include <deque>
#include <functional>
#include <vector>

#include "../rng.hpp"
#include "cpu_pool.hpp"
#include "timeline.hpp"

namespace hostsim {

class HostCpus final {
public:
    // The CPUs a thread may run on: [first, last).
    struct CpuRange {
        int first = 0, last = 0;
        bool has(int cpu) const { return cpu >= first && cpu < last; }
        int width() const { return last - first; }
    };
    // Instance i of n pinned (host.pin_instances): an even share of the CPUs when there are at
    // least n, else one, in turn (bench/compare pins the emulator's guests the same way).
    static CpuRange instance_cpus(int i, int n, int cpus);
    // Where instance i's vCPU thread and I/O threads run.
    CpuRange for_instance(int i) const {
        const int n = static_cast<int>(cpus_.size());
        return pinned_ > 0 ? instance_cpus(i, pinned_, n) : CpuRange{0, n};
    }

    // The scheduler's timing: a woken thread's latency to an idle CPU, its delay before it
    // preempts a busy-polling vCPU thread, and a vCPU thread's way back into its guest once it has
    // its CPU again (the switch and the VM entry): means, Erlang-distributed of the given shapes
    // (`shape` for the wake-up and the way back, `preempt_shape` for the preemption); the tick.
    struct Timing {
        double wake_us = 0, preempt_us = 0, switch_us = 0, slice_us = 0;
        int shape = 1, preempt_shape = 1;
    };
    // pinned_instances: how many instances keep to their own share of the CPUs (0: none do).
    HostCpus(Timeline& timeline, unsigned cpus, Timing timing, int pinned_instances, std::uint64_t seed);

    // A vCPU thread, on a CPU of `allowed` from the start; `resume` runs each time it gets a CPU
    // back. Requires fewer vCPU threads than CPUs plus one (they never share a CPU among
    // themselves), and no more on a range than it has CPUs plus one.
    int add_vcpu(std::function<void()> resume, CpuRange allowed);
    // Its guest runs: the thread holds a CPU and is back in the guest.
    bool vcpu_running(int v) const {
        const Vcpu& vcpu = vcpus_[static_cast<std::size_t>(v)];
        return vcpu.cpu >= 0 && Timeline::now() >= vcpu.entered;
    }
    int vcpu_cpu(int v) const { return vcpus_[static_cast<std::size_t>(v)].cpu; }

    // An I/O thread that runs on the CPUs of `allowed`. `yield` is called when it polls and
    // another thread takes its CPU; `waker_cpu` tells where the thread that wakes it runs now
    // (-1: anywhere).
    int add_thread(std::function<void()> yield, std::function<int()> waker_cpu, CpuRange allowed);
    int thread_cpu(int t) const { return threads_[static_cast<std::size_t>(t)].cpu; }
    // Thread t wants a CPU; `granted` runs once it has one. from_exit: its waker is a vCPU thread
    // returning from an exit to the vmm, which the woken thread preempts at once.
    void request(int t, std::function<void()> granted, bool from_exit = false);
    // Thread t gives its CPU up (sleeps).
    void release(int t);
    // Somebody waits on thread t's CPU.
    bool contended(int t) const;
    // Thread t has used up its slice while others wait on its CPU: it gives the CPU on and queues
    // again; `granted` runs when it has a CPU again. False (nothing done) while its slice lasts
    // or nobody waits.
    bool requeue(int t, std::function<void()> granted);
    // Thread t yields its CPU to whoever waits on it (sched_yield while it spins) and waits itself
    // until that one's slice is over; `granted` runs when it has a CPU again.
    void yield_cpu(int t, std::function<void()> granted);
    // Marks thread t as polling (true) or working (false).
    void set_polling(int t, bool polling);

    unsigned cpus() const { return static_cast<unsigned>(cpus_.size()); }

private:
    struct Cpu {
        bool vcpu = false;
        int id = -1;                     // holder; -1: idle
        std::deque<int> threads, vcpus;  // queued on this CPU
    };
    struct Vcpu {
        int cpu = -1;
        Ps entered = 0;  // when it is back in its guest after it last got its CPU
        CpuRange allowed;
        std::function<void()> resume;
    };
    struct Thread {
        int cpu = -1;
        bool polling = false;
        Ps since = 0;                // when it got its CPU
        int queued_on = -1;          // the CPU whose queue it waits on
        CpuRange allowed;
        std::uint64_t wait_seq = 0;  // identifies the current wait (0: not waiting)
        std::function<void()> yield;
        std::function<int()> waker_cpu;
        std::function<void()> granted;
    };
    void give(int cpu, int t, Ps delay);
    void resume_vcpu(int cpu, int v);
    void queue(int cpu, int t, Ps delay);
    void preempt(int t, std::uint64_t seq);
    void take_from_poller(int cpu, int t);
    void hand_on(int cpu);
    int idle_cpu(CpuRange allowed) const;
    template <typename T>
    static int take_first(std::deque<int>& queue, const std::vector<T>& all, int c);
    CpuRange clamp(CpuRange r) const;  // within the host, at least one CPU
    Ps draw(double mean_us, int shape);

    Timeline& timeline_;
    Rng rng_;
    double wake_us_, preempt_us_, switch_us_;
    int shape_, preempt_shape_;
    Ps slice_;
    int pinned_;
    std::vector<Cpu> cpus_;
    std::vector<Vcpu> vcpus_;
    std::vector<Thread> threads_;
    std::uint64_t seq_ = 0;
};

class ServiceThread final {
public:
    // poll: how long it polls after its last work item (0: it sleeps at once); lost_per_s: how
    // often a polling thread loses its CPU to something outside the model; backoff: how long it
    // then stops polling; wake_cost: the CPU a sleep and a wake-up cost the thread itself
    // (epoll_wait, the eventfd, the context switch), spent when it wakes. Busy time from
    // count_from is booked to `owner`, polling included (it burns the CPU as work does).
    struct Polling {
        Ps window = 0;
        double lost_per_s = 0;
        Ps backoff = 0;
    };
    // waker_cpu: where the thread that wakes it runs (HostCpus::add_thread).
    ServiceThread(HostCpus& cpus, Timeline& timeline, Owner owner, std::function<int()> waker_cpu,
                  HostCpus::CpuRange allowed, Polling poll, Ps wake_cost, Ps count_from, std::uint64_t seed);
    int cpu() const { return cpus_.thread_cpu(id_); }
    ServiceThread(const ServiceThread&) = delete;
    ServiceThread& operator=(const ServiceThread&) = delete;

    // Queues a work item of `work` CPU time; `done` runs when it is finished. from_exit: posted by
    // a vCPU thread handling an exit in the vmm (HostCpus::request).
    // The thread works in passes, as the card worker and blkback loop: a pass takes the items
    // queued when it starts and those their own `done` posts (a completion reaped in the same
    // pass); items posted from elsewhere meanwhile wait for the next pass.
    void post(Ps work, Timeline::Action done, bool from_exit = false);
    // Runs at the end of each pass (where the card worker posts its completions).
    void set_on_drain(Timeline::Action on_drain) { on_drain_ = std::move(on_drain); }
    // Asleep with nothing queued: new work needs a wake-up.
    bool asleep() const { return state_ == State::Asleep; }
    Ps busy() const { return busy_; }
    Owner owner() const { return owner_; }

private:
    enum class State { Asleep, Waking, Running, Polling };
    struct Item {
        Ps work;
        Timeline::Action done;
    };
    void next();
    void woken();
    void sleep();
    void book(Ps from, Ps to);

    HostCpus& cpus_;
    Timeline& timeline_;
    Owner owner_;
    Polling poll_;
    Ps wake_cost_, count_from_;
    Rng rng_;
    int id_ = -1;
    State state_ = State::Asleep;
    std::deque<Item> items_;  // this pass
    std::deque<Item> next_;   // the next pass
    bool in_done_ = false;    // an item's `done` runs: what it posts joins this pass
    Timeline::Action on_drain_;
    std::uint64_t poll_gen_ = 0;
    Ps poll_start_ = 0;
    Ps backoff_until_ = 0;
    Ps busy_ = 0;
};

}  // namespace hostsim
