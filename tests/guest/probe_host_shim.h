// The host side of the probe's Xen frontend under test (probe_host_shim.c): C and C++.
#ifndef PROBE_HOST_SHIM_H
#define PROBE_HOST_SHIM_H

#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct shim_xen_fault {
    bool no_xen;  // xen_init fails, as without the Xen signature
};

// Fresh arena, Xen state and log; false if the arena cannot be mapped.
bool shim_reset(void);
void shim_set_faults(const struct shim_xen_fault* f);
// Everything the probe printed since shim_reset.
const char* shim_log(void);
// Sets a port pending and, if unmasked, runs 2-level delivery (an upcall bumps the counter).
void shim_raise(uint32_t port);
// Where xen_init put the xenstore ring and the grant table (0 before), and its frames.
uint64_t shim_store_gpa(void);
uint64_t shim_grant_base(void);
uint32_t shim_grant_frames(void);
// Called for every EVTCHNOP_send: implemented by the fake dom0.
void fake_dom0_kick(uint32_t port);
// The probe's own entry points and state.
int workload_xen_verify(int argc, char** argv);
int workload_xen_bench(int argc, char** argv);
extern uint64_t tsc_khz;

#ifdef __cplusplus
}
#endif

#endif
