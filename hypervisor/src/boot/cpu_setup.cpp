#include "boot/cpu_setup.hpp"

#include "boot/layout.hpp"

namespace hypervisor {

namespace {

constexpr std::uint64_t kCr0Pe = 1ull << 0, kCr0Et = 1ull << 4, kCr0Pg = 1ull << 31;
constexpr std::uint64_t kCr4Pae = 1ull << 5;
constexpr std::uint64_t kEferLme = 1ull << 8, kEferLma = 1ull << 10;
constexpr std::uint64_t kPtePresent = 1, kPteWrite = 2, kPtePs = 0x80;

// A descriptor from its parts (Intel SDM vol. 3 §3.4.5).
std::uint64_t gdt_entry(std::uint16_t flags, std::uint32_t base, std::uint32_t limit) {
    return ((std::uint64_t{base} & 0xff000000u) << 32) | ((std::uint64_t{flags} & 0xf0ff) << 40) |
           ((std::uint64_t{limit} & 0x000f0000u) << 32) | ((std::uint64_t{base} & 0x00ffffffu) << 16) |
           (std::uint64_t{limit} & 0x0000ffffu);
}

kvm_segment segment_from(std::uint64_t desc, std::uint16_t selector) {
    kvm_segment s{};
    s.base = static_cast<std::uint32_t>(((desc >> 16) & 0xffffff) | ((desc >> 32) & 0xff000000));
    std::uint32_t limit = static_cast<std::uint32_t>((desc & 0xffff) | ((desc >> 32) & 0xf0000));
    s.g = (desc >> 55) & 1;
    s.limit = s.g ? (limit << 12) | 0xfff : limit;
    s.selector = selector;
    s.type = (desc >> 40) & 0xf;
    s.present = (desc >> 47) & 1;
    s.dpl = (desc >> 45) & 3;
    s.db = (desc >> 54) & 1;
    s.s = (desc >> 44) & 1;
    s.l = (desc >> 53) & 1;
    s.avl = (desc >> 52) & 1;
    return s;
}

std::uint64_t code_desc(EntryMode m) {
    // 64-bit: L=1, D=0; 32-bit: D=1. Both: present, DPL0, code, execute/read, G=1.
    return m == EntryMode::Linux64 ? gdt_entry(0xa09b, 0, 0xfffff) : gdt_entry(0xc09b, 0, 0xfffff);
}
const std::uint64_t kDataDesc = gdt_entry(0xc093, 0, 0xfffff);
const std::uint64_t kTssDesc = gdt_entry(0x008b, 0, 0x67);

}  // namespace

common::Status write_boot_tables(const common::GuestMemory& mem, EntryMode mode) {
    const std::uint64_t gdt[5] = {0, 0, code_desc(mode), kDataDesc, kTssDesc};
    if (auto s = mem.write_obj(common::GuestAddr(layout::kGdt), gdt); !s) return s;
    if (mode != EntryMode::Linux64) return {};
    if (auto s = mem.write_obj(common::GuestAddr(layout::kPml4), layout::kPdpt | kPtePresent | kPteWrite); !s)
        return s;
    for (std::uint64_t g = 0; g < 4; ++g) {
        std::uint64_t pd = layout::kPd + g * 0x1000;
        if (auto s = mem.write_obj(common::GuestAddr(layout::kPdpt + g * 8), pd | kPtePresent | kPteWrite); !s)
            return s;
        for (std::uint64_t i = 0; i < 512; ++i) {
            std::uint64_t pte = ((g << 30) | (i << 21)) | kPtePresent | kPteWrite | kPtePs;
            if (auto s = mem.write_obj(common::GuestAddr(pd + i * 8), pte); !s) return s;
        }
    }
    return {};
}

kvm_sregs boot_sregs(kvm_sregs s, EntryMode mode) {
    s.gdt.base = layout::kGdt;
    s.gdt.limit = 5 * 8 - 1;
    s.idt.base = 0;
    s.idt.limit = 0;
    kvm_segment code = segment_from(code_desc(mode), kBootCs);
    kvm_segment data = segment_from(kDataDesc, kBootDs);
    s.cs = code;
    s.ds = s.es = s.fs = s.gs = s.ss = data;
    s.tr = segment_from(kTssDesc, kBootTss);
    s.ldt = kvm_segment{};
    s.ldt.unusable = 1;
    s.ldt.type = 2;
    s.ldt.present = 1;
    s.cr0 = kCr0Pe | kCr0Et;
    s.cr4 = 0;
    s.efer = 0;
    if (mode == EntryMode::Linux64) {
        s.cr3 = layout::kPml4;
        s.cr4 |= kCr4Pae;
        s.cr0 |= kCr0Pg;
        s.efer |= kEferLme | kEferLma;
    }
    return s;
}

kvm_regs boot_regs(const BootEntry& e) {
    kvm_regs r{};
    r.rflags = 0x2;
    r.rip = e.rip;
    if (e.mode == EntryMode::Linux64) r.rsi = e.arg;
    else r.rbx = e.arg;
    return r;
}

}  // namespace hypervisor
