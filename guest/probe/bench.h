/*
 * Shared by the benchmarks (nvme_bench.c, xen_bench.c): the latency histogram, the random
 * offsets, the queue-depth list and the one `result:` line format (README.md).
 */
#ifndef PROBE_BENCH_H
#define PROBE_BENCH_H

#include "probe.h"

/* Log-linear latency histogram over TSC cycles: 32 linear steps per power of two (<= 3 %). */
#define BENCH_SUB_BITS 5
#define BENCH_SUBS (1u << BENCH_SUB_BITS)
#define BENCH_HIST_BUCKETS (64u * BENCH_SUBS)
#define BENCH_MAX_QDS 8

struct lat_hist {
    uint32_t bucket[BENCH_HIST_BUCKETS];
    uint64_t total;
};

void lat_hist_clear(struct lat_hist* h);
void lat_hist_add(struct lat_hist* h, uint64_t cycles);
/* The permille-th percentile in microseconds (bucket middle), 0 when empty. */
uint64_t lat_hist_percentile_us(const struct lat_hist* h, unsigned permille);

uint64_t bench_xorshift64(uint64_t* state);
/* "1,8,32": up to BENCH_MAX_QDS depths, each 1..qd_max. */
bool bench_parse_qds(const char* s, uint32_t* qds, unsigned* n, uint32_t qd_max);

/*
 * `result: workload=W rw=R bs=B qd=Q iops=N mbps=M.m p50_us=.. p99_us=..` from the I/Os counted
 * between TSC start and last (the last completion). Returns the elapsed microseconds (>= 1).
 */
uint64_t bench_print_result(const char* workload, const char* rw, uint32_t bs, uint32_t qd,
                            uint64_t ios, uint64_t start, uint64_t last, const struct lat_hist* h);

#endif /* PROBE_BENCH_H */
