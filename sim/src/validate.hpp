// Held-out validation: the model's predictions for emulator configurations against what the
// emulator measured there (bench/compare writes both the calibration and the held-out points).
#pragma once

#include <string>

#include <common/error.hpp>

#include "scenario.hpp"

namespace hostsim {

// Reads a held-out file ({"scenario": base scenario path, "points": [{label, io_model, set:
// {pointer: value}, measured: {iops, p50_us, p99_us}}]}), simulates every point and prints the
// error per metric. Returns the report text; writes validation.csv into out_dir if not empty.
common::Result<std::string> validate(const std::string& heldout_path, const Overrides& overrides,
                                     const std::string& out_dir, int jobs);

}  // namespace hostsim
