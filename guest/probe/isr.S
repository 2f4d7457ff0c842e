/*
 * Interrupt entry points (CPL0) and the static IDT.
 *
 * Exceptions are always fatal: the stub builds a trap_frame and calls isr_fatal(). The MSI
 * handlers are three instructions because each CPL0 instruction is emulated here. The stubs sit
 * at fixed addresses (ISR_BASE, pinned by probe.ld) so the IDT below is plain data and CPL0 never
 * spends instructions filling it.
 */
#include "probe.h"

/* Exceptions 0-31; the CPU pushes an error code for 8, 10-14, 17, 21, 29 and 30. */
.macro ISR vec
    .org 16 * \vec, 0xCC
    .if (\vec == 8) || (\vec >= 10 && \vec <= 14) || (\vec == 17) || (\vec == 21) || (\vec == 29) || (\vec == 30)
    .else
    pushq $0
    .endif
    pushq $\vec
    jmp isr_common
.endm

    .section .text.isr, "ax"
    .globl isr_base
isr_base:
    .irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    ISR \v
    .endr

/*
 * MSI vectors: count, EOI, return. The EOI register is reached through the top-of-address-space
 * alias of the local APIC (see entry.S), so a sign-extended absolute address works.
 */
    .org ISR_MSI0_OFF, 0xCC
isr_msi0:
    lock incq msi_count(%rip)
    movl $0, (LAPIC_EOI_ALIAS)
    iretq

    .org ISR_MSI1_OFF, 0xCC
isr_msi1:
    lock incq msi_count + 8(%rip)
    movl $0, (LAPIC_EOI_ALIAS)
    iretq

/* The spurious vector needs no EOI (Intel SDM vol. 3 §11.9). */
    .org ISR_SPURIOUS_OFF, 0xCC
isr_spurious:
    iretq

/*
 * Xen event channel upcall: only counts. CPL3 code clears upcall_pending and scans the pending
 * bits itself (xen.c), so the handler stays as short as the MSI ones.
 */
    .org ISR_XEN_UPCALL_OFF, 0xCC
isr_xen_upcall:
    lock incq xen_upcall_count(%rip)
    movl $0, (LAPIC_EOI_ALIAS)
    iretq

isr_common:
    pushq %rax
    pushq %rbx
    pushq %rcx
    pushq %rdx
    pushq %rsi
    pushq %rdi
    pushq %rbp
    pushq %r8
    pushq %r9
    pushq %r10
    pushq %r11
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    cld
    movq %rsp, %rdi
    call isr_fatal
    ud2

/* 64-bit interrupt gate (type 0xE, DPL0, present) to ISR_BASE + off, Intel SDM vol. 3 §6.14.1. */
.macro GATE off, ist=0
    .word (ISR_BASE + \off) & 0xFFFF
    .word SEL_KCODE
    .byte \ist
    .byte 0x8E
    .word ((ISR_BASE + \off) >> 16) & 0xFFFF
    .long 0
    .long 0
.endm

    .section .data.idt, "aw"
    .balign 16
idt:
    .irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .if \v == 8
    GATE (16*\v), 1 /* #DF runs on IST1 */
    .else
    GATE (16*\v)
    .endif
    .endr
    .org 16 * VEC_MSI0, 0
    GATE ISR_MSI0_OFF
    GATE ISR_MSI1_OFF
    GATE ISR_XEN_UPCALL_OFF /* VEC_XEN_UPCALL = VEC_MSI1 + 1 */
    .org 16 * VEC_SPURIOUS, 0
    GATE ISR_SPURIOUS_OFF
idt_end:

    .section .rodata
    .balign 8
    .globl idt_ptr
idt_ptr:
    .word idt_end - idt - 1
    .quad idt

    .section .note.GNU-stack, "", @progbits
