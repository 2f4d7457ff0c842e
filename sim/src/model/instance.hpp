// An instance: its vCPUs (a processor pool) and a fio-like workload that keeps up to `qd` I/Os
// outstanding. It is a TLM-2.0 initiator: each I/O is a generic payload sent with BEGIN_REQ to
// the host's I/O path, which answers with BEGIN_RESP when the completion reaches the guest.
#pragma once

#include <systemc>
#include <tlm>
#include <tlm_utils/simple_initiator_socket.h>

#include <memory>
#include <vector>

#include "../config.hpp"
#include "../rng.hpp"
#include "cpu_pool.hpp"
#include "host_cpus.hpp"
#include "request.hpp"
#include "stats.hpp"

namespace hostsim {

class Instance final : public sc_core::sc_module {
public:
    tlm_utils::simple_initiator_socket<Instance> socket;

    // id: the instance's index on the host. host: the emulator's shared CPUs (card_on_host), where
    // the instance's vCPU thread runs only while the scheduler lets it; null on a full host
    // (vCPUs pinned, one host thread each).
    Instance(const sc_core::sc_module_name& name, int id, const InstanceConfig& cfg, const RunConfig& run,
             std::uint64_t seed, HostCpus* host);

    CpuPool& vcpus() { return vcpus_; }
    Timeline& timeline() { return timeline_; }
    InstanceStats& stats() { return stats_; }
    const InstanceConfig& config() const { return cfg_; }

private:
    void start_of_simulation() override;
    void issue(int slot);
    void send(int slot);
    tlm::tlm_sync_enum nb_transport_bw(tlm::tlm_generic_payload& gp, tlm::tlm_phase& phase, sc_core::sc_time& delay);
    void completed(tlm::tlm_generic_payload& gp);
    void forward(tlm::tlm_generic_payload& gp);  // to the I/O path
    void ring_when_idle();                        // the batch, once the vCPU has nothing queued

    int id_;
    InstanceConfig cfg_;
    IoModel model_;
    const Calibration& cal_;
    Timeline timeline_;
    Rng rng_;
    Ps warmup_, end_;
    CpuPool vcpus_;
    std::vector<std::unique_ptr<tlm::tlm_generic_payload>> payloads_;
    Ps next_rate_slot_ = 0;
    std::uint64_t seq_offset_ = 0;
    double exit_credit_ = 0.0;
    int outstanding_ = 0;
    bool batch_sends_ = false;                       // polled probe on the emulator's host
    std::vector<tlm::tlm_generic_payload*> batch_;  // queued, not yet rung
    InstanceStats stats_;
};

}  // namespace hostsim
