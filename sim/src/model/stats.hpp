// Per-instance counters the model fills in during the measured window.
#pragma once

#include <cstdint>

#include "../histogram.hpp"
#include "../units.hpp"

namespace hostsim {

struct InstanceStats {
    Histogram latency;            // ns, issue to completion seen by the workload
    std::uint64_t ios = 0;
    std::uint64_t bytes = 0;
    Ps throttled = 0;             // time I/Os waited for the instance's EBS tokens
    int max_ring_inflight = 0;    // Xen: most requests on the shared ring at once
    int max_outstanding = 0;      // most I/Os the workload had issued and not seen complete
};

}  // namespace hostsim
