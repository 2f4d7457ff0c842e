// Runs simulations in child processes: SystemC elaborates a design once per process, so each
// point of a sweep (and each test that simulates) gets a fresh process. Results come back as JSON
// over a pipe.
#pragma once

#include <functional>
#include <vector>

#include <common/error.hpp>

#include "results.hpp"
#include "scenario.hpp"

namespace hostsim {

// Runs `runs` with at most `jobs` children at a time; results in the order of `runs`.
common::Result<std::vector<PointResult>> run_all(const std::vector<PlannedRun>& runs, int jobs);

// Runs fn in a child process and returns what it returned (JSON), for tests and tools.
common::Result<nlohmann::json> run_isolated(const std::function<nlohmann::json()>& fn);

}  // namespace hostsim
