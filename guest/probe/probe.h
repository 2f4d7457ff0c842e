/*
 * probe: a tiny PVH guest whose CPL0 part only sets the machine up and takes interrupts, and
 * whose workloads run at CPL3 with IOPL 3 (see README.md for why).
 *
 * This header is shared by the C and the assembly files; the part below __ASSEMBLER__ is C only.
 */
#ifndef PROBE_PROBE_H
#define PROBE_PROBE_H

#define MAX_CPUS 32
#define KSTACK_SHIFT 13 /* 8 KiB CPL0 stack per CPU (TSS.RSP0) */
#define KSTACK_SIZE (1 << KSTACK_SHIFT)
#define IST_STACK_SIZE 4096 /* double-fault stack per CPU (TSS.IST1) */
#define USTACK_SIZE 16384   /* CPL3 stack per CPU */

/* GDT layout; one 16-byte TSS descriptor per CPU because ltr marks a descriptor busy. */
#define SEL_KCODE 0x08
#define SEL_KDATA 0x10
#define SEL_UDATA 0x18
#define SEL_UCODE 0x20
#define SEL_TSS0 0x28
#define GDT_FIXED_ENTRIES 5
#define GDT_ENTRIES (GDT_FIXED_ENTRIES + 2 * MAX_CPUS)

#define CR0_PE 0x00000001
#define CR0_PG 0x80000000
#define CR0_CD_NW 0x60000000
#define CR4_PAE 0x00000020
#define MSR_EFER 0xC0000080
#define EFER_LME 0x00000100

/* RFLAGS for CPL3: IF, IOPL 3 (port I/O; see also the TSS I/O bitmap in cpu.c), bit 1. */
#define USER_RFLAGS 0x3202

/* Interrupt vectors beyond the exceptions. */
#define VEC_MSI0 0x40
#define VEC_MSI1 0x41
#define VEC_XEN_UPCALL 0x42 /* the per-vCPU event channel upcall (HVMOP_set_evtchn_upcall_vector) */
#define VEC_SPURIOUS 0xFF

/*
 * The local APIC EOI register through the alias of 3-4 GiB at the top of the address space
 * (entry.S), reachable as a sign-extended 32-bit absolute address.
 */
#define LAPIC_EOI_ALIAS 0xFFFFFFFFFEE000B0

/*
 * Interrupt stubs live at a fixed address (probe.ld pins .text.isr there) so that the IDT can be
 * static data: stub for exception v at ISR_BASE + 16 * v, the others in 32-byte slots after them.
 */
#define ISR_BASE 0x101000
#define ISR_MSI0_OFF 0x200
#define ISR_MSI1_OFF 0x220
#define ISR_SPURIOUS_OFF 0x240
#define ISR_XEN_UPCALL_OFF 0x260

/* The AP real-mode trampoline runs from this page; SIPI vector = page number. */
#define TRAMPOLINE_PA 0x8000
#define TRAMPOLINE_SIPI_VECTOR (TRAMPOLINE_PA >> 12)

#ifndef __ASSEMBLER__

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define NORETURN __attribute__((noreturn))
#define PRINTF_LIKE(f, a) __attribute__((format(printf, f, a)))
/*
 * Data that CPL0 writes before the BSP zeroes .bss at CPL3 must live in initialised data.
 */
#define CPL0_DATA __attribute__((section(".data.cpl0")))

/* ---- boot info (boot.c) ---- */
#define CMDLINE_MAX 256
struct boot_info {
    bool start_info_ok;
    char cmdline[CMDLINE_MAX];
    uint64_t ram_bytes;
    uint64_t rsdp_pa; /* from the loader, 0 if none */
    /* The largest RAM range of the memory map above the image and below 3 GiB (mem.c hands it
     * out); both 0 without a memory map. */
    uint64_t free_base;
    uint64_t free_end;
};
extern struct boot_info boot;
extern uint32_t pvh_start_info_pa; /* written by the 32-bit entry (ebx) */
extern uint64_t tsc_khz;           /* TSC rate: 3 GHz until tsc_calibrate() */

void tsc_calibrate(void);
uint64_t tsc_cycles_from_us(uint64_t us);
void tsc_delay_us(uint64_t us);

/* ---- CPL0 setup (cpu.c) ---- */
struct trap_frame {
    uint64_t r15, r14, r13, r12, r11, r10, r9, r8, rbp, rdi, rsi, rdx, rcx, rbx, rax;
    uint64_t vector, error;
    uint64_t rip, cs, rflags, rsp, ss; /* pushed by the CPU */
};

NORETURN void cpu_start_cpl0(uint32_t index);
NORETURN void isr_fatal(struct trap_frame* frame);
extern volatile uint64_t msi_count[2]; /* incremented by the CPL0 MSI handlers */

/* ---- entry.S / isr.S ---- */
struct __attribute__((packed)) desc_ptr {
    uint16_t limit;
    uint64_t base;
};
extern const struct desc_ptr idt_ptr;
NORETURN void enter_user(uint64_t arg, uint64_t rip, uint64_t rsp);
void bsp_user_start(void);
void ap_user_start(void);
extern const uint8_t trampoline_start[];
extern const uint8_t trampoline_end[];
extern uint32_t ap_next_index;

/* ---- SMP (cpus.c, smp.c) ---- */
struct cpu_slot {
    volatile uint32_t online; /* set by the CPU itself at CPL3 */
    volatile uint32_t apic_id;
    volatile uint32_t cpl;
    /* Mailbox: the BSP posts fn/arg and bumps job_seq; the CPU runs it and copies job_seq to
     * done_seq. */
    void (*volatile job_fn)(uint32_t index, uint64_t arg);
    volatile uint64_t job_arg;
    volatile uint32_t job_seq;
    volatile uint32_t done_seq;
};
extern struct cpu_slot cpu_slots[MAX_CPUS];
extern uint32_t cpus_expected; /* from the MADT or MP table (1 if neither) */
extern uint32_t cpus_online;   /* BSP + APs that reached CPL3 */
extern const char* cpus_source;

/* Enabled CPUs' APIC ids from the ACPI MADT (via rsdp_pa) or else the MP table (cpus.c). */
uint32_t cpus_discover(uint64_t rsdp_pa, uint8_t* ids, uint32_t max, const char** source);
void smp_boot_aps(void);
bool smp_run_on(uint32_t index, void (*fn)(uint32_t, uint64_t), uint64_t arg, uint64_t timeout_us);
NORETURN void ap_main(uint32_t index);
NORETURN void probe_main(void);

/* ---- serial and exit (serial.c) ---- */
void printk(const char* fmt, ...) PRINTF_LIKE(1, 2);
NORETURN void probe_exit(int status);

/* ---- PCI (pci.c) ---- */
struct pci_dev {
    uint8_t bus, dev, fn;
};
uint32_t pci_read32(struct pci_dev d, uint8_t off);
void pci_write32(struct pci_dev d, uint8_t off, uint32_t val);
bool pci_find(uint16_t vendor, uint16_t device, struct pci_dev* out);
uint64_t pci_bar_address(struct pci_dev d, unsigned bir);
uint8_t pci_find_cap(struct pci_dev d, uint8_t cap_id);

/* ---- RAM beyond the image (mem.c): a bump allocator, identity-mapped (physical = virtual) ---- */
void* ram_alloc(uint64_t bytes, uint64_t align); /* zeroed; NULL (with a message) when out */
uint64_t ram_mark(void);
void ram_release(uint64_t mark); /* frees everything allocated since ram_mark() */

/* ---- workloads (workloads.c, msi.c, nvme_verify.c, nvme_bench.c, xen_verify.c, xen_bench.c) */
int run_workload(int argc, char** argv);
int workload_spin(int argc, char** argv); /* spin.c */
int workload_msi(int argc, char** argv);
int workload_nvme_verify(int argc, char** argv);
int workload_nvme_bench(int argc, char** argv);
int workload_xen_verify(int argc, char** argv);
int workload_xen_bench(int argc, char** argv);

/* ---- small libc replacements (lib.c) ---- */
void* memset(void* dst, int c, size_t n);
void* memcpy(void* dst, const void* src, size_t n);
int memcmp(const void* a, const void* b, size_t n);
size_t strlen(const char* s);
int strcmp(const char* a, const char* b);
bool parse_u64(const char* s, uint64_t* out);
int vsnprintf(char* buf, size_t size, const char* fmt, va_list ap);
int snprintf(char* buf, size_t size, const char* fmt, ...) PRINTF_LIKE(3, 4);
void sort_u64(uint64_t* v, size_t n);

#endif /* __ASSEMBLER__ */
#endif /* PROBE_PROBE_H */
