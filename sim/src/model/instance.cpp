#include "instance.hpp"

#include <algorithm>
#include <cmath>

namespace hostsim {

Instance::Instance(const sc_core::sc_module_name& name, int id, const InstanceConfig& cfg, const RunConfig& run,
                   std::uint64_t seed, HostCpus* host)
    : sc_core::sc_module(name),
      socket("socket"),
      id_(id),
      cfg_(cfg),
      model_(run.io_model),
      cal_(run.cal),
      timeline_("timeline"),
      rng_(seed),
      warmup_(static_cast<Ps>(run.warmup_s * static_cast<double>(kPsPerS))),
      end_(static_cast<Ps>(run.duration_s * static_cast<double>(kPsPerS))),
      vcpus_(timeline_, static_cast<unsigned>(cfg.type.vcpus), warmup_) {
    if (host != nullptr) {
        batch_sends_ = cfg.workload.poll;
        const int thread = host->add_vcpu([this] { vcpus_.resume(); }, host->for_instance(id));
        vcpus_.set_gate([host, thread] { return host->vcpu_running(thread); });
    }
    socket.register_nb_transport_bw(this, &Instance::nb_transport_bw);
    for (int s = 0; s < cfg_.workload.qd; ++s) {
        auto gp = std::make_unique<tlm::tlm_generic_payload>();
        auto* ext = new IoExtension;
        ext->instance = id_;
        ext->slot = s;
        gp->set_extension(ext);  // the payload owns and deletes it
        gp->set_data_length(cfg_.workload.bs);
        gp->set_streaming_width(cfg_.workload.bs);
        payloads_.push_back(std::move(gp));
    }
}

void Instance::start_of_simulation() {
    const Ps start = us_to_ps(cfg_.workload.start_ms * 1000.0);
    for (int s = 0; s < cfg_.workload.qd; ++s) timeline_.at(start, [this, s] { issue(s); });
}

// Waits for the on phase and the rate, then sends.
void Instance::issue(int slot) {
    const Ps now = Timeline::now();
    if (now >= end_) return;
    const Workload& w = cfg_.workload;
    if (w.on_ms > 0.0 && w.off_ms > 0.0) {
        const Ps period = us_to_ps((w.on_ms + w.off_ms) * 1000.0);
        const Ps on = us_to_ps(w.on_ms * 1000.0);
        const Ps start = us_to_ps(w.start_ms * 1000.0);
        const Ps phase = (now - start) % period;
        if (phase >= on) {
            timeline_.at(now + (period - phase), [this, slot] { issue(slot); });
            return;
        }
    }
    if (w.rate_iops > 0.0) {
        const Ps t = std::max(now, next_rate_slot_);
        next_rate_slot_ = t + static_cast<Ps>(static_cast<double>(kPsPerS) / w.rate_iops);
        if (t > now) {
            timeline_.at(t, [this, slot] { send(slot); });
            return;
        }
    }
    send(slot);
}

void Instance::send(int slot) {
    const Ps now = Timeline::now();
    if (now >= end_) return;
    tlm::tlm_generic_payload& gp = *payloads_[static_cast<std::size_t>(slot)];
    IoExtension& io = io_of(gp);
    const Workload& w = cfg_.workload;
    io.issued = now;
    io.bytes = w.bs;
    switch (w.rw) {
        case Rw::RandRead: case Rw::Read: io.write = false; break;
        case Rw::RandWrite: case Rw::Write: io.write = true; break;
        case Rw::RandRw: io.write = rng_.below(100) >= static_cast<std::uint64_t>(w.read_pct); break;
    }
    // The offset does not change any cost in this model; it is kept for traces.
    const bool sequential = w.rw == Rw::Read || w.rw == Rw::Write;
    gp.set_address(sequential ? (seq_offset_ += w.bs) : rng_.below(1ULL << 30) * 4096);
    gp.set_command(io.write ? tlm::TLM_WRITE_COMMAND : tlm::TLM_READ_COMMAND);
    gp.set_response_status(tlm::TLM_INCOMPLETE_RESPONSE);
    ++outstanding_;
    if (now >= warmup_) stats_.max_outstanding = std::max(stats_.max_outstanding, outstanding_);

    Ps cost = us_to_ps(cal_.guest_submit_us);
    if (model_ == IoModel::Xen) cost += us_to_ps(cal_.grant_setup_us * pages_of(w.bs));
    vcpus_.submit(Job{cost, Owner::Guest, {}, [this, &gp] {
                          // The probe on the emulator reaps every completion it finds, then
                          // queues the replacements and rings once: the commands reach the
                          // device together when its vCPU has nothing else queued.
                          if (batch_sends_) {
                              batch_.push_back(&gp);
                              ring_when_idle();
                              return;
                          }
                          forward(gp);
                      }});
    if (model_ == IoModel::Nitro) {
        // Doorbells the card's polling does not absorb exit to the vmm (on this vCPU's core).
        exit_credit_ += cal_.exits_per_io;
        if (exit_credit_ >= 1.0) {
            exit_credit_ -= 1.0;
            vcpus_.submit(Job{us_to_ps(cal_.exit_us), Owner::Hypervisor, {}, [this] { ring_when_idle(); }});
        }
    }
}

void Instance::ring_when_idle() {
    if (batch_.empty() || vcpus_.running() > 0 || vcpus_.waiting() > 0) return;
    std::vector<tlm::tlm_generic_payload*> batch;
    batch.swap(batch_);
    for (tlm::tlm_generic_payload* p : batch) forward(*p);
}

void Instance::forward(tlm::tlm_generic_payload& gp) {
    tlm::tlm_phase phase = tlm::BEGIN_REQ;
    sc_core::sc_time delay = sc_core::SC_ZERO_TIME;
    socket->nb_transport_fw(gp, phase, delay);
}

tlm::tlm_sync_enum Instance::nb_transport_bw(tlm::tlm_generic_payload& gp, tlm::tlm_phase& phase, sc_core::sc_time&) {
    if (phase != tlm::BEGIN_RESP) return tlm::TLM_ACCEPTED;
    Ps cost = us_to_ps(cal_.guest_complete_us);
    if (model_ == IoModel::Nitro && !cfg_.workload.poll) cost += us_to_ps(cal_.guest_irq_us);
    vcpus_.submit(Job{cost, Owner::Guest, {}, [this, &gp] { completed(gp); }});
    phase = tlm::END_RESP;
    return tlm::TLM_COMPLETED;
}

void Instance::completed(tlm::tlm_generic_payload& gp) {
    const Ps now = Timeline::now();
    IoExtension& io = io_of(gp);
    --outstanding_;
    if (io.issued >= warmup_ && now < end_) {
        ++stats_.ios;
        stats_.bytes += io.bytes;
        stats_.latency.add(static_cast<std::uint64_t>((now - io.issued) / 1000));
    }
    const int slot = io.slot;
    const Ps think = us_to_ps(cfg_.workload.think_us);
    if (think > 0) {
        timeline_.at(now + think, [this, slot] { issue(slot); });
    } else {
        issue(slot);
    }
}

}  // namespace hostsim
