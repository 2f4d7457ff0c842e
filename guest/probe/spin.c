/*
 * `spin seconds=S [cpus=N]`: CPU-bound work at CPL3 on N online CPUs (default all) for S seconds
 * of TSC time, reporting how much of that time each vCPU really ran. The loop reads the TSC
 * back to back; a step longer than GAP_US means the vCPU's host thread was off the CPU
 * (throttled by a CPU cap or preempted), so ran = wall - the sum of those steps. Output:
 *   spin: cpu 0 wall_ms=5000 ran_ms=512 share=10.2%
 *   spin: cpus=2 seconds=5 share=10.1%          (the mean over the CPUs)
 * A host agent's CPU cap of c % of one host CPU over n spinning vCPUs shows as c/n % each.
 */
#include "probe.h"
#include "x86.h"

#define GAP_US 20
#define MAX_SPIN_SECONDS 3600

struct spin_result {
    uint64_t wall;
    uint64_t ran;
    uint32_t done;
};

static struct spin_result spin_results[MAX_CPUS];

static void spin_for(uint32_t index, uint64_t cycles) {
    uint64_t gap = tsc_cycles_from_us(GAP_US);
    uint64_t start = rdtsc();
    uint64_t end = start + cycles;
    uint64_t last = start;
    uint64_t lost = 0;
    volatile uint64_t sink = 0;
    while (last < end) {
        for (int i = 0; i < 64; i++) {
            sink = sink * 6364136223846793005ull + 1442695040888963407ull;
        }
        uint64_t now = rdtsc();
        if (now - last > gap) {
            lost += now - last;
        }
        last = now;
    }
    struct spin_result* r = &spin_results[index];
    r->wall = last - start;
    r->ran = r->wall > lost ? r->wall - lost : 0;
    __atomic_store_n(&r->done, 1, __ATOMIC_RELEASE);
}

static void spin_job(uint32_t index, uint64_t cycles) { spin_for(index, cycles); }

static bool starts_with(const char* s, const char* prefix) {
    while (*prefix) {
        if (*s++ != *prefix++) {
            return false;
        }
    }
    return true;
}

static uint64_t to_ms(uint64_t cycles) { return tsc_khz ? cycles / tsc_khz : 0; }

int workload_spin(int argc, char** argv) {
    uint64_t seconds = 5;
    uint64_t cpus = cpus_online;
    for (int i = 1; i < argc; i++) {
        const char* a = argv[i];
        bool ok = false;
        if (starts_with(a, "seconds=")) {
            ok = parse_u64(a + 8, &seconds) && seconds >= 1 && seconds <= MAX_SPIN_SECONDS;
        } else if (starts_with(a, "cpus=")) {
            ok = parse_u64(a + 5, &cpus) && cpus >= 1 && cpus <= cpus_online;
        }
        if (!ok) {
            printk("probe: spin: bad argument '%s' (seconds=1..%u, cpus=1..%u)\n", a, MAX_SPIN_SECONDS,
                   cpus_online);
            return 2;
        }
    }
    uint64_t cycles = tsc_cycles_from_us(seconds * 1000000ull);
    for (uint32_t i = 0; i < MAX_CPUS; i++) {
        spin_results[i].done = 0;
    }
    uint32_t started = 1;
    for (uint32_t i = 1; i < MAX_CPUS && started < cpus; i++) {
        if (!__atomic_load_n(&cpu_slots[i].online, __ATOMIC_ACQUIRE)) {
            continue;
        }
        /* A zero timeout only posts the job; the AP reports through spin_results. */
        (void)smp_run_on(i, spin_job, cycles, 0);
        started++;
    }
    spin_for(0, cycles);
    uint64_t deadline = rdtsc() + tsc_cycles_from_us(10000000ull);
    uint64_t share_sum = 0; /* per ten thousand */
    uint32_t reported = 0;
    for (uint32_t i = 0; i < MAX_CPUS && reported < started; i++) {
        struct spin_result* r = &spin_results[i];
        if (i > 0 && !__atomic_load_n(&cpu_slots[i].online, __ATOMIC_ACQUIRE)) {
            continue;
        }
        while (!__atomic_load_n(&r->done, __ATOMIC_ACQUIRE) && rdtsc() < deadline) {
            cpu_relax();
        }
        if (!r->done) {
            printk("spin: cpu %u did not finish\n", i);
            return 1;
        }
        uint64_t share = r->wall ? r->ran * 10000 / r->wall : 0;
        share_sum += share;
        reported++;
        printk("spin: cpu %u wall_ms=%llu ran_ms=%llu share=%llu.%llu%%\n", i, (unsigned long long)to_ms(r->wall),
               (unsigned long long)to_ms(r->ran), (unsigned long long)(share / 100),
               (unsigned long long)(share % 100 / 10));
    }
    uint64_t mean = share_sum / reported;
    printk("spin: cpus=%u seconds=%llu share=%llu.%llu%%\n", reported, (unsigned long long)seconds,
           (unsigned long long)(mean / 100), (unsigned long long)(mean % 100 / 10));
    return 0;
}
