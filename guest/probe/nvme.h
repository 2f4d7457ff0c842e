/*
 * A small NVMe driver that runs at CPL3 (nvme.c): PCI config by port I/O, BAR0 by user-mapped
 * MMIO, queues and buffers in identity-mapped RAM (physical = virtual). One admin queue pair and
 * one I/O queue pair per controller, namespace 1 only, PRPs only (no SGLs), 4 KiB pages.
 * Register and structure layouts follow the NVMe base specification (1.4) and Linux 6.1's
 * include/linux/nvme.h.
 */
#ifndef PROBE_NVME_H
#define PROBE_NVME_H

#include "probe.h"

#define NVME_PAGE 4096u
#define NVME_MAX_CTRLS 8
#define NVME_ADMIN_ENTRIES 32
/* Commands in flight on the I/O queue pair; an N-entry queue holds N-1, so the pair has one
 * more entry (less if CAP.MQES says so). */
#define NVME_QD_MAX 64
#define NVME_IO_ENTRIES_MAX (NVME_QD_MAX + 1)
/* One PRP list page per command (no chaining): the first, possibly partial, page plus 512. */
#define NVME_PRP_LIST_ENTRIES (NVME_PAGE / 8)
#define NVME_REG_DOORBELLS 0x1000 /* SQy tail at +2y*stride, CQy head at +(2y+1)*stride */

/* Opcodes (NVMe 1.4 §5, §6). */
#define NVME_ADMIN_DELETE_SQ 0x00
#define NVME_ADMIN_CREATE_SQ 0x01
#define NVME_ADMIN_DELETE_CQ 0x04
#define NVME_ADMIN_CREATE_CQ 0x05
#define NVME_ADMIN_IDENTIFY 0x06
#define NVME_ADMIN_SET_FEATURES 0x09
#define NVME_ADMIN_DBBUF_CONFIG 0x7C
#define NVME_CMD_FLUSH 0x00
#define NVME_CMD_WRITE 0x01
#define NVME_CMD_READ 0x02

/*
 * Status as kept here: the CQE status field shifted right by one (phase bit dropped), so
 * bits 7:0 are SC, 10:8 SCT, 13 More, 14 DNR. NVME_STATUS_TIMEOUT is the driver's own.
 */
#define NVME_SC(st) ((st)&0x7FFu) /* SCT:SC */
#define NVME_STATUS_DNR 0x4000u
#define NVME_SC_LBA_RANGE 0x080u
#define NVME_STATUS_TIMEOUT 0xFFFFu

struct nvme_sqe {
    uint8_t opcode;
    uint8_t flags;
    uint16_t cid;
    uint32_t nsid;
    uint32_t cdw2, cdw3;
    uint64_t mptr;
    uint64_t prp1, prp2;
    uint32_t cdw10, cdw11, cdw12, cdw13, cdw14, cdw15;
};
_Static_assert(sizeof(struct nvme_sqe) == 64, "SQ entries are 64 bytes");

struct nvme_cqe {
    uint32_t dw0, dw1;
    uint16_t sq_head, sq_id, cid, status;
};
_Static_assert(sizeof(struct nvme_cqe) == 16, "CQ entries are 16 bytes");

struct nvme_queue {
    uint16_t qid, entries;
    struct nvme_sqe* sq;
    volatile struct nvme_cqe* cq;
    uint16_t sq_tail; /* next free SQ slot */
    uint16_t sq_rung; /* tail value last published (doorbell or shadow) */
    uint16_t sq_head; /* from the latest CQE */
    uint16_t cq_head;
    uint16_t cq_rung;
    uint16_t phase;        /* expected phase bit of the next new CQE */
    uint64_t sq_db, cq_db; /* MMIO doorbell addresses */
    /* Shadow doorbell and EventIdx slots (Doorbell Buffer Config); NULL when not in use. */
    volatile uint32_t* sq_shadow;
    volatile uint32_t* cq_shadow;
    volatile uint32_t* sq_eventidx;
    volatile uint32_t* cq_eventidx;
    uint64_t mmio_sq_rings, mmio_cq_rings, shadow_sq_skips, shadow_cq_skips;
};

struct nvme_opts {
    bool irq;    /* MSI-X for the I/O CQ (vector 1) and the admin CQ (vector 0); else polled */
    bool shadow; /* use Doorbell Buffer Config when the controller offers it */
};

struct nvme_ctrl {
    unsigned index;
    struct pci_dev pci;
    uint64_t bar;
    uint64_t cap;
    uint32_t vs;
    uint32_t db_stride; /* bytes between doorbells: 4 << CAP.DSTRD */
    uint64_t ready_timeout_us;
    uint8_t msix_cap;
    uint64_t msix_table;
    uint32_t msix_vectors;
    /* Identify data */
    char model[41], serial[21], firmware[9];
    uint8_t mdts;
    uint16_t oacs;
    uint8_t vwc;
    uint32_t nn;
    uint64_t blocks; /* namespace 1 size (NSZE) */
    uint32_t block_size;
    uint32_t lba_shift;
    unsigned lbaf;
    uint32_t max_xfer; /* bytes per command: MDTS and the one-page PRP list */
    bool dbbuf_supported;
    /* State of the current bring-up */
    bool shadow, irq;
    uint16_t admin_cid;
    struct nvme_queue admin, io;
    /* Memory, allocated once by nvme_discover */
    struct nvme_sqe* asq;
    struct nvme_cqe* acq;
    struct nvme_sqe* iosq;
    struct nvme_cqe* iocq;
    uint8_t* scratch;       /* Identify data */
    uint32_t* dbbuf_shadow; /* shadow doorbells page */
    uint32_t* dbbuf_eventidx;
    uint64_t* prp_lists; /* NVME_IO_ENTRIES_MAX pages, one per I/O command id */
};

/* Controllers (nvme_ctrl.c). Finds NVMe controllers (class 01:08:02) on bus 0, enables them on PCI
 * and takes memory. */
unsigned nvme_discover(struct nvme_ctrl* ctrls, unsigned max);
/* Reset and full bring-up; prints the identify lines. False (after a message) on failure. */
bool nvme_init(struct nvme_ctrl* c, const struct nvme_opts* o);
/* Normal shutdown (CC.SHN), then disable. */
void nvme_shutdown(struct nvme_ctrl* c);

/* Queues and commands (nvme.c), used by nvme_ctrl.c: */
void nvme_queue_setup(struct nvme_ctrl* c, struct nvme_queue* q, uint16_t qid, uint16_t entries,
                      struct nvme_sqe* sq, struct nvme_cqe* cq);
uint16_t nvme_admin_cmd(struct nvme_ctrl* c, struct nvme_sqe* cmd, uint32_t* dw0);

/* The I/O queue pair. A command id is an index below c->io.entries; the caller owns them. */
bool nvme_io_push(struct nvme_ctrl* c, uint16_t cid, uint8_t opcode, uint64_t slba,
                  uint32_t nblocks, const void* buf, uint32_t len);
void nvme_io_kick(struct nvme_ctrl* c);                       /* publish the SQ tail */
bool nvme_io_reap(struct nvme_ctrl* c, struct nvme_cqe* out); /* one new CQE, if any */
void nvme_io_cq_release(struct nvme_ctrl* c);                 /* publish the CQ head */
/* One command, waited for by polling; returns its status (0 = success). */
uint16_t nvme_io_sync(struct nvme_ctrl* c, uint8_t opcode, uint64_t slba, uint32_t nblocks,
                      const void* buf, uint32_t len, uint64_t timeout_us);

/* The on-disk pattern of block `lba` of controller `ctrl` (nvme_verify.c, README.md). */
void nvme_pattern_fill(uint8_t* b, uint32_t bs, uint32_t ctrl, uint64_t lba);

static inline uint16_t nvme_cqe_status(const struct nvme_cqe* e) {
    return (uint16_t)(e->status >> 1);
}
/* "sct=0x0 sc=0x80 (LBA out of range) dnr=1" and the like. */
void nvme_status_str(uint16_t st, char* buf, size_t size);

#endif /* PROBE_NVME_H */
