// Kernel loaders: a PVH ELF (the probe guest, a Linux vmlinux) or a bzImage (Linux), each
// placed into guest memory with its command line, initrd and memory map. Pure functions over
// file bytes and a GuestMemory, so tests and fuzzers call them directly.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "boot/memory_map.hpp"
#include "common/guest_memory.hpp"

namespace hypervisor {

enum class EntryMode {
    Pvh32,     // 32-bit protected mode, paging off, rbx = hvm_start_info
    Linux64,   // 64-bit long mode, identity paging, rsi = boot_params
};

struct BootEntry {
    EntryMode mode;
    std::uint64_t rip;
    std::uint64_t arg;  // rbx (PVH) or rsi (Linux)
};

enum class KernelFormat { PvhElf, BzImage, Unknown };

// Recognises the kernel by its header bytes.
[[nodiscard]] KernelFormat detect_kernel(std::span<const std::uint8_t> file);

// Finds the 32-bit entry in the PVH ELF note (XEN_ELFNOTE_PHYS32_ENTRY). Checks every header
// bound against the file size.
[[nodiscard]] common::Result<std::uint32_t> pvh_entry(std::span<const std::uint8_t> elf);

// Loads an ELF64 x86-64 image's PT_LOAD segments at their physical addresses and writes the
// hvm_start_info (with the initrd as module 0 when given, the ACPI RSDP address when non-zero)
// and the E820 memory map.
[[nodiscard]] common::Result<BootEntry> load_pvh(const common::GuestMemory& mem,
                                                 std::span<const std::uint8_t> elf,
                                                 const std::string& cmdline,
                                                 std::span<const std::uint8_t> initrd,
                                                 std::uint64_t rsdp = 0);

// Loads a bzImage at 1 MiB with boot_params, command line and initrd (boot protocol ≥ 2.12,
// 64-bit entry).
[[nodiscard]] common::Result<BootEntry> load_bzimage(const common::GuestMemory& mem,
                                                     std::span<const std::uint8_t> image,
                                                     const std::string& cmdline,
                                                     std::span<const std::uint8_t> initrd,
                                                     std::uint64_t rsdp = 0);

// Loads a Linux vmlinux (ELF64) at its physical addresses and enters it at startup_64 through
// the 64-bit boot protocol, as a bootloader does after decompressing a bzImage: boot_params
// with command line, initrd and E820 map. Linux then takes its native (or, with Xen CPUID
// leaves, its Xen HVM) path; the PVH entry of the same file would make it a Xen PVH guest.
[[nodiscard]] common::Result<BootEntry> load_vmlinux(const common::GuestMemory& mem,
                                                     std::span<const std::uint8_t> elf,
                                                     const std::string& cmdline,
                                                     std::span<const std::uint8_t> initrd,
                                                     std::uint64_t rsdp = 0);

}  // namespace hypervisor
