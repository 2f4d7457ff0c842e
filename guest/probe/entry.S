/*
 * Boot paths into long mode and down to CPL3:
 *   - the PVH note and the 32-bit BSP entry (paging off, ebx = hvm_start_info),
 *   - the real-mode AP trampoline (copied to TRAMPOLINE_PA, entered by SIPI),
 *   - the 64-bit entries that call cpu_start_cpl0(index),
 *   - enter_user (iretq to CPL3) and the CPL3 entry stubs,
 *   - the identity page tables (static data, so CPL0 spends no instructions building them),
 *   - the per-CPU stacks.
 * Every instruction before CPL3 is emulated by kvm_pvm, so these paths are short on purpose.
 */
#include "probe.h"

/* Page table entry bits; A and D are preset so the walker never has to write them back. */
#define PTE_P 0x001
#define PTE_RW 0x002
#define PTE_US 0x004
#define PTE_PWT 0x008
#define PTE_PCD 0x010
#define PTE_A 0x020
#define PTE_D 0x040
#define PTE_PS 0x080
#define PTE_TABLE (PTE_P | PTE_RW | PTE_US | PTE_A)
#define PTE_2M (PTE_P | PTE_RW | PTE_US | PTE_A | PTE_D | PTE_PS)
#define PTE_2M_UC (PTE_2M | PTE_PCD | PTE_PWT)

/* PVH entry note, as read by QEMU and by nitrovm: name "Xen", type XEN_ELFNOTE_PHYS32_ENTRY. */
    .section .note.Xen, "a", @note
    .balign 4
    .long 4
    .long 4
    .long 18
    .asciz "Xen"
    .long pvh_entry32

/*
 * BSP entry: 32-bit protected mode, paging off, flat segments, ebx = &hvm_start_info.
 * The page tables are already in the image; load them, switch to long mode and go 64-bit.
 */
    .section .text.boot32, "ax"
    .code32
    .globl pvh_entry32
pvh_entry32:
    cli
    movl %ebx, pvh_start_info_pa
    lgdt gdt_ptr
    movl $CR4_PAE, %eax
    movl %eax, %cr4
    movl $pml4, %eax
    movl %eax, %cr3
    movl $MSR_EFER, %ecx
    rdmsr
    orl $EFER_LME, %eax
    wrmsr
    movl %cr0, %eax
    andl $~CR0_CD_NW, %eax
    orl $(CR0_PG | CR0_PE), %eax
    movl %eax, %cr0
    ljmp $SEL_KCODE, $bsp_entry64

    .code64
bsp_entry64:
    movl $SEL_KDATA, %eax
    movl %eax, %ds
    movl %eax, %es
    movl %eax, %ss
    xorl %eax, %eax
    movl %eax, %fs
    movl %eax, %gs
    movq $(kstacks + KSTACK_SIZE), %rsp
    xorl %edi, %edi
    call cpu_start_cpl0
    ud2

/*
 * AP entry from the trampoline, already in 64-bit mode on the shared page tables and GDT.
 * Each AP takes the next CPU index and its CPL0 stack; surplus APs park in hlt.
 */
    .text
    .globl ap_entry64
ap_entry64:
    movl $SEL_KDATA, %eax
    movl %eax, %ds
    movl %eax, %es
    movl %eax, %ss
    movl $1, %edi
    lock xaddl %edi, ap_next_index(%rip)
    cmpl $MAX_CPUS, %edi
    jae 1f
    leal 1(%edi), %eax
    shll $KSTACK_SHIFT, %eax
    leaq kstacks(%rip), %rsp
    addq %rax, %rsp
    call cpu_start_cpl0
1:  cli
    hlt
    jmp 1b

/* enter_user(arg, rip, rsp): iretq to CPL3 with IF=1 and IOPL 3; rdi (arg) survives. */
    .globl enter_user
enter_user:
    pushq $(SEL_UDATA | 3)
    pushq %rdx
    pushq $USER_RFLAGS
    pushq $(SEL_UCODE | 3)
    pushq %rsi
    xorl %eax, %eax
    movl %eax, %ds
    movl %eax, %es
    iretq

/* First CPL3 code on the BSP: zero .bss (nothing at CPL0 used it), then probe_main(). */
    .globl bsp_user_start
bsp_user_start:
    cld
    leaq __bss_start(%rip), %rdi
    leaq __bss_end(%rip), %rcx
    subq %rdi, %rcx
    xorl %eax, %eax
    rep stosb
    call probe_main
    ud2

/* First CPL3 code on an AP: ap_main(index), index still in rdi. */
    .globl ap_user_start
ap_user_start:
    cld
    call ap_main
    ud2

/*
 * AP trampoline, copied to TRAMPOLINE_PA and entered by SIPI in real mode at CS:IP = 0x0800:0.
 * It goes straight to long mode (PE and PG set together) and far-jumps into the image.
 */
    .section .rodata.trampoline, "a"
    .code16
    .globl trampoline_start
trampoline_start:
    cli
    lgdtl %cs:(tramp_gdtr - trampoline_start)
    movl $CR4_PAE, %eax
    movl %eax, %cr4
    movl $pml4, %eax
    movl %eax, %cr3
    movl $MSR_EFER, %ecx
    rdmsr
    orl $EFER_LME, %eax
    wrmsr
    movl $(CR0_PG | CR0_PE), %eax
    movl %eax, %cr0
    ljmpl $SEL_KCODE, $ap_entry64
    .balign 4
tramp_gdtr:
    .word GDT_ENTRIES * 8 - 1
    .long gdt
    .globl trampoline_end
trampoline_end:
    .code64

/*
 * Identity map of the first 4 GiB with 2 MiB pages, all user-accessible; 3-4 GiB (PCI window,
 * I/O APIC, local APIC) uncached. The same 3-4 GiB PD also sits at the top of the address space
 * (PML4[511] -> PDPT[511]) so a sign-extended disp32 reaches the local APIC: the MSI handler
 * then EOIs with one instruction.
 */
    .section .data.pagetables, "aw"
    .balign 4096
    .globl pml4
pml4:
    .quad pdpt + PTE_TABLE
    .fill 510, 8, 0
    .quad pdpt_top + PTE_TABLE
pdpt:
    .quad pd + 0 * 4096 + PTE_TABLE
    .quad pd + 1 * 4096 + PTE_TABLE
    .quad pd + 2 * 4096 + PTE_TABLE
    .quad pd + 3 * 4096 + PTE_TABLE
    .fill 508, 8, 0
pdpt_top:
    .fill 511, 8, 0
    .quad pd + 3 * 4096 + PTE_TABLE
pd:
    .set page, 0
    .rept 1536
    .quad page + PTE_2M
    .set page, page + 0x200000
    .endr
    .rept 512
    .quad page + PTE_2M_UC
    .set page, page + 0x200000
    .endr

/* Per-CPU stacks; not part of the file and never zeroed. */
    .section .noinit, "aw", @nobits
    .balign 4096
    .globl kstacks, ist_stacks, ustacks
kstacks:
    .skip MAX_CPUS * KSTACK_SIZE
ist_stacks:
    .skip MAX_CPUS * IST_STACK_SIZE
ustacks:
    .skip MAX_CPUS * USTACK_SIZE

    .section .note.GNU-stack, "", @progbits
