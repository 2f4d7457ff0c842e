// Fuzzes the kernel loaders (a user-supplied file): detection, the PVH ELF note walk, segment
// loading and the bzImage header, into a small guest memory. Any crash or sanitizer report is
// a bug; errors are the expected outcome for most inputs.
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "boot/loader.hpp"
#include "boot/memory_map.hpp"

namespace {
const common::GuestMemory& memory() {
    static auto mem = common::GuestMemory::create(hypervisor::ram_regions(32ull << 20));
    return *mem;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size < 1) return 0;
    // First byte: how much of the tail is the initrd; the rest is the kernel file.
    std::size_t initrd_len = std::min<std::size_t>(data[0] * 64u, size - 1);
    std::span<const std::uint8_t> file(data + 1, size - 1 - initrd_len);
    std::span<const std::uint8_t> initrd(data + 1 + file.size(), initrd_len);
    const std::string cmdline = "console=ttyS0";
    switch (hypervisor::detect_kernel(file)) {
        case hypervisor::KernelFormat::PvhElf:
            (void)hypervisor::load_pvh(memory(), file, cmdline, initrd, 0xe0000);
            break;
        case hypervisor::KernelFormat::BzImage:
            (void)hypervisor::load_bzimage(memory(), file, cmdline, initrd, 0xe0000);
            break;
        case hypervisor::KernelFormat::Unknown:
            (void)hypervisor::pvh_entry(file);
            break;
    }
    return 0;
}
