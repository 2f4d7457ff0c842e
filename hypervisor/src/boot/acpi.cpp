#include "boot/acpi.hpp"

#include <fmt/format.h>

#include <cstring>
#include <numeric>
#include <string_view>

#include "boot/layout.hpp"

namespace hypervisor {

namespace {

struct Bytes {
    std::vector<std::uint8_t> b;
    void u8(std::uint64_t v) { b.push_back(static_cast<std::uint8_t>(v)); }
    void u16(std::uint64_t v) { u8(v); u8(v >> 8); }
    void u32(std::uint64_t v) { u16(v); u16(v >> 16); }
    void u64(std::uint64_t v) { u32(v); u32(v >> 32); }
    void str(std::string_view s, std::size_t n) {
        for (std::size_t i = 0; i < n; ++i) u8(i < s.size() ? static_cast<std::uint8_t>(s[i]) : ' ');
    }
    void zeros(std::size_t n) { b.insert(b.end(), n, 0); }
};

std::uint8_t checksum(const std::uint8_t* p, std::size_t n) {
    auto s = std::accumulate(p, p + n, std::uint8_t{0}, [](std::uint8_t a, std::uint8_t c) { return std::uint8_t(a + c); });
    return static_cast<std::uint8_t>(-s);
}

// ACPI 6.4 §5.2.6: the common header. Length and checksum are fixed up by finish().
Bytes table(std::string_view sig, std::uint8_t revision) {
    Bytes t;
    t.str(sig, 4);
    t.u32(0);
    t.u8(revision);
    t.u8(0);
    t.str("NITRO", 6);
    t.str("NITROVM", 8);
    t.u32(1);
    t.str("NTRO", 4);
    t.u32(1);
    return t;
}

std::vector<std::uint8_t> finish(Bytes t) {
    auto len = static_cast<std::uint32_t>(t.b.size());
    std::memcpy(&t.b[4], &len, 4);
    t.b[9] = checksum(t.b.data(), t.b.size());
    return std::move(t.b);
}

std::vector<std::uint8_t> madt(std::uint32_t n) {
    // §5.2.12: local APIC address, flags (PCAT_COMPAT: an 8259 pair exists), then entries.
    Bytes t = table("APIC", 5);
    t.u32(layout::kLapic);
    t.u32(1);
    for (std::uint32_t i = 0; i < n; ++i) {  // §5.2.12.2 processor local APIC
        t.u8(0);
        t.u8(8);
        t.u8(i);      // ACPI processor UID
        t.u8(i);      // APIC id
        t.u32(1);     // enabled
    }
    t.u8(1);  // §5.2.12.3 I/O APIC
    t.u8(12);
    t.u8(n);  // its id follows the CPUs', as in the MP table
    t.u8(0);
    t.u32(layout::kIoApic);
    t.u32(0);  // GSI base
    t.u8(4);   // §5.2.12.7 local APIC NMI on LINT1 of every processor
    t.u8(6);
    t.u8(0xff);
    t.u16(0);
    t.u8(1);
    return finish(std::move(t));
}

std::vector<std::uint8_t> fadt(std::uint64_t dsdt, bool no_vga) {
    // §5.2.9, revision 6 (276 bytes). Hardware-reduced: no PM blocks, no SCI.
    Bytes t = table("FACP", 6);
    t.u32(0);                               // FIRMWARE_CTRL
    t.u32(static_cast<std::uint32_t>(dsdt));
    t.zeros(109 - t.b.size());              // INT_MODEL .. CENTURY: unused here
    t.u16(static_cast<std::uint16_t>((no_vga ? 1u << 2 : 0u) | (1u << 5)));  // IAPC_BOOT_ARCH: [no VGA,] no CMOS RTC
    t.u8(0);
    t.u32(1u << 20);                        // Flags: HW_REDUCED_ACPI
    t.zeros(12);                            // RESET_REG
    t.u8(0);                                // RESET_VALUE
    t.u16(0);                               // ARM_BOOT_ARCH
    t.u8(4);                                // FADT minor version (6.4)
    t.u64(0);                               // X_FIRMWARE_CTRL
    t.u64(dsdt);                            // X_DSDT
    t.zeros(268 - t.b.size());              // X_PM* and sleep registers: none
    t.str("NITROVM ", 8);                   // hypervisor vendor identity
    return finish(std::move(t));
}

// ACPI 6.4 §20.2.4: a package length, counting its own bytes.
std::vector<std::uint8_t> with_pkg_length(std::vector<std::uint8_t> body) {
    std::size_t n = body.size() + 1;
    std::vector<std::uint8_t> out;
    if (n < 0x40) {
        out.push_back(static_cast<std::uint8_t>(n));
    } else {
        n = body.size() + 2;  // two-byte form (bodies here stay below 4 KiB)
        out.push_back(static_cast<std::uint8_t>(0x40 | (n & 0xf)));
        out.push_back(static_cast<std::uint8_t>(n >> 4));
    }
    out.insert(out.end(), body.begin(), body.end());
    return out;
}

void append(std::vector<std::uint8_t>& to, std::initializer_list<std::uint8_t> bytes) {
    to.insert(to.end(), bytes);
}
void append(std::vector<std::uint8_t>& to, const std::vector<std::uint8_t>& bytes) {
    to.insert(to.end(), bytes.begin(), bytes.end());
}

// The DSDT's AML: \_SB.COM1, the 16550 as a PNP0501 device with its ports and IRQ 4. With
// hardware-reduced ACPI Linux has no legacy ISA IRQs; this is how the UART gets its interrupt.
std::vector<std::uint8_t> dsdt_aml() {
    std::vector<std::uint8_t> dev;
    append(dev, {'C', 'O', 'M', '1'});
    append(dev, {0x08, '_', 'H', 'I', 'D', 0x0c, 0x41, 0xd0, 0x05, 0x01});  // EisaId("PNP0501")
    append(dev, {0x08, '_', 'U', 'I', 'D', 0x00});                          // Zero
    std::vector<std::uint8_t> res = {
        0x47, 0x01, 0xf8, 0x03, 0xf8, 0x03, 0x00, 0x08,  // IO(Decode16, 0x3F8, 0x3F8, 0, 8)
        0x22, 0x10, 0x00,                                // IRQNoFlags() {4}
        0x79, 0x00,                                      // end tag
    };
    std::vector<std::uint8_t> buf = {0x0a, static_cast<std::uint8_t>(res.size())};  // BufferSize
    append(buf, res);
    append(dev, {0x08, '_', 'C', 'R', 'S', 0x11});
    append(dev, with_pkg_length(buf));
    std::vector<std::uint8_t> scope = {0x5c, '_', 'S', 'B', '_'};
    append(scope, {0x5b, 0x82});  // DeviceOp
    append(scope, with_pkg_length(dev));
    std::vector<std::uint8_t> aml = {0x10};  // ScopeOp
    append(aml, with_pkg_length(scope));
    return aml;
}

}  // namespace

std::vector<std::uint8_t> build_acpi(std::uint32_t base, std::uint32_t n, const AcpiOptions& options) {
    // Layout: RSDP (36 → 48), RSDT, XSDT, FADT, DSDT, MADT, each 16-byte aligned.
    Bytes dsdt_t = table("DSDT", 2);
    for (auto b : dsdt_aml()) dsdt_t.u8(b);
    auto dsdt = finish(std::move(dsdt_t));
    auto madt_t = madt(n);
    auto align = [](std::size_t v) { return (v + 15) & ~std::size_t{15}; };
    std::uint64_t rsdt_at = base + 48;
    std::uint64_t xsdt_at = rsdt_at + align(36 + 8);
    std::uint64_t fadt_at = xsdt_at + align(36 + 16);
    std::uint64_t dsdt_at = fadt_at + align(276);
    std::uint64_t madt_at = dsdt_at + align(dsdt.size());
    auto fadt_t = fadt(dsdt_at, options.declare_no_vga);

    Bytes rsdt = table("RSDT", 1);
    rsdt.u32(fadt_at);
    rsdt.u32(madt_at);
    Bytes xsdt = table("XSDT", 1);
    xsdt.u64(fadt_at);
    xsdt.u64(madt_at);

    Bytes rsdp;  // §5.2.5.3, revision 2
    rsdp.str("RSD PTR ", 8);
    rsdp.u8(0);
    rsdp.str("NITRO", 6);
    rsdp.u8(2);
    rsdp.u32(rsdt_at);
    rsdp.u32(36);
    rsdp.u64(xsdt_at);
    rsdp.u8(0);
    rsdp.zeros(3);
    rsdp.b[8] = checksum(rsdp.b.data(), 20);
    rsdp.b[32] = checksum(rsdp.b.data(), 36);

    std::vector<std::uint8_t> out(madt_at - base + madt_t.size(), 0);
    auto place = [&](std::uint64_t at, const std::vector<std::uint8_t>& v) {
        std::memcpy(out.data() + (at - base), v.data(), v.size());
    };
    place(base, rsdp.b);
    place(rsdt_at, finish(std::move(rsdt)));
    place(xsdt_at, finish(std::move(xsdt)));
    place(fadt_at, fadt_t);
    place(dsdt_at, dsdt);
    place(madt_at, madt_t);
    return out;
}

common::Result<std::uint64_t> write_acpi(const common::GuestMemory& mem, std::uint32_t n, const AcpiOptions& options) {
    auto t = build_acpi(static_cast<std::uint32_t>(layout::kAcpi), n, options);
    if (t.size() > layout::kBiosRom - layout::kAcpi)
        return common::fail(common::Error::invalid(fmt::format("ACPI tables for {} vCPUs do not fit", n)));
    if (auto s = mem.write(common::GuestAddr(layout::kAcpi), std::as_bytes(std::span(t))); !s)
        return common::fail(std::move(s.error()));
    return layout::kAcpi;
}

}  // namespace hypervisor
