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

/* What every block benchmark is told: access pattern, block size, queue depths, duration. */
enum rw_kind { RANDREAD, RANDWRITE, SEQREAD, SEQWRITE };
extern const char* const bench_rw_names[4];
#define BENCH_MAX_SECONDS 3600

struct bench_spec {
    enum rw_kind rw;
    uint32_t bs;
    uint32_t qds[BENCH_MAX_QDS];
    unsigned n_qds;
    uint64_t seconds;
};

/*
 * Parses `key=value` arguments: rw=, bs= (a multiple of 512, at most max_bs), qd= (each at most
 * max_qd) and seconds= into spec; any other key goes to other(ctx, key, value, n, num), where
 * num says whether value is a number n. Prints "<name>: bad argument '...'" and returns false
 * on the first argument that does not parse.
 */
typedef bool (*bench_other_arg)(void* ctx, const char* key, const char* value, uint64_t n, bool num);
bool bench_parse_args(int argc, char** argv, const char* name, struct bench_spec* spec, uint32_t max_bs,
                      uint32_t max_qd, bench_other_arg other, void* ctx);

/* The next slot (in units of bs) of `slots`: uniformly random, or sequential with wrap-around. */
uint64_t bench_next_slot(enum rw_kind rw, uint64_t slots, uint64_t* rng, uint64_t* seq);

/*
 * `result: workload=W rw=R bs=B qd=Q iops=N mbps=M.m p50_us=.. p99_us=..` from the I/Os counted
 * between TSC start and last (the last completion). Returns the elapsed microseconds (>= 1).
 */
uint64_t bench_print_result(const char* workload, const char* rw, uint32_t bs, uint32_t qd,
                            uint64_t ios, uint64_t start, uint64_t last, const struct lat_hist* h);

#endif /* PROBE_BENCH_H */
