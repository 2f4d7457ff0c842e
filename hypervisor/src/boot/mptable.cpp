#include "boot/mptable.hpp"

#include <cstring>
#include <fmt/format.h>
#include <numeric>

#include "boot/layout.hpp"

namespace hypervisor {

namespace {

constexpr std::uint32_t kLapicVersion = 0x14;
constexpr std::uint32_t kIoApicVersion = 0x11;
constexpr std::uint8_t kBusPci = 0, kBusIsa = 1;

struct Writer {
    std::vector<std::uint8_t> b;
    void u8(std::uint32_t v) { b.push_back(static_cast<std::uint8_t>(v)); }
    void u16(std::uint32_t v) { u8(v & 0xff); u8(v >> 8); }
    void u32(std::uint32_t v) { u16(v & 0xffff); u16(v >> 16); }
    void str(const char* s, std::size_t n) {
        for (std::size_t i = 0; i < n; ++i) u8(static_cast<std::uint8_t>(s[i]));
    }
};

std::uint8_t checksum(const std::uint8_t* p, std::size_t n) {
    std::uint8_t s = std::accumulate(p, p + n, std::uint8_t{0},
                                     [](std::uint8_t a, std::uint8_t c) { return std::uint8_t(a + c); });
    return static_cast<std::uint8_t>(-s);
}

}  // namespace

std::vector<std::uint8_t> build_mptable(std::uint32_t base, std::uint32_t n) {
    // MP spec 1.4 §4.1: the floating pointer, 16 bytes.
    Writer fp;
    fp.str("_MP_", 4);
    fp.u32(base + 16);  // configuration table follows the pointer
    fp.u8(1);           // length in 16-byte units
    fp.u8(4);           // spec revision 1.4
    fp.u8(0);           // checksum, patched below
    fp.u8(0);           // no default configuration: a table is present
    fp.u8(0);
    fp.u8(0); fp.u8(0); fp.u8(0);
    fp.b[10] = checksum(fp.b.data(), 16);

    // §4.2: entries first, header prepended once the count is known.
    Writer e;
    std::uint16_t count = 0;
    for (std::uint32_t i = 0; i < n; ++i) {  // §4.3.1 processor entries
        e.u8(0);
        e.u8(i);
        e.u8(kLapicVersion);
        e.u8(0x1 | (i == 0 ? 0x2 : 0));  // enabled, bootstrap
        e.u32(0x600);                     // family 6 signature
        e.u32(0x201);                     // FPU, APIC
        e.u32(0); e.u32(0);
        ++count;
    }
    e.u8(1); e.u8(kBusPci); e.str("PCI   ", 6); ++count;  // §4.3.2 bus entries
    e.u8(1); e.u8(kBusIsa); e.str("ISA   ", 6); ++count;
    std::uint32_t ioapic_id = n;
    e.u8(2); e.u8(ioapic_id); e.u8(kIoApicVersion); e.u8(1); e.u32(static_cast<std::uint32_t>(layout::kIoApic));
    ++count;
    for (std::uint32_t irq = 0; irq < 16; ++irq) {  // §4.3.4 I/O interrupt assignments
        e.u8(3);
        e.u8(irq == 0 ? 3 : 0);  // pin 0 carries the PIC's ExtINT; the rest are plain INTs
        e.u16(0);                // conforming polarity and trigger
        e.u8(kBusIsa);
        e.u8(irq);
        e.u8(ioapic_id);
        e.u8(irq);
        ++count;
    }
    // §4.3.5 local interrupts: LINT0 ExtINT, LINT1 NMI on every local APIC.
    e.u8(4); e.u8(3); e.u16(0); e.u8(kBusIsa); e.u8(0); e.u8(0xff); e.u8(0); ++count;
    e.u8(4); e.u8(1); e.u16(0); e.u8(kBusIsa); e.u8(0); e.u8(0xff); e.u8(1); ++count;

    Writer h;
    h.str("PCMP", 4);
    h.u16(static_cast<std::uint32_t>(44 + e.b.size()));
    h.u8(4);
    h.u8(0);  // checksum
    h.str("NITROVM ", 8);
    h.str("PROBE-HOST  ", 12);
    h.u32(0); h.u16(0);
    h.u16(count);
    h.u32(static_cast<std::uint32_t>(layout::kLapic));
    h.u16(0); h.u8(0); h.u8(0);
    h.b.insert(h.b.end(), e.b.begin(), e.b.end());
    h.b[7] = checksum(h.b.data(), h.b.size());

    std::vector<std::uint8_t> out = fp.b;
    out.insert(out.end(), h.b.begin(), h.b.end());
    return out;
}

common::Status write_mptable(const common::GuestMemory& mem, std::uint32_t vcpu_count) {
    if (vcpu_count == 0 || vcpu_count > kMaxMpCpus)
        return common::fail(common::Error::invalid(
            fmt::format("{} vCPUs: the MP table supports 1 to {}", vcpu_count, kMaxMpCpus)));
    auto t = build_mptable(static_cast<std::uint32_t>(layout::kMpTable), vcpu_count);
    if (t.size() > layout::kEbdaEnd - layout::kMpTable)
        return common::fail(common::Error::invalid("MP table does not fit below 640 KiB"));
    auto bytes = std::as_bytes(std::span(t));
    if (auto s = mem.write(common::GuestAddr(layout::kMpTable), bytes); !s) return s;
    // A copy of the floating pointer in the BIOS ROM area, where some guests look first.
    return mem.write(common::GuestAddr(layout::kBiosRom), bytes.first(16));
}

}  // namespace hypervisor
