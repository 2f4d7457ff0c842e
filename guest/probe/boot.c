/*
 * The BSP's CPL3 main: read the PVH start info, measure the TSC, start the APs, print the
 * banner and run the workload named on the command line.
 */
#include "probe.h"
#include "x86.h"

#define PORT_BOOT_MARKER 0x3F0
#define BOOT_MARKER 123

#define HVM_START_MAGIC 0x336ec578u
#define E820_RAM 1
#define MEMMAP_MAX_ENTRIES 128
#define MAX_ARGS 16
#define FOUR_GIB 0x100000000ull
#define THREE_GIB 0xC0000000ull /* 3-4 GiB is mapped uncached (entry.S): not for RAM use */
#define FREE_ALIGN 0x200000ull

extern uint8_t __image_end[];

/* Xen public/arch-x86/hvm/start_info.h, version 1. */
struct hvm_start_info {
    uint32_t magic;
    uint32_t version;
    uint32_t flags;
    uint32_t nr_modules;
    uint64_t modlist_paddr;
    uint64_t cmdline_paddr;
    uint64_t rsdp_paddr;
    uint64_t memmap_paddr;
    uint32_t memmap_entries;
    uint32_t reserved;
};

struct hvm_memmap_table_entry {
    uint64_t addr;
    uint64_t size;
    uint32_t type;
    uint32_t reserved;
};

struct boot_info boot;
uint32_t pvh_start_info_pa CPL0_DATA;
uint64_t tsc_khz CPL0_DATA = 3000000; /* until measured */

/* Only the first 4 GiB are mapped; anything the loader put above is treated as absent. */
static bool below_4g(uint64_t pa, uint64_t len) {
    return pa != 0 && pa < FOUR_GIB && len <= FOUR_GIB - pa;
}

/* Keeps the largest part of a RAM range that lies above the image and below 3 GiB. */
static void note_free_range(uint64_t addr, uint64_t size) {
    uint64_t lo = ((uint64_t)__image_end + FREE_ALIGN - 1) & ~(FREE_ALIGN - 1);
    uint64_t hi = addr + size < addr ? UINT64_MAX : addr + size;
    lo = addr > lo ? addr : lo;
    hi = hi < THREE_GIB ? hi : THREE_GIB;
    if (hi > lo && hi - lo > boot.free_end - boot.free_base) {
        boot.free_base = lo;
        boot.free_end = hi;
    }
}

/*
 * The loader's structures live in memory we may reuse (the AP trampoline page, for one), so
 * take copies before anything else happens.
 */
static void read_start_info(void) {
    if (!below_4g(pvh_start_info_pa, sizeof(struct hvm_start_info))) {
        return;
    }
    const struct hvm_start_info* si = phys_ptr(pvh_start_info_pa);
    if (si->magic != HVM_START_MAGIC) {
        return;
    }
    boot.start_info_ok = true;
    boot.rsdp_pa = si->rsdp_paddr;
    if (below_4g(si->cmdline_paddr, CMDLINE_MAX)) {
        const char* src = phys_ptr(si->cmdline_paddr);
        size_t n = 0;
        while (n + 1 < CMDLINE_MAX && src[n] != '\0') {
            boot.cmdline[n] = src[n];
            n++;
        }
        boot.cmdline[n] = '\0';
    }
    uint32_t entries = si->memmap_entries;
    if (entries > MEMMAP_MAX_ENTRIES) {
        entries = MEMMAP_MAX_ENTRIES;
    }
    uint64_t table_len = (uint64_t)entries * sizeof(struct hvm_memmap_table_entry);
    if (si->version >= 1 && entries > 0 && below_4g(si->memmap_paddr, table_len)) {
        const struct hvm_memmap_table_entry* e = phys_ptr(si->memmap_paddr);
        for (uint32_t i = 0; i < entries; i++) {
            if (e[i].type == E820_RAM) {
                boot.ram_bytes += e[i].size;
                note_free_range(e[i].addr, e[i].size);
            }
        }
    }
}

uint64_t tsc_cycles_from_us(uint64_t us) {
    return us * tsc_khz / 1000;
}

void tsc_delay_us(uint64_t us) {
    uint64_t end = rdtsc() + tsc_cycles_from_us(us);
    while (rdtsc() < end) {
        cpu_relax();
    }
}

/*
 * TSC rate: the hypervisor timing leaf if offered, else measured against the local APIC timer,
 * which both KVM and QEMU clock at 1 GHz (divide by 1). It takes 2 ms, so only workloads that
 * report times call it; boot-time timeouts are fine with the 3 GHz default.
 */
void tsc_calibrate(void) {
    uint32_t r[4];
    cpuid(1, 0, r);
    if (r[2] & (1u << 31)) {
        cpuid(0x40000000, 0, r);
        if (r[0] >= 0x40000010 && r[0] < 0x40010000) {
            cpuid(0x40000010, 0, r);
            if (r[0] >= 100000 && r[0] <= 10000000) {
                tsc_khz = r[0];
                return;
            }
        }
    }
    const uint32_t window_ns = 2000000;
    lapic_write(LAPIC_LVT_TIMER, LAPIC_LVT_MASKED | VEC_SPURIOUS);
    lapic_write(LAPIC_TIMER_DIV, 0xB); /* divide by 1 */
    lapic_write(LAPIC_TIMER_INIT, 0xFFFFFFFFu);
    uint32_t c0 = lapic_read(LAPIC_TIMER_CUR);
    uint64_t t0 = rdtsc();
    uint64_t limit = t0 + 20 * tsc_cycles_from_us(window_ns / 1000); /* at the default rate */
    uint32_t c = c0;
    uint64_t t = t0;
    while (c0 - c < window_ns && t < limit) {
        c = lapic_read(LAPIC_TIMER_CUR);
        t = rdtsc();
    }
    lapic_write(LAPIC_TIMER_INIT, 0);
    uint32_t ns = c0 - c;
    if (ns < window_ns / 2) {
        return; /* timer not counting: keep the default */
    }
    uint64_t khz = (t - t0) * 1000000 / ns;
    if (khz >= 100000 && khz <= 10000000) {
        tsc_khz = khz;
    }
}

/* Split the command line in place into whitespace-separated words. */
static int split_args(char* s, char** argv, int max) {
    int argc = 0;
    while (*s != '\0' && argc < max) {
        while (*s == ' ' || *s == '\t') {
            *s++ = '\0';
        }
        if (*s == '\0') {
            break;
        }
        argv[argc++] = s;
        while (*s != '\0' && *s != ' ' && *s != '\t') {
            s++;
        }
    }
    return argc;
}

void probe_main(void) {
    read_start_info();
    cpu_slots[0].apic_id = lapic_id();
    cpu_slots[0].cpl = current_cpl();
    cpu_slots[0].online = 1;
    smp_boot_aps();

    outb(PORT_BOOT_MARKER, BOOT_MARKER);
    /* Rounded up: the holes below 1 MiB and firmware reservations take less than 1 MiB, so this
     * reports the configured RAM size. */
    uint64_t mib = (boot.ram_bytes + (1u << 20) - 1) >> 20;
    printk("probe: banner cpus=%u mem_mib=%llu cmdline='%s'\n", cpus_online,
           (unsigned long long)mib, boot.cmdline);
    if (!boot.start_info_ok) {
        printk("probe: no valid hvm_start_info at 0x%x\n", pvh_start_info_pa);
    }

    static char args[CMDLINE_MAX];
    memcpy(args, boot.cmdline, sizeof(args));
    char* argv[MAX_ARGS];
    int argc = split_args(args, argv, MAX_ARGS);
    probe_exit(run_workload(argc, argv));
}
