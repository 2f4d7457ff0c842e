#include "io_path.hpp"

#include <algorithm>
#include <memory>

namespace hostsim {

Ps NitroCard::ready_at(Ps t) {
    if (cores_.running() > 0 || t <= awake_until_) return t;
    if (t < wake_at_) return wake_at_;
    const double us = cal_.nitro_notify_p99_us > cal_.nitro_notify_us
                          ? rng_.lognormal_median_p99(cal_.nitro_notify_us, cal_.nitro_notify_p99_us)
                          : cal_.nitro_notify_us;
    wake_at_ = t + us_to_ps(us);
    return wake_at_;
}

void NitroCard::run_when_ready(Job job) {
    const Ps poll = us_to_ps(cal_.card_poll_us);
    job.done = [this, poll, done = std::move(job.done)] {
        awake_until_ = std::max(awake_until_, Timeline::now() + poll);
        if (done) done();
    };
    const Ps now = Timeline::now();
    const Ps ready = ready_at(now);
    if (ready <= now) {
        cores_.submit(std::move(job));
    } else {
        timeline_.at(ready, [this, job = std::move(job)]() mutable { cores_.submit(std::move(job)); });
    }
}

void NitroCard::request(int id, tlm::tlm_generic_payload& gp) {
    if (host_ != nullptr) {
        request_on_host(id, gp);
        return;
    }
    const IoExtension& io = io_of(gp);
    const Ps admitted = admit(id, io.bytes, io.write);
    const double kib = io.bytes / 1024.0;
    const Ps submit_cost = us_to_ps(cal_.card_us_per_io * 0.5 + cal_.card_us_per_kib * kib);
    const Ps complete_cost = us_to_ps(cal_.card_us_per_io * 0.5);
    const Ps transfer = us_to_ps(cal_.pcie_us + io.bytes / (cal_.dma_gbps * 1e3));  // GB/s = 1e3 B/us
    timeline_.at(admitted, [=, this, &gp] {
        run_when_ready(Job{submit_cost, Owner::Card, {}, [=, this, &gp] {
                               timeline_.after(transfer + storage_latency(id), [=, this, &gp] {
                                   run_when_ready(Job{complete_cost, Owner::Card, {}, [=, this, &gp] {
                                                          const bool poll = instance(id).config().workload.poll;
                                                          timeline_.after(poll ? 0 : us_to_ps(cal_.irq_us),
                                                                          [=, this, &gp] { respond(id, gp); });
                                                      }});
                               });
                           }});
    });
}

// The emulator's card: the command reaches the instance's worker (at once while it runs or polls,
// else after its wake-up through the host's scheduler: the doorbell's ioeventfd), which fetches
// and submits it; the backend copies (in the worker, or on io_uring's kernel thread); the worker
// posts the completions when its pass ends (no work left), and the guest sees them once its vCPU
// thread runs.
void NitroCard::request_on_host(int id, tlm::tlm_generic_payload& gp) {
    const IoExtension& io = io_of(gp);
    const Ps admitted = admit(id, io.bytes, io.write);
    const std::uint32_t bytes = io.bytes;
    const Ps submit_cost = us_to_ps(cal_.card_us_per_io * 0.5) + inline_backend_cost(bytes);
    const Ps complete_cost = us_to_ps(cal_.card_us_per_io * 0.5);
    ServiceThread* worker = worker_[static_cast<std::size_t>(id)];
    timeline_.at(admitted, [=, this, &gp] {
        worker->post(submit_cost, [=, this, &gp] {
            emu_backend(id, bytes, [=, this, &gp] {
                worker->post(complete_cost, [this, id, &gp] { finished_[static_cast<std::size_t>(id)].push_back(&gp); });
            });
        });
    });
}

void XenDom0::request(int id, tlm::tlm_generic_payload& gp) {
    const auto i = static_cast<std::size_t>(id);
    const std::size_t ring = first_ring_[i] + static_cast<std::size_t>(io_of(gp).slot % ring_count_[i]);
    rings_[ring].pending.push_back(&gp);
    if (host_ != nullptr) {
        push_on_host(ring);
    } else {
        push_to_ring(ring);
    }
}

// The next waiting request, now holding a ring slot; null when the ring is full or nothing waits.
tlm::tlm_generic_payload* XenDom0::take_slot(Ring& r) {
    if (r.inflight >= cal_.ring_slots || r.pending.empty()) return nullptr;
    tlm::tlm_generic_payload* gp = r.pending.front();
    r.pending.pop_front();
    ++r.inflight;
    if (Timeline::now() >= warmup_) {
        auto& st = instance(r.instance).stats();
        st.max_ring_inflight = std::max(st.max_ring_inflight, r.inflight);
    }
    return gp;
}

// blkfront puts requests on the ring while it has free slots; one notify covers every request
// pushed while blkback sleeps (the ring's req_event protocol).
void XenDom0::push_to_ring(std::size_t ring) {
    Ring& r = rings_[ring];
    const int id = r.instance;
    while (tlm::tlm_generic_payload* gp = take_slot(r)) {
        const bool asleep = !r.running && r.tasks.empty();
        if (!asleep || r.notify_in_flight) {
            r.tasks.push_back(Task{false, gp, false});
            continue;
        }
        // Event-channel send: a hypercall on the guest's vCPU, then the hop to dom0.
        r.notify_in_flight = true;
        instance(id).vcpus().submit(Job{us_to_ps(cal_.hypercall_us), Owner::Hypervisor, {}, [this, ring, gp] {
                                            timeline_.after(us_to_ps(cal_.evtchn_hop_us), [this, ring, gp] {
                                                rings_[ring].notify_in_flight = false;
                                                enqueue(ring, Task{false, gp, true});
                                            });
                                        }});
    }
}

void XenDom0::enqueue(std::size_t ring, Task task) {
    Ring& r = rings_[ring];
    // A woken thread finds the requests pushed while the notify travelled at the head of the ring.
    if (task.woke && !r.tasks.empty()) {
        r.tasks.push_front(task);
    } else {
        r.tasks.push_back(task);
    }
    run_thread(ring);
}

// One blkback thread per ring: once on a dom0 vCPU it works through what its ring has queued (up
// to xen_batch tasks) before it gives the vCPU up, as blkback's loop does; each task's effects
// happen when that task is done.
void XenDom0::run_thread(std::size_t ring) {
    Ring& r = rings_[ring];
    if (r.running || r.tasks.empty()) return;
    r.running = true;
    auto batch = std::make_shared<std::vector<Task>>();
    const auto limit = static_cast<std::size_t>(std::max(1, cal_.xen_batch));
    while (!r.tasks.empty() && batch->size() < limit) {
        batch->push_back(r.tasks.front());
        r.tasks.pop_front();
    }
    vcpus_.submit(Job{0, Owner::Dom0,
                      [this, ring, batch](Ps start, unsigned) {
                          Ps t = start;
                          for (const Task& task : *batch) {
                              t += task_cost(task, t);
                              timeline_.at(t, [this, ring, task] { after_task(ring, task); });
                          }
                          return t - start;
                      },
                      [this, ring] {
                          rings_[ring].running = false;
                          run_thread(ring);
                      }});
}

// The task's dom0 CPU time, including spinning for the grant lock. Unmap flushes the TLB of every
// dom0 vCPU that ran the backend within the window, one IPI each, while holding the lock.
Ps XenDom0::task_cost(const Task& task, Ps start) {
    const IoExtension& io = io_of(*task.gp);
    const double pages = pages_of(io.bytes);
    const double kib = io.bytes / 1024.0;
    Ps before = task.woke ? us_to_ps(cal_.dom0_wake_us) : 0;
    Ps after = 0;
    Ps hold = 0;
    bool locked = false;
    if (!task.complete) {
        before += us_to_ps(cal_.blkback_req_us);
        if (cal_.persistent_grants) {
            if (io.write) after += us_to_ps(cal_.copy_us_per_kib * kib);
        } else {
            before += us_to_ps(cal_.grant_map_us * pages);
            hold = us_to_ps(cal_.grant_lock_us);
            locked = true;
        }
    } else {
        after += us_to_ps(cal_.blkback_complete_us + cal_.hypercall_us);
        if (cal_.persistent_grants) {
            if (!io.write) before += us_to_ps(cal_.copy_us_per_kib * kib);
        } else {
            before += us_to_ps(cal_.grant_unmap_us * pages);
            const unsigned active = vcpus_.recently_active(us_to_ps(cal_.tlb_window_us));
            const unsigned others = active > 0 ? active - 1 : 0;
            hold = us_to_ps(cal_.grant_lock_us + cal_.tlb_ipi_us * others);
            locked = true;
        }
    }
    // On the emulator each instance has a dom0 process (and grant table) of its own: no lock to wait for.
    if (!locked || host_ != nullptr) return before + hold + after;
    const Ps acquire = grant_lock_.acquire(start + before, hold, Timeline::now());
    return (acquire - start) + hold + after;
}

void XenDom0::after_task(std::size_t ring, const Task& task) {
    tlm::tlm_generic_payload* gp = task.gp;
    const int id = rings_[ring].instance;
    if (!task.complete) {
        const Ps admitted = admit(id, io_of(*gp).bytes, io_of(*gp).write);
        timeline_.at(admitted + storage_latency(id), [this, ring, gp] { enqueue(ring, Task{true, gp, false}); });
        return;
    }
    // Response pushed and the guest notified: the hop back, then the upcall on the guest's vCPU,
    // where blkfront consumes the response and frees the slot.
    timeline_.after(us_to_ps(cal_.evtchn_hop_us), [this, ring, id, gp] {
        instance(id).vcpus().submit(Job{us_to_ps(cal_.xen_upcall_us), Owner::Guest, {}, [this, ring, id, gp] {
                                            --rings_[ring].inflight;
                                            respond(id, *gp);
                                            push_to_ring(ring);
                                        }});
    });
}

// The emulator's blkfront and blkback. Requests go onto the ring while it has slots; if the
// instance's dom0 thread sleeps, the guest's event-channel send is a VM exit handled in the vmm
// (on the guest's vCPU thread), which signals dom0's eventfd: the thread wakes through the host's
// scheduler and takes everything on the ring. An awake thread sees new requests before it sleeps
// (blkback's final check). Responses go onto the ring when its pass ends (blkback handles the
// backend's completion event in its next loop turn); the guest polls the ring for them, so the
// notify back does not delay them.
void XenDom0::push_on_host(std::size_t ring) {
    Ring& r = rings_[ring];
    const int id = r.instance;
    while (tlm::tlm_generic_payload* gp = take_slot(r)) {
        r.tasks.push_back(Task{false, gp, false});
    }
    if (r.tasks.empty()) return;
    if (!worker_[static_cast<std::size_t>(id)]->asleep()) {
        drain_on_host(ring);
        return;
    }
    if (r.notify_in_flight) return;
    r.notify_in_flight = true;
    instance(id).vcpus().submit(Job{us_to_ps(cal_.xen_exit_us), Owner::Hypervisor, {}, [this, ring] {
                                        rings_[ring].notify_in_flight = false;
                                        drain_on_host(ring, true);
                                    }});
}

void XenDom0::drain_on_host(std::size_t ring, bool from_exit) {
    Ring& r = rings_[ring];
    ServiceThread* thread = worker_[static_cast<std::size_t>(r.instance)];
    while (!r.tasks.empty()) {
        const Task task = r.tasks.front();
        r.tasks.pop_front();
        Ps cost = task_cost(task, Timeline::now());
        if (!task.complete) cost += inline_backend_cost(io_of(*task.gp).bytes);
        thread->post(cost, [this, ring, task] { after_task_on_host(ring, task); }, from_exit);
    }
}

void XenDom0::after_task_on_host(std::size_t ring, const Task& task) {
    tlm::tlm_generic_payload* gp = task.gp;
    const int id = rings_[ring].instance;
    if (!task.complete) {
        const Ps admitted = admit(id, io_of(*gp).bytes, io_of(*gp).write);
        auto backend = [this, ring, id, gp] {
            emu_backend(id, io_of(*gp).bytes, [this, ring, id, gp] {
                const Task done{true, gp, false};
                worker_[static_cast<std::size_t>(id)]->post(task_cost(done, Timeline::now()),
                                                            [this, ring, done] { after_task_on_host(ring, done); });
            });
        };
        // Admitted at once, the copy is done within the submission and its completion is blkback's
        // next task, before the thread can sleep; a later admission (the volume's limits) comes
        // back to it as an event.
        if (admitted <= Timeline::now()) {
            backend();
        } else {
            timeline_.at(admitted, std::move(backend));
        }
        return;
    }
    finished_[static_cast<std::size_t>(id)].push_back(gp);
}

// The pass is over: the responses go onto the ring (the guest polls it), freeing their slots for
// the requests blkfront holds back.
void XenDom0::respond_on_host(std::size_t instance) {
    std::vector<tlm::tlm_generic_payload*> done;
    done.swap(finished_[instance]);
    for (tlm::tlm_generic_payload* gp : done) {
        const auto i = static_cast<std::size_t>(io_of(*gp).instance);
        const std::size_t ring = first_ring_[i] + static_cast<std::size_t>(io_of(*gp).slot % ring_count_[i]);
        --rings_[ring].inflight;
        respond(static_cast<int>(i), *gp);
        push_on_host(ring);
    }
}

}  // namespace hostsim
