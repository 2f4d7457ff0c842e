#include <doctest/doctest.h>

#include <cstring>
#include <numeric>
#include <string>

#include "boot/acpi.hpp"
#include "boot/layout.hpp"

using namespace hypervisor;

namespace {

constexpr std::uint32_t kBase = 0xe0000;

std::uint8_t sum(const std::vector<std::uint8_t>& t, std::size_t off, std::size_t n) {
    return std::accumulate(t.begin() + static_cast<long>(off), t.begin() + static_cast<long>(off + n),
                           std::uint8_t{0}, [](std::uint8_t a, std::uint8_t c) { return std::uint8_t(a + c); });
}
template <typename T>
T at(const std::vector<std::uint8_t>& t, std::size_t off) {
    T v;
    std::memcpy(&v, &t[off], sizeof v);
    return v;
}
// Offset inside the blob of the table at guest address a, with its signature checked.
std::size_t table(const std::vector<std::uint8_t>& t, std::uint64_t a, const char* sig) {
    REQUIRE(a >= kBase);
    std::size_t off = a - kBase;
    REQUIRE(off + 36 <= t.size());
    CHECK(std::string(reinterpret_cast<const char*>(&t[off]), 4) == sig);
    auto len = at<std::uint32_t>(t, off + 4);
    REQUIRE(off + len <= t.size());
    CHECK(sum(t, off, len) == 0);
    return off;
}

}  // namespace

TEST_CASE("ACPI: RSDP checksums, XSDT and RSDT point at FADT and MADT, FADT at DSDT") {
    auto t = build_acpi(kBase, 2);
    CHECK(std::string(reinterpret_cast<const char*>(t.data()), 8) == "RSD PTR ");
    CHECK(sum(t, 0, 20) == 0);
    CHECK(sum(t, 0, 36) == 0);
    CHECK(t[15] == 2);  // revision
    auto xsdt = table(t, at<std::uint64_t>(t, 24), "XSDT");
    auto rsdt = table(t, at<std::uint32_t>(t, 16), "RSDT");
    CHECK(at<std::uint32_t>(t, xsdt + 4) == 36 + 16);
    auto fadt = table(t, at<std::uint64_t>(t, xsdt + 36), "FACP");
    auto madt = table(t, at<std::uint64_t>(t, xsdt + 44), "APIC");
    CHECK(at<std::uint32_t>(t, rsdt + 36) == at<std::uint64_t>(t, xsdt + 36));
    CHECK(at<std::uint32_t>(t, fadt + 4) == 276);
    CHECK((at<std::uint32_t>(t, fadt + 112) & (1u << 20)) != 0);  // hardware-reduced
    auto dsdt_addr = at<std::uint64_t>(t, fadt + 140);
    CHECK(at<std::uint32_t>(t, fadt + 40) == dsdt_addr);
    auto dsdt = table(t, dsdt_addr, "DSDT");
    // The AML names COM1 with EisaId("PNP0501") and IRQ 4.
    std::string aml(reinterpret_cast<const char*>(&t[dsdt + 36]), at<std::uint32_t>(t, dsdt + 4) - 36);
    CHECK(aml.find("COM1") != std::string::npos);
    CHECK(aml.find(std::string("\x0c\x41\xd0\x05\x01", 5)) != std::string::npos);
    CHECK(aml.find(std::string("\x22\x10\x00", 3)) != std::string::npos);
    CHECK(at<std::uint32_t>(t, madt + 36) == layout::kLapic);
}

TEST_CASE("ACPI: the MADT lists every CPU, then the I/O APIC") {
    for (std::uint32_t n : {1u, 2u, 7u, 32u}) {
        auto t = build_acpi(kBase, n);
        auto xsdt = table(t, at<std::uint64_t>(t, 24), "XSDT");
        auto madt = table(t, at<std::uint64_t>(t, xsdt + 44), "APIC");
        std::size_t end = madt + at<std::uint32_t>(t, madt + 4);
        std::size_t p = madt + 44;
        std::uint32_t cpus = 0, ioapics = 0;
        while (p < end) {
            std::uint8_t type = t[p], len = t[p + 1];
            REQUIRE(len >= 2);
            if (type == 0) {
                CHECK(t[p + 3] == cpus);  // APIC ids 0..n-1
                CHECK((at<std::uint32_t>(t, p + 4) & 1) == 1);
                ++cpus;
            } else if (type == 1) {
                CHECK(at<std::uint32_t>(t, p + 4) == layout::kIoApic);
                CHECK(at<std::uint32_t>(t, p + 8) == 0);
                ++ioapics;
            }
            p += len;
        }
        CHECK(p == end);
        CHECK(cpus == n);
        CHECK(ioapics == 1);
    }
}
