/*
 * Which CPUs exist: the ACPI MADT if the loader points at an RSDP (QEMU/SeaBIOS), else the
 * Intel MP table (nitrovm has no ACPI). SeaBIOS's MP table lists one entry per package, so with
 * several cores in one socket only the MADT sees them all. Runs at CPL3: these are plain memory
 * reads. Every table is checksummed and every walk is bounded by the table's own length.
 */
#include "probe.h"
#include "x86.h"

#define MP_FLOAT_LEN 16
#define MP_ENTRY_PROCESSOR 0
#define MP_PROC_ENABLED 0x01

#define RSDP_V1_LEN 20
#define ACPI_HEADER_LEN 36
#define ACPI_MAX_TABLES 64
#define MADT_ENTRIES_OFFSET 44
#define MADT_LOCAL_APIC 0
#define MADT_ENABLED 0x01

#define LOW_LIMIT 0x100000000ull

/* MP spec 1.4 §4.1: floating pointer structure. */
struct __attribute__((packed)) mp_float {
    char signature[4]; /* "_MP_" */
    uint32_t config_pa;
    uint8_t length; /* in 16-byte units */
    uint8_t spec_rev;
    uint8_t checksum;
    uint8_t features[5];
};

/* MP spec 1.4 §4.2: configuration table header. */
struct __attribute__((packed)) mp_config {
    char signature[4]; /* "PCMP" */
    uint16_t base_length;
    uint8_t spec_rev;
    uint8_t checksum;
    char oem_id[8];
    char product_id[12];
    uint32_t oem_table_pa;
    uint16_t oem_table_size;
    uint16_t entry_count;
    uint32_t lapic_pa;
    uint16_t ext_length;
    uint8_t ext_checksum;
    uint8_t reserved;
};

/* MP spec 1.4 §4.3.1: processor entry. */
struct __attribute__((packed)) mp_processor {
    uint8_t type;
    uint8_t apic_id;
    uint8_t apic_version;
    uint8_t flags;
    uint32_t signature;
    uint32_t features;
    uint32_t reserved[2];
};

/* ACPI 6.4 §5.2.5.3: root system description pointer. */
struct __attribute__((packed)) acpi_rsdp {
    char signature[8]; /* "RSD PTR " */
    uint8_t checksum;
    char oem_id[6];
    uint8_t revision;
    uint32_t rsdt_pa;
    uint32_t length;
    uint64_t xsdt_pa;
    uint8_t ext_checksum;
    uint8_t reserved[3];
};

/* ACPI 6.4 §5.2.6: system description table header. */
struct __attribute__((packed)) acpi_header {
    char signature[4];
    uint32_t length;
    uint8_t revision;
    uint8_t checksum;
    char oem_id[6];
    char oem_table_id[8];
    uint32_t oem_revision;
    uint32_t creator_id;
    uint32_t creator_revision;
};

static bool in_low_memory(uint64_t pa, uint64_t len) {
    return pa != 0 && pa < LOW_LIMIT && len <= LOW_LIMIT - pa;
}

static bool checksum_ok(uint64_t pa, size_t len) {
    const uint8_t* p = phys_ptr(pa);
    uint8_t sum = 0;
    for (size_t i = 0; i < len; i++) {
        sum = (uint8_t)(sum + p[i]);
    }
    return sum == 0;
}

/* First valid MP floating pointer on a 16-byte boundary in [start, start+len). */
static uint64_t mp_scan(uint64_t start, uint64_t len) {
    for (uint64_t pa = start; pa + MP_FLOAT_LEN <= start + len; pa += 16) {
        if (memcmp(phys_ptr(pa), "_MP_", 4) == 0 && checksum_ok(pa, MP_FLOAT_LEN) &&
            ((const struct mp_float*)phys_ptr(pa))->length == 1) {
            return pa;
        }
    }
    return 0;
}

static uint16_t read16(uint64_t pa) {
    return *(const volatile uint16_t*)phys_ptr(pa);
}

/* BIOS data area: the EBDA segment (0x40E) and base memory size in KiB (0x413). */
static uint64_t ebda_base(void) {
    uint64_t ebda = (uint64_t)read16(0x40E) << 4;
    return ebda >= 0x80000 && ebda < 0xA0000 ? ebda : 0;
}

/* MP spec 1.4 §4: EBDA's first KiB, base memory's last KiB, then the BIOS ROM. nitrovm puts
 * the pointer at 0x9FC00 whether or not a BIOS data area says so. */
static uint64_t mp_find(void) {
    uint64_t f = 0;
    uint64_t ebda = ebda_base();
    uint64_t base_kib = read16(0x413);
    if (ebda != 0) {
        f = mp_scan(ebda, 1024);
    }
    if (f == 0 && base_kib >= 512 && base_kib <= 640) {
        f = mp_scan(base_kib * 1024 - 1024, 1024);
    }
    if (f == 0) {
        f = mp_scan(0x9FC00, 1024);
    }
    if (f == 0) {
        f = mp_scan(0xF0000, 0x10000);
    }
    return f;
}

static uint32_t mp_cpus(uint8_t* ids, uint32_t max) {
    uint64_t fpa = mp_find();
    if (fpa == 0) {
        return 0;
    }
    const struct mp_float* f = phys_ptr(fpa);
    if (!in_low_memory(f->config_pa, 0x10000)) {
        return 0;
    }
    const struct mp_config* c = phys_ptr(f->config_pa);
    if (memcmp(c->signature, "PCMP", 4) != 0 || c->base_length < sizeof(*c) ||
        !checksum_ok(f->config_pa, c->base_length)) {
        return 0;
    }
    uint32_t n = 0;
    uint32_t off = sizeof(*c);
    for (uint32_t i = 0; i < c->entry_count && off < c->base_length; i++) {
        const uint8_t* e = (const uint8_t*)c + off;
        if (e[0] == MP_ENTRY_PROCESSOR) {
            if (off + sizeof(struct mp_processor) > c->base_length) {
                break;
            }
            const struct mp_processor* p = (const void*)e;
            if ((p->flags & MP_PROC_ENABLED) && n < max) {
                ids[n++] = p->apic_id;
            }
            off += sizeof(struct mp_processor);
        } else if (e[0] <= 4) {
            off += 8; /* bus, I/O APIC, I/O and local interrupt entries */
        } else {
            break; /* unknown entry type: its length is unknown too */
        }
    }
    return n;
}

/*
 * Only the loader's pointer (hvm_start_info.rsdp_paddr) is used, no scan of 0xE0000-0xFFFFF:
 * on a machine without firmware that range may not be memory at all, and each read of it
 * would be an MMIO exit.
 */
static uint64_t rsdp_find(uint64_t hint) {
    if (in_low_memory(hint, sizeof(struct acpi_rsdp)) &&
        memcmp(phys_ptr(hint), "RSD PTR ", 8) == 0 && checksum_ok(hint, RSDP_V1_LEN)) {
        return hint;
    }
    return 0;
}

static const struct acpi_header* acpi_table(uint64_t pa, uint32_t min_len) {
    if (!in_low_memory(pa, ACPI_HEADER_LEN)) {
        return NULL;
    }
    const struct acpi_header* h = phys_ptr(pa);
    if (h->length < min_len || !in_low_memory(pa, h->length) || !checksum_ok(pa, h->length)) {
        return NULL;
    }
    return h;
}

/* The MADT through the XSDT (ACPI 2.0+) or the RSDT. */
static const struct acpi_header* madt_find(uint64_t rsdp_hint) {
    uint64_t rpa = rsdp_find(rsdp_hint);
    if (rpa == 0) {
        return NULL;
    }
    const struct acpi_rsdp* rsdp = phys_ptr(rpa);
    bool xsdt = rsdp->revision >= 2 && rsdp->xsdt_pa != 0;
    const struct acpi_header* root =
        acpi_table(xsdt ? rsdp->xsdt_pa : rsdp->rsdt_pa, ACPI_HEADER_LEN);
    if (root == NULL) {
        return NULL;
    }
    uint32_t entry_size = xsdt ? 8 : 4;
    uint32_t count = (root->length - ACPI_HEADER_LEN) / entry_size;
    const uint8_t* entries = (const uint8_t*)root + ACPI_HEADER_LEN;
    for (uint32_t i = 0; i < count && i < ACPI_MAX_TABLES; i++) {
        uint64_t pa = 0;
        memcpy(&pa, entries + i * entry_size, entry_size);
        const struct acpi_header* t = acpi_table(pa, MADT_ENTRIES_OFFSET);
        if (t != NULL && memcmp(t->signature, "APIC", 4) == 0) {
            return t;
        }
    }
    return NULL;
}

/* ACPI 6.4 §5.2.12.2: processor local APIC entries (x2APIC-only CPUs are not started here). */
static uint32_t madt_cpus(uint64_t rsdp_hint, uint8_t* ids, uint32_t max) {
    const struct acpi_header* madt = madt_find(rsdp_hint);
    if (madt == NULL) {
        return 0;
    }
    const uint8_t* base = (const uint8_t*)madt;
    uint32_t n = 0;
    for (uint32_t off = MADT_ENTRIES_OFFSET; off + 2 <= madt->length;) {
        uint8_t type = base[off];
        uint8_t len = base[off + 1];
        if (len < 2 || off + len > madt->length) {
            break;
        }
        if (type == MADT_LOCAL_APIC && len >= 8) {
            uint32_t flags;
            memcpy(&flags, base + off + 4, sizeof(flags));
            if ((flags & MADT_ENABLED) && n < max) {
                ids[n++] = base[off + 3];
            }
        }
        off += len;
    }
    return n;
}

uint32_t cpus_discover(uint64_t rsdp_hint, uint8_t* ids, uint32_t max, const char** source) {
    uint32_t n = madt_cpus(rsdp_hint, ids, max);
    if (n > 0) {
        *source = "acpi-madt";
        return n;
    }
    n = mp_cpus(ids, max);
    *source = n > 0 ? "mp-table" : "none";
    return n;
}
