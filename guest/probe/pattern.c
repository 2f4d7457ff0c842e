/*
 * The on-disk pattern that nvme-verify, nvme-bench, xen-verify and xen-bench write and a host can
 * check (README.md "On-disk pattern").
 */
#include "nvme.h"

static void put_le64(uint8_t* p, uint64_t v) {
    for (unsigned i = 0; i < 8; i++) {
        p[i] = (uint8_t)(v >> (8 * i));
    }
}

/*
 * Block `lba` of controller `ctrl`: "NVMEPROB", ctrl as LE u64, lba as LE u64, then LE dwords
 * w = 6 .. bs/4-1 holding (lba * 0x9E3779B1 + ctrl * 0x85EBCA6B + w) mod 2^32, with lba
 * truncated to 32 bits.
 */
void nvme_pattern_fill(uint8_t* b, uint32_t bs, uint32_t ctrl, uint64_t lba) {
    memcpy(b, "NVMEPROB", 8);
    put_le64(b + 8, ctrl);
    put_le64(b + 16, lba);
    uint32_t base = (uint32_t)lba * 0x9E3779B1u + ctrl * 0x85EBCA6Bu;
    uint32_t* w = (uint32_t*)b;
    for (uint32_t i = 6; i < bs / 4; i++) {
        w[i] = base + i;
    }
}
