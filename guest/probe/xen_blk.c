/*
 * blkfront (xen_blk.h): discovery under device/vbd, the xenbus handshake with blkback, and the
 * request ring with io/ring.h's event-index rules:
 *   - requests: publish req_prod, then notify only if the new requests pass the backend's
 *     req_event (RING_PUSH_REQUESTS_AND_CHECK_NOTIFY);
 *   - responses: after draining, set rsp_event = rsp_cons + 1 and look once more
 *     (RING_FINAL_CHECK_FOR_RESPONSES), so a response racing the re-arm is never missed.
 */
#include "xen_blk.h"
#include "x86.h"

#define XENBUS_INIT_WAIT 2
#define XENBUS_INITIALISED 3
#define XENBUS_CONNECTED 4
#define XENBUS_CLOSING 5
#define XENBUS_CLOSED 6
#define HANDSHAKE_TIMEOUT_US 10000000
#define CLOSE_TIMEOUT_US 1000000
#define TX_RETRIES 16

const char* xblk_op_name(uint8_t op) {
    switch (op) {
        case BLKIF_OP_READ:
            return "read";
        case BLKIF_OP_WRITE:
            return "write";
        case BLKIF_OP_FLUSH_DISKCACHE:
            return "flush";
        default:
            return "op?";
    }
}

unsigned xblk_discover(struct xblk_disk* disks, unsigned max) {
    static char names[XS_DIR_MAX];
    int n = xs_directory(0, "device/vbd", names, sizeof(names));
    if (n < 0) {
        if (n != -XEN_ENOENT) {
            printk("xen-blk: directory device/vbd failed: %d\n", n);
        }
        return 0;
    }
    uint32_t vdevs[XBLK_MAX_DISKS];
    unsigned count = 0;
    const char* p = names;
    for (int i = 0; i < n; i++, p += strlen(p) + 1) {
        uint64_t v;
        if (!parse_u64(p, &v) || v > 0xFFFFFFFFull) {
            printk("xen-blk: ignoring device/vbd/%s\n", p);
            continue;
        }
        if (count == max || count == XBLK_MAX_DISKS) {
            printk("xen-blk: more than %u vbds; ignoring device/vbd/%s\n", count, p);
            continue;
        }
        /* Insertion sort: discovery order is virtual-device order. */
        unsigned k = count++;
        while (k > 0 && vdevs[k - 1] > (uint32_t)v) {
            vdevs[k] = vdevs[k - 1];
            k--;
        }
        vdevs[k] = (uint32_t)v;
    }
    for (unsigned i = 0; i < count; i++) {
        struct xblk_disk* d = &disks[i];
        memset(d, 0, sizeof(*d));
        d->index = i;
        d->vdev = vdevs[i];
        snprintf(d->front, sizeof(d->front), "device/vbd/%u", d->vdev);
    }
    return count;
}

static int write_u64(uint32_t tx, const char* dir, const char* key, uint64_t v) {
    char path[192], val[24];
    snprintf(path, sizeof(path), "%s/%s", dir, key);
    snprintf(val, sizeof(val), "%llu", (unsigned long long)v);
    return xs_write(tx, path, val);
}

static int read_key_u64(const char* dir, const char* key, uint64_t* v) {
    char path[192];
    snprintf(path, sizeof(path), "%s/%s", dir, key);
    return xs_read_u64(path, v);
}

static int64_t wait_state(const char* dir, uint64_t at_least, uint64_t timeout_us) {
    char path[192];
    snprintf(path, sizeof(path), "%s/state", dir);
    return xs_wait_at_least(path, at_least, timeout_us);
}

/* ring-ref, event-channel and protocol in one transaction, retried on EAGAIN (xen-blkfront.c
 * talk_to_blkback). */
static bool publish_ring(struct xblk_disk* d) {
    for (unsigned attempt = 0; attempt < TX_RETRIES; attempt++) {
        uint32_t tx;
        int rc = xs_transaction_start(&tx);
        if (rc != 0) {
            printk("xen-blk: disk %u transaction start failed: %d\n", d->index, rc);
            return false;
        }
        char path[192];
        snprintf(path, sizeof(path), "%s/protocol", d->front);
        rc = write_u64(tx, d->front, "ring-ref", d->ring_ref);
        rc = rc != 0 ? rc : write_u64(tx, d->front, "event-channel", d->port);
        rc = rc != 0 ? rc : xs_write(tx, path, "x86_64-abi");
        if (rc != 0) {
            printk("xen-blk: disk %u writing the ring keys failed: %d\n", d->index, rc);
            xs_transaction_end(tx, false);
            return false;
        }
        rc = xs_transaction_end(tx, true);
        if (rc == 0) {
            return true;
        }
        if (rc != -XEN_EAGAIN) {
            printk("xen-blk: disk %u transaction end failed: %d\n", d->index, rc);
            return false;
        }
    }
    printk("xen-blk: disk %u transaction kept failing with EAGAIN\n", d->index);
    return false;
}

bool xblk_connect(struct xblk_disk* d, bool irq) {
    char path[96];
    snprintf(path, sizeof(path), "%s/backend", d->front);
    int rc = xs_read(0, path, d->back, sizeof(d->back));
    uint64_t backend_id = 0;
    if (rc <= 0 || d->back[0] != '/') {
        printk("xen-blk: disk %u %s: no usable backend path (%d)\n", d->index, path, rc);
        return false;
    }
    rc = read_key_u64(d->front, "backend-id", &backend_id);
    if (rc != 0 || backend_id != XEN_DOM0) {
        printk("xen-blk: disk %u backend-id %llu (%d): only domain 0 is supported\n", d->index,
               (unsigned long long)backend_id, rc);
        return false;
    }
    int64_t st = wait_state(d->back, XENBUS_INIT_WAIT, HANDSHAKE_TIMEOUT_US);
    if (st != XENBUS_INIT_WAIT) {
        printk("xen-blk: disk %u backend %s state %lld, want 2 (InitWait)\n", d->index, d->back,
               (long long)st);
        return false;
    }

    d->sring = ram_alloc(XEN_PAGE, XEN_PAGE);
    if (d->sring == NULL) {
        return false;
    }
    /* SHARED_RING_INIT / FRONT_RING_INIT */
    d->sring->req_prod = d->sring->rsp_prod = 0;
    d->sring->req_event = d->sring->rsp_event = 1;
    d->req_prod_pvt = d->rsp_cons = 0;
    d->ring_ref = xen_grant_alloc((uint64_t)d->sring, false);
    if (d->ring_ref == 0) {
        return false;
    }
    long lrc = xen_evtchn_alloc_unbound(&d->port);
    if (lrc != 0) {
        printk("xen-blk: disk %u EVTCHNOP_alloc_unbound failed: %ld\n", d->index, lrc);
        return false;
    }
    if (!publish_ring(d)) {
        return false;
    }
    rc = write_u64(0, d->front, "state", XENBUS_INITIALISED);
    if (rc != 0) {
        printk("xen-blk: disk %u writing state 3 failed: %d\n", d->index, rc);
        return false;
    }
    st = wait_state(d->back, XENBUS_CONNECTED, HANDSHAKE_TIMEOUT_US);
    if (st != XENBUS_CONNECTED) {
        printk("xen-blk: disk %u backend %s state %lld, want 4 (Connected)\n", d->index, d->back,
               (long long)st);
        return false;
    }
    uint64_t sectors = 0, sector_size = 0, info = 0, flush = 0;
    rc = read_key_u64(d->back, "sectors", &sectors);
    rc = rc != 0 ? rc : read_key_u64(d->back, "sector-size", &sector_size);
    if (rc != 0 || sectors == 0 || sector_size < XBLK_SECTOR || sector_size > XEN_PAGE ||
        (sector_size & (sector_size - 1)) != 0) {
        printk("xen-blk: disk %u backend sectors=%llu sector-size=%llu (%d)\n", d->index,
               (unsigned long long)sectors, (unsigned long long)sector_size, rc);
        return false;
    }
    (void)read_key_u64(d->back, "info", &info); /* optional */
    if (read_key_u64(d->back, "feature-flush-cache", &flush) != 0) {
        flush = 0;
    }
    d->sectors = sectors;
    d->sector_size = (uint32_t)sector_size;
    d->info = (uint32_t)info;
    d->flush = flush != 0;
    rc = write_u64(0, d->front, "state", XENBUS_CONNECTED);
    if (rc != 0) {
        printk("xen-blk: disk %u writing state 4 failed: %d\n", d->index, rc);
        return false;
    }
    d->irq = irq;
    if (irq) {
        lrc = xen_evtchn_unmask(d->port);
        if (lrc != 0) {
            printk("xen-blk: disk %u EVTCHNOP_unmask(%u) failed: %ld\n", d->index, d->port, lrc);
            return false;
        }
    }
    printk(
        "xen-blk: disk %u vbd %u backend=%s sectors=%llu sector_size=%u info=%u flush=%d "
        "ring_ref=%u port=%u irq=%d\n",
        d->index, d->vdev, d->back, (unsigned long long)d->sectors, d->sector_size, d->info,
        d->flush, d->ring_ref, d->port, d->irq);
    return true;
}

bool xblk_setup_slots(struct xblk_disk* d, uint32_t nslots, uint32_t slot_bytes) {
    if (nslots == 0 || nslots > XBLK_RING_ENTRIES || slot_bytes == 0 ||
        slot_bytes > XBLK_MAX_SLOT_BYTES || slot_bytes % XEN_PAGE != 0) {
        printk("xen-blk: disk %u bad slot layout %u x %u\n", d->index, nslots, slot_bytes);
        return false;
    }
    d->bufs = ram_alloc((uint64_t)nslots * slot_bytes, XEN_PAGE);
    if (d->bufs == NULL) {
        return false;
    }
    d->nslots = nslots;
    d->slot_bytes = slot_bytes;
    for (uint32_t s = 0; s < nslots; s++) {
        for (uint32_t p = 0; p < slot_bytes / XEN_PAGE; p++) {
            d->grefs[s][p] = xen_grant_alloc((uint64_t)xblk_slot_buf(d, s) + p * XEN_PAGE, false);
            if (d->grefs[s][p] == 0) {
                return false;
            }
        }
    }
    return true;
}

void xblk_close(struct xblk_disk* d) {
    if (write_u64(0, d->front, "state", XENBUS_CLOSING) != 0) {
        return;
    }
    int64_t st = wait_state(d->back, XENBUS_CLOSING, CLOSE_TIMEOUT_US);
    if (st < XENBUS_CLOSING) {
        printk("xen-blk: disk %u backend did not close (state %lld)\n", d->index, (long long)st);
    }
    (void)write_u64(0, d->front, "state", XENBUS_CLOSED);
}

bool xblk_queue(struct xblk_disk* d, uint32_t slot, uint8_t op, uint64_t sector, uint32_t buf_off,
                uint32_t nbytes) {
    if (d->req_prod_pvt - d->rsp_cons >= XBLK_RING_ENTRIES) {
        printk("xen-blk: disk %u ring full\n", d->index);
        return false;
    }
    if (slot >= d->nslots || buf_off % XBLK_SECTOR != 0 || nbytes % XBLK_SECTOR != 0 ||
        (op != BLKIF_OP_FLUSH_DISKCACHE && nbytes == 0) || buf_off > d->slot_bytes ||
        nbytes > d->slot_bytes - buf_off) {
        printk("xen-blk: disk %u bad request slot=%u off=%u bytes=%u\n", d->index, slot, buf_off,
               nbytes);
        return false;
    }
    struct blkif_request r;
    memset(&r, 0, sizeof(r));
    r.operation = op;
    r.handle = (uint16_t)d->vdev;
    r.id = slot;
    r.sector_number = sector;
    uint32_t off = buf_off, left = nbytes;
    unsigned nseg = 0;
    while (left > 0) {
        uint32_t page = off / XEN_PAGE, in_page = off % XEN_PAGE;
        uint32_t chunk = XEN_PAGE - in_page < left ? XEN_PAGE - in_page : left;
        r.seg[nseg].gref = d->grefs[slot][page];
        r.seg[nseg].first_sect = (uint8_t)(in_page / XBLK_SECTOR);
        r.seg[nseg].last_sect = (uint8_t)((in_page + chunk) / XBLK_SECTOR - 1);
        nseg++;
        off += chunk;
        left -= chunk;
    }
    r.nr_segments = (uint8_t)nseg;
    memcpy(&d->sring->ring[d->req_prod_pvt % XBLK_RING_ENTRIES].req, &r, sizeof(r));
    d->req_prod_pvt++;
    return true;
}

void xblk_kick(struct xblk_disk* d) {
    struct blkif_sring* s = d->sring;
    uint32_t old = s->req_prod;
    uint32_t new = d->req_prod_pvt;
    if (old == new) {
        return;
    }
    __atomic_store_n(&s->req_prod, new, __ATOMIC_RELEASE);
    __atomic_thread_fence(__ATOMIC_SEQ_CST); /* req_prod visible before req_event is read */
    uint32_t event = __atomic_load_n(&s->req_event, __ATOMIC_ACQUIRE);
    if ((uint32_t)(new - event) < (uint32_t)(new - old)) {
        long rc = xen_evtchn_send(d->port);
        if (rc != 0) {
            printk("xen-blk: disk %u EVTCHNOP_send(%u) failed: %ld\n", d->index, d->port, rc);
        }
        d->notify_sent++;
    } else {
        d->notify_skipped++;
    }
}

bool xblk_reap(struct xblk_disk* d, struct blkif_response* out, bool* bad) {
    struct blkif_sring* s = d->sring;
    *bad = false;
    uint32_t prod = __atomic_load_n(&s->rsp_prod, __ATOMIC_ACQUIRE);
    if (prod == d->rsp_cons) {
        return false;
    }
    if (prod - d->rsp_cons > d->req_prod_pvt - d->rsp_cons) {
        printk("xen-blk: disk %u rsp_prod %u beyond the %u requests in flight (rsp_cons %u)\n",
               d->index, prod, d->req_prod_pvt - d->rsp_cons, d->rsp_cons);
        *bad = true;
        return false;
    }
    memcpy(out, &s->ring[d->rsp_cons % XBLK_RING_ENTRIES].rsp, sizeof(*out));
    d->rsp_cons++;
    if (out->id >= d->nslots) {
        printk("xen-blk: disk %u response with id %llu (slots %u)\n", d->index,
               (unsigned long long)out->id, d->nslots);
        *bad = true;
    }
    return true;
}

bool xblk_final_check(struct xblk_disk* d) {
    struct blkif_sring* s = d->sring;
    __atomic_store_n(&s->rsp_event, d->rsp_cons + 1, __ATOMIC_RELEASE);
    __atomic_thread_fence(__ATOMIC_SEQ_CST); /* rsp_event visible before rsp_prod is re-read */
    return __atomic_load_n(&s->rsp_prod, __ATOMIC_ACQUIRE) != d->rsp_cons;
}

void xblk_collect_events(struct xblk_disk* d) {
    if (d->irq) {
        xen_upcall_ack();
    }
    if (xen_evtchn_test_and_clear(d->port)) {
        d->notify_received++;
    }
}

void xblk_wait(struct xblk_disk* d, uint64_t seen, uint64_t until_tsc) {
    if (!d->irq) {
        cpu_relax();
        return;
    }
    while (__atomic_load_n(&xen_upcall_count, __ATOMIC_ACQUIRE) == seen && rdtsc() < until_tsc) {
        cpu_relax();
    }
}

int xblk_sync(struct xblk_disk* d, uint8_t op, uint64_t sector, uint32_t buf_off, uint32_t nbytes,
              uint64_t timeout_us) {
    if (!xblk_queue(d, 0, op, sector, buf_off, nbytes)) {
        return BLKIF_RSP_ERROR;
    }
    xblk_kick(d);
    uint64_t deadline = rdtsc() + tsc_cycles_from_us(timeout_us);
    for (;;) {
        uint64_t seen = __atomic_load_n(&xen_upcall_count, __ATOMIC_ACQUIRE);
        xblk_collect_events(d);
        struct blkif_response rsp;
        bool bad = false;
        if (xblk_reap(d, &rsp, &bad)) {
            (void)xblk_final_check(d);
            if (bad || rsp.id != 0 || rsp.operation != op) {
                printk("xen-blk: disk %u unexpected response id=%llu op=%u to %s\n", d->index,
                       (unsigned long long)rsp.id, rsp.operation, xblk_op_name(op));
                return BLKIF_RSP_ERROR;
            }
            return rsp.status;
        }
        if (bad) {
            return BLKIF_RSP_ERROR;
        }
        if (xblk_final_check(d)) {
            continue;
        }
        if (rdtsc() >= deadline) {
            printk("xen-blk: disk %u %s sector=%llu: no response in %llu ms (req_prod=%u "
                   "rsp_prod=%u req_event=%u rsp_event=%u)\n",
                   d->index, xblk_op_name(op), (unsigned long long)sector,
                   (unsigned long long)(timeout_us / 1000), d->sring->req_prod, d->sring->rsp_prod,
                   d->sring->req_event, d->sring->rsp_event);
            return XBLK_STATUS_TIMEOUT;
        }
        xblk_wait(d, seen, deadline);
    }
}
