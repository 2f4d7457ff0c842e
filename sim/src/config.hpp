// Typed configuration of one simulation run: the host, its instances and their workloads, and the
// per-I/O costs (calibration). Built and checked by scenario.cpp; the model only reads it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace hostsim {

enum class IoModel { Nitro, Xen };
enum class Rw { RandRead, RandWrite, Read, Write, RandRw };
enum class Volume { Ebs, InstanceStore, Ram };

const char* to_string(IoModel m);

// Per-I/O costs and latencies. Defaults are published or order-of-magnitude figures;
// bench/compare/calibration.json replaces them with values measured on the emulator.
struct Calibration {
    std::string source = "published defaults";
    // Guest driver, both models.
    double guest_submit_us = 1.0;     // building the command and queueing it (guest vCPU)
    double guest_complete_us = 1.0;   // completion handling (guest vCPU)
    double guest_irq_us = 1.5;        // interrupt entry and exit when completions are not polled
    // Nitro card.
    double nitro_notify_us = 1.0;     // waking an idle card worker (doorbell or backend completion), median
    double nitro_notify_p99_us = 0.0; // its 99th percentile (log-normal); <= the median: fixed
    double card_poll_us = 0.0;        // the worker stays awake (polls) this long after its last job
    double card_poll_backoff_us = 100000.0;  // emulator: it stops polling this long after it lost its CPU while polling
    double card_lost_cpu_per_s = 0.0; // emulator: how often a polling worker loses its CPU to the rest of the machine
    // The emulator's host (card_on_host, HostCpus): its scheduler and the threads it runs.
    double host_wake_us = 5.0;        // mean latency of a woken thread to run on an idle CPU
    double host_preempt_us = 50.0;    // mean delay before a woken thread preempts a busy-polling vCPU thread
    double host_switch_us = 0.0;      // mean time a vCPU thread given its CPU back takes to be in its guest again
    double host_wake_shape = 1.0;     // Erlang shape of the wake-up and the way back (1: exponential; rounded)
    double host_preempt_shape = 1.0;  // Erlang shape of the preemption delay
    double host_slice_us = 4000.0;    // a thread that runs this long while others wait for a CPU is preempted
    double backend_thread = 0.0;      // 1: the backend's I/O runs on a kernel worker thread (io_uring's io-wq), 0: in the worker
    double xen_exit_us = 10.0;        // the guest's event-channel send as a VM exit handled in the vmm
    double card_us_per_io = 1.5;      // card CPU per I/O (submission + completion)
    double card_us_per_kib = 0.02;    // card CPU per KiB moved
    double pcie_us = 1.0;             // PCIe round trip for the command and the completion
    double dma_gbps = 12.0;           // DMA bandwidth per transfer, GB/s
    double irq_us = 1.0;              // MSI-X to the guest vCPU
    double exits_per_io = 0.002;      // vmm exits per I/O (doorbells not absorbed by polling)
    double exit_us = 5.0;             // cost of one exit handled in the vmm (host core)
    // Xen split driver (blkfront/blkback).
    int ring_slots = 32;              // single-page blkif ring
    int xen_batch = 32;               // blkback tasks done per turn on a dom0 vCPU
    int xen_max_rings = 1;            // blkfront multi-queue: rings per device (one per vCPU, at most this)
    double evtchn_hop_us = 3.0;       // event-channel send through the hypervisor to the other side
    double hypercall_us = 0.7;        // one hypercall (event-channel send, grant op entry)
    double grant_setup_us = 0.2;      // frontend grant-table entry per page
    double blkback_req_us = 1.2;      // blkback per request: ring parse, bio build and submit
    double blkback_complete_us = 1.0; // blkback per response: ring push
    double grant_map_us = 1.0;        // map per page (hypercall body)
    double grant_unmap_us = 1.0;      // unmap per page (hypercall body)
    double grant_lock_us = 0.30;      // grant-table lock hold per map/unmap batch (serialises dom0)
    double tlb_ipi_us = 0.15;         // per dom0 vCPU flushed on unmap, inside the lock
    double tlb_window_us = 1000.0;    // a dom0 vCPU that ran blkback within this window is flushed
    double copy_us_per_kib = 0.1;     // persistent grants: copy cost per KiB
    bool persistent_grants = false;
    double dom0_wake_us = 2.0;        // waking an idle blkback thread (its own CPU: the sleep and the wake-up)
    double xen_upcall_us = 1.5;       // event-channel upcall in the guest
    // Backend storage latency when a volume kind does not give its own.
    double ram_latency_us = 1.0;
};

struct StorageLatency {
    double median_us = 0.0;
    double p99_us = 0.0;
};

struct Workload {
    Rw rw = Rw::RandRead;
    int read_pct = 100;             // for RandRw
    std::uint32_t bs = 4096;
    int qd = 1;
    double think_us = 0.0;          // pause after each completion before the slot issues again
    double rate_iops = 0.0;         // 0: closed loop; else issues are spaced to this rate
    double on_ms = 0.0;             // 0: always on; else on/off phases
    double off_ms = 0.0;
    double start_ms = 0.0;
    bool poll = false;              // completions polled by the guest (no interrupt)
};

struct InstanceType {
    std::string name;
    int vcpus = 2;
    std::uint64_t ebs_iops_base = 0, ebs_iops_max = 0;  // 0: no limit
    double ebs_mbps_base = 0, ebs_mbps_max = 0;         // megabits per second; 0: no limit
    std::uint64_t store_read_iops = 0, store_write_iops = 0;  // instance-store NVMe capacity; 0: none
};

struct InstanceConfig {
    std::string group;              // the scenario's group name
    int index = 0;                  // within the group
    InstanceType type;
    Volume volume = Volume::Ebs;
    bool burst_credits = true;      // EBS burst bucket full at start
    bool limits = true;             // apply the type's EBS limits
    Workload workload;
};

struct HostConfig {
    int threads = 96;               // hardware threads
    int dom0_vcpus = 8;             // Xen: dom0 vCPUs, pinned to their own threads
    int card_cores = 8;             // Nitro: the card's cores (not host cores)
    bool card_on_host = false;      // the card's threads run on host threads (the emulator)
    bool pin_instances = false;     // card_on_host: each instance and its I/O threads keep to their
                                    // own share of the CPUs (HostCpus::instance_cpus)
};

struct RunConfig {
    std::string name;
    IoModel io_model = IoModel::Nitro;
    HostConfig host;
    double duration_s = 1.0;
    double warmup_s = 0.1;
    std::uint64_t seed = 1;
    StorageLatency ebs{300.0, 900.0};
    StorageLatency instance_store{80.0, 250.0};
    Calibration cal;
    std::vector<InstanceConfig> instances;
};

}  // namespace hostsim
