#include "host_cpus.hpp"

#include <algorithm>

namespace hostsim {

HostCpus::HostCpus(Timeline& timeline, unsigned cpus, Timing timing, int pinned_instances,
                   std::uint64_t seed)
    : timeline_(timeline),
      rng_(seed),
      wake_us_(timing.wake_us),
      preempt_us_(timing.preempt_us),
      switch_us_(timing.switch_us),
      shape_(std::max(1, timing.shape)),
      preempt_shape_(std::max(1, timing.preempt_shape)),
      slice_(timing.slice_us > 0 ? us_to_ps(timing.slice_us) : kNever),
      pinned_(pinned_instances),
      cpus_(std::max(1u, cpus)) {}

Ps HostCpus::draw(double mean_us, int shape) {
    return mean_us > 0 ? us_to_ps(rng_.erlang(mean_us, shape)) : 0;
}

HostCpus::CpuRange HostCpus::instance_cpus(int i, int n, int cpus) {
    if (n <= 0 || cpus <= 0) return CpuRange{0, std::max(cpus, 1)};
    if (n <= cpus) return CpuRange{i * cpus / n, (i + 1) * cpus / n};
    return CpuRange{i % cpus, i % cpus + 1};
}

HostCpus::CpuRange HostCpus::clamp(CpuRange r) const {
    const int n = static_cast<int>(cpus_.size());
    r.first = std::clamp(r.first, 0, n - 1);
    r.last = std::clamp(r.last, r.first + 1, n);
    return r;
}

// The first of `queue` (indices into `all`) allowed on CPU c, taken off the queue; -1: none.
template <typename T>
int HostCpus::take_first(std::deque<int>& queue, const std::vector<T>& all, int c) {
    const auto it = std::find_if(queue.begin(), queue.end(),
                                 [&](int i) { return all[static_cast<std::size_t>(i)].allowed.has(c); });
    if (it == queue.end()) return -1;
    const int i = *it;
    queue.erase(it);
    return i;
}

int HostCpus::idle_cpu(CpuRange allowed) const {
    for (int c = allowed.first; c < allowed.last; ++c)
        if (cpus_[static_cast<std::size_t>(c)].id < 0) return c;
    return -1;
}

int HostCpus::add_vcpu(std::function<void()> resume, CpuRange allowed) {
    allowed = clamp(allowed);
    const int v = static_cast<int>(vcpus_.size());
    vcpus_.push_back(Vcpu{-1, 0, allowed, std::move(resume)});
    const int c = idle_cpu(allowed);
    if (c >= 0) {
        cpus_[static_cast<std::size_t>(c)].vcpu = true;
        cpus_[static_cast<std::size_t>(c)].id = v;
        vcpus_.back().cpu = c;
    } else {
        cpus_[static_cast<std::size_t>(allowed.first + v % allowed.width())].vcpus.push_back(v);
    }
    return v;
}

int HostCpus::add_thread(std::function<void()> yield, std::function<int()> waker_cpu, CpuRange allowed) {
    Thread t;
    t.yield = std::move(yield);
    t.waker_cpu = std::move(waker_cpu);
    t.allowed = clamp(allowed);
    threads_.push_back(std::move(t));
    return static_cast<int>(threads_.size()) - 1;
}

bool HostCpus::contended(int t) const {
    const int c = threads_[static_cast<std::size_t>(t)].cpu;
    if (c < 0) return false;
    const Cpu& cpu = cpus_[static_cast<std::size_t>(c)];
    return !cpu.threads.empty() || !cpu.vcpus.empty();
}

void HostCpus::set_polling(int t, bool polling) {
    threads_[static_cast<std::size_t>(t)].polling = polling;
}

void HostCpus::give(int cpu, int t, Ps delay) {
    Thread& th = threads_[static_cast<std::size_t>(t)];
    cpus_[static_cast<std::size_t>(cpu)].vcpu = false;
    cpus_[static_cast<std::size_t>(cpu)].id = t;
    th.cpu = cpu;
    th.since = Timeline::now() + delay;
    th.queued_on = -1;
    th.wait_seq = 0;
    th.polling = false;
    timeline_.after(delay, std::move(th.granted));
    th.granted = {};
}

void HostCpus::resume_vcpu(int cpu, int v) {
    cpus_[static_cast<std::size_t>(cpu)].vcpu = true;
    cpus_[static_cast<std::size_t>(cpu)].id = v;
    Vcpu& vcpu = vcpus_[static_cast<std::size_t>(v)];
    vcpu.cpu = cpu;
    const Ps back = draw(switch_us_, shape_);
    vcpu.entered = Timeline::now() + back;
    timeline_.after(back, vcpu.resume);
}

// A poller on `cpu` yields it to thread t (its loop calls sched_yield between passes).
void HostCpus::take_from_poller(int cpu, int t) {
    Thread& poller = threads_[static_cast<std::size_t>(cpus_[static_cast<std::size_t>(cpu)].id)];
    poller.cpu = -1;
    poller.polling = false;
    poller.yield();
    give(cpu, t, draw(wake_us_, shape_));
}

void HostCpus::request(int t, std::function<void()> granted, bool from_exit) {
    Thread& th = threads_[static_cast<std::size_t>(t)];
    th.granted = std::move(granted);
    if (const int c = idle_cpu(th.allowed); c >= 0) {
        give(c, t, draw(wake_us_, shape_));
        return;
    }
    int c = th.waker_cpu ? th.waker_cpu() : -1;
    if (!th.allowed.has(c)) c = th.allowed.first + static_cast<int>(rng_.below(static_cast<std::uint64_t>(th.allowed.width())));
    const Cpu& cpu = cpus_[static_cast<std::size_t>(c)];
    if (!cpu.vcpu && cpu.id >= 0 && threads_[static_cast<std::size_t>(cpu.id)].polling) {
        take_from_poller(c, t);
        return;
    }
    queue(c, t, from_exit ? 0 : draw(preempt_us_, preempt_shape_));
}

void HostCpus::queue(int cpu, int t, Ps delay) {
    Thread& th = threads_[static_cast<std::size_t>(t)];
    th.wait_seq = ++seq_;
    th.queued_on = cpu;
    cpus_[static_cast<std::size_t>(cpu)].threads.push_back(t);
    const std::uint64_t seq = th.wait_seq;
    timeline_.after(delay, [this, t, seq] { preempt(t, seq); });
}

bool HostCpus::requeue(int t, std::function<void()> granted) {
    Thread& th = threads_[static_cast<std::size_t>(t)];
    if (th.cpu < 0 || !contended(t) || Timeline::now() - th.since < slice_) return false;
    const int c = th.cpu;
    th.cpu = -1;
    th.polling = false;
    th.granted = std::move(granted);
    hand_on(c);
    queue(c, t, draw(preempt_us_, preempt_shape_));
    return true;
}

void HostCpus::yield_cpu(int t, std::function<void()> granted) {
    Thread& th = threads_[static_cast<std::size_t>(t)];
    const int c = th.cpu;
    th.cpu = -1;
    th.polling = false;
    th.granted = std::move(granted);
    hand_on(c);
    queue(c, t, slice_ == kNever ? 0 : slice_);
}

// The queued thread's wake-up preemption: it takes its CPU from the vCPU thread running there.
// If an I/O thread holds it, it keeps waiting for that one to give it up.
void HostCpus::preempt(int t, std::uint64_t seq) {
    Thread& th = threads_[static_cast<std::size_t>(t)];
    if (th.wait_seq != seq) return;
    const int c = th.queued_on;
    Cpu& cpu = cpus_[static_cast<std::size_t>(c)];
    if (!cpu.vcpu || cpu.id < 0) return;
    const int v = cpu.id;
    vcpus_[static_cast<std::size_t>(v)].cpu = -1;
    cpu.vcpus.push_back(v);
    cpu.threads.erase(std::find(cpu.threads.begin(), cpu.threads.end(), t));
    give(c, t, 0);
}

void HostCpus::release(int t) {
    Thread& th = threads_[static_cast<std::size_t>(t)];
    const int c = th.cpu;
    th.cpu = -1;
    th.polling = false;
    if (c >= 0) hand_on(c);
}

// A CPU given up: to a thread queued on it (already runnable, it runs at the switch), else to
// the vCPU thread queued on it, else to one queued elsewhere (idle balancing), else it idles.
void HostCpus::hand_on(int c) {
    Cpu& cpu = cpus_[static_cast<std::size_t>(c)];
    if (!cpu.threads.empty()) {
        const int next = cpu.threads.front();
        cpu.threads.pop_front();
        give(c, next, 0);
        return;
    }
    if (!cpu.vcpus.empty()) {
        const int v = cpu.vcpus.front();
        cpu.vcpus.pop_front();
        resume_vcpu(c, v);
        return;
    }
    for (Cpu& other : cpus_) {
        if (const int t = take_first(other.threads, threads_, c); t >= 0) {
            give(c, t, 0);
            return;
        }
    }
    for (Cpu& other : cpus_) {
        if (const int v = take_first(other.vcpus, vcpus_, c); v >= 0) {
            resume_vcpu(c, v);
            return;
        }
    }
    cpu.vcpu = false;
    cpu.id = -1;
}

ServiceThread::ServiceThread(HostCpus& cpus, Timeline& timeline, Owner owner,
                             std::function<int()> waker_cpu, HostCpus::CpuRange allowed,
                             Polling poll, Ps wake_cost, Ps count_from, std::uint64_t seed)
    : cpus_(cpus),
      timeline_(timeline),
      owner_(owner),
      poll_(poll),
      wake_cost_(wake_cost),
      count_from_(count_from),
      rng_(seed) {
    // Another thread takes the CPU this one polls on (HostCpus hands it on): the poll ends, the
    // thread has lost its CPU while spinning and backs off.
    id_ = cpus_.add_thread(
        [this] {
            const Ps now = Timeline::now();
            book(poll_start_, now);
            ++poll_gen_;
            backoff_until_ = now + poll_.backoff;
            state_ = State::Asleep;
        },
        std::move(waker_cpu), allowed);
}

void ServiceThread::book(Ps from, Ps to) {
    const Ps start = std::max(from, count_from_);
    if (to > start) busy_ += to - start;
}

void ServiceThread::post(Ps work, Timeline::Action done, bool from_exit) {
    (in_done_ ? items_ : next_).push_back(Item{work, std::move(done)});
    switch (state_) {
        case State::Asleep:
            state_ = State::Waking;
            cpus_.request(
                id_, [this] { woken(); }, from_exit);
            break;
        case State::Polling:
            book(poll_start_, Timeline::now());
            ++poll_gen_;
            cpus_.set_polling(id_, false);
            state_ = State::Running;
            next();
            break;
        case State::Waking:
        case State::Running:
            break;
    }
}

void ServiceThread::next() {
    const Ps now = Timeline::now();
    if (items_.empty() && on_drain_) on_drain_();
    if (items_.empty()) items_.swap(next_);
    if (items_.empty()) {
        if (poll_.window <= 0 || now < backoff_until_) {
            sleep();
            return;
        }
        if (cpus_.contended(id_)) {
            // Its first sched_yield hands the CPU over; it returns a slice later: lost.
            backoff_until_ = now + poll_.backoff;
            state_ = State::Waking;
            cpus_.yield_cpu(id_, [this] {
                state_ = State::Running;
                next();
            });
            return;
        }
        state_ = State::Polling;
        cpus_.set_polling(id_, true);
        poll_start_ = now;
        const std::uint64_t gen = ++poll_gen_;
        // The window ends, or something else takes the CPU first (then a back-off).
        Ps end = now + poll_.window;
        bool lost = false;
        if (poll_.lost_per_s > 0) {
            const Ps at =
                now +
                static_cast<Ps>(rng_.exponential(static_cast<double>(kPsPerS) / poll_.lost_per_s));
            if (at < end) {
                end = at;
                lost = true;
            }
        }
        timeline_.at(end, [this, gen, lost] {
            if (state_ != State::Polling || poll_gen_ != gen) return;
            book(poll_start_, Timeline::now());
            if (lost) backoff_until_ = Timeline::now() + poll_.backoff;
            sleep();
        });
        return;
    }
    if (cpus_.requeue(id_, [this] {
            state_ = State::Running;
            next();
        })) {
        state_ = State::Waking;
        return;
    }
    Item item = std::move(items_.front());
    items_.pop_front();
    state_ = State::Running;
    timeline_.at(now + item.work, [this, now, done = std::move(item.done)] {
        book(now, Timeline::now());
        if (done) {
            in_done_ = true;
            done();
            in_done_ = false;
        }
        next();
    });
}

void ServiceThread::woken() {
    state_ = State::Running;
    if (wake_cost_ <= 0) {
        next();
        return;
    }
    const Ps start = Timeline::now();
    timeline_.at(start + wake_cost_, [this, start] {
        book(start, Timeline::now());
        next();
    });
}

void ServiceThread::sleep() {
    state_ = State::Asleep;
    cpus_.release(id_);
}

}  // namespace hostsim
