// A set of identical processors (a guest's vCPUs, dom0's vCPUs, the card's cores) serving jobs
// first come, first served, non-preemptively. Busy time is booked per owner so the host's CPU
// time can be split into guest, hypervisor/vmm, dom0 and card.
#pragma once

#include <array>
#include <deque>
#include <functional>
#include <string>
#include <vector>

#include "timeline.hpp"

namespace hostsim {

enum class Owner { Guest = 0, Hypervisor = 1, Dom0 = 2, Card = 3 };
inline constexpr std::size_t kOwners = 4;

struct Job {
    Ps duration = 0;
    Owner owner = Owner::Guest;
    // Optional: computes the duration when the job starts (start time, processor index);
    // used for costs that depend on what else runs (a lock, TLB shootdown targets).
    std::function<Ps(Ps, unsigned)> dynamic;
    Timeline::Action done;
};

class CpuPool final {
public:
    CpuPool(Timeline& timeline, unsigned processors, Ps count_from)
        : timeline_(timeline), last_run_(processors, -kNever / 2), count_from_(count_from) {
        free_.reserve(processors);
        for (unsigned i = processors; i-- > 0;) free_.push_back(i);
    }

    unsigned processors() const { return static_cast<unsigned>(last_run_.size()); }
    // A processor that is not always there: the emulator's vCPU thread, which the host's
    // scheduler takes away now and then (HostCpus). Jobs start only while `available` says so;
    // resume() starts those that waited. A job under way when the processor goes is finished
    // as if it had stayed (guest jobs are far shorter than the time a thread loses its CPU).
    void set_gate(std::function<bool()> available) { available_ = std::move(available); }
    void resume() {
        while (!free_.empty() && !waiting_.empty() && open()) {
            const unsigned p = free_.back();
            free_.pop_back();
            Job next = std::move(waiting_.front());
            waiting_.pop_front();
            start(p, std::move(next));
        }
    }

    unsigned running() const { return processors() - static_cast<unsigned>(free_.size()); }
    std::size_t waiting() const { return waiting_.size(); }

    void submit(Job job) {
        if (free_.empty() || !open()) {
            waiting_.push_back(std::move(job));
            max_waiting_ = std::max(max_waiting_, waiting_.size());
            return;
        }
        const unsigned p = free_.back();
        free_.pop_back();
        start(p, std::move(job));
    }

    // Processors that ran a job within `window` before now.
    unsigned recently_active(Ps window) const {
        const Ps n = Timeline::now();
        unsigned count = 0;
        for (Ps t : last_run_) count += (n - t <= window) ? 1u : 0u;
        return count;
    }

    // Busy time of jobs started after the warm-up, by owner.
    const std::array<Ps, kOwners>& busy() const { return busy_; }
    std::size_t max_waiting() const { return max_waiting_; }

private:
    void start(unsigned p, Job job) {
        const Ps n = Timeline::now();
        const Ps d = job.dynamic ? job.dynamic(n, p) : job.duration;
        if (n >= count_from_) busy_[static_cast<std::size_t>(job.owner)] += d;
        const Ps end = n + d;
        last_run_[p] = end;
        timeline_.at(end, [this, p, done = std::move(job.done)]() mutable {
            release(p);
            if (done) done();
        });
    }
    void release(unsigned p) {
        if (waiting_.empty() || !open()) {
            free_.push_back(p);
            return;
        }
        Job next = std::move(waiting_.front());
        waiting_.pop_front();
        start(p, std::move(next));
    }

    bool open() const { return !available_ || available_(); }

    Timeline& timeline_;
    std::function<bool()> available_;
    std::vector<Ps> last_run_;
    std::vector<unsigned> free_;
    std::deque<Job> waiting_;
    std::array<Ps, kOwners> busy_{};
    std::size_t max_waiting_ = 0;
    Ps count_from_;
};

}  // namespace hostsim
