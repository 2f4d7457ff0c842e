/*
 * Inline x86 helpers. Port I/O works at CPL0 and at CPL3 (IOPL 3); the MMIO helpers work at both
 * because every page, the APICs and the PCI window included, is mapped user-accessible.
 */
#ifndef PROBE_X86_H
#define PROBE_X86_H

#include <stdint.h>

static inline void outb(uint16_t port, uint8_t v) {
    __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port));
}

static inline uint8_t inb(uint16_t port) {
    uint8_t v;
    __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}

static inline void outl(uint16_t port, uint32_t v) {
    __asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port));
}

static inline uint32_t inl(uint16_t port) {
    uint32_t v;
    __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}

/* A pointer to identity-mapped physical memory, hidden from the compiler's object-size checks
 * (which would otherwise flag fixed addresses such as the BIOS data area). */
static inline void* phys_ptr(uint64_t pa) {
    __asm__("" : "+r"(pa));
    return (void*)pa;
}

static inline uint32_t mmio_read32(uint64_t addr) {
    return *(volatile uint32_t*)addr;
}

static inline void mmio_write32(uint64_t addr, uint32_t v) {
    *(volatile uint32_t*)addr = v;
}

static inline uint64_t rdtsc(void) {
    uint32_t lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((uint64_t)hi << 32) | lo;
}

static inline void cpu_relax(void) {
    __asm__ volatile("pause" ::: "memory");
}

static inline void compiler_barrier(void) {
    __asm__ volatile("" ::: "memory");
}

static inline unsigned current_cpl(void) {
    uint16_t cs;
    __asm__ volatile("mov %%cs, %0" : "=r"(cs));
    return cs & 3u;
}

static inline void cpuid(uint32_t leaf, uint32_t sub, uint32_t r[4]) {
    __asm__ volatile("cpuid"
                     : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3])
                     : "a"(leaf), "c"(sub));
}

/* CPL0 only. */
static inline void wrmsr(uint32_t msr, uint64_t v) {
    __asm__ volatile("wrmsr" : : "c"(msr), "a"((uint32_t)v), "d"((uint32_t)(v >> 32)) : "memory");
}

static inline uint64_t read_cr2(void) {
    uint64_t v;
    __asm__ volatile("mov %%cr2, %0" : "=r"(v));
    return v;
}

/* Local APIC (xAPIC MMIO), Intel SDM vol. 3 §11.4. */
#define LAPIC_BASE 0xFEE00000ull
#define LAPIC_ID 0x020
#define LAPIC_EOI 0x0B0
#define LAPIC_SVR 0x0F0
#define LAPIC_ICR_LO 0x300
#define LAPIC_ICR_HI 0x310
#define LAPIC_LVT_TIMER 0x320
#define LAPIC_LVT_LINT0 0x350
#define LAPIC_TIMER_INIT 0x380
#define LAPIC_TIMER_CUR 0x390
#define LAPIC_TIMER_DIV 0x3E0
#define LAPIC_LVT_MASKED 0x10000u

static inline uint32_t lapic_read(uint32_t reg) {
    return mmio_read32(LAPIC_BASE + reg);
}

static inline void lapic_write(uint32_t reg, uint32_t v) {
    mmio_write32(LAPIC_BASE + reg, v);
}

static inline uint32_t lapic_id(void) {
    return lapic_read(LAPIC_ID) >> 24;
}

#endif /* PROBE_X86_H */
