// One VM, assembled: KVM objects, guest RAM, platform devices, PCI, vCPU threads.
// Built from a validated MachineConfig; run() blocks until the VM ends and returns
// nitrovm's exit status.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/error.hpp"

namespace hypervisor {

enum class IoModel { None, Nitro, Xen };

struct MachineConfig {
    std::string kernel;      // PVH ELF or bzImage
    // How an ELF kernel is entered: through its PVH note (the probe), or, for a Linux vmlinux,
    // at startup_64 with boot_params (load_vmlinux), which keeps Linux on its HVM path.
    bool elf_is_linux = false;
    std::string initrd;      // optional
    std::string cmdline;
    std::uint32_t vcpus = 1;
    std::uint64_t memory_bytes = 256ull << 20;
    std::optional<std::chrono::milliseconds> timeout;
    bool interactive = false;  // feed stdin to the serial port
    // The console's output file (stdout, when a regular file) never grows past this; 0: no limit.
    std::uint64_t console_limit_bytes = 64ull << 20;
    std::string kvm_path = "/dev/kvm";
    // The I/O model. nitro: one NVMe controller per volume spec, served by the card process.
    // xen: the Xen ABI in the vmm, the volumes served by dom0 as xvda, xvdb, ...
    IoModel io_model = IoModel::None;
    std::vector<std::string> volumes;
    std::string card_binary;
    std::string dom0_binary;
    // Xen mode: rewrite vmmcall/vmcall of a PVH ELF kernel into port I/O (xen/hypercall_patch.hpp).
    bool xen_patch_hypercalls = false;
    // The probe guest: its Xen frontend may make hypercalls from CPL3.
    bool probe_guest = false;
    std::vector<std::string> card_args;  // extra card options, e.g. the instance's EBS caps
    std::string log_level = "info";
};

class Machine {
public:
    virtual ~Machine() = default;
    // Everything that can fail before the guest runs fails here, with context.
    [[nodiscard]] static common::Result<std::unique_ptr<Machine>> build(
        const MachineConfig& cfg, std::chrono::steady_clock::time_point start);
    // Runs the guest to its end. Returns the exit status (the guest's, or one of kStatus*).
    virtual int run() = 0;
};

}  // namespace hypervisor
