/*
 * Workload dispatch and the small workloads: `exit N`, `print N`, `smp` and `fault`. `msi` is in msi.c,
 * `nvme-verify` in nvme_verify.c, `nvme-bench` in nvme_bench.c, `xen-verify` in xen_verify.c,
 * `xen-bench` in xen_bench.c.
 * Each returns the probe's exit status.
 */
#include "probe.h"
#include "x86.h"

#define AP_JOB_TIMEOUT_US 1000000

static int workload_exit(int argc, char** argv) {
    uint64_t status = 0;
    if (argc > 1 && (!parse_u64(argv[1], &status) || status > 255)) {
        printk("probe: exit: bad status '%s' (0..255)\n", argv[1]);
        return 2;
    }
    return (int)status;
}

/* `print N`: N numbered lines on the console (a guest that talks without end, in small). */
static int workload_print(int argc, char** argv) {
    uint64_t lines = 0;
    if (argc < 2 || !parse_u64(argv[1], &lines) || lines > 100000000ull) {
        printk("probe: print: needs a line count (0..100000000)\n");
        return 2;
    }
    for (uint64_t i = 0; i < lines; i++) {
        printk("print: line %llu of %llu\n", (unsigned long long)i, (unsigned long long)lines);
    }
    return 0;
}

static uint64_t smp_counter;

/* Runs on an AP at CPL3 through the mailbox. */
static void smp_ping(uint32_t index, uint64_t arg) {
    (void)arg;
    __atomic_fetch_add(&smp_counter, 1, __ATOMIC_ACQ_REL);
    cpu_slots[index].cpl = current_cpl();
}

/* Every AP counted in the banner reached CPL3 on its own and still answers a job there. */
static int workload_smp(void) {
    uint32_t aps = 0;
    uint32_t pinged = 0;
    bool all_user = true;
    for (uint32_t i = 0; i < MAX_CPUS; i++) {
        if (!__atomic_load_n(&cpu_slots[i].online, __ATOMIC_ACQUIRE)) {
            continue;
        }
        if (i > 0) {
            aps++;
            if (smp_run_on(i, smp_ping, 0, AP_JOB_TIMEOUT_US)) {
                pinged++;
            }
        }
        struct cpu_slot* s = &cpu_slots[i];
        all_user = all_user && s->cpl == 3;
        printk("smp: cpu %u apic_id=%u cpl=%u%s\n", i, s->apic_id, s->cpl, i == 0 ? " bsp" : "");
    }
    uint64_t counter = __atomic_load_n(&smp_counter, __ATOMIC_ACQUIRE);
    printk("smp: expected=%u online=%u ap_pings=%u/%u counter=%llu source=%s\n", cpus_expected,
           cpus_online, pinged, aps, (unsigned long long)counter, cpus_source);
    bool ok = cpus_online == cpus_expected && aps + 1 == cpus_online && pinged == aps &&
              counter == aps && all_user;
    return ok ? 0 : 1;
}

/* Takes an exception at CPL3 on purpose, to exercise the fatal path (status 3). */
static int workload_fault(int argc, char** argv) {
    const char* kind = argc > 1 ? argv[1] : "pf";
    if (strcmp(kind, "pf") == 0) {
        (void)*(volatile uint32_t*)phys_ptr(0x100000000ull); /* above the mapped 4 GiB */
    } else if (strcmp(kind, "ud") == 0) {
        __asm__ volatile("ud2");
    } else if (strcmp(kind, "gp") == 0) {
        (void)*(volatile uint32_t*)phys_ptr(0x8000000000000000ull); /* non-canonical */
    } else {
        printk("probe: fault: unknown kind '%s' (pf, ud, gp)\n", kind);
        return 2;
    }
    printk("probe: fault: no exception taken\n");
    return 1;
}

int run_workload(int argc, char** argv) {
    if (argc == 0) {
        return 0;
    }
    if (strcmp(argv[0], "exit") == 0) {
        return workload_exit(argc, argv);
    }
    if (strcmp(argv[0], "print") == 0) {
        return workload_print(argc, argv);
    }
    if (strcmp(argv[0], "spin") == 0) { /* spin.c */
        return workload_spin(argc, argv);
    }
    if (strcmp(argv[0], "msi") == 0) {
        return workload_msi(argc, argv);
    }
    if (strcmp(argv[0], "smp") == 0) {
        return workload_smp();
    }
    if (strcmp(argv[0], "fault") == 0) {
        return workload_fault(argc, argv);
    }
    if (strcmp(argv[0], "nvme-verify") == 0) {
        return workload_nvme_verify(argc, argv);
    }
    if (strcmp(argv[0], "nvme-bench") == 0) {
        return workload_nvme_bench(argc, argv);
    }
    if (strcmp(argv[0], "xen-verify") == 0) {
        return workload_xen_verify(argc, argv);
    }
    if (strcmp(argv[0], "xen-bench") == 0) {
        return workload_xen_bench(argc, argv);
    }
    printk("probe: unknown workload '%s'\n", argv[0]);
    return 2;
}
