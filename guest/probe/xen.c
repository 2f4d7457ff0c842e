/*
 * Xen guest basics at CPL3: hypercalls, shared_info and 2-level event channels, the upcall
 * vector, grant table v1 (xen.h). The only CPL0 part is the hypercall MSR write in cpu.c.
 *
 * The vmm accepts hypercalls from CPL3 for the probe (docs/platform.md); each stub in the page is
 * `mov $nr,%eax; out %al,$0x1e; ret`, arguments in rdi, rsi, rdx, r10, r8, result in rax.
 */
#include "xen.h"
#include "x86.h"

#define PCI_COMMAND_DWORD 0x04
#define PCI_COMMAND_MEMORY 0x2u
#define XEN_PLATFORM_VENDOR 0x5853
#define XEN_PLATFORM_DEVICE 0x0001
#define HVM_CPUID_BASE 0x40000000u

struct xen_state xen;

/* Filled by the vmm on the MSR write; int3 until then, so a stray call stops with a report. */
uint8_t xen_hypercall_page[XEN_PAGE] CPL0_DATA
    __attribute__((aligned(4096))) = {[0 ... XEN_PAGE - 1] = 0xCC};
uint32_t xen_hypercall_msr CPL0_DATA;
volatile uint64_t xen_upcall_count;

static struct xen_shared_info shared_page __attribute__((aligned(4096)));

long xen_hypercall(unsigned nr, uint64_t a1, uint64_t a2, uint64_t a3, uint64_t a4, uint64_t a5) {
    register uint64_t r10 __asm__("r10") = a4;
    register uint64_t r8 __asm__("r8") = a5;
    uint64_t stub = (uint64_t)xen_hypercall_page + 32u * nr;
    long ret;
    xen.hypercalls++;
    /* The stub may clobber the argument registers, as on Xen. */
    __asm__ volatile("call *%[stub]"
                     : "=a"(ret), "+D"(a1), "+S"(a2), "+d"(a3), "+r"(r10), "+r"(r8)
                     : [stub] "r"(stub)
                     : "rcx", "r9", "r11", "memory", "cc");
    return ret;
}

long xen_evtchn_alloc_unbound(uint32_t* port) {
    struct evtchn_alloc_unbound a = {.dom = XEN_DOMID_SELF, .remote_dom = XEN_DOM0, .port = 0};
    long rc = xen_evtchn_op(EVTCHNOP_alloc_unbound, &a);
    if (rc == 0 && (a.port == 0 || a.port >= XEN_EVTCHN_PORTS)) {
        printk("xen: alloc_unbound returned port %u\n", a.port);
        return -22;
    }
    *port = a.port;
    return rc;
}

long xen_evtchn_send(uint32_t port) {
    uint32_t p = port;
    return xen_evtchn_op(EVTCHNOP_send, &p);
}

long xen_evtchn_unmask(uint32_t port) {
    uint32_t p = port;
    return xen_evtchn_op(EVTCHNOP_unmask, &p);
}

void xen_evtchn_mask(uint32_t port) {
    __atomic_fetch_or(&xen.shared->evtchn_mask[port / 64], 1ull << (port % 64), __ATOMIC_SEQ_CST);
}

bool xen_evtchn_test_and_clear(uint32_t port) {
    uint64_t bit = 1ull << (port % 64);
    uint64_t* w = &xen.shared->evtchn_pending[port / 64];
    if ((__atomic_load_n(w, __ATOMIC_ACQUIRE) & bit) == 0) {
        return false; /* the common case without a locked instruction */
    }
    return (__atomic_fetch_and(w, ~bit, __ATOMIC_SEQ_CST) & bit) != 0;
}

void xen_upcall_ack(void) {
    struct xen_vcpu_info* v = &xen.shared->vcpu_info[xen.vcpu_id];
    __atomic_store_n(&v->evtchn_upcall_pending, 0, __ATOMIC_SEQ_CST);
    __atomic_exchange_n(&v->evtchn_pending_sel, 0, __ATOMIC_SEQ_CST);
}

static volatile struct grant_entry_v1* grant_entry(uint32_t ref) {
    return (volatile struct grant_entry_v1*)phys_ptr(xen.grant_base) + ref;
}

/* Maps grant frame `idx` at its place in BAR1 (Linux gnttab_setup_auto_xlat_frames). */
static bool grant_map_frame(uint32_t idx) {
    struct xen_add_to_physmap m = {.domid = XEN_DOMID_SELF,
                                   .size = 0,
                                   .space = XENMAPSPACE_grant_table,
                                   .idx = idx,
                                   .gpfn = (xen.grant_base >> 12) + idx};
    long rc = xen_hypercall(HYPERVISOR_memory_op, XENMEM_add_to_physmap, (uint64_t)&m, 0, 0, 0);
    if (rc != 0) {
        printk("xen: add_to_physmap(grant_table, idx=%u) failed: %ld\n", idx, rc);
        return false;
    }
    xen.grant_frames = idx + 1;
    return true;
}

uint32_t xen_grant_alloc(uint64_t gpa, bool readonly) {
    uint32_t ref;
    if (xen.grant_free_count > 0) {
        ref = xen.grant_free[--xen.grant_free_count];
    } else {
        if (xen.grant_next >= xen.grant_frames * XEN_GRANTS_PER_FRAME) {
            if (xen.grant_frames >= xen.grant_frames_max || !grant_map_frame(xen.grant_frames)) {
                printk("xen: out of grant refs (%u frames)\n", xen.grant_frames);
                return 0;
            }
        }
        ref = xen.grant_next++;
    }
    volatile struct grant_entry_v1* e = grant_entry(ref);
    e->domid = XEN_DOM0;
    e->frame = (uint32_t)(gpa >> 12);
    /* grant_table.h: frame and domid must be visible before the flags that enable them. */
    __atomic_thread_fence(__ATOMIC_RELEASE);
    e->flags = (uint16_t)(GTF_permit_access | (readonly ? GTF_readonly : 0));
    return ref;
}

bool xen_grant_free(uint32_t ref) {
    volatile struct grant_entry_v1* e = grant_entry(ref);
    uint16_t flags = e->flags;
    /* Like gnttab_end_foreign_access_ref: revoke only while the backend is not using it. */
    while ((flags & (GTF_reading | GTF_writing)) == 0) {
        if (__atomic_compare_exchange_n((uint16_t*)e, &flags, 0, false, __ATOMIC_SEQ_CST,
                                        __ATOMIC_SEQ_CST)) {
            xen.grant_free[xen.grant_free_count++] = ref;
            return true;
        }
    }
    printk("xen: grant ref %u still in use by the backend (flags=0x%x)\n", ref, flags);
    return false;
}

static bool get_param(uint32_t index, uint64_t* value) {
    struct xen_hvm_param p = {.domid = XEN_DOMID_SELF, .index = index, .value = 0};
    long rc = xen_hvm_op(HVMOP_get_param, &p);
    if (rc != 0) {
        printk("xen: HVMOP_get_param(%u) failed: %ld\n", index, rc);
        return false;
    }
    *value = p.value;
    return true;
}

static bool setup_shared_info(void) {
    struct xen_add_to_physmap m = {.domid = XEN_DOMID_SELF,
                                   .size = 0,
                                   .space = XENMAPSPACE_shared_info,
                                   .idx = 0,
                                   .gpfn = (uint64_t)&shared_page >> 12};
    long rc = xen_hypercall(HYPERVISOR_memory_op, XENMEM_add_to_physmap, (uint64_t)&m, 0, 0, 0);
    if (rc != 0) {
        printk("xen: add_to_physmap(shared_info) failed: %ld\n", rc);
        return false;
    }
    xen.shared = &shared_page;
    /* Every port masked: pending bits still get set, but nothing interrupts until a port is
     * unmasked on purpose (Linux masks all ports at start too). */
    for (unsigned i = 0; i < 64; i++) {
        __atomic_store_n(&xen.shared->evtchn_mask[i], ~0ull, __ATOMIC_SEQ_CST);
    }
    struct xen_hvm_evtchn_upcall_vector u = {.vcpu = xen.vcpu_id, .vector = VEC_XEN_UPCALL};
    rc = xen_hvm_op(HVMOP_set_evtchn_upcall_vector, &u);
    if (rc != 0) {
        printk("xen: HVMOP_set_evtchn_upcall_vector(vcpu=%u, 0x%x) failed: %ld\n", xen.vcpu_id,
               VEC_XEN_UPCALL, rc);
        return false;
    }
    return true;
}

static bool setup_grant_table(void) {
    if (!pci_find(XEN_PLATFORM_VENDOR, XEN_PLATFORM_DEVICE, &xen.platform)) {
        printk("xen: platform PCI device 5853:0001 not found\n");
        return false;
    }
    xen.grant_base = pci_bar_address(xen.platform, 1);
    if (xen.grant_base == 0 || (xen.grant_base & (XEN_PAGE - 1)) != 0 ||
        xen.grant_base >= 0x100000000ull) {
        printk("xen: platform device BAR1 0x%llx unusable\n", (unsigned long long)xen.grant_base);
        return false;
    }
    uint32_t cmd = pci_read32(xen.platform, PCI_COMMAND_DWORD) & 0xFFFFu;
    pci_write32(xen.platform, PCI_COMMAND_DWORD, cmd | PCI_COMMAND_MEMORY);

    uint32_t version = 1;
    long rc = xen_hypercall(HYPERVISOR_grant_table_op, GNTTABOP_set_version, (uint64_t)&version,
                            1, 0, 0);
    if (rc != 0) {
        printk("xen: GNTTABOP_set_version(1) failed: %ld\n", rc);
        return false;
    }
    struct gnttab_query_size q = {.dom = XEN_DOMID_SELF};
    rc = xen_hypercall(HYPERVISOR_grant_table_op, GNTTABOP_query_size, (uint64_t)&q, 1, 0, 0);
    if (rc != 0 || q.status != 0 || q.max_nr_frames == 0) {
        printk("xen: GNTTABOP_query_size failed: rc=%ld status=%d max_frames=%u\n", rc, q.status,
               q.max_nr_frames);
        return false;
    }
    xen.grant_frames_max =
        q.max_nr_frames < XEN_GRANT_FRAMES_MAX ? q.max_nr_frames : XEN_GRANT_FRAMES_MAX;
    xen.grant_next = XEN_GRANT_RESERVED;
    return grant_map_frame(0);
}

bool xen_init(void) {
    if (xen.up) {
        return true;
    }
    if (xen_hypercall_msr == 0) {
        printk("xen: no Xen signature at CPUID 0x%x (hypercall page not set up)\n",
               HVM_CPUID_BASE);
        return false;
    }
    uint32_t r[4];
    cpuid(HVM_CPUID_BASE + 1, 0, r);
    xen.version = r[0];
    cpuid(HVM_CPUID_BASE + 4, 0, r);
    if ((r[0] & XEN_HVM_CPUID_UPCALL_VECTOR) == 0) {
        printk("xen: CPUID base+4 eax=0x%x lacks UPCALL_VECTOR\n", r[0]);
        return false;
    }
    xen.vcpu_id = (r[0] & XEN_HVM_CPUID_VCPU_ID_PRESENT) ? r[1] : 0;
    if (xen.vcpu_id >= 32) {
        printk("xen: vcpu id %u has no vcpu_info slot in shared_info\n", xen.vcpu_id);
        return false;
    }
    if (!setup_shared_info() || !setup_grant_table()) {
        return false;
    }
    uint64_t pfn = 0, port = 0;
    if (!get_param(HVM_PARAM_STORE_PFN, &pfn) || !get_param(HVM_PARAM_STORE_EVTCHN, &port)) {
        return false;
    }
    if (pfn == 0 || pfn >= (1ull << 20) || port == 0 || port >= XEN_EVTCHN_PORTS) {
        printk("xen: no usable xenstore: pfn=0x%llx port=%llu\n", (unsigned long long)pfn,
               (unsigned long long)port);
        return false;
    }
    xen.store_gpa = pfn << 12;
    xen.store_port = (uint32_t)port;
    xen.up = true;
    printk(
        "xen: version %u.%u vcpu_id=%u hypercall_msr=0x%x page=0x%llx shared_info=0x%llx "
        "grant_table=0x%llx frames=%u/%u store=0x%llx port=%u upcall_vector=0x%x\n",
        xen.version >> 16, xen.version & 0xFFFF, xen.vcpu_id, xen_hypercall_msr,
        (unsigned long long)(uint64_t)xen_hypercall_page, (unsigned long long)(uint64_t)xen.shared,
        (unsigned long long)xen.grant_base, xen.grant_frames, xen.grant_frames_max,
        (unsigned long long)xen.store_gpa, xen.store_port, VEC_XEN_UPCALL);
    return true;
}
