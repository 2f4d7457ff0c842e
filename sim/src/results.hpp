// What one simulated run reports, and its text forms (table, CSV rows, JSON for the fork pipe).
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace hostsim {

struct InstanceResult {
    std::string name, group, type, volume;
    double iops = 0, mbps = 0, p50_us = 0, p99_us = 0, p999_us = 0, mean_us = 0, throttled_s = 0;
    std::uint64_t ios = 0;
    int max_ring = 0, max_outstanding = 0;
};

struct GroupResult {
    std::string group;
    int count = 0;
    double iops_total = 0, iops_mean = 0, mbps_total = 0, p50_us = 0, p99_us = 0, p999_us = 0, throttled_s = 0;
};

struct HostResult {
    std::string io_model;
    int threads = 0, dom0_vcpus = 0, card_cores = 0, guest_vcpus = 0;
    double measured_s = 0;
    // CPU seconds in the measured window by owner: guest (I/O driver work), hypervisor (vmm exits,
    // hypercalls on guest cores), dom0, card (the card's own cores, not the host's).
    double cpu_guest_s = 0, cpu_hypervisor_s = 0, cpu_dom0_s = 0, cpu_card_s = 0;
    double dom0_util = 0, card_util = 0;   // busy fraction of dom0's vCPUs / the card's cores
    double cores_for_io = 0;               // host threads taken by I/O handling (dom0 reserved + hypervisor)
    double guest_core_share = 0;           // share of host threads left to guests
    double total_iops = 0, total_mbps = 0;
    double wall_s = 0, ios_per_wall_s = 0;
    std::uint64_t simulated_ios = 0;
};

struct PointResult {
    std::string scenario;
    std::string sweep_label;   // empty when the scenario has no sweep
    double sweep_value = 0;
    HostResult host;
    std::vector<GroupResult> groups;
    std::vector<InstanceResult> instances;
};

nlohmann::json to_json(const PointResult& r);
PointResult point_from_json(const nlohmann::json& j);

// Human-readable table of one point (per-instance rows are grouped beyond `max_rows`).
std::string format_table(const PointResult& r, std::size_t max_rows = 24);
// A sweep's summary: one line per point and I/O model.
std::string format_sweep(const std::vector<PointResult>& points);

// CSV files into dir: instances.csv, groups.csv, host.csv (one row per point and model).
void write_csv(const std::string& dir, const std::vector<PointResult>& points);

}  // namespace hostsim
