/*
 * Host stand-ins for what the probe's Xen frontend gets from the rest of the probe and from the
 * hypervisor, so that xenstore.c, xen_blk.c, xen_verify.c, xen_bench.c and bench.c run as a host
 * program against a fake dom0 (probe_xen_host_test.cpp):
 *   - RAM: an arena mapped low (below 4 GiB), so "physical" addresses are host pointers and page
 *     frame numbers fit a grant entry's 32-bit frame;
 *   - the Xen layer of xen.c: event channels over a fake shared_info page, grants in a fake
 *     grant table, sends handed to the fake dom0 (fake_dom0_kick);
 *   - printk into a buffer the test reads, TSC helpers calibrated against CLOCK_MONOTONIC.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "probe_host_shim.h"
#include "x86.h"
#include "xen_blk.h"

#define ARENA_BASE 0x50000000ull
#define ARENA_SIZE (256ull << 20)
#define LOG_MAX (1u << 20)
#define GRANT_FRAMES 4u

struct xen_state xen;
volatile uint64_t xen_upcall_count;
uint64_t tsc_khz = 3000000;
uint32_t xen_hypercall_msr;
uint8_t xen_hypercall_page[XEN_PAGE];

static uint8_t* arena;
static uint64_t arena_next;
static char log_buf[LOG_MAX];
static size_t log_len;
static uint32_t next_port;
static struct shim_xen_fault faults;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

bool shim_reset(void) {
    if (arena == NULL) {
        void* p = mmap((void*)ARENA_BASE, ARENA_SIZE, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
        if (p == MAP_FAILED) {
            fprintf(stderr, "shim: cannot map the arena at 0x%llx: %s\n",
                    (unsigned long long)ARENA_BASE, strerror(errno));
            return false;
        }
        arena = p;
    }
    arena_next = 0;
    memset(&xen, 0, sizeof(xen));
    xen_upcall_count = 0;
    log_len = 0;
    log_buf[0] = '\0';
    next_port = 2;
    memset(&faults, 0, sizeof(faults));
    return true;
}

void shim_set_faults(const struct shim_xen_fault* f) {
    faults = *f;
}

const char* shim_log(void) {
    return log_buf;
}

uint64_t shim_store_gpa(void) {
    return xen.up ? xen.store_gpa : 0;
}

uint64_t shim_grant_base(void) {
    return xen.grant_base;
}

uint32_t shim_grant_frames(void) {
    return xen.grant_frames;
}

void* ram_alloc(uint64_t bytes, uint64_t align) {
    if (align == 0 || (align & (align - 1)) != 0) {
        align = 4096;
    }
    uint64_t start = (arena_next + align - 1) & ~(align - 1);
    if (start > ARENA_SIZE || bytes > ARENA_SIZE - start) {
        printk("probe: out of memory: %llu bytes wanted\n", (unsigned long long)bytes);
        return NULL;
    }
    arena_next = start + bytes;
    memset(arena + start, 0, bytes);
    return arena + start;
}

uint64_t ram_mark(void) {
    return arena_next;
}

void ram_release(uint64_t mark) {
    if (mark <= arena_next) {
        arena_next = mark;
    }
}

void printk(const char* fmt, ...) {
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    if (n < 0) {
        return;
    }
    size_t len = strlen(line);
    if (log_len + len + 1 < LOG_MAX) {
        memcpy(log_buf + log_len, line, len + 1);
        log_len += len;
    }
}

bool parse_u64(const char* s, uint64_t* out) {
    if (*s == '\0' || *s == '-' || *s == '+' || *s == ' ') {
        return false;
    }
    char* end = NULL;
    errno = 0;
    unsigned long long v = strtoull(s, &end, (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) ? 16 : 10);
    if (errno != 0 || end == s || *end != '\0') {
        return false;
    }
    *out = v;
    return true;
}

void tsc_calibrate(void) {
    uint64_t n0 = now_ns(), t0 = rdtsc();
    while (now_ns() - n0 < 5000000) {
    }
    uint64_t n1 = now_ns(), t1 = rdtsc();
    tsc_khz = (t1 - t0) * 1000000 / (n1 - n0);
}

uint64_t tsc_cycles_from_us(uint64_t us) {
    return us * tsc_khz / 1000;
}

void tsc_delay_us(uint64_t us) {
    struct timespec ts = {(time_t)(us / 1000000), (long)(us % 1000000) * 1000};
    nanosleep(&ts, NULL);
}

/* ---- the Xen layer (xen.c) ---- */

bool xen_init(void) {
    if (xen.up) {
        return true;
    }
    if (faults.no_xen) {
        printk("xen: no Xen signature (shim)\n");
        return false;
    }
    xen.shared = ram_alloc(XEN_PAGE, XEN_PAGE);
    uint8_t* grants = ram_alloc(GRANT_FRAMES * XEN_PAGE, XEN_PAGE);
    void* store = ram_alloc(XEN_PAGE, XEN_PAGE);
    if (xen.shared == NULL || grants == NULL || store == NULL) {
        return false;
    }
    memset(xen.shared->evtchn_mask, 0xFF, sizeof(xen.shared->evtchn_mask));
    xen.grant_base = (uint64_t)grants;
    xen.grant_frames = xen.grant_frames_max = GRANT_FRAMES;
    xen.grant_next = XEN_GRANT_RESERVED;
    xen.store_gpa = (uint64_t)store;
    xen.store_port = 1;
    xen.up = true;
    return true;
}

long xen_hypercall(unsigned nr, uint64_t a1, uint64_t a2, uint64_t a3, uint64_t a4, uint64_t a5) {
    (void)nr, (void)a1, (void)a2, (void)a3, (void)a4, (void)a5;
    return -XEN_ENOSYS;
}

long xen_evtchn_alloc_unbound(uint32_t* port) {
    xen.hypercalls++;
    *port = next_port++;
    return 0;
}

long xen_evtchn_send(uint32_t port) {
    xen.hypercalls++;
    fake_dom0_kick(port);
    return 0;
}

/* Steps 3-5 of 2-level delivery for a pending, unmasked port (xen-abi.md §3.5). */
static void deliver(uint32_t port) {
    struct xen_vcpu_info* v = &xen.shared->vcpu_info[0];
    uint64_t sel = 1ull << (port / 64);
    if (__atomic_fetch_or(&v->evtchn_pending_sel, sel, __ATOMIC_SEQ_CST) & sel) {
        return;
    }
    if (__atomic_exchange_n(&v->evtchn_upcall_pending, 1, __ATOMIC_SEQ_CST)) {
        return;
    }
    __atomic_fetch_add(&xen_upcall_count, 1, __ATOMIC_SEQ_CST); /* the upcall handler ran */
}

void shim_raise(uint32_t port) {
    uint64_t bit = 1ull << (port % 64);
    if (__atomic_fetch_or(&xen.shared->evtchn_pending[port / 64], bit, __ATOMIC_SEQ_CST) & bit) {
        return;
    }
    if (__atomic_load_n(&xen.shared->evtchn_mask[port / 64], __ATOMIC_SEQ_CST) & bit) {
        return;
    }
    deliver(port);
}

long xen_evtchn_unmask(uint32_t port) {
    xen.hypercalls++;
    uint64_t bit = 1ull << (port % 64);
    uint64_t old = __atomic_fetch_and(&xen.shared->evtchn_mask[port / 64], ~bit, __ATOMIC_SEQ_CST);
    if ((old & bit) && (__atomic_load_n(&xen.shared->evtchn_pending[port / 64], __ATOMIC_SEQ_CST) & bit)) {
        deliver(port);
    }
    return 0;
}

void xen_evtchn_mask(uint32_t port) {
    __atomic_fetch_or(&xen.shared->evtchn_mask[port / 64], 1ull << (port % 64), __ATOMIC_SEQ_CST);
}

bool xen_evtchn_test_and_clear(uint32_t port) {
    uint64_t bit = 1ull << (port % 64);
    return (__atomic_fetch_and(&xen.shared->evtchn_pending[port / 64], ~bit, __ATOMIC_SEQ_CST) & bit) != 0;
}

void xen_upcall_ack(void) {
    struct xen_vcpu_info* v = &xen.shared->vcpu_info[0];
    __atomic_store_n(&v->evtchn_upcall_pending, 0, __ATOMIC_SEQ_CST);
    __atomic_exchange_n(&v->evtchn_pending_sel, 0, __ATOMIC_SEQ_CST);
}

uint32_t xen_grant_alloc(uint64_t gpa, bool readonly) {
    if (xen.grant_next >= xen.grant_frames * XEN_GRANTS_PER_FRAME) {
        printk("xen: out of grant refs (%u frames)\n", xen.grant_frames);
        return 0;
    }
    uint32_t ref = xen.grant_next++;
    struct grant_entry_v1* e = (struct grant_entry_v1*)xen.grant_base + ref;
    e->domid = XEN_DOM0;
    e->frame = (uint32_t)(gpa >> 12);
    __atomic_store_n(&e->flags, (uint16_t)(GTF_permit_access | (readonly ? GTF_readonly : 0)),
                     __ATOMIC_RELEASE);
    return ref;
}

bool xen_grant_free(uint32_t ref) {
    struct grant_entry_v1* e = (struct grant_entry_v1*)xen.grant_base + ref;
    __atomic_store_n(&e->flags, 0, __ATOMIC_RELEASE);
    return true;
}
