#include <doctest/doctest.h>

#include <elf.h>

#include <cstring>
#include <numeric>

#include "boot/cpu_setup.hpp"
#include "boot/layout.hpp"
#include "boot/loader.hpp"
#include "boot/memory_map.hpp"
#include "boot/mptable.hpp"

using namespace hypervisor;
using common::GuestAddr;

namespace {

common::GuestMemory ram(std::uint64_t bytes) {
    auto m = common::GuestMemory::create(ram_regions(bytes));
    REQUIRE(m.has_value());
    return std::move(*m);
}

// A minimal bzImage: a header with the fields the loader reads, and a payload.
std::vector<std::uint8_t> fake_bzimage(std::uint16_t version = 0x20f, std::uint16_t xloadflags = 1,
                                       std::size_t payload = 8192) {
    std::vector<std::uint8_t> f(5 * 512 + payload, 0);
    auto put = [&](std::size_t o, auto v) { std::memcpy(&f[o], &v, sizeof v); };
    put(0x1f1, std::uint8_t{4});
    put(0x201, std::uint8_t{0x6a});
    put(0x202, std::uint32_t{0x53726448});
    put(0x206, version);
    put(0x211, std::uint8_t{1});
    put(0x22c, std::uint32_t{0x7fffffff});
    put(0x236, xloadflags);
    put(0x238, std::uint32_t{2048});
    put(0x260, std::uint32_t{0x100000});
    for (std::size_t i = 0; i < payload; ++i) f[5 * 512 + i] = static_cast<std::uint8_t>(i * 7);
    return f;
}

// A minimal ELF64 with one PT_LOAD at 1 MiB and a PVH note.
std::vector<std::uint8_t> fake_pvh(std::uint32_t entry = 0x100000, bool with_note = true) {
    std::vector<std::uint8_t> f(0x1000, 0);
    Elf64_Ehdr eh{};
    std::memcpy(eh.e_ident, ELFMAG, SELFMAG);
    eh.e_ident[EI_CLASS] = ELFCLASS64;
    eh.e_ident[EI_DATA] = ELFDATA2LSB;
    eh.e_machine = EM_X86_64;
    eh.e_phoff = sizeof eh;
    eh.e_phentsize = sizeof(Elf64_Phdr);
    eh.e_phnum = 2;
    std::memcpy(f.data(), &eh, sizeof eh);
    Elf64_Phdr load{};
    load.p_type = PT_LOAD;
    load.p_offset = 0x800;
    load.p_paddr = 0x100000;
    load.p_filesz = 0x100;
    load.p_memsz = 0x2000;
    Elf64_Phdr note{};
    note.p_type = with_note ? PT_NOTE : PT_NULL;
    note.p_offset = 0x400;
    note.p_filesz = 20;
    std::memcpy(&f[sizeof eh], &load, sizeof load);
    std::memcpy(&f[sizeof eh + sizeof load], &note, sizeof note);
    std::uint32_t n[3] = {4, 4, 18};
    std::memcpy(&f[0x400], n, 12);
    std::memcpy(&f[0x40c], "Xen", 4);
    std::memcpy(&f[0x410], &entry, 4);
    for (int i = 0; i < 0x100; ++i) f[0x800 + static_cast<std::size_t>(i)] = 0xaa;
    return f;
}

std::uint8_t sum(const std::vector<std::uint8_t>& b, std::size_t off, std::size_t n) {
    return std::accumulate(b.begin() + static_cast<long>(off), b.begin() + static_cast<long>(off + n), std::uint8_t{0},
                           [](std::uint8_t a, std::uint8_t c) { return std::uint8_t(a + c); });
}

}  // namespace

TEST_CASE("memory map: RAM split around the PCI hole, E820 reserves the MP table and BIOS area") {
    auto r = ram_regions(4ull << 30);
    REQUIRE(r.size() == 2);
    CHECK(r[0].size == layout::kMmioHoleStart);
    CHECK(r[1].base.value() == layout::k4G);
    CHECK(r[1].size == (4ull << 30) - layout::kMmioHoleStart);
    CHECK(r[1].fd_offset == layout::kMmioHoleStart);
    auto m = e820_map(r);
    REQUIRE(m.size() == 5);
    CHECK(m[0].addr == 0);
    CHECK(m[0].size == layout::kMpTable);
    CHECK(m[1].type == kE820Reserved);
    CHECK(m[3].addr == layout::kHighMem);
    CHECK(m[3].addr + m[3].size == layout::kMmioHoleStart);
    CHECK(m[4].addr == layout::k4G);
    CHECK(ram_regions(256ull << 20).size() == 1);
}

TEST_CASE("MP table: checksums are zero and entries describe every CPU") {
    for (std::uint32_t n : {1u, 2u, 8u, kMaxMpCpus}) {
        auto t = build_mptable(0x9fc00, n);
        REQUIRE(t.size() <= 0x400);
        CHECK(std::memcmp(t.data(), "_MP_", 4) == 0);
        CHECK(sum(t, 0, 16) == 0);
        std::uint32_t phys;
        std::memcpy(&phys, &t[4], 4);
        CHECK(phys == 0x9fc10);
        CHECK(std::memcmp(&t[16], "PCMP", 4) == 0);
        std::uint16_t len, count;
        std::memcpy(&len, &t[16 + 4], 2);
        std::memcpy(&count, &t[16 + 34], 2);
        CHECK(len == t.size() - 16);
        CHECK(sum(t, 16, len) == 0);
        // Processor entries first: n of them, APIC ids 0..n-1, CPU 0 the bootstrap one.
        std::uint32_t cpus = 0;
        for (std::uint32_t i = 0; i < n; ++i) {
            std::size_t o = 16 + 44 + i * 20;
            CHECK(t[o] == 0);
            CHECK(t[o + 1] == i);
            CHECK((t[o + 3] & 1) == 1);
            CHECK(((t[o + 3] & 2) != 0) == (i == 0));
            ++cpus;
        }
        CHECK(cpus == n);
        CHECK(count == n + 2 + 1 + 16 + 2);
    }
}

TEST_CASE("MP table: written below 640 KiB with a pointer copy in the BIOS area") {
    auto mem = ram(64ull << 20);
    REQUIRE(write_mptable(mem, 2));
    auto p = mem.read_obj<std::array<char, 4>>(GuestAddr(layout::kBiosRom));
    CHECK(std::memcmp(p->data(), "_MP_", 4) == 0);
    CHECK_FALSE(write_mptable(mem, 0).has_value());
    CHECK_FALSE(write_mptable(mem, kMaxMpCpus + 1).has_value());
}

TEST_CASE("bzImage: loaded at 1 MiB with boot_params, command line, initrd and E820") {
    auto mem = ram(64ull << 20);
    auto img = fake_bzimage();
    std::vector<std::uint8_t> initrd(10000, 0x5a);
    auto e = load_bzimage(mem, img, "console=ttyS0 -- sh", initrd);
    REQUIRE(e.has_value());
    CHECK(e->mode == EntryMode::Linux64);
    CHECK(e->rip == 0x100200);
    CHECK(e->arg == layout::kZeroPage);
    CHECK(*mem.read_obj<std::uint8_t>(GuestAddr(0x100001)) == 7);  // payload byte 1
    auto zp = layout::kZeroPage;
    CHECK(*mem.read_obj<std::uint32_t>(GuestAddr(zp + 0x228)) == layout::kCmdline);
    CHECK(*mem.read_obj<std::uint8_t>(GuestAddr(zp + 0x210)) == 0xff);
    auto rd = *mem.read_obj<std::uint32_t>(GuestAddr(zp + 0x218));
    CHECK(*mem.read_obj<std::uint32_t>(GuestAddr(zp + 0x21c)) == initrd.size());
    CHECK(rd % 4096 == 0);
    CHECK(rd + initrd.size() <= (64ull << 20));
    CHECK(*mem.read_obj<std::uint8_t>(GuestAddr(rd)) == 0x5a);
    CHECK(*mem.read_obj<std::uint8_t>(GuestAddr(zp + 0x1e8)) == 4);  // E820 entries
    auto cl = mem.slice(GuestAddr(layout::kCmdline), 20);
    CHECK(std::string(reinterpret_cast<const char*>(cl->data())) == "console=ttyS0 -- sh");
}

TEST_CASE("bzImage: old protocol, no 64-bit entry, truncation and oversize inputs are refused") {
    auto mem = ram(64ull << 20);
    CHECK_FALSE(load_bzimage(mem, fake_bzimage(0x20b), "", {}).has_value());
    CHECK_FALSE(load_bzimage(mem, fake_bzimage(0x20f, 0), "", {}).has_value());
    auto img = fake_bzimage();
    CHECK_FALSE(load_bzimage(mem, std::span(img).first(0x220), "", {}).has_value());
    CHECK_FALSE(load_bzimage(mem, img, std::string(3000, 'x'), {}).has_value());
    std::vector<std::uint8_t> huge(63ull << 20, 1);
    auto e = load_bzimage(mem, img, "", huge);
    REQUIRE_FALSE(e.has_value());
    CHECK(e.error().message.find("more memory") != std::string::npos);
}

TEST_CASE("PVH ELF: entry from the note, segments loaded and zero-filled, start info written") {
    auto mem = ram(64ull << 20);
    REQUIRE(mem.write_obj(GuestAddr(0x101000), std::uint32_t{0xffffffff}));
    auto f = fake_pvh(0x100040);
    CHECK(detect_kernel(f) == KernelFormat::PvhElf);
    auto e = load_pvh(mem, f, "exit 7", {});
    REQUIRE(e.has_value());
    CHECK(e->mode == EntryMode::Pvh32);
    CHECK(e->rip == 0x100040);
    CHECK(*mem.read_obj<std::uint8_t>(GuestAddr(0x100000)) == 0xaa);
    CHECK(*mem.read_obj<std::uint32_t>(GuestAddr(0x101000)) == 0);  // bss zeroed
    CHECK(*mem.read_obj<std::uint32_t>(GuestAddr(layout::kStartInfo)) == 0x336ec578);
    CHECK(*mem.read_obj<std::uint64_t>(GuestAddr(layout::kStartInfo + 24)) == layout::kCmdline);
    CHECK(*mem.read_obj<std::uint32_t>(GuestAddr(layout::kStartInfo + 48)) == 4);  // memmap entries
}

TEST_CASE("PVH ELF: missing note, bad class and segments outside RAM are refused") {
    auto mem = ram(64ull << 20);
    auto no_note = fake_pvh(0x100000, false);
    auto e = load_pvh(mem, no_note, "", {});
    REQUIRE_FALSE(e.has_value());
    CHECK(e.error().message.find("PVH") != std::string::npos);
    auto bad = fake_pvh();
    bad[EI_CLASS] = ELFCLASS32;
    CHECK_FALSE(load_pvh(mem, bad, "", {}).has_value());
    auto far = fake_pvh();
    Elf64_Phdr ph;
    std::memcpy(&ph, &far[sizeof(Elf64_Ehdr)], sizeof ph);
    ph.p_paddr = 0x80000000;  // above this guest's 64 MiB
    std::memcpy(&far[sizeof(Elf64_Ehdr)], &ph, sizeof ph);
    CHECK_FALSE(load_pvh(mem, far, "", {}).has_value());
    std::vector<std::uint8_t> junk(100, 0x41);
    CHECK(detect_kernel(junk) == KernelFormat::Unknown);
}

TEST_CASE("vmlinux: loaded at its physical addresses, entered at startup_64 with boot_params") {
    auto mem = ram(64ull << 20);
    auto f = fake_pvh(0x100040);
    Elf64_Ehdr eh;
    std::memcpy(&eh, f.data(), sizeof eh);
    eh.e_entry = 0x100010;  // vmlinux: the physical address of startup_64
    std::memcpy(f.data(), &eh, sizeof eh);
    std::vector<std::uint8_t> initrd(5000, 0x3c);
    auto e = load_vmlinux(mem, f, "console=ttyS0 -- sh", initrd, 0xe0000);
    REQUIRE(e.has_value());
    CHECK(e->mode == EntryMode::Linux64);
    CHECK(e->rip == 0x100010);
    CHECK(e->arg == layout::kZeroPage);
    CHECK(*mem.read_obj<std::uint8_t>(GuestAddr(0x100000)) == 0xaa);
    auto zp = layout::kZeroPage;
    CHECK(*mem.read_obj<std::uint32_t>(GuestAddr(zp + 0x202)) == 0x53726448);  // HdrS
    CHECK(*mem.read_obj<std::uint16_t>(GuestAddr(zp + 0x1fe)) == 0xaa55);
    CHECK(*mem.read_obj<std::uint32_t>(GuestAddr(zp + 0x228)) == layout::kCmdline);
    CHECK(*mem.read_obj<std::uint64_t>(GuestAddr(zp + 0x070)) == 0xe0000);  // acpi_rsdp_addr
    CHECK(*mem.read_obj<std::uint8_t>(GuestAddr(zp + 0x1e8)) == 4);  // E820 entries
    auto rd = *mem.read_obj<std::uint32_t>(GuestAddr(zp + 0x218));
    CHECK(*mem.read_obj<std::uint32_t>(GuestAddr(zp + 0x21c)) == initrd.size());
    CHECK(*mem.read_obj<std::uint8_t>(GuestAddr(rd)) == 0x3c);
    CHECK(rd >= 0x102000);  // above the image and its bss
}

TEST_CASE("vmlinux: an entry outside the image is refused") {
    auto mem = ram(64ull << 20);
    auto f = fake_pvh(0x100040);
    Elf64_Ehdr eh;
    std::memcpy(&eh, f.data(), sizeof eh);
    eh.e_entry = 0x3000000;
    std::memcpy(f.data(), &eh, sizeof eh);
    auto e = load_vmlinux(mem, f, "", {});
    REQUIRE_FALSE(e.has_value());
    CHECK(e.error().message.find("entry") != std::string::npos);
}

TEST_CASE("boot tables: identity page tables for 4 GiB and flat segments") {
    auto mem = ram(64ull << 20);
    REQUIRE(write_boot_tables(mem, EntryMode::Linux64));
    auto pml4 = *mem.read_obj<std::uint64_t>(GuestAddr(layout::kPml4));
    CHECK((pml4 & ~0xfffull) == layout::kPdpt);
    CHECK((pml4 & 3) == 3);
    // The PDE that maps 3 GiB + 2 MiB points there with the large-page bit.
    auto pdpt3 = *mem.read_obj<std::uint64_t>(GuestAddr(layout::kPdpt + 3 * 8));
    auto pde = *mem.read_obj<std::uint64_t>(GuestAddr((pdpt3 & ~0xfffull) + 8));
    CHECK((pde & ~0xfffull) == (3ull << 30) + (2ull << 20));
    CHECK((pde & 0x80) != 0);

    kvm_sregs s = boot_sregs(kvm_sregs{}, EntryMode::Linux64);
    CHECK(s.cs.l == 1);
    CHECK(s.cs.selector == kBootCs);
    CHECK(s.ds.selector == kBootDs);
    CHECK((s.efer & 0x500) == 0x500);
    CHECK((s.cr0 & 0x80000001u) == 0x80000001u);
    CHECK(s.cr3 == layout::kPml4);
    kvm_sregs p = boot_sregs(kvm_sregs{}, EntryMode::Pvh32);
    CHECK(p.cs.db == 1);
    CHECK(p.cs.l == 0);
    CHECK(p.cs.limit == 0xffffffffu);
    CHECK((p.cr0 & 0x80000000u) == 0);
    CHECK(p.efer == 0);
    auto r = boot_regs(BootEntry{EntryMode::Pvh32, 0x100000, 0x6000});
    CHECK(r.rbx == 0x6000);
    CHECK(r.rip == 0x100000);
    CHECK(r.rflags == 2);
}
