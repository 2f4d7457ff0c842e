/*
 * NVMe controllers at CPL3: discovery on bus 0, MSI-X set-up and the bring-up in the order
 * Linux 6.1 uses: disable, admin queue registers, enable, Identify Controller, Set Features
 * Number of Queues, Create I/O CQ and SQ, Doorbell Buffer Config, Identify Namespace. Every
 * wait is bounded by the TSC. The queue and command layer is nvme.c.
 */
#include "nvme.h"
#include "x86.h"

#define PCI_CLASS_DWORD 0x08
#define PCI_CLASS_NVME 0x010802u /* mass storage, non-volatile memory, NVM Express */
#define PCI_STATUS_COMMAND 0x04
#define PCI_COMMAND_MEMORY (1u << 1)
#define PCI_COMMAND_MASTER (1u << 2)
#define PCI_COMMAND_INTX_DISABLE (1u << 10)
#define PCI_HEADER_DWORD 0x0C
#define PCI_CAP_MSIX 0x11
#define MSIX_CTRL_ENABLE (1u << 31)
#define MSIX_CTRL_FMASK (1u << 30)
#define MSI_ADDRESS_BASE 0xFEE00000u
#define MAPPED_LIMIT 0x100000000ull
#define BAR0_MIN 0x2000u /* registers plus the doorbells of queues 0 and 1 */

/* Controller registers (NVMe 1.4 §3.1). */
#define REG_CAP 0x00
#define REG_VS 0x08
#define REG_CC 0x14
#define REG_CSTS 0x1C
#define REG_AQA 0x24
#define REG_ASQ 0x28
#define REG_ACQ 0x30

#define CAP_MQES(cap) ((uint32_t)((cap)&0xFFFF))
#define CAP_TO(cap) ((uint32_t)(((cap) >> 24) & 0xFF))
#define CAP_DSTRD(cap) ((uint32_t)(((cap) >> 32) & 0xF))
#define CAP_CSS_NVM(cap) (((cap) >> 37) & 1)
#define CAP_MPSMIN(cap) ((uint32_t)(((cap) >> 48) & 0xF))
#define CC_EN 1u
#define CC_SHN_NORMAL (1u << 14)
#define CC_IOSQES (6u << 16)
#define CC_IOCQES (4u << 20)
#define CSTS_RDY 1u
#define CSTS_CFS 2u
#define CSTS_SHST_MASK 0xCu
#define CSTS_SHST_DONE 0x8u

#define OACS_DBBUF (1u << 8)
#define FEAT_NUM_QUEUES 0x07
#define QUEUE_PHYS_CONTIG 1u
#define CQ_IRQ_ENABLED 2u
#define IO_QID 1
#define IO_VECTOR 1

#define SHUTDOWN_TIMEOUT_US 5000000

static uint32_t reg_read(const struct nvme_ctrl* c, uint32_t off) {
    return mmio_read32(c->bar + off);
}

static void reg_write(const struct nvme_ctrl* c, uint32_t off, uint32_t v) {
    mmio_write32(c->bar + off, v);
}

/* 64-bit registers as two dword accesses, low half first. */
static uint64_t reg_read64(const struct nvme_ctrl* c, uint32_t off) {
    uint64_t lo = reg_read(c, off);
    return lo | (uint64_t)reg_read(c, off + 4) << 32;
}

static void reg_write64(const struct nvme_ctrl* c, uint32_t off, uint64_t v) {
    reg_write(c, off, (uint32_t)v);
    reg_write(c, off + 4, (uint32_t)(v >> 32));
}

static uint64_t pa_of(const void* p) {
    return (uint64_t)p;
}

static uint16_t identify(struct nvme_ctrl* c, uint32_t cns, uint32_t nsid) {
    struct nvme_sqe cmd = {0};
    cmd.opcode = NVME_ADMIN_IDENTIFY;
    cmd.nsid = nsid;
    cmd.prp1 = pa_of(c->scratch);
    cmd.cdw10 = cns;
    memset(c->scratch, 0, NVME_PAGE);
    return nvme_admin_cmd(c, &cmd, NULL);
}

/* Copies a space-padded ASCII field and drops the padding. */
static void copy_ascii(char* dst, const uint8_t* src, size_t n) {
    size_t len = 0;
    for (size_t i = 0; i < n; i++) {
        char ch = (char)src[i];
        dst[i] = (ch >= 0x20 && ch < 0x7F && ch != '\'') ? ch : '?';
        if (ch != ' ') {
            len = i + 1;
        }
    }
    dst[len] = '\0';
}

static uint16_t le16(const uint8_t* p) {
    return (uint16_t)(p[0] | p[1] << 8);
}

static uint32_t le32(const uint8_t* p) {
    return (uint32_t)le16(p) | (uint32_t)le16(p + 2) << 16;
}

static bool identify_controller(struct nvme_ctrl* c) {
    if (identify(c, 1, 0) != 0) {
        return false;
    }
    const uint8_t* id = c->scratch;
    copy_ascii(c->serial, id + 4, 20);
    copy_ascii(c->model, id + 24, 40);
    copy_ascii(c->firmware, id + 64, 8);
    c->mdts = id[77];
    c->oacs = le16(id + 256);
    c->nn = le32(id + 516);
    c->vwc = id[525];
    c->dbbuf_supported = (c->oacs & OACS_DBBUF) != 0;
    uint32_t limit = NVME_PRP_LIST_ENTRIES * NVME_PAGE;
    if (c->mdts != 0) {
        uint64_t mdts_bytes = (uint64_t)NVME_PAGE << CAP_MPSMIN(c->cap) << c->mdts;
        if (mdts_bytes < limit) {
            limit = (uint32_t)mdts_bytes;
        }
    }
    c->max_xfer = limit;
    if ((id[512] & 0xF) > 6 || (id[512] >> 4) < 6 || (id[513] & 0xF) > 4 || (id[513] >> 4) < 4) {
        printk("nvme: ctrl %u SQES=0x%02x CQES=0x%02x do not allow 64/16-byte entries\n", c->index,
               id[512], id[513]);
        return false;
    }
    printk(
        "nvme: ctrl %u model='%s' serial='%s' fw='%s' mdts=%u max_xfer_kib=%u oacs=0x%x "
        "dbbuf=%d vwc=%u nn=%u\n",
        c->index, c->model, c->serial, c->firmware, c->mdts, c->max_xfer / 1024, c->oacs,
        c->dbbuf_supported, c->vwc & 1u, c->nn);
    return c->nn >= 1;
}

static bool identify_namespace(struct nvme_ctrl* c) {
    if (identify(c, 0, 1) != 0) {
        return false;
    }
    const uint8_t* ns = c->scratch;
    c->blocks = (uint64_t)le32(ns) | (uint64_t)le32(ns + 4) << 32;
    uint8_t nlbaf = ns[25];
    uint8_t flbas = ns[26];
    c->lbaf = (flbas & 0xFu) | ((flbas >> 1) & 0x30u);
    const uint8_t* f = ns + 128 + 4 * c->lbaf;
    uint16_t ms = le16(f);
    uint8_t lbads = f[2];
    printk("nvme: ctrl %u ns 1 blocks=%llu lbaf=%u/%u lbads=%u ms=%u\n", c->index,
           (unsigned long long)c->blocks, c->lbaf, nlbaf + 1u, lbads, ms);
    if (c->blocks == 0 || lbads < 9 || lbads > 12 || ms != 0 || (flbas & 0x10u)) {
        printk(
            "nvme: ctrl %u namespace 1 unusable (empty, block size not 512..4096, or "
            "metadata)\n",
            c->index);
        return false;
    }
    c->lba_shift = lbads;
    c->block_size = 1u << lbads;
    return true;
}

/* ---- PCI and MSI-X ---- */

/* Programs MSI-X entries 0 (admin) and 1 (I/O) to this CPU, or switches MSI-X off. */
static void msix_configure(struct nvme_ctrl* c, bool on) {
    if (c->msix_cap == 0) {
        return;
    }
    uint32_t hdr = pci_read32(c->pci, c->msix_cap);
    if (!on) {
        pci_write32(c->pci, c->msix_cap, hdr & ~(MSIX_CTRL_ENABLE | MSIX_CTRL_FMASK));
        return;
    }
    pci_write32(c->pci, c->msix_cap, hdr | MSIX_CTRL_ENABLE | MSIX_CTRL_FMASK);
    for (uint32_t v = 0; v < 2 && v < c->msix_vectors; v++) {
        uint64_t e = c->msix_table + 16u * v;
        mmio_write32(e + 0, MSI_ADDRESS_BASE | (lapic_id() << 12));
        mmio_write32(e + 4, 0);
        mmio_write32(e + 8, v == 0 ? VEC_MSI0 : VEC_MSI1);
        mmio_write32(e + 12, 0);
    }
    pci_write32(c->pci, c->msix_cap, (hdr | MSIX_CTRL_ENABLE) & ~MSIX_CTRL_FMASK);
}

static bool ctrl_memory(struct nvme_ctrl* c) {
    c->asq = ram_alloc(NVME_ADMIN_ENTRIES * sizeof(struct nvme_sqe), NVME_PAGE);
    c->acq = ram_alloc(NVME_ADMIN_ENTRIES * sizeof(struct nvme_cqe), NVME_PAGE);
    c->iosq = ram_alloc(NVME_IO_ENTRIES_MAX * sizeof(struct nvme_sqe), NVME_PAGE);
    c->iocq = ram_alloc(NVME_IO_ENTRIES_MAX * sizeof(struct nvme_cqe), NVME_PAGE);
    c->scratch = ram_alloc(NVME_PAGE, NVME_PAGE);
    c->dbbuf_shadow = ram_alloc(NVME_PAGE, NVME_PAGE);
    c->dbbuf_eventidx = ram_alloc(NVME_PAGE, NVME_PAGE);
    c->prp_lists = ram_alloc((uint64_t)NVME_IO_ENTRIES_MAX * NVME_PAGE, NVME_PAGE);
    return c->asq && c->acq && c->iosq && c->iocq && c->scratch && c->dbbuf_shadow &&
           c->dbbuf_eventidx && c->prp_lists;
}

unsigned nvme_discover(struct nvme_ctrl* ctrls, unsigned max) {
    unsigned n = 0;
    for (uint8_t dev = 0; dev < 32 && n < max; dev++) {
        struct pci_dev d = {0, dev, 0};
        if ((pci_read32(d, 0) & 0xFFFF) == 0xFFFF) {
            continue;
        }
        uint8_t fns = (pci_read32(d, PCI_HEADER_DWORD) >> 16) & 0x80 ? 8 : 1;
        for (uint8_t fn = 0; fn < fns && n < max; fn++) {
            d.fn = fn;
            if ((pci_read32(d, 0) & 0xFFFF) == 0xFFFF ||
                pci_read32(d, PCI_CLASS_DWORD) >> 8 != PCI_CLASS_NVME) {
                continue;
            }
            struct nvme_ctrl* c = &ctrls[n];
            memset(c, 0, sizeof(*c));
            c->index = n;
            c->pci = d;
            c->bar = pci_bar_address(d, 0);
            if (c->bar == 0 || c->bar >= MAPPED_LIMIT - BAR0_MIN) {
                printk("nvme: 00:%02x.%u BAR0=0x%llx not assigned or not mapped; skipped\n", dev,
                       fn, (unsigned long long)c->bar);
                continue;
            }
            c->msix_cap = pci_find_cap(d, PCI_CAP_MSIX);
            if (c->msix_cap != 0) {
                uint32_t hdr = pci_read32(d, c->msix_cap);
                uint32_t tbl = pci_read32(d, (uint8_t)(c->msix_cap + 4));
                uint64_t tbar = pci_bar_address(d, tbl & 7u);
                c->msix_vectors = ((hdr >> 16) & 0x7FFu) + 1;
                c->msix_table = tbar + (tbl & ~7u);
                if (tbar == 0 || c->msix_table >= MAPPED_LIMIT - 32) {
                    c->msix_cap = 0;
                }
            }
            uint32_t sc = pci_read32(d, PCI_STATUS_COMMAND);
            pci_write32(
                d, PCI_STATUS_COMMAND,
                (sc & 0xFFFF) | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER | PCI_COMMAND_INTX_DISABLE);
            if (!ctrl_memory(c)) {
                return n;
            }
            uint32_t id = pci_read32(d, 0);
            printk("nvme: ctrl %u at 00:%02x.%u id=%04x:%04x bar0=0x%llx msix_vectors=%u\n", n, dev,
                   fn, id & 0xFFFF, id >> 16, (unsigned long long)c->bar,
                   c->msix_cap ? c->msix_vectors : 0);
            n++;
        }
    }
    return n;
}

/* ---- bring-up ---- */

static bool wait_csts(struct nvme_ctrl* c, uint32_t mask, uint32_t want, const char* what) {
    uint64_t deadline = rdtsc() + tsc_cycles_from_us(c->ready_timeout_us);
    for (;;) {
        uint32_t csts = reg_read(c, REG_CSTS);
        if (csts == 0xFFFFFFFFu) {
            printk("nvme: ctrl %u CSTS reads all ones (%s)\n", c->index, what);
            return false;
        }
        if ((csts & mask) == want) {
            return true;
        }
        if ((csts & CSTS_CFS) && (mask & CSTS_RDY) && want == CSTS_RDY) {
            printk("nvme: ctrl %u controller fatal status while %s (CSTS=0x%x)\n", c->index, what,
                   csts);
            return false;
        }
        if (rdtsc() > deadline) {
            printk("nvme: ctrl %u timeout %s (CSTS=0x%x after %llu ms)\n", c->index, what, csts,
                   (unsigned long long)(c->ready_timeout_us / 1000));
            return false;
        }
        cpu_relax();
    }
}

static bool create_io_queues(struct nvme_ctrl* c, bool irq) {
    uint16_t entries = (uint16_t)(CAP_MQES(c->cap) + 1 < NVME_IO_ENTRIES_MAX ? CAP_MQES(c->cap) + 1
                                                                             : NVME_IO_ENTRIES_MAX);
    nvme_queue_setup(c, &c->io, IO_QID, entries, c->iosq, c->iocq);
    struct nvme_sqe cmd = {0};
    cmd.opcode = NVME_ADMIN_CREATE_CQ;
    cmd.prp1 = pa_of(c->iocq);
    cmd.cdw10 = IO_QID | (uint32_t)(entries - 1) << 16;
    cmd.cdw11 = QUEUE_PHYS_CONTIG | (irq ? CQ_IRQ_ENABLED | (uint32_t)IO_VECTOR << 16 : 0);
    if (nvme_admin_cmd(c, &cmd, NULL) != 0) {
        return false;
    }
    memset(&cmd, 0, sizeof(cmd));
    cmd.opcode = NVME_ADMIN_CREATE_SQ;
    cmd.prp1 = pa_of(c->iosq);
    cmd.cdw10 = IO_QID | (uint32_t)(entries - 1) << 16;
    cmd.cdw11 = QUEUE_PHYS_CONTIG | (uint32_t)IO_QID << 16;
    return nvme_admin_cmd(c, &cmd, NULL) == 0;
}

/* Doorbell Buffer Config: shadow doorbells and EventIdx laid out like the doorbell registers. */
static bool enable_shadow(struct nvme_ctrl* c) {
    memset(c->dbbuf_shadow, 0, NVME_PAGE);
    memset(c->dbbuf_eventidx, 0, NVME_PAGE);
    struct nvme_sqe cmd = {0};
    cmd.opcode = NVME_ADMIN_DBBUF_CONFIG;
    cmd.prp1 = pa_of(c->dbbuf_shadow);
    cmd.prp2 = pa_of(c->dbbuf_eventidx);
    if (nvme_admin_cmd(c, &cmd, NULL) != 0) {
        printk("nvme: ctrl %u continuing with MMIO doorbells only\n", c->index);
        return false;
    }
    uint32_t stride = c->db_stride / 4; /* in dwords */
    struct nvme_queue* q = &c->io;
    q->sq_shadow = &c->dbbuf_shadow[2u * IO_QID * stride];
    q->cq_shadow = &c->dbbuf_shadow[(2u * IO_QID + 1) * stride];
    q->sq_eventidx = &c->dbbuf_eventidx[2u * IO_QID * stride];
    q->cq_eventidx = &c->dbbuf_eventidx[(2u * IO_QID + 1) * stride];
    return true;
}

bool nvme_init(struct nvme_ctrl* c, const struct nvme_opts* o) {
    c->shadow = false;
    c->irq = false;
    c->cap = reg_read64(c, REG_CAP);
    c->vs = reg_read(c, REG_VS);
    c->db_stride = 4u << CAP_DSTRD(c->cap);
    c->ready_timeout_us = (uint64_t)(CAP_TO(c->cap) ? CAP_TO(c->cap) : 1) * 500000;
    printk("nvme: ctrl %u cap=0x%llx vs=%u.%u.%u mqes=%u dstrd=%u to_ms=%llu\n", c->index,
           (unsigned long long)c->cap, c->vs >> 16, (c->vs >> 8) & 0xFF, c->vs & 0xFF,
           CAP_MQES(c->cap), CAP_DSTRD(c->cap), (unsigned long long)(c->ready_timeout_us / 1000));
    if (!CAP_CSS_NVM(c->cap) || CAP_MPSMIN(c->cap) != 0) {
        printk("nvme: ctrl %u needs the NVM command set and 4 KiB pages (CAP.CSS/MPSMIN)\n",
               c->index);
        return false;
    }
    if (o->irq && (c->msix_cap == 0 || c->msix_vectors < 2)) {
        printk("nvme: ctrl %u has fewer than 2 MSI-X vectors; irq=1 impossible\n", c->index);
        return false;
    }

    /* Disable (firmware may have left it running), then the admin queue and enable. */
    uint32_t cc = reg_read(c, REG_CC);
    if ((cc & CC_EN) || (reg_read(c, REG_CSTS) & CSTS_RDY)) {
        reg_write(c, REG_CC, cc & ~CC_EN);
    }
    if (!wait_csts(c, CSTS_RDY, 0, "waiting for RDY=0")) {
        return false;
    }
    msix_configure(c, o->irq);
    nvme_queue_setup(c, &c->admin, 0, NVME_ADMIN_ENTRIES, c->asq, c->acq);
    reg_write(c, REG_AQA, (uint32_t)(NVME_ADMIN_ENTRIES - 1) << 16 | (NVME_ADMIN_ENTRIES - 1));
    reg_write64(c, REG_ASQ, pa_of(c->asq));
    reg_write64(c, REG_ACQ, pa_of(c->acq));
    reg_write(c, REG_CC, CC_IOCQES | CC_IOSQES | CC_EN); /* CSS NVM, MPS 4 KiB, AMS RR */
    if (!wait_csts(c, CSTS_RDY, CSTS_RDY, "waiting for RDY=1")) {
        return false;
    }

    if (!identify_controller(c)) {
        return false;
    }
    struct nvme_sqe cmd = {0};
    cmd.opcode = NVME_ADMIN_SET_FEATURES;
    cmd.cdw10 = FEAT_NUM_QUEUES;
    cmd.cdw11 = 0; /* one SQ and one CQ (0's based) */
    uint32_t granted = 0;
    if (nvme_admin_cmd(c, &cmd, &granted) != 0) {
        return false;
    }
    if (!create_io_queues(c, o->irq)) {
        return false;
    }
    if (o->shadow && c->dbbuf_supported) {
        c->shadow = enable_shadow(c);
    }
    if (!identify_namespace(c)) {
        return false;
    }
    c->irq = o->irq;
    printk("nvme: ctrl %u io qid=1 entries=%u nsqa=%u ncqa=%u irq=%d shadow=%d\n", c->index,
           c->io.entries, (granted & 0xFFFF) + 1, (granted >> 16) + 1, c->irq, c->shadow);
    return true;
}

void nvme_shutdown(struct nvme_ctrl* c) {
    uint32_t cc = reg_read(c, REG_CC);
    if (!(cc & CC_EN)) {
        return;
    }
    reg_write(c, REG_CC, (cc & ~(3u << 14)) | CC_SHN_NORMAL);
    uint64_t saved = c->ready_timeout_us;
    c->ready_timeout_us = SHUTDOWN_TIMEOUT_US;
    bool ok = wait_csts(c, CSTS_SHST_MASK, CSTS_SHST_DONE, "waiting for shutdown");
    c->ready_timeout_us = saved;
    reg_write(c, REG_CC, 0);
    if (ok) {
        (void)wait_csts(c, CSTS_RDY, 0, "disabling after shutdown");
    }
    msix_configure(c, false);
}
