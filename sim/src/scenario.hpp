// Scenario files (configs/scenarios/*.json): parsed into typed runs and checked against the schema
// below; every error names the file and the JSON pointer of the offending value.
//
// Top level: name (string, required), description, io_model ("nitro" | "xen" | a list of them),
// host {threads, dom0_vcpus, card_cores, card_on_host, pin_instances}, duration_s, warmup_s, seed,
// calibration (path, relative to the scenario file), calibration_overrides {param: value},
// types (path of the instance-type table, default instance-types.json beside the scenario),
// storage {ebs|instance_store: {median_us, p99_us}}, instances [ {group, type, count, volume
// ("ebs" | "instance-store" | "ram"), burst_credits, limits, workload {rw, read_pct, bs, qd,
// think_us, rate_iops, on_ms, off_ms, start_ms, poll}} ], sweep {label, path (JSON pointer), values}.
#pragma once

#include <string>
#include <vector>

#include <common/error.hpp>
#include <nlohmann/json.hpp>

#include "config.hpp"

namespace hostsim {

struct PlannedRun {
    RunConfig config;
    std::string sweep_label;
    double sweep_value = 0;
};

struct Overrides {
    double duration_s = 0;            // 0: the scenario's
    std::string calibration;          // empty: the scenario's
    bool seed_set = false;
    std::uint64_t seed = 0;
    // The instance-type table used when a scenario names none and has no instance-types.json
    // beside it (hostsim passes configs/scenarios/instance-types.json of its source tree).
    std::string default_types;
};

// Reads and checks a scenario; expands its sweep and I/O-model list into runs.
common::Result<std::vector<PlannedRun>> load_scenario(const std::string& path, const Overrides& overrides = {});

// The same from an already parsed document; base_dir resolves relative paths, origin names the
// source in errors.
common::Result<std::vector<PlannedRun>> plan_scenario(const nlohmann::json& doc, const std::string& base_dir,
                                                      const std::string& origin, const Overrides& overrides = {});

// A calibration file: {"source": "...", "params": {name: value}}; unknown names are errors.
common::Result<Calibration> load_calibration(const std::string& path);
common::Status apply_calibration(const nlohmann::json& params, Calibration& cal, const std::string& where);

common::Result<nlohmann::json> read_json(const std::string& path);

}  // namespace hostsim
