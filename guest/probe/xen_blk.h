/*
 * blkfront for the probe (xen_blk.c): one single-page ring of 32 requests per vbd, the
 * xenbus handshake of xen-abi.md §3.10, io/ring.h event-index notifications both ways.
 * Data moves through per-slot buffers whose pages are granted to the backend once, at set-up,
 * and stay granted (the backend maps them per request and drops the mapping before it answers).
 */
#ifndef PROBE_XEN_BLK_H
#define PROBE_XEN_BLK_H

#include "xen.h"

#define XBLK_MAX_DISKS 8
#define XBLK_RING_ENTRIES 32u
#define XBLK_MAX_SEGS 11u
#define XBLK_SECTOR 512u
#define XBLK_MAX_SLOT_BYTES (XBLK_MAX_SEGS * XEN_PAGE)
#define XBLK_FIRST_VDEV 51712u /* xvda: 202 << 8; disk i is 51712 + 16 * i */

/* io/blkif.h */
#define BLKIF_OP_READ 0
#define BLKIF_OP_WRITE 1
#define BLKIF_OP_FLUSH_DISKCACHE 3
#define BLKIF_RSP_OKAY 0
#define BLKIF_RSP_ERROR (-1)
#define BLKIF_RSP_EOPNOTSUPP (-2)
#define XBLK_STATUS_TIMEOUT (-1000) /* the driver's own: no response in time */

struct blkif_segment {
    uint32_t gref;
    uint8_t first_sect, last_sect;
    uint16_t pad;
};
_Static_assert(sizeof(struct blkif_segment) == 8, "blkif segment is 8 bytes");

struct blkif_request {
    uint8_t operation;
    uint8_t nr_segments;
    uint16_t handle;
    uint32_t pad;
    uint64_t id;
    uint64_t sector_number;
    struct blkif_segment seg[XBLK_MAX_SEGS];
};
_Static_assert(sizeof(struct blkif_request) == 112, "blkif request is 112 bytes");
_Static_assert(__builtin_offsetof(struct blkif_request, seg) == 24, "segments at 24");

struct blkif_response {
    uint64_t id;
    uint8_t operation;
    uint8_t pad;
    int16_t status;
    uint32_t pad2;
};
_Static_assert(sizeof(struct blkif_response) == 16, "blkif response is 16 bytes");

union blkif_ring_slot {
    struct blkif_request req;
    struct blkif_response rsp;
};

/* io/ring.h shared ring: indices, then the entries at 64. */
struct blkif_sring {
    uint32_t req_prod, req_event;
    uint32_t rsp_prod, rsp_event;
    uint8_t pad[48];
    union blkif_ring_slot ring[XBLK_RING_ENTRIES];
};
_Static_assert(__builtin_offsetof(struct blkif_sring, ring) == 64, "ring entries at 64");
_Static_assert(sizeof(struct blkif_sring) <= XEN_PAGE, "the ring fits one page");

struct xblk_disk {
    unsigned index; /* discovery order (by virtual-device number) */
    uint32_t vdev;
    char front[48];
    char back[128];
    /* From the backend */
    uint64_t sectors; /* 512-byte units */
    uint32_t sector_size;
    uint32_t info;
    bool flush;
    /* Ring */
    struct blkif_sring* sring;
    uint32_t ring_ref;
    uint32_t port;
    uint32_t req_prod_pvt, rsp_cons;
    bool irq;
    /* Slot buffers: slot s is bufs + s * slot_bytes, each page granted (grefs). */
    uint8_t* bufs;
    uint32_t nslots, slot_bytes;
    uint32_t grefs[XBLK_RING_ENTRIES][XBLK_MAX_SEGS];
    /* Statistics */
    uint64_t notify_sent, notify_skipped, notify_received, upcalls_seen;
};

/* Finds every vbd under device/vbd (after xen_init) in virtual-device order; no I/O yet. */
unsigned xblk_discover(struct xblk_disk* disks, unsigned max);
/* The §3.10 handshake up to Connected. With irq, the port is unmasked and waits use the upcall;
 * otherwise it stays masked and everything is polled. */
bool xblk_connect(struct xblk_disk* d, bool irq);
/* nslots buffers of slot_bytes (a page multiple, at most XBLK_MAX_SLOT_BYTES), granted. */
bool xblk_setup_slots(struct xblk_disk* d, uint32_t nslots, uint32_t slot_bytes);
/* Closing, then Closed; the backend's answer is waited for briefly. */
void xblk_close(struct xblk_disk* d);

static inline uint8_t* xblk_slot_buf(const struct xblk_disk* d, uint32_t slot) {
    return d->bufs + (uint64_t)slot * d->slot_bytes;
}
/* Queues a request for slot `slot` (its id) on the private producer index: sectors [sector,
 * sector + nbytes/512) from or to slot buffer bytes [buf_off, buf_off + nbytes), both multiples
 * of 512. FLUSH takes no data. False (after a message) if it does not fit the ring or slot. */
bool xblk_queue(struct xblk_disk* d, uint32_t slot, uint8_t op, uint64_t sector, uint32_t buf_off,
                uint32_t nbytes);
/* Publishes queued requests; notifies the backend if its req_event asks for it. */
void xblk_kick(struct xblk_disk* d);
/* Takes one response if there is one. False when the ring is empty; *bad is set for a response
 * that cannot be ours (after a message). */
bool xblk_reap(struct xblk_disk* d, struct blkif_response* out, bool* bad);
/* io/ring.h RING_FINAL_CHECK_FOR_RESPONSES: re-arms rsp_event; true if more arrived meanwhile. */
bool xblk_final_check(struct xblk_disk* d);
/* Before looking at the ring: acknowledge an upcall (irq) and count a pending notification. */
void xblk_collect_events(struct xblk_disk* d);
/* Waits (up to until_tsc) for a reason to look at the ring again: the upcall counter moving past
 * `seen` with irq, else a short spin. */
void xblk_wait(struct xblk_disk* d, uint64_t seen, uint64_t until_tsc);
/* One request on slot 0 with nothing else in flight; its status or XBLK_STATUS_TIMEOUT. */
int xblk_sync(struct xblk_disk* d, uint8_t op, uint64_t sector, uint32_t buf_off, uint32_t nbytes,
              uint64_t timeout_us);

const char* xblk_op_name(uint8_t op);

#endif /* PROBE_XEN_BLK_H */
