/*
 * AP start-up and the AP job mailbox, at CPL3: the local APIC's ICR is user-mapped MMIO, so the
 * BSP sends INIT and SIPI and waits natively; only the APs' own short CPL0 path (trampoline,
 * cpu_start_cpl0) runs emulated. APs then wait at CPL3 for jobs.
 */
#include "probe.h"
#include "x86.h"

/* ICR low word, Intel SDM vol. 3 §11.6.1. */
#define ICR_INIT 0x00000500u
#define ICR_STARTUP 0x00000600u
#define ICR_LEVEL_ASSERT 0x00004000u
#define ICR_BUSY 0x00001000u

/* A VM needs far less than the MP spec's 10 ms INIT wait: KVM and QEMU latch INIT and SIPI. */
#define INIT_TO_SIPI_US 10
#define SIPI_TO_SIPI_US 200
#define AP_ARRIVAL_US 1000000
#define ICR_IDLE_US 10000

struct cpu_slot cpu_slots[MAX_CPUS];
uint32_t cpus_expected;
uint32_t cpus_online;
const char* cpus_source = "none";
static uint32_t aps_arrived;

static void send_ipi(uint32_t apic_id, uint32_t icr_lo) {
    lapic_write(LAPIC_ICR_HI, apic_id << 24);
    lapic_write(LAPIC_ICR_LO, icr_lo);
    uint64_t deadline = rdtsc() + tsc_cycles_from_us(ICR_IDLE_US);
    while ((lapic_read(LAPIC_ICR_LO) & ICR_BUSY) && rdtsc() < deadline) {
        cpu_relax();
    }
}

static uint32_t arrived(void) {
    return __atomic_load_n(&aps_arrived, __ATOMIC_ACQUIRE);
}

static void wait_arrivals(uint32_t want, uint64_t us) {
    uint64_t deadline = rdtsc() + tsc_cycles_from_us(us);
    while (arrived() < want && rdtsc() < deadline) {
        cpu_relax();
    }
}

/* INIT-SIPI-SIPI to every enabled AP (MP spec 1.4 §B.4), all at once, then wait for them. */
void smp_boot_aps(void) {
    uint8_t ids[256];
    uint32_t n = cpus_discover(boot.rsdp_pa, ids, 256, &cpus_source);
    uint32_t bsp = cpu_slots[0].apic_id;
    uint8_t targets[MAX_CPUS];
    uint32_t ntargets = 0;
    bool bsp_listed = false;
    for (uint32_t i = 0; i < n; i++) {
        if (ids[i] == bsp) {
            bsp_listed = true;
        } else if (ntargets < MAX_CPUS - 1) {
            targets[ntargets++] = ids[i];
        }
    }
    cpus_expected = n + (bsp_listed ? 0 : 1);
    cpus_online = 1;
    if (ntargets == 0) {
        return;
    }

    memcpy(phys_ptr(TRAMPOLINE_PA), trampoline_start, (size_t)(trampoline_end - trampoline_start));
    for (uint32_t i = 0; i < ntargets; i++) {
        send_ipi(targets[i], ICR_INIT | ICR_LEVEL_ASSERT);
    }
    tsc_delay_us(INIT_TO_SIPI_US);
    for (uint32_t i = 0; i < ntargets; i++) {
        send_ipi(targets[i], ICR_STARTUP | TRAMPOLINE_SIPI_VECTOR);
    }
    wait_arrivals(ntargets, SIPI_TO_SIPI_US);
    if (arrived() < ntargets) {
        /* A second SIPI is ignored by APs that already left wait-for-SIPI. */
        for (uint32_t i = 0; i < ntargets; i++) {
            send_ipi(targets[i], ICR_STARTUP | TRAMPOLINE_SIPI_VECTOR);
        }
        wait_arrivals(ntargets, AP_ARRIVAL_US);
    }
    cpus_online = 1 + arrived();
}

NORETURN void ap_main(uint32_t index) {
    struct cpu_slot* s = &cpu_slots[index];
    s->apic_id = lapic_id();
    s->cpl = current_cpl();
    __atomic_store_n(&s->online, 1, __ATOMIC_RELEASE);
    __atomic_fetch_add(&aps_arrived, 1, __ATOMIC_ACQ_REL);
    for (;;) {
        uint32_t seq = __atomic_load_n(&s->job_seq, __ATOMIC_ACQUIRE);
        if (seq == s->done_seq) {
            cpu_relax();
            continue;
        }
        s->job_fn(index, s->job_arg);
        __atomic_store_n(&s->done_seq, seq, __ATOMIC_RELEASE);
    }
}

bool smp_run_on(uint32_t index, void (*fn)(uint32_t, uint64_t), uint64_t arg, uint64_t timeout_us) {
    if (index == 0 || index >= MAX_CPUS) {
        return false;
    }
    struct cpu_slot* s = &cpu_slots[index];
    if (!__atomic_load_n(&s->online, __ATOMIC_ACQUIRE) || s->done_seq != s->job_seq) {
        return false;
    }
    s->job_fn = fn;
    s->job_arg = arg;
    uint32_t seq = s->job_seq + 1;
    __atomic_store_n(&s->job_seq, seq, __ATOMIC_RELEASE);
    uint64_t deadline = rdtsc() + tsc_cycles_from_us(timeout_us);
    while (__atomic_load_n(&s->done_seq, __ATOMIC_ACQUIRE) != seq) {
        if (rdtsc() > deadline) {
            return false;
        }
        cpu_relax();
    }
    return true;
}
