// Assembles one host (instances, the I/O path of the run's model) and simulates it.
#pragma once

#include "../config.hpp"
#include "../results.hpp"

namespace hostsim {

// Runs one simulation in this process. SystemC elaborates once per process, so callers that run
// several (sweeps, tests) run each in a child process (runner.hpp).
PointResult simulate(const RunConfig& run);

}  // namespace hostsim
