/*
 * Xenstore client over the shared ring page (io/xs_wire.h), polled at CPL3: one request at a
 * time, the reply matched by req_id; watch events (we register none) are skipped.
 *
 * Ring rules (xenbus_comms.c): free-running indices masked by 1023; read prod, then copy, then
 * publish cons (and the mirror for writing). The client notifies the store port after each
 * chunk it produces and after consuming from a full response ring; xenstored drains the whole
 * ring per notification, so extra notifications cost nothing but a hypercall.
 */
#include "x86.h"
#include "xen.h"

#define XS_RING_SIZE 1024u
#define XS_PAYLOAD_MAX 4096u
#define XS_TIMEOUT_US 5000000
#define XS_POLL_US 1000

enum xs_type {
    XS_DIRECTORY = 1,
    XS_READ = 2,
    XS_TRANSACTION_START = 6,
    XS_TRANSACTION_END = 7,
    XS_WRITE = 11,
    XS_WATCH_EVENT = 15,
    XS_ERROR = 16,
};

struct xs_ring {
    char req[XS_RING_SIZE];
    char rsp[XS_RING_SIZE];
    uint32_t req_cons, req_prod;
    uint32_t rsp_cons, rsp_prod;
    uint32_t server_features;
    uint32_t connection;
    uint32_t error;
};
_Static_assert(__builtin_offsetof(struct xs_ring, req_cons) == 2048, "req_cons at 2048");
_Static_assert(__builtin_offsetof(struct xs_ring, connection) == 2068, "connection at 2068");

struct xsd_sockmsg {
    uint32_t type, req_id, tx_id, len;
};
_Static_assert(sizeof(struct xsd_sockmsg) == 16, "xsd_sockmsg is 16 bytes");

static uint32_t next_req_id = 1;
static char payload_out[XS_PAYLOAD_MAX];
static char payload_in[XS_PAYLOAD_MAX + 1];

static struct xs_ring* ring(void) {
    return (struct xs_ring*)phys_ptr(xen.store_gpa);
}

static bool expired(uint64_t deadline, const char* what) {
    if (rdtsc() < deadline) {
        return false;
    }
    struct xs_ring* r = ring();
    printk("xenstore: timeout %s: req cons=%u prod=%u rsp cons=%u prod=%u connection=%u\n", what,
           __atomic_load_n(&r->req_cons, __ATOMIC_ACQUIRE), r->req_prod,
           r->rsp_cons, __atomic_load_n(&r->rsp_prod, __ATOMIC_ACQUIRE), r->connection);
    return true;
}

static void notify(void) {
    long rc = xen_evtchn_send(xen.store_port);
    if (rc != 0) {
        printk("xenstore: EVTCHNOP_send(%u) failed: %ld\n", xen.store_port, rc);
    }
}

static bool ring_write(const void* data, uint32_t len, uint64_t deadline) {
    struct xs_ring* r = ring();
    const char* p = data;
    while (len > 0) {
        uint32_t cons = __atomic_load_n(&r->req_cons, __ATOMIC_ACQUIRE);
        uint32_t prod = r->req_prod;
        if (prod - cons > XS_RING_SIZE) {
            printk("xenstore: request ring indices cons=%u prod=%u\n", cons, prod);
            return false;
        }
        uint32_t space = XS_RING_SIZE - (prod - cons);
        if (space == 0) {
            if (expired(deadline, "writing a request")) {
                return false;
            }
            cpu_relax();
            continue;
        }
        uint32_t off = prod & (XS_RING_SIZE - 1);
        uint32_t chunk = len < space ? len : space;
        chunk = chunk < XS_RING_SIZE - off ? chunk : XS_RING_SIZE - off;
        memcpy(r->req + off, p, chunk);
        __atomic_store_n(&r->req_prod, prod + chunk, __ATOMIC_RELEASE);
        notify();
        p += chunk;
        len -= chunk;
    }
    return true;
}

static bool ring_read(void* data, uint32_t len, uint64_t deadline) {
    struct xs_ring* r = ring();
    char* p = data;
    while (len > 0) {
        uint32_t prod = __atomic_load_n(&r->rsp_prod, __ATOMIC_ACQUIRE);
        uint32_t cons = r->rsp_cons;
        uint32_t avail = prod - cons;
        if (avail > XS_RING_SIZE) {
            printk("xenstore: response ring indices cons=%u prod=%u\n", cons, prod);
            return false;
        }
        if (avail == 0) {
            if (expired(deadline, "waiting for a reply")) {
                return false;
            }
            cpu_relax();
            continue;
        }
        uint32_t off = cons & (XS_RING_SIZE - 1);
        uint32_t chunk = len < avail ? len : avail;
        chunk = chunk < XS_RING_SIZE - off ? chunk : XS_RING_SIZE - off;
        memcpy(p, r->rsp + off, chunk);
        __atomic_thread_fence(__ATOMIC_SEQ_CST); /* copy done before the slot is handed back */
        __atomic_store_n(&r->rsp_cons, cons + chunk, __ATOMIC_RELEASE);
        if (avail == XS_RING_SIZE) {
            notify(); /* the server may be waiting for room */
        }
        p += chunk;
        len -= chunk;
    }
    return true;
}

static int error_errno(const char* name) {
    static const struct {
        const char* name;
        int err;
    } table[] = {{"EINVAL", 22}, {"EACCES", 13}, {"EEXIST", 17}, {"EISDIR", 21}, {"ENOENT", 2},
                 {"ENOMEM", 12}, {"ENOSPC", 28}, {"EIO", 5},     {"ENOTEMPTY", 39},
                 {"ENOSYS", 38}, {"EROFS", 30},  {"EBUSY", 16},  {"EAGAIN", 11},
                 {"EISCONN", 106}, {"E2BIG", 7}, {"EPERM", 1}};
    for (unsigned i = 0; i < sizeof(table) / sizeof(table[0]); i++) {
        if (strcmp(name, table[i].name) == 0) {
            return -table[i].err;
        }
    }
    printk("xenstore: unknown error '%s'\n", name);
    return XS_EPROTO;
}

/*
 * Sends one request whose payload is `len` bytes of payload_out and waits for its reply, which
 * is left NUL-terminated in payload_in. Returns the reply length or a negative error.
 */
static int request(uint32_t type, uint32_t tx, uint32_t len) {
    if (!xen.up) {
        return XS_EPROTO;
    }
    if (ring()->connection != 0) {
        printk("xenstore: ring not connected (connection=%u)\n", ring()->connection);
        return XS_EPROTO;
    }
    uint64_t deadline = rdtsc() + tsc_cycles_from_us(XS_TIMEOUT_US);
    struct xsd_sockmsg m = {.type = type, .req_id = next_req_id++, .tx_id = tx, .len = len};
    if (!ring_write(&m, sizeof(m), deadline) || !ring_write(payload_out, len, deadline)) {
        return XS_EPROTO;
    }
    for (;;) {
        struct xsd_sockmsg h;
        if (!ring_read(&h, sizeof(h), deadline)) {
            return XS_EPROTO;
        }
        if (h.len > XS_PAYLOAD_MAX) {
            printk("xenstore: reply type %u with %u payload bytes\n", h.type, h.len);
            return XS_EPROTO;
        }
        if (!ring_read(payload_in, h.len, deadline)) {
            return XS_EPROTO;
        }
        payload_in[h.len] = '\0';
        if (h.type == XS_WATCH_EVENT) {
            continue;
        }
        if (h.req_id != m.req_id) {
            printk("xenstore: reply for req_id %u while waiting for %u (type %u)\n", h.req_id,
                   m.req_id, h.type);
            continue;
        }
        if (h.type == XS_ERROR) {
            return error_errno(payload_in);
        }
        if (h.type != type) {
            printk("xenstore: reply type %u to request type %u\n", h.type, type);
            return XS_EPROTO;
        }
        return (int)h.len;
    }
}

/* payload_out = a\0 (and then b without a NUL, when given); false if it does not fit. */
static bool build(const char* a, const char* b, uint32_t* len) {
    size_t la = strlen(a) + 1;
    size_t lb = b != NULL ? strlen(b) : 0;
    if (la + lb > XS_PAYLOAD_MAX) {
        printk("xenstore: request too long (%llu bytes)\n", (unsigned long long)(la + lb));
        return false;
    }
    memcpy(payload_out, a, la);
    if (lb > 0) {
        memcpy(payload_out + la, b, lb);
    }
    *len = (uint32_t)(la + lb);
    return true;
}

int xs_read(uint32_t tx, const char* path, char* value, uint32_t size) {
    uint32_t len;
    if (!build(path, NULL, &len)) {
        return XS_EPROTO;
    }
    int n = request(XS_READ, tx, len);
    if (n < 0) {
        return n;
    }
    if ((uint32_t)n >= size) {
        printk("xenstore: value of %s too long (%d bytes)\n", path, n);
        return XS_EPROTO;
    }
    memcpy(value, payload_in, (size_t)n + 1);
    return n;
}

int xs_write(uint32_t tx, const char* path, const char* value) {
    uint32_t len;
    if (!build(path, value, &len)) {
        return XS_EPROTO;
    }
    int n = request(XS_WRITE, tx, len);
    return n < 0 ? n : 0;
}

int xs_directory(uint32_t tx, const char* path, char* names, uint32_t size) {
    uint32_t len;
    if (!build(path, NULL, &len)) {
        return XS_EPROTO;
    }
    int n = request(XS_DIRECTORY, tx, len);
    if (n < 0) {
        return n;
    }
    if ((uint32_t)n + 1 > size) {
        printk("xenstore: directory %s too long (%d bytes)\n", path, n);
        return XS_EPROTO;
    }
    memcpy(names, payload_in, (size_t)n + 1);
    int count = 0;
    for (int i = 0; i < n; i++) {
        if (payload_in[i] == '\0') {
            count++;
        }
    }
    return count;
}

int xs_transaction_start(uint32_t* tx) {
    payload_out[0] = '\0';
    int n = request(XS_TRANSACTION_START, 0, 1);
    if (n < 0) {
        return n;
    }
    uint64_t id;
    if (!parse_u64(payload_in, &id) || id == 0 || id > 0xFFFFFFFFull) {
        printk("xenstore: transaction id '%s'\n", payload_in);
        return XS_EPROTO;
    }
    *tx = (uint32_t)id;
    return 0;
}

int xs_transaction_end(uint32_t tx, bool commit) {
    uint32_t len;
    if (!build(commit ? "T" : "F", NULL, &len)) {
        return XS_EPROTO;
    }
    int n = request(XS_TRANSACTION_END, tx, len);
    return n < 0 ? n : 0;
}

int xs_read_u64(const char* path, uint64_t* out) {
    char v[XS_VALUE_MAX];
    int n = xs_read(0, path, v, sizeof(v));
    if (n < 0) {
        return n;
    }
    if (!parse_u64(v, out)) {
        printk("xenstore: %s = '%s' is not a number\n", path, v);
        return XS_EPROTO;
    }
    return 0;
}

int64_t xs_wait_at_least(const char* path, uint64_t lo, uint64_t timeout_us) {
    uint64_t deadline = rdtsc() + tsc_cycles_from_us(timeout_us);
    uint64_t v = 0;
    int rc = 0;
    for (;;) {
        rc = xs_read_u64(path, &v);
        if (rc == 0 && v >= lo) {
            return (int64_t)v;
        }
        if (rc != 0 && rc != -XEN_ENOENT) {
            return rc;
        }
        if (rdtsc() >= deadline) {
            if (rc == 0) {
                printk("xenstore: %s stayed %llu, waited for %llu\n", path, (unsigned long long)v,
                       (unsigned long long)lo);
            } else {
                printk("xenstore: %s never appeared\n", path);
            }
            return XS_EPROTO;
        }
        tsc_delay_us(XS_POLL_US);
    }
}
