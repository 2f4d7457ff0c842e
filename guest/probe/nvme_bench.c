/*
 * `nvme-bench rw=randread|randwrite|read|write bs=4096 qd=1..64[,qd...] seconds=S [ctrl=I]
 * [irq=0|1] [shadow=0|1]`: keeps qd commands in flight on one I/O queue pair for S seconds
 * and prints one `result:` line per queue depth (README.md). Latency is TSC time from the
 * doorbell (or shadow) update of a command's batch to the pass that sees its completion.
 * Polled by default; irq=1 sleeps on the MSI-X handler's counter (vector 1) instead.
 * Writes carry the nvme-verify pattern of their blocks, so the disk stays checkable.
 */
#include "bench.h"
#include "nvme.h"
#include "x86.h"

#define MAX_BS (1024u * 1024u)
#define STALL_US 5000000 /* no completion for this long: give up */

struct bench_cfg {
    struct bench_spec spec;
    uint64_t ctrl;
    struct nvme_opts opts;
};

struct run_state {
    uint64_t ios, errors, bytes;
    uint64_t start, last_completion;
    uint64_t irqs;
    uint64_t sq_mmio, sq_shadow_only, cq_mmio, cq_shadow_only; /* doorbell updates */
    bool stalled;
};

static struct nvme_ctrl ctrls[NVME_MAX_CTRLS];
static struct lat_hist hist;
static uint64_t submit_tsc[NVME_IO_ENTRIES_MAX];
static uint64_t slot_lba[NVME_IO_ENTRIES_MAX];
static bool in_flight[NVME_IO_ENTRIES_MAX];
static uint16_t free_cids[NVME_IO_ENTRIES_MAX];

static bool parse_other_arg(void* ctx, const char* key, const char* value, uint64_t n, bool num) {
    struct bench_cfg* cfg = ctx;
    (void)value;
    if (strcmp(key, "ctrl") == 0) {
        cfg->ctrl = n;
        return num && n < NVME_MAX_CTRLS;
    }
    if (strcmp(key, "irq") == 0) {
        cfg->opts.irq = n != 0;
        return num && n <= 1;
    }
    if (strcmp(key, "shadow") == 0) {
        cfg->opts.shadow = n != 0;
        return num && n <= 1;
    }
    return false;
}


/* Drains new completions; returns how many, or -1 on a corrupt completion. */
static int reap_all(struct nvme_ctrl* c, struct run_state* r, uint32_t* inflight, unsigned* nfree) {
    struct nvme_cqe e;
    int reaped = 0;
    uint64_t now = 0;
    while (nvme_io_reap(c, &e)) {
        if (reaped == 0) {
            now = rdtsc();
        }
        if (e.cid >= c->io.entries || !in_flight[e.cid]) {
            printk("nvme-bench: completion for unknown cid %u (sq_id=%u)\n", e.cid, e.sq_id);
            return -1;
        }
        uint16_t st = nvme_cqe_status(&e);
        if (st != 0) {
            if (r->errors++ == 0) {
                char why[80];
                nvme_status_str(st, why, sizeof(why));
                printk("nvme-bench: I/O error lba=%llu: %s\n", (unsigned long long)slot_lba[e.cid],
                       why);
            }
        } else {
            r->ios++;
            lat_hist_add(&hist, now - submit_tsc[e.cid]);
        }
        in_flight[e.cid] = false;
        free_cids[(*nfree)++] = e.cid;
        --*inflight;
        reaped++;
    }
    if (reaped > 0) {
        nvme_io_cq_release(c);
        r->last_completion = now;
    }
    return reaped;
}

static bool run_one(struct nvme_ctrl* c, const struct bench_cfg* cfg, uint32_t qd, uint8_t* bufs,
                    struct run_state* r) {
    lat_hist_clear(&hist);
    memset(in_flight, 0, sizeof(in_flight));
    memset(r, 0, sizeof(*r));
    uint32_t nblk = cfg->spec.bs >> c->lba_shift;
    uint64_t slots = c->blocks / nblk;
    bool writes = cfg->spec.rw == RANDWRITE || cfg->spec.rw == SEQWRITE;
    uint8_t opcode = writes ? NVME_CMD_WRITE : NVME_CMD_READ;
    uint64_t rng = 0x9E3779B97F4A7C15ull ^ ((uint64_t)qd << 32) ^ c->index;
    uint64_t seq = 0;
    unsigned nfree = 0;
    for (uint32_t i = qd; i > 0; i--) {
        free_cids[nfree++] = (uint16_t)(i - 1);
    }
    uint32_t inflight = 0;
    uint64_t irq0 = __atomic_load_n(&msi_count[1], __ATOMIC_ACQUIRE);
    const struct nvme_queue* q = &c->io;
    uint64_t sq0 = q->mmio_sq_rings, sqs0 = q->shadow_sq_skips;
    uint64_t cq0 = q->mmio_cq_rings, cqs0 = q->shadow_cq_skips;
    uint64_t stall = tsc_cycles_from_us(STALL_US);
    r->start = rdtsc();
    uint64_t end = r->start + cfg->spec.seconds * tsc_khz * 1000;
    uint64_t progress = r->start;
    for (;;) {
        uint64_t now = rdtsc();
        if (now < end && nfree > 0) {
            static uint16_t batch[NVME_IO_ENTRIES_MAX];
            unsigned nb = 0;
            while (nfree > 0) {
                uint16_t cid = free_cids[--nfree];
                uint8_t* buf = bufs + (uint64_t)cid * cfg->spec.bs;
                uint64_t lba = bench_next_slot(cfg->spec.rw, slots, &rng, &seq) * nblk;
                if (writes) {
                    for (uint32_t k = 0; k < nblk; k++) {
                        nvme_pattern_fill(buf + ((uint64_t)k << c->lba_shift), c->block_size,
                                          c->index, lba + k);
                    }
                }
                if (!nvme_io_push(c, cid, opcode, lba, nblk, buf, cfg->spec.bs)) {
                    printk("nvme-bench: cannot queue cid %u\n", cid);
                    return false;
                }
                slot_lba[cid] = lba;
                in_flight[cid] = true;
                inflight++;
                batch[nb++] = cid;
            }
            uint64_t t = rdtsc();
            for (unsigned k = 0; k < nb; k++) {
                submit_tsc[batch[k]] = t;
            }
            nvme_io_kick(c);
        } else if (now >= end && inflight == 0) {
            break;
        }
        uint64_t irq_seen = __atomic_load_n(&msi_count[1], __ATOMIC_ACQUIRE);
        int got = reap_all(c, r, &inflight, &nfree);
        if (got < 0) {
            return false;
        }
        if (got > 0) {
            progress = rdtsc();
            continue;
        }
        if (rdtsc() - progress > stall) {
            printk("nvme-bench: no completion for %u ms with %u commands in flight\n",
                   STALL_US / 1000, inflight);
            r->stalled = true;
            return false;
        }
        if (c->irq) {
            /* Sleep on the handler's counter; a completion that raced the drain above has
             * already moved it past irq_seen. */
            while (__atomic_load_n(&msi_count[1], __ATOMIC_ACQUIRE) == irq_seen &&
                   rdtsc() - progress <= stall) {
                cpu_relax();
            }
        } else {
            cpu_relax();
        }
    }
    r->irqs = __atomic_load_n(&msi_count[1], __ATOMIC_ACQUIRE) - irq0;
    r->bytes = r->ios * cfg->spec.bs;
    r->sq_mmio = q->mmio_sq_rings - sq0;
    r->sq_shadow_only = q->shadow_sq_skips - sqs0;
    r->cq_mmio = q->mmio_cq_rings - cq0;
    r->cq_shadow_only = q->shadow_cq_skips - cqs0;
    return r->errors == 0;
}

static void report(const struct nvme_ctrl* c, const struct bench_cfg* cfg, uint32_t qd,
                   const struct run_state* r, bool ok) {
    uint64_t us = bench_print_result("nvme-bench", bench_rw_names[cfg->spec.rw], cfg->spec.bs, qd, r->ios,
                                     r->start, r->last_completion, &hist);
    printk(
        "nvme-bench: ctrl %u %s ios=%llu errors=%llu elapsed_ms=%llu irq=%d shadow=%d "
        "irqs=%llu sq_mmio=%llu sq_shadow_only=%llu cq_mmio=%llu cq_shadow_only=%llu "
        "p999_us=%llu\n",
        c->index, ok ? "ok" : "FAIL", (unsigned long long)r->ios, (unsigned long long)r->errors,
        (unsigned long long)(us / 1000), c->irq, c->shadow, (unsigned long long)r->irqs,
        (unsigned long long)r->sq_mmio, (unsigned long long)r->sq_shadow_only,
        (unsigned long long)r->cq_mmio, (unsigned long long)r->cq_shadow_only,
        (unsigned long long)lat_hist_percentile_us(&hist, 999));
}

int workload_nvme_bench(int argc, char** argv) {
    struct bench_cfg cfg = {.spec = {.rw = RANDREAD, .bs = 4096, .qds = {1}, .n_qds = 1, .seconds = 5},
                            .ctrl = 0,
                            .opts = {.irq = false, .shadow = true}};
    if (!bench_parse_args(argc, argv, "nvme-bench", &cfg.spec, MAX_BS, NVME_QD_MAX, parse_other_arg, &cfg)) {
        printk(
            "nvme-bench: usage: nvme-bench rw=randread|randwrite|read|write bs=B qd=N[,N...] "
            "seconds=S [ctrl=I] [irq=0|1] [shadow=0|1]\n");
        return 2;
    }
    tsc_calibrate();
    unsigned n = nvme_discover(ctrls, NVME_MAX_CTRLS);
    if (n == 0) {
        printk("nvme-bench: no NVMe controller found\n");
        return 1;
    }
    if (cfg.ctrl >= n) {
        printk("nvme-bench: ctrl=%llu but only %u controllers\n", (unsigned long long)cfg.ctrl, n);
        return 2;
    }
    struct nvme_ctrl* c = &ctrls[cfg.ctrl];
    if (!nvme_init(c, &cfg.opts)) {
        printk("nvme-bench: ctrl %u bring-up failed\n", c->index);
        return 1;
    }
    if (cfg.spec.bs % c->block_size != 0 || cfg.spec.bs > c->max_xfer || cfg.spec.bs >> c->lba_shift > c->blocks) {
        printk("nvme-bench: bs=%u must be a multiple of %u, at most %u and within the namespace\n",
               cfg.spec.bs, c->block_size, c->max_xfer);
        nvme_shutdown(c);
        return 2;
    }
    uint8_t* bufs = ram_alloc((uint64_t)(c->io.entries - 1) * cfg.spec.bs, NVME_PAGE);
    if (bufs == NULL) {
        nvme_shutdown(c);
        return 1;
    }
    printk("nvme-bench: ctrl %u model='%s' blocks=%llu bs=%u tsc_khz=%llu\n", c->index, c->model,
           (unsigned long long)c->blocks, c->block_size, (unsigned long long)tsc_khz);
    bool all_ok = true;
    for (unsigned i = 0; i < cfg.spec.n_qds; i++) {
        uint32_t qd = cfg.spec.qds[i];
        if (qd > (uint32_t)c->io.entries - 1) {
            printk("nvme-bench: qd=%u above what a %u-entry queue holds; using %u\n", qd,
                   c->io.entries, c->io.entries - 1u);
            qd = c->io.entries - 1u;
        }
        struct run_state r;
        bool ok = run_one(c, &cfg, qd, bufs, &r);
        report(c, &cfg, qd, &r, ok);
        all_ok = all_ok && ok;
        if (!ok) {
            break; /* commands may still be in flight: no further runs on this queue */
        }
    }
    nvme_shutdown(c);
    return all_ok ? 0 : 1;
}
