/*
 * The probe as a Xen HVM guest, at CPL3 (see README.md "Xen"): hypercalls through the page the
 * vmm fills when the BSP writes the hypercall MSR at CPL0, shared_info with 2-level event
 * channels, the per-vCPU upcall vector, grant table v1 in BAR1 of the Xen platform PCI device,
 * a xenstore client over the shared ring (xenstore.c) and a blkfront (xen_blk.c).
 *
 * Layouts follow Xen's public headers for x86-64 guests (include/xen/interface/ in Linux 6.1);
 * the _Static_asserts pin their sizes and offsets.
 */
#ifndef PROBE_XEN_H
#define PROBE_XEN_H

#include "probe.h"

#define XEN_PAGE 4096u
#define XEN_DOMID_SELF 0x7FF0u
#define XEN_DOM0 0u

/* Hypercall numbers (xen.h) and the sub-ops used here. */
#define HYPERVISOR_memory_op 12
#define HYPERVISOR_xen_version 17
#define HYPERVISOR_grant_table_op 20
#define HYPERVISOR_event_channel_op 32
#define HYPERVISOR_hvm_op 34
#define XENMEM_add_to_physmap 7
#define XENMAPSPACE_shared_info 0
#define XENMAPSPACE_grant_table 1
#define XENVER_version 0
#define GNTTABOP_query_size 6
#define GNTTABOP_set_version 8
#define EVTCHNOP_send 4
#define EVTCHNOP_alloc_unbound 6
#define EVTCHNOP_unmask 9
#define HVMOP_get_param 1
#define HVMOP_set_evtchn_upcall_vector 23
#define HVM_PARAM_STORE_PFN 1
#define HVM_PARAM_STORE_EVTCHN 2

/* CPUID leaf base+4 flags (arch-x86/cpuid.h). */
#define XEN_HVM_CPUID_VCPU_ID_PRESENT (1u << 3)
#define XEN_HVM_CPUID_UPCALL_VECTOR (1u << 6)

/* Errno values as Xen returns them (negated), Linux numbering. */
#define XEN_ENOENT 2
#define XEN_EAGAIN 11
#define XEN_ENOSYS 38

struct xen_add_to_physmap {
    uint16_t domid;
    uint16_t size;
    uint32_t space;
    uint64_t idx;
    uint64_t gpfn;
};
_Static_assert(sizeof(struct xen_add_to_physmap) == 24, "xen_add_to_physmap is 24 bytes");

struct xen_hvm_param {
    uint16_t domid;
    uint32_t index;
    uint64_t value;
};
_Static_assert(sizeof(struct xen_hvm_param) == 16, "xen_hvm_param is 16 bytes");

struct xen_hvm_evtchn_upcall_vector {
    uint32_t vcpu;
    uint8_t vector;
};
_Static_assert(sizeof(struct xen_hvm_evtchn_upcall_vector) == 8, "upcall_vector is 8 bytes");

struct evtchn_alloc_unbound {
    uint16_t dom, remote_dom;
    uint32_t port; /* out */
};
_Static_assert(sizeof(struct evtchn_alloc_unbound) == 8, "evtchn_alloc_unbound is 8 bytes");

struct gnttab_query_size {
    uint16_t dom;
    uint32_t nr_frames, max_nr_frames; /* out */
    int16_t status;                    /* out */
};
_Static_assert(sizeof(struct gnttab_query_size) == 16, "gnttab_query_size is 16 bytes");

/* shared_info (2-level event channels): vcpu_info[32] at 0, bitmaps at 2048 and 2560. */
struct xen_vcpu_info {
    uint8_t evtchn_upcall_pending;
    uint8_t evtchn_upcall_mask;
    uint8_t pad[6];
    uint64_t evtchn_pending_sel;
    uint8_t arch_and_time[48];
};
_Static_assert(sizeof(struct xen_vcpu_info) == 64, "vcpu_info is 64 bytes");

struct xen_shared_info {
    struct xen_vcpu_info vcpu_info[32];
    uint64_t evtchn_pending[64];
    uint64_t evtchn_mask[64];
    uint8_t rest[XEN_PAGE - 3072];
};
_Static_assert(__builtin_offsetof(struct xen_shared_info, evtchn_pending) == 2048, "pending@2048");
_Static_assert(__builtin_offsetof(struct xen_shared_info, evtchn_mask) == 2560, "mask@2560");
_Static_assert(sizeof(struct xen_shared_info) == XEN_PAGE, "shared_info is one page");
#define XEN_EVTCHN_PORTS 4096u

/* Grant table v1 (grant_table.h). */
struct grant_entry_v1 {
    uint16_t flags;
    uint16_t domid;
    uint32_t frame;
};
_Static_assert(sizeof(struct grant_entry_v1) == 8, "grant_entry_v1 is 8 bytes");
#define GTF_permit_access 1u
#define GTF_readonly (1u << 2)
#define GTF_reading (1u << 3)
#define GTF_writing (1u << 4)
#define XEN_GRANTS_PER_FRAME (XEN_PAGE / sizeof(struct grant_entry_v1))
#define XEN_GRANT_RESERVED 8u  /* refs 0-7 belong to the toolstack */
#define XEN_GRANT_FRAMES_MAX 8u /* what the probe maps at most: 4088 refs */
#define XEN_GRANT_REFS_MAX (XEN_GRANT_FRAMES_MAX * XEN_GRANTS_PER_FRAME)

/* Everything the Xen layer knows after xen_init(). */
struct xen_state {
    bool up;
    uint32_t version; /* CPUID base+1: major << 16 | minor */
    uint32_t vcpu_id;
    struct xen_shared_info* shared;
    struct pci_dev platform;
    uint64_t grant_base; /* BAR1: grant frame i sits at grant_base + 4 KiB * i */
    uint32_t grant_frames, grant_frames_max;
    uint32_t grant_next; /* bump pointer over refs; freed refs go on the stack below */
    uint32_t grant_free_count;
    uint32_t grant_free[XEN_GRANT_REFS_MAX];
    uint64_t store_gpa;
    uint32_t store_port;
    uint64_t hypercalls;
};
extern struct xen_state xen;

/* Set at CPL0 by the BSP when the Xen signature is at CPUID 0x40000000 and the hypercall page
 * was registered (cpu.c); the page itself (entry of hypercall nr at page + 32 * nr). */
extern uint32_t xen_hypercall_msr;
extern uint8_t xen_hypercall_page[XEN_PAGE];
extern volatile uint64_t xen_upcall_count; /* bumped by the CPL0 upcall handler (isr.S) */

/* Detection and set-up (xen.c): shared_info, all ports masked, upcall vector VEC_XEN_UPCALL on
 * this vCPU, grant table v1 with frame 0 mapped, xenstore parameters. Idempotent; false after
 * a message naming the step that failed. */
bool xen_init(void);

long xen_hypercall(unsigned nr, uint64_t a1, uint64_t a2, uint64_t a3, uint64_t a4, uint64_t a5);
static inline long xen_hvm_op(uint64_t op, void* arg) {
    return xen_hypercall(HYPERVISOR_hvm_op, op, (uint64_t)arg, 0, 0, 0);
}
static inline long xen_evtchn_op(uint64_t op, void* arg) {
    return xen_hypercall(HYPERVISOR_event_channel_op, op, (uint64_t)arg, 0, 0, 0);
}

/* Event channels. Ports start masked: waiting code polls pending bits (or, after
 * xen_evtchn_unmask, the upcall counter). */
long xen_evtchn_alloc_unbound(uint32_t* port); /* remote domain 0 */
long xen_evtchn_send(uint32_t port);
long xen_evtchn_unmask(uint32_t port);
void xen_evtchn_mask(uint32_t port);
/* Atomically takes the pending bit of `port`: true if it was set. */
bool xen_evtchn_test_and_clear(uint32_t port);
/* After an upcall: clear this vCPU's upcall_pending and pending_sel, so the next event raises a
 * new upcall (Xen sets them only on a 0 -> 1 transition). */
void xen_upcall_ack(void);

/* Grants: refs with read-write (or read-only) access to a RAM frame for domain 0. 0 when out
 * of refs (after a message). */
uint32_t xen_grant_alloc(uint64_t gpa, bool readonly);
/* Revokes a ref; false if the backend still has it mapped (left granted, not reused). */
bool xen_grant_free(uint32_t ref);

/* ---- xenstore client (xenstore.c): the ring polled at CPL3 ---- */
#define XS_VALUE_MAX 256
#define XS_DIR_MAX 1024
/* Errors are negative errno values (-XEN_ENOENT, -XEN_EAGAIN, ...); -1000 for a protocol or
 * timeout failure (after a message). */
#define XS_EPROTO (-1000)
int xs_read(uint32_t tx, const char* path, char* value, uint32_t size); /* NUL-terminated */
int xs_write(uint32_t tx, const char* path, const char* value);
/* Children as consecutive NUL-terminated names; returns how many. */
int xs_directory(uint32_t tx, const char* path, char* names, uint32_t size);
int xs_transaction_start(uint32_t* tx);
int xs_transaction_end(uint32_t tx, bool commit); /* -XEN_EAGAIN: retry the transaction */
int xs_read_u64(const char* path, uint64_t* out);
/* Polls `path` (every millisecond) until it reads as a decimal number >= lo and returns it (the
 * caller checks for states past the one it wanted); a negative error, or XS_EPROTO on timeout. */
int64_t xs_wait_at_least(const char* path, uint64_t lo, uint64_t timeout_us);

#endif /* PROBE_XEN_H */
