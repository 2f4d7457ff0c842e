/*
 * Benchmark helpers shared by nvme-bench and xen-bench (bench.h).
 */
#include "bench.h"

void lat_hist_clear(struct lat_hist* h) {
    memset(h, 0, sizeof(*h));
}

static unsigned bucket_of(uint64_t v) {
    if (v < BENCH_SUBS) {
        return (unsigned)v;
    }
    unsigned msb = 63u - (unsigned)__builtin_clzll(v);
    unsigned shift = msb - BENCH_SUB_BITS;
    return (shift + 1) * BENCH_SUBS + (unsigned)((v >> shift) & (BENCH_SUBS - 1));
}

/* Middle of a bucket, in cycles. */
static uint64_t bucket_value(unsigned b) {
    if (b < BENCH_SUBS) {
        return b;
    }
    unsigned shift = b / BENCH_SUBS - 1;
    uint64_t low = (uint64_t)(BENCH_SUBS + b % BENCH_SUBS) << shift;
    return low + ((1ull << shift) >> 1);
}

void lat_hist_add(struct lat_hist* h, uint64_t cycles) {
    h->bucket[bucket_of(cycles)]++;
    h->total++;
}

static uint64_t cycles_to_us(uint64_t cycles) {
    return (cycles * 1000 + tsc_khz / 2) / tsc_khz;
}

uint64_t lat_hist_percentile_us(const struct lat_hist* h, unsigned permille) {
    uint64_t target = (h->total * permille + 999) / 1000;
    uint64_t seen = 0;
    for (unsigned b = 0; b < BENCH_HIST_BUCKETS; b++) {
        seen += h->bucket[b];
        if (seen >= target && seen > 0) {
            return cycles_to_us(bucket_value(b));
        }
    }
    return 0;
}

uint64_t bench_xorshift64(uint64_t* s) {
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *s = x;
    return x;
}

bool bench_parse_qds(const char* s, uint32_t* qds, unsigned* n_qds, uint32_t qd_max) {
    char word[16];
    *n_qds = 0;
    while (*s != '\0') {
        size_t n = 0;
        while (s[n] != '\0' && s[n] != ',' && n + 1 < sizeof(word)) {
            word[n] = s[n];
            n++;
        }
        word[n] = '\0';
        uint64_t qd;
        if (*n_qds == BENCH_MAX_QDS || !parse_u64(word, &qd) || qd < 1 || qd > qd_max) {
            return false;
        }
        qds[(*n_qds)++] = (uint32_t)qd;
        s += n;
        if (*s == ',') {
            s++;
        } else if (*s != '\0') {
            return false;
        }
    }
    return *n_qds > 0;
}

uint64_t bench_print_result(const char* workload, const char* rw, uint32_t bs, uint32_t qd,
                            uint64_t ios, uint64_t start, uint64_t last, const struct lat_hist* h) {
    uint64_t elapsed = last > start ? last - start : 1;
    uint64_t us = elapsed * 1000 / tsc_khz;
    us = us ? us : 1;
    uint64_t iops = ios * 1000000 / us;
    /* MiB/s with one decimal; KiB first keeps the products inside 64 bits. */
    uint64_t mbps10 = ((ios * bs / 1024) * 10000000 / 1024 + us / 2) / us;
    printk(
        "result: workload=%s rw=%s bs=%u qd=%u iops=%llu mbps=%llu.%llu p50_us=%llu "
        "p99_us=%llu\n",
        workload, rw, bs, qd, (unsigned long long)iops, (unsigned long long)(mbps10 / 10),
        (unsigned long long)(mbps10 % 10), (unsigned long long)lat_hist_percentile_us(h, 500),
        (unsigned long long)lat_hist_percentile_us(h, 990));
    return us;
}

const char* const bench_rw_names[4] = {"randread", "randwrite", "read", "write"};

static bool parse_spec_arg(struct bench_spec* spec, const char* key, const char* v, uint64_t n, bool num,
                           uint32_t max_bs, uint32_t max_qd, bool* taken) {
    *taken = true;
    if (strcmp(key, "rw") == 0) {
        for (unsigned k = 0; k < 4; k++) {
            if (strcmp(v, bench_rw_names[k]) == 0) {
                spec->rw = (enum rw_kind)k;
                return true;
            }
        }
        return false;
    }
    if (strcmp(key, "bs") == 0) {
        spec->bs = (uint32_t)n;
        return num && n >= 512 && n <= max_bs && (n & 511) == 0;
    }
    if (strcmp(key, "qd") == 0) {
        return bench_parse_qds(v, spec->qds, &spec->n_qds, max_qd);
    }
    if (strcmp(key, "seconds") == 0) {
        spec->seconds = n;
        return num && n >= 1 && n <= BENCH_MAX_SECONDS;
    }
    *taken = false;
    return false;
}

bool bench_parse_args(int argc, char** argv, const char* name, struct bench_spec* spec, uint32_t max_bs,
                      uint32_t max_qd, bench_other_arg other, void* ctx) {
    for (int i = 1; i < argc; i++) {
        char* a = argv[i];
        char* eq = a;
        while (*eq != '\0' && *eq != '=') {
            eq++;
        }
        bool ok = false;
        if (*eq == '=') {
            *eq = '\0';
            const char* v = eq + 1;
            uint64_t n = 0;
            bool num = parse_u64(v, &n);
            bool taken;
            ok = parse_spec_arg(spec, a, v, n, num, max_bs, max_qd, &taken);
            if (!taken) {
                ok = other(ctx, a, v, n, num);
            }
            *eq = '=';
        }
        if (!ok) {
            printk("%s: bad argument '%s'\n", name, a);
            return false;
        }
    }
    return true;
}

uint64_t bench_next_slot(enum rw_kind rw, uint64_t slots, uint64_t* rng, uint64_t* seq) {
    if (rw == RANDREAD || rw == RANDWRITE) {
        return bench_xorshift64(rng) % slots;
    }
    uint64_t slot = *seq;
    *seq = *seq + 1 == slots ? 0 : *seq + 1;
    return slot;
}
