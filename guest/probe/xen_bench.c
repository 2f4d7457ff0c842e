/*
 * `xen-bench rw=randread|randwrite|read|write bs=4096 qd=1..32[,qd...] seconds=S [disk=I]
 * [irq=0|1]`: nvme-bench through blkfront. Keeps qd requests in flight on one vbd's ring for S
 * seconds and prints one `result:` line per queue depth (bench.h), then the notifications: sent
 * to the backend (req_event said so), skipped (it did not), received (the port's pending bit,
 * found set), and upcalls. Polled by default; irq=1 unmasks the port and waits for the upcall
 * counter. Writes carry the nvme-verify pattern of their blocks (disk index as controller).
 */
#include "bench.h"
#include "nvme.h"
#include "x86.h"
#include "xen_blk.h"

#define STALL_US 5000000 /* no completion for this long: give up */

struct bench_cfg {
    struct bench_spec spec;
    uint64_t disk;
    bool irq;
};

struct run_state {
    uint64_t ios, errors;
    uint64_t start, last_completion;
    uint64_t sent, skipped, received, upcalls; /* during the run (baselines first) */
};

/* Turns the baselines taken at the start into counts for the run. */
static bool finish(const struct xblk_disk* d, struct run_state* r, bool ok) {
    r->sent = d->notify_sent - r->sent;
    r->skipped = d->notify_skipped - r->skipped;
    r->received = d->notify_received - r->received;
    r->upcalls = __atomic_load_n(&xen_upcall_count, __ATOMIC_ACQUIRE) - r->upcalls;
    return ok && r->errors == 0;
}

static struct xblk_disk disks[XBLK_MAX_DISKS];
static struct lat_hist hist;
static uint64_t submit_tsc[XBLK_RING_ENTRIES];
static uint64_t slot_sector[XBLK_RING_ENTRIES];
static bool in_flight[XBLK_RING_ENTRIES];

static bool parse_other_arg(void* ctx, const char* key, const char* value, uint64_t n, bool num) {
    struct bench_cfg* cfg = ctx;
    (void)value;
    if (strcmp(key, "disk") == 0) {
        cfg->disk = n;
        return num && n < XBLK_MAX_DISKS;
    }
    if (strcmp(key, "irq") == 0) {
        cfg->irq = n != 0;
        return num && n <= 1;
    }
    return false;
}


/* Drains responses; returns how many, or -1 on one that cannot be ours. */
static int reap_all(struct xblk_disk* d, uint8_t op, struct run_state* r, uint32_t* inflight,
                    uint32_t* free_slots, uint32_t* nfree) {
    struct blkif_response rsp;
    bool bad = false;
    int reaped = 0;
    uint64_t now = 0;
    while (xblk_reap(d, &rsp, &bad)) {
        if (reaped == 0) {
            now = rdtsc();
        }
        if (bad || !in_flight[rsp.id] || rsp.operation != op) {
            printk("xen-bench: disk %u unexpected response id=%llu op=%u\n", d->index,
                   (unsigned long long)rsp.id, rsp.operation);
            return -1;
        }
        if (rsp.status != BLKIF_RSP_OKAY) {
            if (r->errors++ == 0) {
                printk("xen-bench: disk %u I/O error %s sector=%llu status=%d\n", d->index,
                       xblk_op_name(op), (unsigned long long)slot_sector[rsp.id], rsp.status);
            }
        } else {
            r->ios++;
            lat_hist_add(&hist, now - submit_tsc[rsp.id]);
        }
        in_flight[rsp.id] = false;
        free_slots[(*nfree)++] = (uint32_t)rsp.id;
        --*inflight;
        reaped++;
    }
    if (bad) {
        return -1;
    }
    if (reaped > 0) {
        r->last_completion = now;
    }
    return reaped;
}

static bool run_one(struct xblk_disk* d, const struct bench_cfg* cfg, uint32_t qd,
                    struct run_state* r) {
    lat_hist_clear(&hist);
    memset(in_flight, 0, sizeof(in_flight));
    memset(r, 0, sizeof(*r));
    uint32_t blocks_per_io = cfg->spec.bs / d->sector_size;
    uint64_t slots = d->sectors / (cfg->spec.bs / XBLK_SECTOR);
    bool writes = cfg->spec.rw == RANDWRITE || cfg->spec.rw == SEQWRITE;
    uint8_t op = writes ? BLKIF_OP_WRITE : BLKIF_OP_READ;
    uint64_t rng = 0x9E3779B97F4A7C15ull ^ ((uint64_t)qd << 32) ^ d->index;
    uint64_t seq = 0;
    uint32_t free_slots[XBLK_RING_ENTRIES];
    uint32_t nfree = 0;
    for (uint32_t i = qd; i > 0; i--) {
        free_slots[nfree++] = i - 1;
    }
    uint32_t inflight = 0;
    r->sent = d->notify_sent;
    r->skipped = d->notify_skipped;
    r->received = d->notify_received;
    r->upcalls = __atomic_load_n(&xen_upcall_count, __ATOMIC_ACQUIRE);
    uint64_t stall = tsc_cycles_from_us(STALL_US);
    r->start = rdtsc();
    uint64_t end = r->start + cfg->spec.seconds * tsc_khz * 1000;
    uint64_t progress = r->start;
    for (;;) {
        uint64_t now = rdtsc();
        if (now < end && nfree > 0) {
            uint32_t batch[XBLK_RING_ENTRIES];
            uint32_t nb = 0;
            while (nfree > 0) {
                uint32_t s = free_slots[--nfree];
                uint8_t* buf = xblk_slot_buf(d, s);
                uint64_t sector = bench_next_slot(cfg->spec.rw, slots, &rng, &seq) * (cfg->spec.bs / XBLK_SECTOR);
                if (writes) {
                    uint64_t lba = sector / (d->sector_size / XBLK_SECTOR);
                    for (uint32_t k = 0; k < blocks_per_io; k++) {
                        nvme_pattern_fill(buf + (uint64_t)k * d->sector_size, d->sector_size,
                                          d->index, lba + k);
                    }
                }
                if (!xblk_queue(d, s, op, sector, 0, cfg->spec.bs)) {
                    return finish(d, r, false);
                }
                slot_sector[s] = sector;
                in_flight[s] = true;
                inflight++;
                batch[nb++] = s;
            }
            uint64_t t = rdtsc();
            for (uint32_t k = 0; k < nb; k++) {
                submit_tsc[batch[k]] = t;
            }
            xblk_kick(d);
        } else if (now >= end && inflight == 0) {
            break;
        }
        uint64_t seen = __atomic_load_n(&xen_upcall_count, __ATOMIC_ACQUIRE);
        xblk_collect_events(d);
        int got = reap_all(d, op, r, &inflight, free_slots, &nfree);
        if (got < 0) {
            return finish(d, r, false);
        }
        if (got > 0 || xblk_final_check(d)) {
            progress = rdtsc();
            continue;
        }
        if (rdtsc() - progress > stall) {
            printk("xen-bench: disk %u no response for %u ms with %u requests in flight "
                   "(req_prod=%u rsp_prod=%u req_event=%u rsp_event=%u)\n",
                   d->index, STALL_US / 1000, inflight, d->sring->req_prod, d->sring->rsp_prod,
                   d->sring->req_event, d->sring->rsp_event);
            return finish(d, r, false);
        }
        xblk_wait(d, seen, progress + stall);
    }
    return finish(d, r, true);
}

static void report(const struct xblk_disk* d, const struct bench_cfg* cfg, uint32_t qd,
                   const struct run_state* r, bool ok) {
    uint64_t us = bench_print_result("xen-bench", bench_rw_names[cfg->spec.rw], cfg->spec.bs, qd, r->ios, r->start,
                                     r->last_completion, &hist);
    printk(
        "xen-bench: disk %u %s ios=%llu errors=%llu elapsed_ms=%llu irq=%d notify_sent=%llu "
        "notify_skipped=%llu notify_received=%llu upcalls=%llu p999_us=%llu\n",
        d->index, ok ? "ok" : "FAIL", (unsigned long long)r->ios, (unsigned long long)r->errors,
        (unsigned long long)(us / 1000), d->irq, (unsigned long long)r->sent,
        (unsigned long long)r->skipped, (unsigned long long)r->received,
        (unsigned long long)r->upcalls, (unsigned long long)lat_hist_percentile_us(&hist, 999));
}

int workload_xen_bench(int argc, char** argv) {
    struct bench_cfg cfg = {
        .spec = {.rw = RANDREAD, .bs = 4096, .qds = {1}, .n_qds = 1, .seconds = 5}, .disk = 0, .irq = false};
    if (!bench_parse_args(argc, argv, "xen-bench", &cfg.spec, XBLK_MAX_SLOT_BYTES, XBLK_RING_ENTRIES, parse_other_arg,
                          &cfg)) {
        printk(
            "xen-bench: usage: xen-bench rw=randread|randwrite|read|write bs=B qd=N[,N...] "
            "seconds=S [disk=I] [irq=0|1]\n");
        return 2;
    }
    tsc_calibrate();
    if (!xen_init()) {
        printk("xen-bench: Xen set-up failed\n");
        return 1;
    }
    unsigned n = xblk_discover(disks, XBLK_MAX_DISKS);
    if (n == 0) {
        printk("xen-bench: no vbd under device/vbd\n");
        return 1;
    }
    if (cfg.disk >= n) {
        printk("xen-bench: disk=%llu but only %u vbds\n", (unsigned long long)cfg.disk, n);
        return 2;
    }
    struct xblk_disk* d = &disks[cfg.disk];
    if (!xblk_connect(d, cfg.irq)) {
        printk("xen-bench: disk %u bring-up failed\n", d->index);
        return 1;
    }
    if (cfg.spec.bs % d->sector_size != 0 || cfg.spec.bs / XBLK_SECTOR > d->sectors) {
        printk("xen-bench: bs=%u must be a multiple of %u and within the disk\n", cfg.spec.bs,
               d->sector_size);
        xblk_close(d);
        return 2;
    }
    uint32_t max_qd = 1;
    for (unsigned i = 0; i < cfg.spec.n_qds; i++) {
        max_qd = cfg.spec.qds[i] > max_qd ? cfg.spec.qds[i] : max_qd;
    }
    uint32_t slot_bytes = (cfg.spec.bs + XEN_PAGE - 1) / XEN_PAGE * XEN_PAGE;
    if (!xblk_setup_slots(d, max_qd, slot_bytes)) {
        xblk_close(d);
        return 1;
    }
    printk("xen-bench: disk %u vbd=%u sectors=%llu sector_size=%u tsc_khz=%llu\n", d->index,
           d->vdev, (unsigned long long)d->sectors, d->sector_size, (unsigned long long)tsc_khz);
    bool all_ok = true;
    for (unsigned i = 0; i < cfg.spec.n_qds; i++) {
        struct run_state r;
        bool ok = run_one(d, &cfg, cfg.spec.qds[i], &r);
        report(d, &cfg, cfg.spec.qds[i], &r, ok);
        all_ok = all_ok && ok;
        if (!ok) {
            break; /* requests may still be in flight: no further runs on this ring */
        }
    }
    if (all_ok) {
        xblk_close(d);
    }
    return all_ok ? 0 : 1;
}
