#include "boot/loader.hpp"

#include <elf.h>

#include <algorithm>
#include <cstring>
#include <fmt/format.h>

#include "boot/layout.hpp"

namespace hypervisor {

using common::Error;
using common::fail;
using common::GuestAddr;
using common::GuestMemory;
using common::Result;

namespace {

constexpr std::uint32_t kXenElfnotePhys32Entry = 18;
constexpr std::uint32_t kHvmStartMagic = 0x336ec578;

template <typename T>
bool read_at(std::span<const std::uint8_t> f, std::uint64_t off, T& out) {
    if (off > f.size() || f.size() - off < sizeof(T)) return false;
    std::memcpy(&out, f.data() + off, sizeof(T));
    return true;
}

std::span<const std::byte> bytes_of(std::span<const std::uint8_t> s) { return std::as_bytes(s); }

common::Status write_cmdline(const GuestMemory& mem, const std::string& cmdline) {
    if (cmdline.size() + 1 > layout::kCmdlineMax)
        return fail(Error::invalid(fmt::format("command line is {} bytes; the limit is {}",
                                               cmdline.size(), layout::kCmdlineMax - 1)));
    std::vector<std::byte> buf(cmdline.size() + 1, std::byte{0});
    std::memcpy(buf.data(), cmdline.data(), cmdline.size());
    return mem.write(GuestAddr(layout::kCmdline), buf);
}

// Highest page-aligned address below `limit` where `size` bytes fit in low RAM above `floor`.
Result<std::uint64_t> place_initrd(const GuestMemory& mem, std::uint64_t size, std::uint64_t floor,
                                   std::uint64_t limit) {
    const auto& r0 = mem.table().regions().front();
    std::uint64_t top = std::min(r0.base.value() + r0.size, limit);
    if (size > top || ((top - size) & ~0xfffull) < floor)
        return fail(Error::invalid(fmt::format(
            "initrd of {} bytes does not fit in guest memory below {:#x} above the kernel "
            "(ends at {:#x}); give the guest more memory",
            size, top, floor)));
    return (top - size) & ~0xfffull;
}

// Loads an ELF64 x86-64 image's PT_LOAD segments at their physical addresses (zeroing what the
// file does not cover) and returns the end of the highest one.
Result<std::uint64_t> load_elf_segments(const GuestMemory& mem, std::span<const std::uint8_t> f) {
    Elf64_Ehdr eh;
    if (!read_at(f, 0, eh) || std::memcmp(eh.e_ident, ELFMAG, SELFMAG) != 0)
        return fail(Error::invalid("not an ELF file"));
    if (eh.e_ident[EI_CLASS] != ELFCLASS64 || eh.e_machine != EM_X86_64)
        return fail(Error::invalid("not an ELF64 x86-64 image"));
    if (eh.e_phentsize != sizeof(Elf64_Phdr)) return fail(Error::invalid("bad program header size"));
    std::uint64_t image_end = 0;
    bool loaded = false;
    for (std::uint32_t i = 0; i < eh.e_phnum; ++i) {
        Elf64_Phdr ph;
        if (!read_at(f, eh.e_phoff + std::uint64_t{i} * sizeof ph, ph))
            return fail(Error::invalid("program headers run past the end of the file"));
        if (ph.p_type != PT_LOAD) continue;
        if (ph.p_filesz > ph.p_memsz) return fail(Error::invalid("segment file size exceeds its memory size"));
        if (ph.p_offset > f.size() || f.size() - ph.p_offset < ph.p_filesz)
            return fail(Error::invalid("segment runs past the end of the file"));
        auto dst = mem.slice(GuestAddr(ph.p_paddr), ph.p_memsz);
        if (!dst)
            return fail(Error::invalid(fmt::format(
                "segment at {:#x}+{:#x} is outside guest memory", ph.p_paddr, ph.p_memsz)));
        if (ph.p_paddr < layout::kHighMem)
            return fail(Error::invalid(fmt::format("segment at {:#x} is below 1 MiB", ph.p_paddr)));
        std::memcpy(dst->data(), f.data() + ph.p_offset, ph.p_filesz);
        std::memset(dst->data() + ph.p_filesz, 0, ph.p_memsz - ph.p_filesz);
        image_end = std::max(image_end, ph.p_paddr + ph.p_memsz);
        loaded = true;
    }
    if (!loaded) return fail(Error::invalid("ELF has no loadable segment"));
    return image_end;
}

// The part of boot_params that does not depend on the kernel's own header: the initrd (placed
// as high as it may go, above `floor`, below `limit`) and the E820 map; then writes the page.
common::Status finish_boot_params(const GuestMemory& mem, std::vector<std::uint8_t>& zp,
                                  std::span<const std::uint8_t> initrd, std::uint64_t floor,
                                  std::uint64_t limit) {
    auto put = [&](std::size_t off, auto v) { std::memcpy(zp.data() + off, &v, sizeof v); };
    if (!initrd.empty()) {
        auto at = place_initrd(mem, initrd.size(), (floor + 0xfff) & ~0xfffull, limit);
        if (!at) return fail(std::move(at.error()));
        if (auto s = mem.write(GuestAddr(*at), bytes_of(initrd)); !s) return fail(std::move(s.error()));
        put(0x218, static_cast<std::uint32_t>(*at));
        put(0x21c, static_cast<std::uint32_t>(initrd.size()));
    }
    auto map = e820_map(mem.table().regions());
    if (map.size() > 128) return fail(Error::invalid("too many E820 entries"));
    put(0x1e8, static_cast<std::uint8_t>(map.size()));
    for (std::size_t i = 0; i < map.size(); ++i) {
        std::size_t o = 0x2d0 + i * 20;
        put(o, map[i].addr);
        put(o + 8, map[i].size);
        put(o + 16, map[i].type);
    }
    return mem.write(GuestAddr(layout::kZeroPage), std::as_bytes(std::span(zp)));
}

}  // namespace

KernelFormat detect_kernel(std::span<const std::uint8_t> f) {
    if (f.size() >= 4 && f[0] == 0x7f && f[1] == 'E' && f[2] == 'L' && f[3] == 'F')
        return KernelFormat::PvhElf;
    std::uint32_t magic = 0;
    if (read_at(f, 0x202, magic) && magic == 0x53726448)  // "HdrS"
        return KernelFormat::BzImage;
    return KernelFormat::Unknown;
}

Result<std::uint32_t> pvh_entry(std::span<const std::uint8_t> f) {
    Elf64_Ehdr eh;
    if (!read_at(f, 0, eh) || std::memcmp(eh.e_ident, ELFMAG, SELFMAG) != 0)
        return fail(Error::invalid("not an ELF file"));
    if (eh.e_ident[EI_CLASS] != ELFCLASS64 || eh.e_machine != EM_X86_64)
        return fail(Error::invalid("not an ELF64 x86-64 image"));
    if (eh.e_phentsize != sizeof(Elf64_Phdr)) return fail(Error::invalid("bad program header size"));
    for (std::uint32_t i = 0; i < eh.e_phnum; ++i) {
        Elf64_Phdr ph;
        if (!read_at(f, eh.e_phoff + std::uint64_t{i} * sizeof ph, ph))
            return fail(Error::invalid("program headers run past the end of the file"));
        if (ph.p_type != PT_NOTE) continue;
        if (ph.p_offset > f.size() || f.size() - ph.p_offset < ph.p_filesz)
            return fail(Error::invalid("note segment runs past the end of the file"));
        std::uint64_t off = ph.p_offset, end = ph.p_offset + ph.p_filesz;
        while (end - off >= sizeof(Elf64_Nhdr)) {
            Elf64_Nhdr nh;
            read_at(f, off, nh);
            std::uint64_t name_off = off + sizeof nh;
            std::uint64_t desc_off = name_off + ((std::uint64_t{nh.n_namesz} + 3) & ~3ull);
            std::uint64_t next = desc_off + ((std::uint64_t{nh.n_descsz} + 3) & ~3ull);
            if (next > end) break;
            if (nh.n_type == kXenElfnotePhys32Entry && nh.n_namesz == 4 &&
                std::memcmp(f.data() + name_off, "Xen", 4) == 0 && nh.n_descsz >= 4) {
                std::uint32_t entry = 0;
                read_at(f, desc_off, entry);
                return entry;
            }
            off = next;
        }
    }
    return fail(Error::invalid("ELF has no PVH entry note (Xen note type 18)"));
}

Result<BootEntry> load_pvh(const GuestMemory& mem, std::span<const std::uint8_t> f,
                           const std::string& cmdline, std::span<const std::uint8_t> initrd,
                           std::uint64_t rsdp) {
    auto entry = pvh_entry(f);
    if (!entry) return fail(std::move(entry.error()));
    auto image_end = load_elf_segments(mem, f);
    if (!image_end) return fail(std::move(image_end.error()));
    if (auto s = write_cmdline(mem, cmdline); !s) return fail(std::move(s.error()));

    // struct hvm_start_info (xen/include/public/arch-x86/hvm/start_info.h), version 1.
    struct StartInfo {
        std::uint32_t magic, version, flags, nr_modules;
        std::uint64_t modlist_paddr, cmdline_paddr, rsdp_paddr, memmap_paddr;
        std::uint32_t memmap_entries, reserved;
    };
    struct ModEntry { std::uint64_t paddr, size, cmdline_paddr, reserved; };
    struct MemmapEntry { std::uint64_t addr, size; std::uint32_t type, reserved; };
    static_assert(sizeof(StartInfo) == 56 && sizeof(ModEntry) == 32 && sizeof(MemmapEntry) == 24);

    constexpr std::uint64_t kMods = layout::kStartInfo + 0x40;
    constexpr std::uint64_t kMemmap = layout::kStartInfo + 0x80;
    StartInfo si{kHvmStartMagic, 1, 0, 0, 0, layout::kCmdline, rsdp, kMemmap, 0, 0};
    if (!initrd.empty()) {
        auto at = place_initrd(mem, initrd.size(), (*image_end + 0xfff) & ~0xfffull, layout::kMmioHoleStart);
        if (!at) return fail(std::move(at.error()));
        if (auto s = mem.write(GuestAddr(*at), bytes_of(initrd)); !s) return fail(std::move(s.error()));
        if (auto s = mem.write_obj(GuestAddr(kMods), ModEntry{*at, initrd.size(), 0, 0}); !s)
            return fail(std::move(s.error()));
        si.nr_modules = 1;
        si.modlist_paddr = kMods;
    }
    auto map = e820_map(mem.table().regions());
    for (std::size_t i = 0; i < map.size(); ++i) {
        MemmapEntry me{map[i].addr, map[i].size, map[i].type, 0};
        if (auto s = mem.write_obj(GuestAddr(kMemmap + i * sizeof me), me); !s) return fail(std::move(s.error()));
    }
    si.memmap_entries = static_cast<std::uint32_t>(map.size());
    if (auto s = mem.write_obj(GuestAddr(layout::kStartInfo), si); !s) return fail(std::move(s.error()));
    return BootEntry{EntryMode::Pvh32, *entry, layout::kStartInfo};
}

Result<BootEntry> load_bzimage(const GuestMemory& mem, std::span<const std::uint8_t> f,
                               const std::string& cmdline, std::span<const std::uint8_t> initrd,
                               std::uint64_t rsdp) {
    // Documentation/x86/boot.rst: the real-mode header at 0x1f1.
    std::uint8_t setup_sects = 0, jump = 0, loadflags = 0;
    std::uint16_t version = 0, xloadflags = 0;
    std::uint32_t initrd_max = 0, init_size = 0, cmdline_size = 0;
    if (!read_at(f, 0x1f1, setup_sects) || !read_at(f, 0x201, jump) || !read_at(f, 0x206, version) ||
        !read_at(f, 0x211, loadflags) || !read_at(f, 0x22c, initrd_max))
        return fail(Error::invalid("bzImage header is truncated"));
    if (version < 0x20c)
        return fail(Error::invalid(fmt::format("boot protocol {}.{:02} is too old (need 2.12)",
                                               version >> 8, version & 0xff)));
    read_at(f, 0x236, xloadflags);
    read_at(f, 0x238, cmdline_size);
    read_at(f, 0x260, init_size);
    if (!(xloadflags & 0x1)) return fail(Error::invalid("bzImage has no 64-bit entry point"));
    if (!(loadflags & 0x1)) return fail(Error::invalid("bzImage does not load high"));
    if (cmdline.size() > cmdline_size)
        return fail(Error::invalid(fmt::format("command line is {} bytes; this kernel takes {}",
                                               cmdline.size(), cmdline_size)));
    std::uint64_t setup_bytes = (std::uint64_t{setup_sects ? setup_sects : 4u} + 1) * 512;
    if (setup_bytes >= f.size()) return fail(Error::invalid("bzImage has no protected-mode kernel"));
    auto kernel = f.subspan(setup_bytes);
    std::uint64_t kernel_end = layout::kHighMem + std::max<std::uint64_t>(kernel.size(), init_size);
    if (!mem.slice(GuestAddr(layout::kHighMem), kernel_end - layout::kHighMem))
        return fail(Error::invalid(fmt::format(
            "kernel needs {} MiB from 1 MiB up; give the guest more memory", (kernel_end >> 20) + 1)));
    if (auto s = mem.write(GuestAddr(layout::kHighMem), bytes_of(kernel)); !s) return fail(std::move(s.error()));
    if (auto s = write_cmdline(mem, cmdline); !s) return fail(std::move(s.error()));

    std::vector<std::uint8_t> zp(4096, 0);
    std::size_t hdr_end = std::min<std::size_t>(0x202 + jump, f.size());
    hdr_end = std::min<std::size_t>(hdr_end, zp.size());
    std::copy(f.begin() + 0x1f1, f.begin() + static_cast<std::ptrdiff_t>(hdr_end), zp.begin() + 0x1f1);
    auto put = [&](std::size_t off, auto v) { std::memcpy(zp.data() + off, &v, sizeof v); };
    put(0x210, std::uint8_t{0xff});                               // type_of_loader: undefined
    put(0x211, static_cast<std::uint8_t>(loadflags | 0x80));      // CAN_USE_HEAP
    put(0x224, std::uint16_t{0xfe00});                            // heap_end_ptr
    put(0x228, static_cast<std::uint32_t>(layout::kCmdline));     // cmd_line_ptr
    put(0x1fa, std::uint16_t{0xffff});                            // vid_mode: normal
    put(0x070, rsdp);                                             // acpi_rsdp_addr
    if (auto st = finish_boot_params(mem, zp, initrd, kernel_end, std::uint64_t{initrd_max} + 1); !st)
        return fail(std::move(st.error()));
    return BootEntry{EntryMode::Linux64, layout::kHighMem + 0x200, layout::kZeroPage};
}

Result<BootEntry> load_vmlinux(const GuestMemory& mem, std::span<const std::uint8_t> f,
                               const std::string& cmdline, std::span<const std::uint8_t> initrd,
                               std::uint64_t rsdp) {
    auto image_end = load_elf_segments(mem, f);
    if (!image_end) return fail(std::move(image_end.error()));
    Elf64_Ehdr eh;
    read_at(f, 0, eh);
    // vmlinux's ELF entry is the physical address of startup_64.
    if (eh.e_entry < layout::kHighMem || eh.e_entry >= *image_end || !mem.slice(GuestAddr(eh.e_entry), 1))
        return fail(Error::invalid(fmt::format("ELF entry {:#x} is not inside the loaded image", eh.e_entry)));
    if (auto s = write_cmdline(mem, cmdline); !s) return fail(std::move(s.error()));

    // A boot_params as a bootloader fills it for boot protocol 2.15; the kernel image has no
    // real-mode header of its own to copy.
    std::vector<std::uint8_t> zp(4096, 0);
    auto put = [&](std::size_t off, auto v) { std::memcpy(zp.data() + off, &v, sizeof v); };
    put(0x1fa, std::uint16_t{0xffff});                            // vid_mode: normal
    put(0x1fe, std::uint16_t{0xaa55});                            // boot_flag
    put(0x202, std::uint32_t{0x53726448});                        // "HdrS"
    put(0x206, std::uint16_t{0x020f});                            // protocol 2.15
    put(0x210, std::uint8_t{0xff});                               // type_of_loader: undefined
    put(0x211, std::uint8_t{0x01 | 0x80});                        // LOADED_HIGH | CAN_USE_HEAP
    put(0x224, std::uint16_t{0xfe00});                            // heap_end_ptr
    put(0x228, static_cast<std::uint32_t>(layout::kCmdline));     // cmd_line_ptr
    put(0x22c, std::uint32_t{0x7fffffff});                        // initrd_addr_max
    put(0x238, static_cast<std::uint32_t>(layout::kCmdlineMax - 1));  // cmdline_size
    put(0x070, rsdp);                                             // acpi_rsdp_addr
    if (auto st = finish_boot_params(mem, zp, initrd, *image_end, 0x80000000ull); !st)
        return fail(std::move(st.error()));
    return BootEntry{EntryMode::Linux64, eh.e_entry, layout::kZeroPage};
}

}  // namespace hypervisor
