// Where the vmm places things in guest-physical memory. See docs/platform.md.
#pragma once

#include <cstdint>

namespace hypervisor::layout {

inline constexpr std::uint64_t kGdt = 0x500;
inline constexpr std::uint64_t kStartInfo = 0x6000;   // PVH hvm_start_info + modules + memmap
inline constexpr std::uint64_t kZeroPage = 0x7000;    // Linux boot_params
inline constexpr std::uint64_t kPml4 = 0x9000;        // identity page tables for 64-bit entry
inline constexpr std::uint64_t kPdpt = 0xA000;
inline constexpr std::uint64_t kPd = 0xB000;          // 4 pages: 4 GiB of 2 MiB pages
inline constexpr std::uint64_t kCmdline = 0x20000;
inline constexpr std::uint64_t kCmdlineMax = 0x10000;
inline constexpr std::uint64_t kMpTable = 0x9FC00;    // last KiB of base memory
inline constexpr std::uint64_t kEbdaEnd = 0xA0000;
inline constexpr std::uint64_t kAcpi = 0xE0000;      // ACPI tables (RSDP first), reserved
inline constexpr std::uint64_t kBiosRom = 0xF0000;
inline constexpr std::uint64_t kHighMem = 0x100000;   // kernels load here
inline constexpr std::uint64_t kMmioHoleStart = 0xC0000000;  // PCI window up to the I/O APIC
inline constexpr std::uint64_t kPciMmioEnd = 0xFEC00000;
inline constexpr std::uint64_t kIoApic = 0xFEC00000;
inline constexpr std::uint64_t kLapic = 0xFEE00000;
// Xen mode: the platform device's BAR1 (16 MiB, grant frames in its first pages) opens the PCI
// window, other BARs follow it; its BAR0 is 256 ports at 0xC000.
inline constexpr std::uint64_t kXenPlatformBar1 = kMmioHoleStart;
inline constexpr std::uint16_t kXenPlatformIo = 0xC000;
inline constexpr std::uint64_t kKvmIdentityMap = 0xFFFBC000;  // 1 page, outside RAM
inline constexpr std::uint64_t kKvmTss = 0xFFFBD000;          // 3 pages, outside RAM
inline constexpr std::uint64_t k4G = 0x100000000ull;
inline constexpr std::uint64_t kMinMemory = 16ull << 20;

}  // namespace hypervisor::layout
