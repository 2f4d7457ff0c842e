/*
 * `msi [COUNT]`: MSI-X round trips through the test device (docs/platform.md), driven entirely
 * from CPL3: config space by port I/O, the BARs by user-mapped MMIO. Only the interrupt handler
 * (isr.S) runs at CPL0.
 */
#include "probe.h"
#include "x86.h"

#define TESTDEV_VENDOR 0x1234
#define TESTDEV_DEVICE 0x7e57
#define TESTDEV_ID 0x7e570001u
#define REG_ID 0x00
#define REG_TRIGGER 0x04
#define REG_TRIGGERS 0x08

#define PCI_STATUS_COMMAND 0x04
#define PCI_COMMAND_MEMORY (1u << 1)
#define PCI_COMMAND_MASTER (1u << 2)
#define PCI_COMMAND_INTX_DISABLE (1u << 10)

/* PCI local bus spec 3.0 §6.8.2: MSI-X capability; message control is the upper half of the
 * first dword. */
#define PCI_CAP_MSIX 0x11
#define MSIX_CTRL_ENABLE (1u << 31)
#define MSIX_CTRL_FMASK (1u << 30)
#define MSIX_TABLE_SIZE(hdr) ((((hdr) >> 16) & 0x7FFu) + 1)
#define MSIX_BIR_MASK 7u
#define MSIX_ENTRY_ADDR_LO 0
#define MSIX_ENTRY_ADDR_HI 4
#define MSIX_ENTRY_DATA 8
#define MSIX_ENTRY_CTRL 12
#define MSIX_VECTOR_MASKED 1u
#define MSI_ADDRESS_BASE 0xFEE00000u /* Intel SDM vol. 3 §11.11.1, physical destination */

#define DEFAULT_ROUNDS 100
#define MAX_ROUNDS 1000000
#define MAX_SAMPLES 16384
#define ROUND_TIMEOUT_US 1000000
#define QUIET_US 20000
#define MAX_CONSECUTIVE_TIMEOUTS 3
#define MAPPED_LIMIT 0x100000000ull

struct msix_dev {
    struct pci_dev pci;
    uint8_t cap;
    uint32_t vectors;
    uint64_t regs;  /* BAR0 */
    uint64_t table; /* MSI-X table */
    uint64_t pba;   /* pending bit array */
};

struct rtt_stats {
    uint64_t samples[MAX_SAMPLES];
    size_t n;
    uint64_t max;
};

static struct rtt_stats stats;

static uint64_t delivered_count(void) {
    return __atomic_load_n(&msi_count[0], __ATOMIC_ACQUIRE);
}

static bool wait_count(uint64_t target, uint64_t timeout_us) {
    uint64_t deadline = rdtsc() + tsc_cycles_from_us(timeout_us);
    while (delivered_count() < target) {
        if (rdtsc() > deadline) {
            return delivered_count() >= target;
        }
        cpu_relax();
    }
    return true;
}

static bool mapped(uint64_t addr) {
    return addr != 0 && addr < MAPPED_LIMIT - 4096;
}

/* Finds the device and reads where its registers, table and PBA are; prints why not. */
static bool msix_locate(struct msix_dev* m) {
    if (!pci_find(TESTDEV_VENDOR, TESTDEV_DEVICE, &m->pci)) {
        printk("msi: test device not found\n");
        return false;
    }
    m->cap = pci_find_cap(m->pci, PCI_CAP_MSIX);
    if (m->cap == 0) {
        printk("msi: no MSI-X capability\n");
        return false;
    }
    uint32_t hdr = pci_read32(m->pci, m->cap);
    uint32_t tbl = pci_read32(m->pci, (uint8_t)(m->cap + 4));
    uint32_t pba = pci_read32(m->pci, (uint8_t)(m->cap + 8));
    uint64_t tbl_bar = pci_bar_address(m->pci, tbl & MSIX_BIR_MASK);
    uint64_t pba_bar = pci_bar_address(m->pci, pba & MSIX_BIR_MASK);
    m->vectors = MSIX_TABLE_SIZE(hdr);
    m->regs = pci_bar_address(m->pci, 0);
    m->table = tbl_bar + (tbl & ~MSIX_BIR_MASK);
    m->pba = pba_bar + (pba & ~MSIX_BIR_MASK);
    printk("msi: device 00:%02x.%u regs=0x%llx msix_table=0x%llx pba=0x%llx vectors=%u\n",
           m->pci.dev, m->pci.fn, (unsigned long long)m->regs, (unsigned long long)m->table,
           (unsigned long long)m->pba, m->vectors);
    if (m->regs == 0 || tbl_bar == 0 || pba_bar == 0) {
        printk("msi: BARs not assigned\n");
        return false;
    }
    if (!mapped(m->regs) || !mapped(m->table) || !mapped(m->pba)) {
        printk("msi: BARs outside the mapped 4 GiB\n");
        return false;
    }
    return true;
}

/* Enables decoding and MSI-X; entry 0 targets this CPU's APIC with VEC_MSI0. */
static void msix_enable(const struct msix_dev* m) {
    uint32_t sc = pci_read32(m->pci, PCI_STATUS_COMMAND);
    /* Status bits are write-1-to-clear: write zeros there. */
    pci_write32(m->pci, PCI_STATUS_COMMAND,
                (sc & 0xFFFF) | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER | PCI_COMMAND_INTX_DISABLE);
    /* Function-masked while the entry is written (PCI 3.0 §6.8.2.9). */
    uint32_t hdr = pci_read32(m->pci, m->cap);
    pci_write32(m->pci, m->cap, hdr | MSIX_CTRL_ENABLE | MSIX_CTRL_FMASK);
    uint64_t e = m->table;
    mmio_write32(e + MSIX_ENTRY_ADDR_LO, MSI_ADDRESS_BASE | (lapic_id() << 12));
    mmio_write32(e + MSIX_ENTRY_ADDR_HI, 0);
    mmio_write32(e + MSIX_ENTRY_DATA, VEC_MSI0); /* fixed delivery, edge */
    mmio_write32(e + MSIX_ENTRY_CTRL, 0);
    pci_write32(m->pci, m->cap, (hdr | MSIX_CTRL_ENABLE) & ~MSIX_CTRL_FMASK);
}

static void set_entry_mask(const struct msix_dev* m, bool on) {
    mmio_write32(m->table + MSIX_ENTRY_CTRL, on ? MSIX_VECTOR_MASKED : 0);
    (void)mmio_read32(m->table + MSIX_ENTRY_CTRL); /* flush the posted write */
}

static void set_function_mask(const struct msix_dev* m, bool on) {
    uint32_t hdr = pci_read32(m->pci, m->cap);
    pci_write32(m->pci, m->cap, on ? hdr | MSIX_CTRL_FMASK : hdr & ~MSIX_CTRL_FMASK);
}

static bool pending(const struct msix_dev* m) {
    return (mmio_read32(m->pba) & 1u) != 0;
}

/*
 * A masked vector must not be delivered but must show as pending, and must be delivered exactly
 * once (clearing the pending bit) when unmasked (PCI 3.0 §6.8.3.4).
 */
static bool mask_test(const struct msix_dev* m, const char* name,
                      void (*set_mask)(const struct msix_dev*, bool)) {
    set_mask(m, true);
    uint64_t before = delivered_count();
    mmio_write32(m->regs + REG_TRIGGER, 0);
    tsc_delay_us(QUIET_US);
    bool quiet = delivered_count() == before;
    bool was_pending = pending(m);
    set_mask(m, false);
    bool delivered = wait_count(before + 1, ROUND_TIMEOUT_US);
    tsc_delay_us(1000);
    bool once = delivered_count() == before + 1;
    bool cleared = !pending(m);
    printk("msi: %s mask: quiet=%d pending=%d delivered_on_unmask=%d once=%d pba_cleared=%d\n",
           name, quiet, was_pending, delivered, once, cleared);
    return quiet && was_pending && delivered && once && cleared;
}

/* One trigger per round; the CPL3 loop sees the counter move after the handler's iretq. */
static uint64_t run_rounds(const struct msix_dev* m, uint64_t rounds, uint64_t* timeouts) {
    uint64_t timeout = tsc_cycles_from_us(ROUND_TIMEOUT_US);
    unsigned consecutive = 0;
    uint64_t i;
    for (i = 0; i < rounds; i++) {
        uint64_t before = delivered_count();
        uint64_t t0 = rdtsc();
        mmio_write32(m->regs + REG_TRIGGER, 0);
        uint64_t t1;
        bool ok;
        for (;;) {
            t1 = rdtsc();
            ok = delivered_count() != before;
            if (ok || t1 - t0 > timeout) {
                break;
            }
        }
        if (!ok) {
            ++*timeouts;
            if (++consecutive >= MAX_CONSECUTIVE_TIMEOUTS) {
                printk("msi: %u consecutive timeouts, stopping\n", consecutive);
                i++;
                break;
            }
            continue;
        }
        consecutive = 0;
        uint64_t dt = t1 - t0;
        if (stats.n < MAX_SAMPLES) {
            stats.samples[stats.n++] = dt;
        }
        if (dt > stats.max) {
            stats.max = dt;
        }
    }
    return i;
}

static uint64_t cycles_to_ns(uint64_t cycles) {
    return cycles * 1000000 / tsc_khz;
}

int workload_msi(int argc, char** argv) {
    uint64_t rounds = DEFAULT_ROUNDS;
    if (argc > 1 && (!parse_u64(argv[1], &rounds) || rounds == 0 || rounds > MAX_ROUNDS)) {
        printk("msi: bad COUNT '%s' (1..%u)\n", argv[1], MAX_ROUNDS);
        return 2;
    }
    struct msix_dev m;
    if (!msix_locate(&m)) {
        return 1;
    }
    tsc_calibrate(); /* for the 1 s timeouts and the ns figures */
    msix_enable(&m);
    uint32_t id = mmio_read32(m.regs + REG_ID);
    if (id != TESTDEV_ID) {
        printk("msi: ID register 0x%x, expected 0x%x\n", id, TESTDEV_ID);
    }

    uint32_t triggers0 = mmio_read32(m.regs + REG_TRIGGERS);
    uint64_t base = delivered_count();
    uint64_t timeouts = 0;
    uint64_t done = run_rounds(&m, rounds, &timeouts);
    if (timeouts > 0) {
        tsc_delay_us(QUIET_US); /* let late interrupts land before counting */
    }
    uint64_t delivered = delivered_count() - base;
    uint32_t triggers = mmio_read32(m.regs + REG_TRIGGERS) - triggers0;

    bool masked_ok = mask_test(&m, "entry", set_entry_mask);
    bool fmask_ok = mask_test(&m, "function", set_function_mask);

    uint64_t median = 0;
    if (stats.n > 0) {
        sort_u64(stats.samples, stats.n);
        median = stats.samples[stats.n / 2];
    }
    printk(
        "msi: delivered=%llu/%llu masked_ok=%d fmask_ok=%d timeouts=%llu triggers=%u "
        "rtt_cycles_median=%llu rtt_cycles_max=%llu rtt_ns_median=%llu rtt_ns_max=%llu "
        "tsc_khz=%llu\n",
        (unsigned long long)delivered, (unsigned long long)rounds, masked_ok, fmask_ok,
        (unsigned long long)timeouts, triggers, (unsigned long long)median,
        (unsigned long long)stats.max, (unsigned long long)cycles_to_ns(median),
        (unsigned long long)cycles_to_ns(stats.max), (unsigned long long)tsc_khz);
    bool ok = id == TESTDEV_ID && done == rounds && delivered == rounds && timeouts == 0 &&
              masked_ok && fmask_ok;
    return ok ? 0 : 1;
}
