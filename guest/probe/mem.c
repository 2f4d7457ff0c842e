/*
 * RAM beyond the image for device queues and data buffers: a bump allocator over the range that
 * boot.c picked from the PVH memory map (boot.free_base..free_end). Identity-mapped and
 * user-accessible, so a pointer is also the guest-physical address a device can DMA to.
 *
 * The top MiB of the range is left alone as a margin: loaders and firmware put their own
 * structures (PVH start info, ACPI tables) near the top of low RAM.
 */
#include "probe.h"
#include "x86.h"

#define TOP_RESERVE 0x100000ull

static uint64_t next_free;

static uint64_t pool_end(void) {
    if (boot.free_end - boot.free_base <= TOP_RESERVE) {
        return boot.free_base;
    }
    return boot.free_end - TOP_RESERVE;
}

static uint64_t pool_next(void) {
    return next_free != 0 ? next_free : boot.free_base;
}

void* ram_alloc(uint64_t bytes, uint64_t align) {
    if (align == 0 || (align & (align - 1)) != 0) {
        align = 4096;
    }
    uint64_t start = (pool_next() + align - 1) & ~(align - 1);
    uint64_t end = pool_end();
    if (boot.free_base == 0 || start > end || bytes > end - start) {
        printk("probe: out of memory: %llu bytes wanted, %llu free\n", (unsigned long long)bytes,
               (unsigned long long)(end > pool_next() ? end - pool_next() : 0));
        return NULL;
    }
    next_free = start + bytes;
    void* p = phys_ptr(start);
    memset(p, 0, bytes);
    return p;
}

uint64_t ram_mark(void) {
    return pool_next();
}

void ram_release(uint64_t mark) {
    if (mark >= boot.free_base && mark <= pool_next()) {
        next_free = mark;
    }
}
