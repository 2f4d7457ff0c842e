#include "xen/hypercall_patch.hpp"

#include <elf.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <fmt/format.h>

#include "xen/xen_defs.hpp"

namespace hypervisor::xen {

namespace {
constexpr std::array<std::uint8_t, 3> kVmmcall{0x0f, 0x01, 0xd9};
constexpr std::array<std::uint8_t, 3> kVmcall{0x0f, 0x01, 0xc1};
constexpr std::array<std::uint8_t, 3> kOutNop{0xe6, static_cast<std::uint8_t>(kHypercallPort), 0x90};
constexpr std::uint64_t kPairSpan = 16 + 3;

bool at(std::span<const std::uint8_t> b, std::uint64_t off, std::span<const std::uint8_t> what) {
    return std::equal(what.begin(), what.end(), b.begin() + static_cast<std::ptrdiff_t>(off));
}
}  // namespace

std::vector<std::uint64_t> find_hypercall_pairs(std::span<const std::uint8_t> bytes, std::uint64_t base) {
    std::vector<std::uint64_t> found;
    if (bytes.size() < kPairSpan) return found;
    std::uint64_t first = (16 - base % 16) % 16;
    for (std::uint64_t x = first; x + kPairSpan <= bytes.size(); x += 16) {
        if (at(bytes, x, kVmmcall) && at(bytes, x + 16, kVmcall)) found.push_back(x);
    }
    return found;
}

void patch_hypercall_pair(std::span<std::uint8_t> bytes, std::uint64_t x) {
    if (x + kPairSpan > bytes.size()) return;
    std::copy(kOutNop.begin(), kOutNop.end(), bytes.begin() + static_cast<std::ptrdiff_t>(x));
    std::copy(kOutNop.begin(), kOutNop.end(), bytes.begin() + static_cast<std::ptrdiff_t>(x + 16));
}

common::Result<std::uint64_t> patch_loaded_kernel(const common::GuestMemory& mem, std::span<const std::uint8_t> elf) {
    using common::Error;
    using common::fail;
    Elf64_Ehdr eh;
    if (elf.size() < sizeof eh) return fail(Error::invalid("--xen-patch-hypercalls needs a PVH ELF kernel"));
    std::memcpy(&eh, elf.data(), sizeof eh);
    if (std::memcmp(eh.e_ident, ELFMAG, SELFMAG) != 0 || eh.e_phentsize != sizeof(Elf64_Phdr))
        return fail(Error::invalid("--xen-patch-hypercalls needs a PVH ELF kernel (a vmlinux), not a bzImage"));
    struct Match {
        std::span<std::uint8_t> seg;
        std::uint64_t gpa, off;
    };
    std::vector<Match> matches;
    for (std::uint32_t i = 0; i < eh.e_phnum; ++i) {
        Elf64_Phdr ph;
        std::uint64_t at = eh.e_phoff + std::uint64_t{i} * sizeof ph;
        if (at > elf.size() || elf.size() - at < sizeof ph) return fail(Error::invalid("ELF program headers truncated"));
        std::memcpy(&ph, elf.data() + at, sizeof ph);
        if (ph.p_type != PT_LOAD || ph.p_filesz == 0) continue;
        auto seg = mem.slice(common::GuestAddr(ph.p_paddr), ph.p_filesz);
        if (!seg) return fail(std::move(seg.error()).context("scanning the kernel for hypercall instructions"));
        std::span<std::uint8_t> bytes(reinterpret_cast<std::uint8_t*>(seg->data()), seg->size());
        for (auto off : find_hypercall_pairs(bytes, ph.p_paddr)) matches.push_back({bytes, ph.p_paddr + off, off});
    }
    if (matches.size() != 1)
        return fail(Error::invalid(fmt::format(
            "--xen-patch-hypercalls: found {} xen_hypercall_amd/xen_hypercall_intel pairs (vmmcall at a 16-byte "
            "boundary, vmcall 16 bytes later) in the kernel; need exactly one",
            matches.size())));
    patch_hypercall_pair(matches[0].seg, matches[0].off);
    return matches[0].gpa;
}

}  // namespace hypervisor::xen
