/*
 * NVMe queue and command layer at CPL3 (see nvme.h): submission and completion queues with
 * phase bits, MMIO and shadow doorbells (EventIdx), polled admin commands, PRPs and the I/O
 * queue calls the workloads use. Controller discovery and bring-up are in nvme_ctrl.c.
 */
#include "nvme.h"
#include "x86.h"

#define ADMIN_TIMEOUT_US 5000000

static uint64_t pa_of(const void* p) {
    return (uint64_t)p;
}

void nvme_status_str(uint16_t st, char* buf, size_t size) {
    if (st == NVME_STATUS_TIMEOUT) {
        snprintf(buf, size, "timeout (no completion)");
        return;
    }
    unsigned sct = (st >> 8) & 7u;
    unsigned sc = st & 0xFFu;
    const char* name = "";
    static const struct {
        uint16_t code;
        const char* name;
    } names[] = {
        {0x000, "success"},
        {0x001, "invalid command opcode"},
        {0x002, "invalid field in command"},
        {0x004, "data transfer error"},
        {0x006, "internal error"},
        {0x007, "command abort requested"},
        {0x00B, "invalid namespace or format"},
        {0x00C, "command sequence error"},
        {0x013, "PRP offset invalid"},
        {0x080, "LBA out of range"},
        {0x081, "capacity exceeded"},
        {0x082, "namespace not ready"},
        {0x100, "completion queue invalid"},
        {0x101, "invalid queue identifier"},
        {0x102, "invalid queue size"},
        {0x108, "invalid interrupt vector"},
        {0x280, "write fault"},
        {0x281, "unrecovered read error"},
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (names[i].code == NVME_SC(st)) {
            name = names[i].name;
        }
    }
    snprintf(buf, size, "sct=0x%x sc=0x%02x%s%s%s dnr=%u", sct, sc, *name ? " (" : "", name,
             *name ? ")" : "", (st & NVME_STATUS_DNR) ? 1u : 0u);
}

/* ---- queues ---- */

void nvme_queue_setup(struct nvme_ctrl* c, struct nvme_queue* q, uint16_t qid, uint16_t entries,
                      struct nvme_sqe* sq, struct nvme_cqe* cq) {
    memset(q, 0, sizeof(*q));
    q->qid = qid;
    q->entries = entries;
    q->sq = sq;
    q->cq = cq;
    q->phase = 1;
    q->sq_db = c->bar + NVME_REG_DOORBELLS + (2u * qid) * c->db_stride;
    q->cq_db = c->bar + NVME_REG_DOORBELLS + (2u * qid + 1) * c->db_stride;
    memset(sq, 0, (size_t)entries * sizeof(*sq));
    memset(cq, 0, (size_t)entries * sizeof(*cq));
}

static bool sq_push(struct nvme_queue* q, const struct nvme_sqe* e) {
    uint16_t next = (uint16_t)(q->sq_tail + 1 == q->entries ? 0 : q->sq_tail + 1);
    if (next == q->sq_head) {
        return false;
    }
    q->sq[q->sq_tail] = *e;
    q->sq_tail = next;
    return true;
}

/* Linux's nvme_dbbuf_need_event(): did the update from old to new step over event_idx? */
static bool need_event(uint16_t event_idx, uint16_t new_idx, uint16_t old_idx) {
    return (uint16_t)(new_idx - event_idx - 1) < (uint16_t)(new_idx - old_idx);
}

/*
 * Publishes a doorbell value: with shadow doorbells, store it in the shadow slot and write the
 * MMIO doorbell only when the controller's EventIdx asks for it; else write the doorbell.
 * Returns whether the MMIO write happened.
 */
static bool publish(uint64_t db, volatile uint32_t* shadow, volatile uint32_t* eventidx,
                    uint16_t value, uint16_t old) {
    if (shadow != NULL) {
        compiler_barrier(); /* entries before the shadow value (x86 keeps store order) */
        *shadow = value;
        __atomic_thread_fence(__ATOMIC_SEQ_CST); /* the shadow store before the EventIdx load */
        if (!need_event((uint16_t)*eventidx, value, old)) {
            return false;
        }
    }
    mmio_write32(db, value);
    return true;
}

static void sq_ring(struct nvme_queue* q) {
    if (q->sq_tail == q->sq_rung) {
        return;
    }
    if (publish(q->sq_db, q->sq_shadow, q->sq_eventidx, q->sq_tail, q->sq_rung)) {
        q->mmio_sq_rings++;
    } else {
        q->shadow_sq_skips++;
    }
    q->sq_rung = q->sq_tail;
}

static void cq_ring(struct nvme_queue* q) {
    if (q->cq_head == q->cq_rung) {
        return;
    }
    if (publish(q->cq_db, q->cq_shadow, q->cq_eventidx, q->cq_head, q->cq_rung)) {
        q->mmio_cq_rings++;
    } else {
        q->shadow_cq_skips++;
    }
    q->cq_rung = q->cq_head;
}

static bool cq_reap(struct nvme_queue* q, struct nvme_cqe* out) {
    volatile struct nvme_cqe* e = &q->cq[q->cq_head];
    uint16_t status = e->status;
    if ((status & 1u) != q->phase) {
        return false;
    }
    compiler_barrier(); /* the rest of the entry after its phase bit (x86 keeps load order) */
    out->dw0 = e->dw0;
    out->dw1 = e->dw1;
    out->sq_head = e->sq_head;
    out->sq_id = e->sq_id;
    out->cid = e->cid;
    out->status = status;
    if (out->sq_head < q->entries) {
        q->sq_head = out->sq_head;
    }
    if (++q->cq_head == q->entries) {
        q->cq_head = 0;
        q->phase ^= 1u;
    }
    return true;
}

/* ---- admin commands ---- */

static const char* admin_name(uint8_t opcode) {
    switch (opcode) {
        case NVME_ADMIN_CREATE_SQ:
            return "Create I/O SQ";
        case NVME_ADMIN_CREATE_CQ:
            return "Create I/O CQ";
        case NVME_ADMIN_IDENTIFY:
            return "Identify";
        case NVME_ADMIN_SET_FEATURES:
            return "Set Features";
        case NVME_ADMIN_DBBUF_CONFIG:
            return "Doorbell Buffer Config";
        default:
            return "admin command";
    }
}

/* Submits one admin command and polls for its completion; prints failures. */
uint16_t nvme_admin_cmd(struct nvme_ctrl* c, struct nvme_sqe* cmd, uint32_t* dw0) {
    struct nvme_queue* q = &c->admin;
    cmd->cid = c->admin_cid++;
    if (!sq_push(q, cmd)) {
        printk("nvme: ctrl %u admin queue full\n", c->index);
        return NVME_STATUS_TIMEOUT;
    }
    sq_ring(q);
    uint64_t deadline = rdtsc() + tsc_cycles_from_us(ADMIN_TIMEOUT_US);
    struct nvme_cqe e;
    uint16_t st = NVME_STATUS_TIMEOUT;
    for (;;) {
        if (cq_reap(q, &e)) {
            cq_ring(q);
            if (e.cid != cmd->cid) {
                printk("nvme: ctrl %u stray admin completion cid=%u (want %u)\n", c->index, e.cid,
                       cmd->cid);
                continue;
            }
            st = nvme_cqe_status(&e);
            if (dw0 != NULL) {
                *dw0 = e.dw0;
            }
            break;
        }
        if (rdtsc() > deadline) {
            break;
        }
        cpu_relax();
    }
    if (st != 0) {
        char why[80];
        nvme_status_str(st, why, sizeof(why));
        printk("nvme: ctrl %u %s (opcode 0x%02x cdw10=0x%x) failed: %s\n", c->index,
               admin_name(cmd->opcode), cmd->opcode, cmd->cdw10, why);
    }
    return st;
}

/* ---- I/O queue ---- */

/* PRP1/PRP2 for a dword-aligned buffer; a PRP list (one page per command id) beyond 2 pages. */
static bool build_prps(uint64_t pa, uint32_t len, uint64_t* list, struct nvme_sqe* cmd) {
    if ((pa & 3u) != 0 || len == 0) {
        return false;
    }
    cmd->prp1 = pa;
    cmd->prp2 = 0;
    uint32_t first = NVME_PAGE - (uint32_t)(pa & (NVME_PAGE - 1));
    if (len <= first) {
        return true;
    }
    uint64_t next = (pa & ~(uint64_t)(NVME_PAGE - 1)) + NVME_PAGE;
    uint32_t rest = len - first;
    if (rest <= NVME_PAGE) {
        cmd->prp2 = next;
        return true;
    }
    uint32_t pages = (rest + NVME_PAGE - 1) / NVME_PAGE;
    if (pages > NVME_PRP_LIST_ENTRIES) {
        return false;
    }
    for (uint32_t i = 0; i < pages; i++) {
        list[i] = next + (uint64_t)i * NVME_PAGE;
    }
    cmd->prp2 = pa_of(list);
    return true;
}

bool nvme_io_push(struct nvme_ctrl* c, uint16_t cid, uint8_t opcode, uint64_t slba,
                  uint32_t nblocks, const void* buf, uint32_t len) {
    struct nvme_sqe cmd = {0};
    cmd.opcode = opcode;
    cmd.cid = cid;
    cmd.nsid = 1;
    if (cid >= c->io.entries) {
        return false;
    }
    if (opcode != NVME_CMD_FLUSH) {
        if (nblocks == 0 || nblocks > 0x10000 || len > c->max_xfer ||
            !build_prps(pa_of(buf), len, c->prp_lists + (uint64_t)cid * NVME_PRP_LIST_ENTRIES,
                        &cmd)) {
            return false;
        }
        cmd.cdw10 = (uint32_t)slba;
        cmd.cdw11 = (uint32_t)(slba >> 32);
        cmd.cdw12 = nblocks - 1;
    }
    return sq_push(&c->io, &cmd);
}

void nvme_io_kick(struct nvme_ctrl* c) {
    sq_ring(&c->io);
}

bool nvme_io_reap(struct nvme_ctrl* c, struct nvme_cqe* out) {
    return cq_reap(&c->io, out);
}

void nvme_io_cq_release(struct nvme_ctrl* c) {
    cq_ring(&c->io);
}

uint16_t nvme_io_sync(struct nvme_ctrl* c, uint8_t opcode, uint64_t slba, uint32_t nblocks,
                      const void* buf, uint32_t len, uint64_t timeout_us) {
    if (!nvme_io_push(c, 0, opcode, slba, nblocks, buf, len)) {
        printk("nvme: ctrl %u cannot queue opcode 0x%02x (bad buffer, length or full SQ)\n",
               c->index, opcode);
        return NVME_STATUS_TIMEOUT;
    }
    nvme_io_kick(c);
    uint64_t deadline = rdtsc() + tsc_cycles_from_us(timeout_us);
    struct nvme_cqe e;
    while (!nvme_io_reap(c, &e)) {
        if (rdtsc() > deadline) {
            printk("nvme: ctrl %u opcode 0x%02x lba %llu: no completion after %llu ms\n", c->index,
                   opcode, (unsigned long long)slba, (unsigned long long)(timeout_us / 1000));
            return NVME_STATUS_TIMEOUT;
        }
        cpu_relax();
    }
    nvme_io_cq_release(c);
    return nvme_cqe_status(&e);
}
