/*
 * `nvme-verify [--blocks N] [irq=0|1] [shadow=0|1]`: on every NVMe controller, write a pattern
 * a host can check afterwards (nvme_pattern_fill, README.md) over namespace 1 or its first N
 * blocks, Flush, read it all back and compare; then a few edge cases: the last block, a 1-block
 * read whose PRP1 has an odd (dword-aligned) page offset, a PRP-list transfer with page offsets
 * on both sides, and reads past the end, which must fail with LBA Out of Range.
 */
#include "nvme.h"
#include "x86.h"

#define CHUNK_BYTES (128u * 1024)
#define EDGE_BYTES (2 * NVME_PAGE) /* the PRP-list edge case: 8 KiB spanning three pages */
#define IO_TIMEOUT_US 10000000
#define POISON 0xA5
#define MIB (1024u * 1024u)

static struct nvme_ctrl ctrls[NVME_MAX_CTRLS];

/* Offset of the first byte that differs from the pattern, or bs if none. */
static uint32_t pattern_check(const uint8_t* b, uint32_t bs, uint32_t ctrl, uint64_t lba,
                              uint8_t* expected_byte) {
    static uint8_t want[4096];
    nvme_pattern_fill(want, bs, ctrl, lba);
    for (uint32_t i = 0; i < bs; i++) {
        if (b[i] != want[i]) {
            *expected_byte = want[i];
            return i;
        }
    }
    return bs;
}

static bool check_blocks(const struct nvme_ctrl* c, const uint8_t* buf, uint64_t lba, uint32_t n,
                         const char* what) {
    for (uint32_t k = 0; k < n; k++) {
        const uint8_t* b = buf + (uint64_t)k * c->block_size;
        uint8_t exp = 0;
        uint32_t off = pattern_check(b, c->block_size, c->index, lba + k, &exp);
        if (off != c->block_size) {
            printk(
                "nvme-verify: ctrl %u FAIL mismatch (%s) lba=%llu offset=%u expected=0x%02x "
                "got=0x%02x\n",
                c->index, what, (unsigned long long)(lba + k), off, exp, b[off]);
            return false;
        }
    }
    return true;
}

static bool io_ok(const struct nvme_ctrl* c, uint16_t st, const char* what, uint64_t lba) {
    if (st == 0) {
        return true;
    }
    char why[80];
    nvme_status_str(st, why, sizeof(why));
    printk("nvme-verify: ctrl %u FAIL %s lba=%llu: %s\n", c->index, what, (unsigned long long)lba,
           why);
    return false;
}

static uint16_t io(struct nvme_ctrl* c, uint8_t op, uint64_t lba, uint32_t n, void* buf) {
    return nvme_io_sync(c, op, lba, n, buf, n << c->lba_shift, IO_TIMEOUT_US);
}

/* Main pass: pattern over [0, nblocks) in chunks, Flush, read back and compare. */
static bool full_pass(struct nvme_ctrl* c, uint64_t nblocks, uint8_t* wbuf, uint8_t* rbuf,
                      uint32_t chunk_blocks) {
    for (uint64_t lba = 0; lba < nblocks; lba += chunk_blocks) {
        uint32_t n = (uint32_t)(nblocks - lba < chunk_blocks ? nblocks - lba : chunk_blocks);
        for (uint32_t k = 0; k < n; k++) {
            nvme_pattern_fill(wbuf + (uint64_t)k * c->block_size, c->block_size, c->index, lba + k);
        }
        if (!io_ok(c, io(c, NVME_CMD_WRITE, lba, n, wbuf), "write", lba)) {
            return false;
        }
    }
    if (!io_ok(c, nvme_io_sync(c, NVME_CMD_FLUSH, 0, 0, NULL, 0, IO_TIMEOUT_US), "flush", 0)) {
        return false;
    }
    for (uint64_t lba = 0; lba < nblocks; lba += chunk_blocks) {
        uint32_t n = (uint32_t)(nblocks - lba < chunk_blocks ? nblocks - lba : chunk_blocks);
        memset(rbuf, POISON, (size_t)n << c->lba_shift);
        if (!io_ok(c, io(c, NVME_CMD_READ, lba, n, rbuf), "read", lba) ||
            !check_blocks(c, rbuf, lba, n, "read back")) {
            return false;
        }
    }
    return true;
}

/* Writes blocks [lba, lba+n) from `src` and reads them back into `dst`; both may be unaligned. */
static bool write_read(struct nvme_ctrl* c, uint64_t lba, uint32_t n, uint8_t* src, uint8_t* dst,
                       const char* what) {
    for (uint32_t k = 0; k < n; k++) {
        nvme_pattern_fill(src + (uint64_t)k * c->block_size, c->block_size, c->index, lba + k);
    }
    memset(dst, POISON, (size_t)n << c->lba_shift);
    return io_ok(c, io(c, NVME_CMD_WRITE, lba, n, src), what, lba) &&
           io_ok(c, io(c, NVME_CMD_READ, lba, n, dst), what, lba) &&
           check_blocks(c, dst, lba, n, what);
}

static const char* verdict(bool ok) {
    return ok ? "ok" : "FAIL";
}

static bool edge_cases(struct nvme_ctrl* c, uint8_t* wbuf, uint8_t* rbuf) {
    bool last = write_read(c, c->blocks - 1, 1, wbuf, rbuf, "last block");

    /* PRP1 200 bytes before a page end: the block straddles two pages (PRP2 = next page). */
    uint64_t lba = c->blocks > 5 ? 5 : 0;
    bool unaligned = write_read(c, lba, 1, wbuf, rbuf + NVME_PAGE - 200, "unaligned prp1");

    /* 8 KiB from and to odd page offsets: three pages each, so PRP2 is a list. */
    uint32_t n = EDGE_BYTES >> c->lba_shift;
    const char* list = "skip";
    bool list_ok = true;
    if (c->max_xfer >= EDGE_BYTES && c->blocks >= n) {
        list_ok = write_read(c, 0, n, wbuf + 0x104, rbuf + 0x38, "prp list offset");
        list = verdict(list_ok);
    }

    /* Entirely past the end, and straddling it: both must fail with LBA Out of Range. */
    uint16_t st1 = io(c, NVME_CMD_READ, c->blocks, 1, rbuf);
    uint16_t st2 = io(c, NVME_CMD_READ, c->blocks - 1, 2, rbuf);
    bool past = NVME_SC(st1) == NVME_SC_LBA_RANGE && NVME_SC(st2) == NVME_SC_LBA_RANGE &&
                st1 != NVME_STATUS_TIMEOUT && st2 != NVME_STATUS_TIMEOUT;
    if (!past) {
        char a[80], b[80];
        nvme_status_str(st1, a, sizeof(a));
        nvme_status_str(st2, b, sizeof(b));
        printk("nvme-verify: ctrl %u FAIL past-end reads: [%s] [%s], want sc=0x80\n", c->index, a,
               b);
    }
    printk(
        "nvme-verify: ctrl %u edge last_block=%s unaligned_prp1=%s prp_list_offset=%s "
        "past_end=0x%x,0x%x %s\n",
        c->index, verdict(last), verdict(unaligned), list, NVME_SC(st1), NVME_SC(st2),
        verdict(past));
    return last && unaligned && list_ok && past;
}

static uint64_t mib10(uint64_t bytes) {
    return (bytes * 10 + MIB / 2) / MIB;
}

static bool verify_ctrl(struct nvme_ctrl* c, uint64_t want_blocks, const struct nvme_opts* o) {
    if (!nvme_init(c, o)) {
        printk("nvme-verify: ctrl %u FAIL bring-up\n", c->index);
        return false;
    }
    printk("nvme-verify: ctrl %u model='%s' serial='%s' blocks=%llu bs=%u shadow=%d\n", c->index,
           c->model, c->serial, (unsigned long long)c->blocks, c->block_size, c->shadow);
    uint64_t nblocks = want_blocks != 0 && want_blocks < c->blocks ? want_blocks : c->blocks;
    uint32_t chunk = c->max_xfer < CHUNK_BYTES ? c->max_xfer : CHUNK_BYTES;
    uint32_t chunk_blocks = chunk >> c->lba_shift;
    uint64_t mark = ram_mark();
    uint32_t bufsize = (chunk > EDGE_BYTES ? chunk : EDGE_BYTES) + NVME_PAGE;
    uint8_t* wbuf = ram_alloc(bufsize, NVME_PAGE);
    uint8_t* rbuf = ram_alloc(bufsize, NVME_PAGE);
    bool ok = wbuf != NULL && rbuf != NULL && chunk_blocks > 0;
    uint64_t t0 = rdtsc();
    ok = ok && full_pass(c, nblocks, wbuf, rbuf, chunk_blocks);
    uint64_t ms = (rdtsc() - t0) / (tsc_khz ? tsc_khz : 1);
    ok = ok && edge_cases(c, wbuf, rbuf);
    ram_release(mark);
    if (ok) {
        uint64_t m = mib10(nblocks << c->lba_shift);
        printk(
            "nvme-verify: ctrl %u ok written_mib=%llu.%llu verified_mib=%llu.%llu ms=%llu "
            "sq_mmio=%llu sq_shadow_only=%llu cq_mmio=%llu cq_shadow_only=%llu\n",
            c->index, (unsigned long long)(m / 10), (unsigned long long)(m % 10),
            (unsigned long long)(m / 10), (unsigned long long)(m % 10), (unsigned long long)ms,
            (unsigned long long)c->io.mmio_sq_rings, (unsigned long long)c->io.shadow_sq_skips,
            (unsigned long long)c->io.mmio_cq_rings, (unsigned long long)c->io.shadow_cq_skips);
    }
    nvme_shutdown(c);
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

int workload_nvme_verify(int argc, char** argv) {
    uint64_t want_blocks = 0;
    struct nvme_opts o = {.irq = false, .shadow = true};
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--blocks") == 0 && i + 1 < argc) {
            if (!parse_u64(argv[++i], &want_blocks) || want_blocks == 0) {
                printk("nvme-verify: bad --blocks '%s'\n", argv[i]);
                return 2;
            }
        } else if (!parse_flag(argv[i], "irq", &o.irq) &&
                   !parse_flag(argv[i], "shadow", &o.shadow)) {
            printk("nvme-verify: bad argument '%s' (--blocks N, irq=0|1, shadow=0|1)\n", argv[i]);
            return 2;
        }
    }
    tsc_calibrate();
    unsigned n = nvme_discover(ctrls, NVME_MAX_CTRLS);
    if (n == 0) {
        printk("nvme-verify: no NVMe controller found\n");
        return 1;
    }
    unsigned passed = 0;
    for (unsigned i = 0; i < n; i++) {
        passed += verify_ctrl(&ctrls[i], want_blocks, &o) ? 1 : 0;
    }
    printk("nvme-verify: controllers=%u passed=%u\n", n, passed);
    return passed == n ? 0 : 1;
}
