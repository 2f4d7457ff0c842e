/*
 * PCI configuration space through type 1 ports 0xCF8/0xCFC (PCI local bus spec 3.0 §3.2.2.3.2),
 * at CPL3 with IOPL 3. Only dword accesses, which every host bridge model handles.
 */
#include "probe.h"
#include "x86.h"

#define PCI_CONFIG_ADDRESS 0xCF8
#define PCI_CONFIG_DATA 0xCFC

#define PCI_ID 0x00
#define PCI_STATUS_COMMAND 0x04
#define PCI_HEADER_DWORD 0x0C /* header type is byte 2 of this dword */
#define PCI_BAR0 0x10
#define PCI_CAP_PTR 0x34
#define PCI_STATUS_CAP_LIST (1u << 20) /* status bit 4, in the dword at 0x04 */
#define PCI_HEADER_MULTIFUNCTION 0x80
#define PCI_MAX_CAPS 48 /* (256 - 64) / 4: a longer chain is a loop */

static uint32_t config_address(struct pci_dev d, uint8_t off) {
    return 0x80000000u | ((uint32_t)d.bus << 16) | ((uint32_t)d.dev << 11) | ((uint32_t)d.fn << 8) |
           (off & 0xFCu);
}

uint32_t pci_read32(struct pci_dev d, uint8_t off) {
    outl(PCI_CONFIG_ADDRESS, config_address(d, off));
    return inl(PCI_CONFIG_DATA);
}

void pci_write32(struct pci_dev d, uint8_t off, uint32_t val) {
    outl(PCI_CONFIG_ADDRESS, config_address(d, off));
    outl(PCI_CONFIG_DATA, val);
}

/* Bus 0 only: the probe's machines have no bridges. */
bool pci_find(uint16_t vendor, uint16_t device, struct pci_dev* out) {
    uint32_t want = ((uint32_t)device << 16) | vendor;
    for (uint8_t dev = 0; dev < 32; dev++) {
        struct pci_dev d = {0, dev, 0};
        uint32_t id = pci_read32(d, PCI_ID);
        if ((id & 0xFFFF) == 0xFFFF) {
            continue;
        }
        uint8_t header = (uint8_t)(pci_read32(d, PCI_HEADER_DWORD) >> 16);
        uint8_t fns = (header & PCI_HEADER_MULTIFUNCTION) ? 8 : 1;
        for (uint8_t fn = 0; fn < fns; fn++) {
            d.fn = fn;
            if (fn > 0) {
                id = pci_read32(d, PCI_ID);
            }
            if (id == want) {
                *out = d;
                return true;
            }
        }
    }
    return false;
}

/* Address of memory BAR `bir` as assigned by firmware or the vmm; 0 if not a memory BAR. */
uint64_t pci_bar_address(struct pci_dev d, unsigned bir) {
    if (bir > 5) {
        return 0;
    }
    uint8_t off = (uint8_t)(PCI_BAR0 + 4 * bir);
    uint32_t lo = pci_read32(d, off);
    if (lo & 1) {
        return 0; /* I/O BAR */
    }
    uint64_t addr = lo & ~0xFull;
    if (((lo >> 1) & 3) == 2 && bir < 5) { /* 64-bit BAR: the next one holds the high half */
        addr |= (uint64_t)pci_read32(d, (uint8_t)(off + 4)) << 32;
    }
    return addr;
}

/* Offset of capability `cap_id` in config space, or 0. */
uint8_t pci_find_cap(struct pci_dev d, uint8_t cap_id) {
    if (!(pci_read32(d, PCI_STATUS_COMMAND) & PCI_STATUS_CAP_LIST)) {
        return 0;
    }
    uint8_t ptr = (uint8_t)(pci_read32(d, PCI_CAP_PTR) & 0xFC);
    for (unsigned i = 0; i < PCI_MAX_CAPS && ptr >= 0x40; i++) {
        uint32_t hdr = pci_read32(d, ptr);
        if ((hdr & 0xFF) == cap_id) {
            return ptr;
        }
        ptr = (uint8_t)((hdr >> 8) & 0xFC);
    }
    return 0;
}
