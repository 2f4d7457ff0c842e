/*
 * `xen-verify [--blocks N] [irq=0|1]`: nvme-verify's checks through blkfront on every vbd. The
 * disk index plays the controller index in the pattern (nvme_pattern_fill), so a host checks the
 * backing files exactly as after nvme-verify. Per disk: the pattern over the whole disk (or its
 * first N blocks) in 44 KiB requests (11 full segments) with up to 8 in flight, a flush if the
 * backend offers it, everything read back into poisoned buffers and compared; then edge cases:
 * the last block, one block through a sub-page segment, 8 KiB through segments that start and
 * end inside pages, and reads past the end, which must fail with BLKIF_RSP_ERROR.
 */
#include "nvme.h"
#include "x86.h"
#include "xen_blk.h"

#define VERIFY_SLOTS 8u
#define IO_TIMEOUT_US 10000000
#define POISON 0xA5
#define MIB (1024u * 1024u)

static struct xblk_disk disks[XBLK_MAX_DISKS];

struct verify_disk {
    struct xblk_disk* d;
    uint32_t bs;        /* block = the backend's sector-size */
    uint32_t spb;       /* 512-byte sectors per block */
    uint64_t blocks;
    uint64_t requests;
};

static const char* status_name(int st) {
    switch (st) {
        case BLKIF_RSP_OKAY:
            return "okay";
        case BLKIF_RSP_ERROR:
            return "error";
        case BLKIF_RSP_EOPNOTSUPP:
            return "eopnotsupp";
        case XBLK_STATUS_TIMEOUT:
            return "timeout";
        default:
            return "unknown";
    }
}

static void fail_io(const struct verify_disk* v, const char* what, uint8_t op, uint64_t lba,
                    int st) {
    printk("xen-verify: disk %u FAIL %s %s lba=%llu status=%d (%s)\n", v->d->index, what,
           xblk_op_name(op), (unsigned long long)lba, st, status_name(st));
}

static bool check_blocks(const struct verify_disk* v, const uint8_t* buf, uint64_t lba, uint32_t n,
                         const char* what) {
    static uint8_t want[XEN_PAGE];
    for (uint32_t k = 0; k < n; k++) {
        const uint8_t* b = buf + (uint64_t)k * v->bs;
        nvme_pattern_fill(want, v->bs, v->d->index, lba + k);
        for (uint32_t i = 0; i < v->bs; i++) {
            if (b[i] != want[i]) {
                printk(
                    "xen-verify: disk %u FAIL mismatch (%s) lba=%llu offset=%u expected=0x%02x "
                    "got=0x%02x\n",
                    v->d->index, what, (unsigned long long)(lba + k), i, want[i], b[i]);
                return false;
            }
        }
    }
    return true;
}

struct slot_job {
    uint64_t lba;
    uint32_t n;
};

/*
 * Writes (fills with the pattern) or reads (and checks) blocks [0, nblocks) with up to nslots
 * requests of up to slot_bytes in flight.
 */
static bool stream(struct verify_disk* v, uint8_t op, uint64_t nblocks) {
    struct xblk_disk* d = v->d;
    uint32_t chunk = d->slot_bytes / v->bs;
    struct slot_job jobs[XBLK_RING_ENTRIES];
    uint32_t free_slots[XBLK_RING_ENTRIES];
    uint32_t nfree = 0;
    for (uint32_t s = d->nslots; s > 0; s--) {
        free_slots[nfree++] = s - 1;
    }
    uint64_t next = 0;
    uint32_t inflight = 0;
    uint64_t progress = rdtsc();
    uint64_t stall = tsc_cycles_from_us(IO_TIMEOUT_US);
    while (next < nblocks || inflight > 0) {
        bool queued = false;
        while (nfree > 0 && next < nblocks) {
            uint32_t s = free_slots[--nfree];
            uint32_t n = nblocks - next < chunk ? (uint32_t)(nblocks - next) : chunk;
            uint8_t* buf = xblk_slot_buf(d, s);
            if (op == BLKIF_OP_WRITE) {
                for (uint32_t k = 0; k < n; k++) {
                    nvme_pattern_fill(buf + (uint64_t)k * v->bs, v->bs, d->index, next + k);
                }
            } else {
                memset(buf, POISON, (size_t)n * v->bs);
            }
            if (!xblk_queue(d, s, op, next * v->spb, 0, n * v->bs)) {
                return false;
            }
            jobs[s] = (struct slot_job){next, n};
            next += n;
            inflight++;
            queued = true;
            v->requests++;
        }
        if (queued) {
            xblk_kick(d);
        }
        uint64_t seen = __atomic_load_n(&xen_upcall_count, __ATOMIC_ACQUIRE);
        xblk_collect_events(d);
        struct blkif_response rsp;
        bool bad = false;
        unsigned got = 0;
        while (xblk_reap(d, &rsp, &bad)) {
            if (bad || rsp.operation != op) {
                printk("xen-verify: disk %u FAIL bad response id=%llu op=%u\n", d->index,
                       (unsigned long long)rsp.id, rsp.operation);
                return false;
            }
            struct slot_job j = jobs[rsp.id];
            if (rsp.status != BLKIF_RSP_OKAY) {
                fail_io(v, "main pass", op, j.lba, rsp.status);
                return false;
            }
            if (op == BLKIF_OP_READ &&
                !check_blocks(v, xblk_slot_buf(d, (uint32_t)rsp.id), j.lba, j.n, "read back")) {
                return false;
            }
            free_slots[nfree++] = (uint32_t)rsp.id;
            inflight--;
            got++;
        }
        if (bad) {
            return false;
        }
        if (got > 0 || xblk_final_check(d)) {
            progress = rdtsc();
            continue;
        }
        if (rdtsc() - progress > stall) {
            printk("xen-verify: disk %u FAIL %s: no response for %u ms, %u in flight from lba=%llu\n",
                   d->index, xblk_op_name(op), IO_TIMEOUT_US / 1000, inflight,
                   (unsigned long long)next);
            return false;
        }
        xblk_wait(d, seen, progress + stall);
    }
    return true;
}

static int sync_io(struct verify_disk* v, uint8_t op, uint64_t lba, uint32_t buf_off, uint32_t n) {
    v->requests++;
    return xblk_sync(v->d, op, lba * v->spb, buf_off, n * v->bs, IO_TIMEOUT_US);
}

/* Blocks [lba, lba+n) written from slot 0 at src_off and read back into dst_off. */
static bool write_read(struct verify_disk* v, uint64_t lba, uint32_t n, uint32_t src_off,
                       uint32_t dst_off, const char* what) {
    uint8_t* buf = xblk_slot_buf(v->d, 0);
    for (uint32_t k = 0; k < n; k++) {
        nvme_pattern_fill(buf + src_off + (uint64_t)k * v->bs, v->bs, v->d->index, lba + k);
    }
    memset(buf + dst_off, POISON, (size_t)n * v->bs);
    int st = sync_io(v, BLKIF_OP_WRITE, lba, src_off, n);
    if (st != BLKIF_RSP_OKAY) {
        fail_io(v, what, BLKIF_OP_WRITE, lba, st);
        return false;
    }
    st = sync_io(v, BLKIF_OP_READ, lba, dst_off, n);
    if (st != BLKIF_RSP_OKAY) {
        fail_io(v, what, BLKIF_OP_READ, lba, st);
        return false;
    }
    return check_blocks(v, buf + dst_off, lba, n, what);
}

static const char* verdict(bool ok) {
    return ok ? "ok" : "FAIL";
}

static bool edge_cases(struct verify_disk* v) {
    bool last = write_read(v, v->blocks - 1, 1, 0, XEN_PAGE, "last block");

    /* One block 3 sectors into a page, read back 6 sectors into another: first_sect and
     * last_sect inside the page (for 512-byte blocks, one sector). */
    uint64_t lba = v->blocks > 5 ? 5 : 0;
    bool sub = write_read(v, lba, 1, 3 * XBLK_SECTOR, 2 * XEN_PAGE + 6 * XBLK_SECTOR,
                          "sub-page segment");

    /* 8 KiB from 5 sectors into a page (segments 5-7, 0-7, 0-4) and back to 1 sector into
     * another (1-7, 0-7, 0-0). */
    uint32_t n = 2 * XEN_PAGE / v->bs;
    bool partial = true;
    const char* partial_s = "skip";
    if (v->blocks >= n) {
        partial = write_read(v, 0, n, 5 * XBLK_SECTOR, 4 * XEN_PAGE + XBLK_SECTOR,
                             "partial segments");
        partial_s = verdict(partial);
    }

    /* Entirely past the end and straddling it: the backend must refuse both. */
    int st1 = sync_io(v, BLKIF_OP_READ, v->blocks, 0, 1);
    int st2 = sync_io(v, BLKIF_OP_READ, v->blocks - 1, 0, 2);
    bool past = st1 == BLKIF_RSP_ERROR && st2 == BLKIF_RSP_ERROR;
    if (!past) {
        printk("xen-verify: disk %u FAIL past-end reads: lba=%llu status=%d (%s), lba=%llu "
               "status=%d (%s), want -1 (error)\n",
               v->d->index, (unsigned long long)v->blocks, st1, status_name(st1),
               (unsigned long long)(v->blocks - 1), st2, status_name(st2));
    }
    printk("xen-verify: disk %u edge last_block=%s sub_page_segment=%s partial_segments=%s "
           "past_end=%d,%d %s\n",
           v->d->index, verdict(last), verdict(sub), partial_s, st1, st2, verdict(past));
    return last && sub && partial && past;
}

static uint64_t mib10(uint64_t bytes) {
    return (bytes * 10 + MIB / 2) / MIB;
}

static bool verify_disk(struct xblk_disk* d, uint64_t want_blocks, bool irq) {
    uint64_t mark = ram_mark();
    bool ok = xblk_connect(d, irq) && xblk_setup_slots(d, VERIFY_SLOTS, XBLK_MAX_SLOT_BYTES);
    if (!ok) {
        printk("xen-verify: disk %u FAIL bring-up\n", d->index);
        ram_release(mark);
        return false;
    }
    struct verify_disk v = {.d = d,
                            .bs = d->sector_size,
                            .spb = d->sector_size / XBLK_SECTOR,
                            .blocks = d->sectors / (d->sector_size / XBLK_SECTOR)};
    printk("xen-verify: disk %u vbd=%u sectors=%llu bs=%u blocks=%llu flush=%d irq=%d\n", d->index,
           d->vdev, (unsigned long long)d->sectors, v.bs, (unsigned long long)v.blocks, d->flush,
           d->irq);
    uint64_t nblocks = want_blocks != 0 && want_blocks < v.blocks ? want_blocks : v.blocks;
    uint64_t t0 = rdtsc();
    ok = v.blocks >= 2 && stream(&v, BLKIF_OP_WRITE, nblocks);
    if (ok && d->flush) {
        int st = sync_io(&v, BLKIF_OP_FLUSH_DISKCACHE, 0, 0, 0);
        if (st != BLKIF_RSP_OKAY) {
            fail_io(&v, "flush", BLKIF_OP_FLUSH_DISKCACHE, 0, st);
            ok = false;
        }
    }
    ok = ok && stream(&v, BLKIF_OP_READ, nblocks);
    uint64_t ms = (rdtsc() - t0) / (tsc_khz ? tsc_khz : 1);
    ok = ok && edge_cases(&v);
    if (ok) {
        uint64_t m = mib10(nblocks * v.bs);
        printk(
            "xen-verify: disk %u ok written_mib=%llu.%llu verified_mib=%llu.%llu ms=%llu "
            "requests=%llu notify_sent=%llu notify_skipped=%llu notify_received=%llu\n",
            d->index, (unsigned long long)(m / 10), (unsigned long long)(m % 10),
            (unsigned long long)(m / 10), (unsigned long long)(m % 10), (unsigned long long)ms,
            (unsigned long long)v.requests, (unsigned long long)d->notify_sent,
            (unsigned long long)d->notify_skipped, (unsigned long long)d->notify_received);
    }
    xblk_close(d);
    /* Buffers stay allocated: their pages are still granted. */
    return ok;
}

static bool parse_flag(const char* arg, const char* key, bool* out) {
    size_t n = strlen(key);
    if (memcmp(arg, key, n) != 0 || arg[n] != '=') {
        return false;
    }
    uint64_t v;
    if (!parse_u64(arg + n + 1, &v) || v > 1) {
        return false;
    }
    *out = v != 0;
    return true;
}

int workload_xen_verify(int argc, char** argv) {
    uint64_t want_blocks = 0;
    bool irq = false;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--blocks") == 0 && i + 1 < argc) {
            if (!parse_u64(argv[++i], &want_blocks) || want_blocks == 0) {
                printk("xen-verify: bad --blocks '%s'\n", argv[i]);
                return 2;
            }
        } else if (!parse_flag(argv[i], "irq", &irq)) {
            printk("xen-verify: bad argument '%s' (--blocks N, irq=0|1)\n", argv[i]);
            return 2;
        }
    }
    tsc_calibrate();
    if (!xen_init()) {
        printk("xen-verify: Xen set-up failed\n");
        return 1;
    }
    unsigned n = xblk_discover(disks, XBLK_MAX_DISKS);
    if (n == 0) {
        printk("xen-verify: no vbd under device/vbd\n");
        return 1;
    }
    unsigned passed = 0;
    for (unsigned i = 0; i < n; i++) {
        passed += verify_disk(&disks[i], want_blocks, irq) ? 1 : 0;
    }
    printk("xen-verify: hypercalls=%llu upcalls=%llu\n", (unsigned long long)xen.hypercalls,
           (unsigned long long)__atomic_load_n(&xen_upcall_count, __ATOMIC_ACQUIRE));
    printk("xen-verify: disks=%u passed=%u\n", n, passed);
    return passed == n ? 0 : 1;
}
