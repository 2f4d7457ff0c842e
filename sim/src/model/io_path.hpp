// What both I/O paths share: the TLM target socket all instances bind to (index = instance id),
// per-instance limits, the backend storage latency, and sending completions back.
#pragma once

#include <systemc>
#include <tlm>
#include <tlm_utils/multi_passthrough_target_socket.h>

#include <algorithm>
#include <deque>
#include <map>
#include <memory>
#include <vector>

#include "../config.hpp"
#include "../rng.hpp"
#include "instance.hpp"
#include "limits.hpp"

namespace hostsim {

class IoPath : public sc_core::sc_module {
public:
    tlm_utils::multi_passthrough_target_socket<IoPath> socket;

    IoPath(const sc_core::sc_module_name& name, const RunConfig& run, std::uint64_t seed)
        : sc_core::sc_module(name), socket("socket"), run_(run), cal_(run.cal), timeline_("timeline"), rng_(seed),
          warmup_(static_cast<Ps>(run.warmup_s * static_cast<double>(kPsPerS))) {
        socket.register_nb_transport_fw(this, &IoPath::nb_transport_fw);
    }

    // Instances in socket binding order; call before the simulation starts.
    virtual void attach(std::vector<Instance*> instances) {
        instances_ = std::move(instances);
        for (Instance* i : instances_) limits_.push_back(std::make_unique<InstanceLimits>(i->config()));
        throttled_until_.assign(instances_.size(), 0);
    }

    Timeline& timeline() { return timeline_; }

protected:
    virtual void request(int id, tlm::tlm_generic_payload& gp) = 0;

    // Backend latency of one access (EBS over the network, local NVMe, or RAM).
    Ps storage_latency(int id) {
        switch (instances_[static_cast<std::size_t>(id)]->config().volume) {
            case Volume::Ebs: return us_to_ps(rng_.lognormal_median_p99(run_.ebs.median_us, run_.ebs.p99_us));
            case Volume::InstanceStore:
                return us_to_ps(rng_.lognormal_median_p99(run_.instance_store.median_us, run_.instance_store.p99_us));
            case Volume::Ram: break;
        }
        return us_to_ps(cal_.ram_latency_us);
    }

    // Applies the instance's EBS limits; returns the admission time. Throttled time is the time
    // during which at least one of the instance's I/Os waited for tokens (the union of the waits:
    // arrivals and admissions are both in time order, so the union grows at its end only).
    Ps admit(int id, std::uint32_t bytes, bool write) {
        const auto i = static_cast<std::size_t>(id);
        const Ps now = Timeline::now();
        const Ps t = limits_[i]->admit(now, bytes, write);
        Ps& until = throttled_until_[i];
        const Ps from = std::max({now, until, warmup_});
        if (t > from) instances_[i]->stats().throttled += t - from;
        until = std::max(until, t);
        return t;
    }

    void respond(int id, tlm::tlm_generic_payload& gp) {
        gp.set_response_status(tlm::TLM_OK_RESPONSE);
        tlm::tlm_phase phase = tlm::BEGIN_RESP;
        sc_core::sc_time delay = sc_core::SC_ZERO_TIME;
        socket[id]->nb_transport_bw(gp, phase, delay);
    }

    Instance& instance(int id) { return *instances_[static_cast<std::size_t>(id)]; }

    const RunConfig& run_;
    const Calibration& cal_;
    Timeline timeline_;
    Rng rng_;
    Ps warmup_;
    std::vector<Instance*> instances_;
    std::vector<std::unique_ptr<InstanceLimits>> limits_;
    std::vector<Ps> throttled_until_;

private:
    tlm::tlm_sync_enum nb_transport_fw(int id, tlm::tlm_generic_payload& gp, tlm::tlm_phase& phase, sc_core::sc_time&) {
        if (phase != tlm::BEGIN_REQ) return tlm::TLM_ACCEPTED;
        request(id, gp);
        phase = tlm::END_REQ;
        return tlm::TLM_UPDATED;
    }
};

// The Nitro card: its own cores, per-instance token buckets, NVMe queue pairs served from guest
// memory by DMA over PCIe, completions by MSI-X. Host cores are touched only by the guest driver
// and the rare doorbell exit.
class NitroCard final : public IoPath {
public:
    NitroCard(const sc_core::sc_module_name& name, const RunConfig& run, std::uint64_t seed)
        : IoPath(name, run, seed), cores_(timeline_, static_cast<unsigned>(run.host.card_cores), warmup_) {
        if (run.host.card_on_host && run.cal.host_stall_us > 0 && run.cal.host_cpu_share < 1.0) {
            const double stall = run.cal.host_stall_us;
            const double share = run.cal.host_cpu_share;
            cores_.set_preemption(us_to_ps(stall * share / (1.0 - share)), us_to_ps(stall), seed ^ 0xca7dULL);
        }
    }
    CpuPool& cores() { return cores_; }

private:
    void request(int id, tlm::tlm_generic_payload& gp) override;
    // When the card's worker can start on an event (a new command, a backend completion) at t:
    // at once while it runs or polls; else after a wake-up, shared by the events that come while
    // it is under way.
    Ps ready_at(Ps t);
    void run_when_ready(Job job);
    CpuPool cores_;
    Ps wake_at_ = 0;
    Ps awake_until_ = 0;
};

// dom0's grant-table lock as the intervals it is held. A blkback batch books its tasks' holds ahead
// of time, so a later request may take a gap between them; a request spins (busy on its vCPU)
// from when it wants the lock to the first gap long enough for its hold.
class LockTimeline final {
public:
    // Books the earliest interval [t, t + hold) with t >= want that overlaps no booking; returns t.
    Ps acquire(Ps want, Ps hold, Ps now) {
        while (!held_.empty() && held_.begin()->second <= now) held_.erase(held_.begin());
        Ps t = want;
        auto it = held_.upper_bound(t);
        if (it != held_.begin() && std::prev(it)->second > t) t = std::prev(it)->second;
        while (it != held_.end() && it->first < t + hold) {
            t = std::max(t, it->second);
            ++it;
        }
        if (hold > 0) held_.emplace(t, t + hold);
        return t;
    }

private:
    std::map<Ps, Ps> held_;  // start -> end, disjoint
};

// The Xen split block driver: blkfront's single-page ring (32 requests), event channels through
// the hypervisor, one blkback thread per ring on dom0's vCPUs, grant map/unmap under dom0's grant
// lock with a TLB-shootdown IPI to each dom0 vCPU that ran the backend recently.
class XenDom0 final : public IoPath {
public:
    XenDom0(const sc_core::sc_module_name& name, const RunConfig& run, std::uint64_t seed)
        : IoPath(name, run, seed), vcpus_(timeline_, static_cast<unsigned>(run.host.dom0_vcpus), warmup_) {
        if (run.host.card_on_host && run.cal.host_stall_us > 0 && run.cal.host_cpu_share < 1.0) {
            const double stall = run.cal.host_stall_us;
            const double share = run.cal.host_cpu_share;
            vcpus_.set_preemption(us_to_ps(stall * share / (1.0 - share)), us_to_ps(stall), seed ^ 0xd0d0ULL);
        }
    }
    // blkfront with multi-queue (Linux >= 4.3) opens one ring per vCPU, up to the calibration's
    // xen_max_rings; each ring has its own blkback thread.
    void attach(std::vector<Instance*> instances) override {
        IoPath::attach(std::move(instances));
        for (std::size_t i = 0; i < instances_.size(); ++i) {
            const int n = std::max(1, std::min(instances_[i]->config().type.vcpus, cal_.xen_max_rings));
            first_ring_.push_back(rings_.size());
            ring_count_.push_back(n);
            for (int k = 0; k < n; ++k) {
                Ring r;
                r.instance = static_cast<int>(i);
                rings_.push_back(std::move(r));
            }
        }
    }
    CpuPool& vcpus() { return vcpus_; }

private:
    struct Task {
        bool complete = false;  // false: a new request; true: a finished one to respond to
        tlm::tlm_generic_payload* gp = nullptr;
        bool woke = false;      // the thread was asleep and woken by an event-channel notify
    };
    struct Ring {
        int instance = 0;
        int inflight = 0;       // requests on the shared ring (slots not yet freed by blkfront)
        std::deque<tlm::tlm_generic_payload*> pending;  // blkfront's queue when the ring is full
        std::deque<Task> tasks; // blkback's work
        bool running = false;
        bool notify_in_flight = false;
    };

    void request(int id, tlm::tlm_generic_payload& gp) override;
    void push_to_ring(std::size_t ring);
    void enqueue(std::size_t ring, Task task);
    void run_thread(std::size_t ring);
    Ps task_cost(const Task& task, Ps start);
    void after_task(std::size_t ring, const Task& task);

    CpuPool vcpus_;
    std::vector<Ring> rings_;               // all instances' rings
    std::vector<std::size_t> first_ring_;   // per instance: its first ring in rings_
    std::vector<int> ring_count_;
    LockTimeline grant_lock_;
};

}  // namespace hostsim
