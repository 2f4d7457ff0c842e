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
#include "host_cpus.hpp"
#include "instance.hpp"
#include "limits.hpp"

namespace hostsim {

class IoPath : public sc_core::sc_module {
public:
    tlm_utils::multi_passthrough_target_socket<IoPath> socket;

    // host: the emulator's shared CPUs (card_on_host): the path's threads, one set per instance
    // as each emulated guest has its own card or dom0 process, run there; null on a full host.
    IoPath(const sc_core::sc_module_name& name, const RunConfig& run, std::uint64_t seed, HostCpus* host)
        : sc_core::sc_module(name), socket("socket"), run_(run), cal_(run.cal), timeline_("timeline"), rng_(seed),
          warmup_(static_cast<Ps>(run.warmup_s * static_cast<double>(kPsPerS))), host_(host) {
        socket.register_nb_transport_fw(this, &IoPath::nb_transport_fw);
    }

    // Instances in socket binding order; call before the simulation starts.
    virtual void attach(std::vector<Instance*> instances) {
        instances_ = std::move(instances);
        for (Instance* i : instances_) limits_.push_back(std::make_unique<InstanceLimits>(i->config()));
        throttled_until_.assign(instances_.size(), 0);
    }

    Timeline& timeline() { return timeline_; }
    // Busy time of the threads on the emulator's CPUs (empty on a full host), by owner.
    std::array<Ps, kOwners> thread_busy() const {
        std::array<Ps, kOwners> b{};
        for (const auto& t : threads_) b[static_cast<std::size_t>(t->owner())] += t->busy();
        return b;
    }

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

    // On the emulator: a thread for each instance (its card worker or dom0 thread) and, when the
    // backend serves I/O on a kernel worker thread (calibration backend_thread), one of those.
    void add_threads(Owner owner, ServiceThread::Polling poll, Ps wake_cost) {
        for (std::size_t i = 0; i < instances_.size(); ++i) {
            // Instance i's vCPU thread is the host's vCPU thread i (instances add theirs in order).
            const int vcpu = static_cast<int>(i);
            HostCpus* host = host_;
            threads_.push_back(std::make_unique<ServiceThread>(
                *host_, timeline_, owner, [host, vcpu] { return host->vcpu_cpu(vcpu); }, host->for_instance(vcpu), poll,
                wake_cost, warmup_, rng_.next()));
            ServiceThread* worker = threads_.back().get();
            worker_.push_back(worker);
            if (cal_.backend_thread >= 0.5) {
                threads_.push_back(std::make_unique<ServiceThread>(
                    *host_, timeline_, owner, [worker] { return worker->cpu(); }, host->for_instance(vcpu),
                    ServiceThread::Polling{}, 0, warmup_, rng_.next()));
                backend_.push_back(threads_.back().get());
            }
        }
    }
    // The backend step of one I/O on the emulator, then `then`. With a kernel worker thread
    // (backend_thread) it runs there: its hand-off (ram_latency_us) and the copy, and its
    // completion reaches the worker through the worker's queue (a wake-up if it sleeps). Else
    // the worker copies itself, within its own item (inline_backend_cost).
    void emu_backend(int id, std::uint32_t bytes, Timeline::Action then) {
        if (backend_.empty()) {
            then();
            return;
        }
        const Ps cost = us_to_ps(cal_.ram_latency_us + cal_.card_us_per_kib * bytes / 1024.0);
        backend_[static_cast<std::size_t>(id)]->post(cost, std::move(then));
    }
    Ps inline_backend_cost(std::uint32_t bytes) const {
        return backend_.empty() ? us_to_ps(cal_.card_us_per_kib * bytes / 1024.0) : 0;
    }

    const RunConfig& run_;
    const Calibration& cal_;
    Timeline timeline_;
    Rng rng_;
    Ps warmup_;
    std::vector<Instance*> instances_;
    std::vector<std::unique_ptr<InstanceLimits>> limits_;
    std::vector<Ps> throttled_until_;
    HostCpus* host_;
    std::vector<std::unique_ptr<ServiceThread>> threads_;
    std::vector<ServiceThread*> worker_;   // per instance (emulator)
    std::vector<ServiceThread*> backend_;  // per instance, when backend_thread (emulator)
    // Emulator: per instance, the I/Os its thread finished in the current pass; their completions
    // reach the guest when the pass ends (the card posts CQEs, blkback handles the backend's
    // completion event, after a pass over the queue).
    std::vector<std::vector<tlm::tlm_generic_payload*>> finished_;

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
    NitroCard(const sc_core::sc_module_name& name, const RunConfig& run, std::uint64_t seed, HostCpus* host)
        : IoPath(name, run, seed, host), cores_(timeline_, static_cast<unsigned>(run.host.card_cores), warmup_) {}
    void attach(std::vector<Instance*> instances) override {
        IoPath::attach(std::move(instances));
        if (host_ == nullptr) return;
        add_threads(Owner::Card,
                    ServiceThread::Polling{us_to_ps(cal_.card_poll_us), cal_.card_lost_cpu_per_s,
                                           us_to_ps(cal_.card_poll_backoff_us)},
                    0);
        finished_.resize(instances_.size());
        for (std::size_t i = 0; i < instances_.size(); ++i) {
            worker_[i]->set_on_drain([this, i] {
                std::vector<tlm::tlm_generic_payload*> done;
                done.swap(finished_[i]);
                for (tlm::tlm_generic_payload* gp : done) respond(static_cast<int>(i), *gp);
            });
        }
    }
    CpuPool& cores() { return cores_; }

private:
    void request(int id, tlm::tlm_generic_payload& gp) override;
    // The emulator's card: the instance's own worker thread on the host's CPUs.
    void request_on_host(int id, tlm::tlm_generic_payload& gp);
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
    XenDom0(const sc_core::sc_module_name& name, const RunConfig& run, std::uint64_t seed, HostCpus* host)
        : IoPath(name, run, seed, host), vcpus_(timeline_, static_cast<unsigned>(run.host.dom0_vcpus), warmup_) {}
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
        if (host_ == nullptr) return;
        add_threads(Owner::Dom0, ServiceThread::Polling{}, us_to_ps(cal_.dom0_wake_us));
        finished_.resize(instances_.size());
        for (std::size_t i = 0; i < instances_.size(); ++i) worker_[i]->set_on_drain([this, i] { respond_on_host(i); });
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
    tlm::tlm_generic_payload* take_slot(Ring& r);
    void push_to_ring(std::size_t ring);
    void enqueue(std::size_t ring, Task task);
    void run_thread(std::size_t ring);
    Ps task_cost(const Task& task, Ps start);
    void after_task(std::size_t ring, const Task& task);
    // The emulator's dom0: the instance's own dom0 process, one thread serving its ring.
    void push_on_host(std::size_t ring);
    // from_exit: the guest's event-channel send, a vCPU thread back from its exit, wakes dom0.
    void drain_on_host(std::size_t ring, bool from_exit = false);
    void after_task_on_host(std::size_t ring, const Task& task);
    void respond_on_host(std::size_t instance);

    CpuPool vcpus_;
    std::vector<Ring> rings_;               // all instances' rings
    std::vector<std::size_t> first_ring_;   // per instance: its first ring in rings_
    std::vector<int> ring_count_;
    LockTimeline grant_lock_;
};

}  // namespace hostsim
