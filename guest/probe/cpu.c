/*
 * CPL0 setup and fatal exceptions.
 *
 * cpu_start_cpl0() is the whole CPL0 life of a CPU: load its TSS and the static IDT, enable the
 * local APIC, then iretq to CPL3 for good. Everything else (serial, CPU discovery, AP start-up,
 * PCI, workloads) runs at CPL3, where kvm_pvm runs code natively; here each CPL0 instruction costs
 * about a microsecond.
 */
#include "probe.h"
#include "x86.h"
#include "xen.h"

/* Intel SDM vol. 3 §8.7: 64-bit TSS. */
struct __attribute__((packed)) tss64 {
    uint32_t reserved0;
    uint64_t rsp[3];
    uint64_t reserved1;
    uint64_t ist[7];
    uint64_t reserved2;
    uint16_t reserved3;
    uint16_t iomap_base;
};
_Static_assert(sizeof(struct tss64) == 104, "64-bit TSS is 104 bytes");

#define PIC1_DATA 0x21
#define PIC2_DATA 0xA1

extern uint8_t kstacks[MAX_CPUS][KSTACK_SIZE];
extern uint8_t ist_stacks[MAX_CPUS][IST_STACK_SIZE];
extern uint8_t ustacks[MAX_CPUS][USTACK_SIZE];

/* Flat descriptors: 64-bit code (L=1) and data for DPL0 and DPL3; TSS descriptors follow. */
uint64_t gdt[GDT_ENTRIES] __attribute__((aligned(16))) = {
    0,
    0x00AF9A000000FFFFull, /* SEL_KCODE */
    0x00CF92000000FFFFull, /* SEL_KDATA */
    0x00CFF2000000FFFFull, /* SEL_UDATA */
    0x00AFFA000000FFFFull, /* SEL_UCODE */
};
/* Read by lgdt in the 32-bit entry too: there only limit and the low 32 base bits count. */
const struct desc_ptr gdt_ptr = {sizeof(gdt) - 1, (uint64_t)gdt};

/*
 * The TSSs share one all-zero (all ports allowed) I/O bitmap placed after them; each TSS's
 * iomap_base reaches it. IOPL 3 alone is not enough on kvm_pvm: it runs CPL3 code on the real
 * CPU with IOPL 0, so an `out` faults into KVM, whose emulator then checks the guest TSS bitmap
 * (CPL > IOPL). QEMU, which keeps IOPL 3, never looks at the bitmap.
 */
#define TSS_STRIDE 128
#define IO_BITMAP_BYTES (65536 / 8)
struct tss_area {
    struct {
        struct tss64 tss;
        uint8_t pad[TSS_STRIDE - sizeof(struct tss64)];
    } slot[MAX_CPUS];
    uint8_t io_bitmap[IO_BITMAP_BYTES];
    uint8_t io_bitmap_end; /* all ones: a port access reads two bitmap bytes */
};
static struct tss_area tss_area CPL0_DATA __attribute__((aligned(4096))) = {.io_bitmap_end = 0xFF};

uint32_t ap_next_index CPL0_DATA = 1;
volatile uint64_t msi_count[2];

static void tss_install(uint32_t index) {
    struct tss64* t = &tss_area.slot[index].tss;
    t->rsp[0] = (uint64_t)kstacks[index] + KSTACK_SIZE;
    t->ist[0] = (uint64_t)ist_stacks[index] + IST_STACK_SIZE;
    uint16_t iomap = (uint16_t)((uint64_t)tss_area.io_bitmap - (uint64_t)t);
    t->iomap_base = iomap;

    uint64_t base = (uint64_t)t;
    uint64_t limit = iomap + IO_BITMAP_BYTES; /* inclusive: covers the terminating byte */
    /* Type 9: available 64-bit TSS, present. */
    gdt[GDT_FIXED_ENTRIES + 2 * index] = (limit & 0xFFFF) | ((base & 0xFFFFFF) << 16) |
                                         (0x89ull << 40) | (((limit >> 16) & 0xF) << 48) |
                                         (((base >> 24) & 0xFF) << 56);
    gdt[GDT_FIXED_ENTRIES + 2 * index + 1] = base >> 32;
    uint16_t sel = (uint16_t)(SEL_TSS0 + 16 * index);
    __asm__ volatile("ltr %0" : : "r"(sel) : "memory");
}

/*
 * With Xen's signature at CPUID 0x40000000, hand the vmm the hypercall page (base+2 EBX names the
 * MSR). A wrmsr needs CPL0, and this is a handful of instructions; everything else about Xen
 * happens at CPL3 (xen.c).
 */
static void xen_hypercall_page_setup(void) {
    uint32_t r[4];
    cpuid(0x40000000, 0, r);
    if (r[1] != 0x566E6558 || r[2] != 0x65584D4D || r[3] != 0x4D4D566E || r[0] < 0x40000002) {
        return; /* not "XenVMMXenVMM" */
    }
    cpuid(0x40000002, 0, r);
    if (r[1] != 0) {
        wrmsr(r[1], (uint64_t)xen_hypercall_page);
        xen_hypercall_msr = r[1];
    }
}

void cpu_start_cpl0(uint32_t index) {
    tss_install(index);
    __asm__ volatile("lidt %0" : : "m"(idt_ptr));
    if (index == 0) {
        /* Firmware leaves the 8259 running (vectors 8-15, its timer unmasked). Mask it before
         * LINT0 so its output drops while still routed, leaving nothing latched. */
        outb(PIC1_DATA, 0xFF);
        outb(PIC2_DATA, 0xFF);
        xen_hypercall_page_setup();
    }
    lapic_write(LAPIC_SVR, 0x100 | VEC_SPURIOUS); /* software-enable the APIC */
    lapic_write(LAPIC_LVT_LINT0, LAPIC_LVT_MASKED);
    uint64_t entry = index == 0 ? (uint64_t)bsp_user_start : (uint64_t)ap_user_start;
    enter_user(index, entry, (uint64_t)ustacks[index] + USTACK_SIZE);
}

static bool has_error_code(uint64_t v) {
    return v == 8 || (v >= 10 && v <= 14) || v == 17 || v == 21 || v == 29 || v == 30;
}

void isr_fatal(struct trap_frame* f) {
    char extra[64] = "";
    if (f->vector == 14) {
        snprintf(extra, sizeof(extra), " err=0x%llx CR2=0x%llx", (unsigned long long)f->error,
                 (unsigned long long)read_cr2());
    } else if (has_error_code(f->vector)) {
        snprintf(extra, sizeof(extra), " err=0x%llx", (unsigned long long)f->error);
    }
    printk("probe: fatal exception %llu at RIP=0x%llx CPL=%llu%s RSP=0x%llx RFLAGS=0x%llx\n",
           (unsigned long long)f->vector, (unsigned long long)f->rip,
           (unsigned long long)(f->cs & 3), extra, (unsigned long long)f->rsp,
           (unsigned long long)f->rflags);
    probe_exit(3);
}
