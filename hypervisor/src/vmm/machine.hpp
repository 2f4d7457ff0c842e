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

struct MachineConfig {
    std::string kernel;      // PVH ELF or bzImage
    std::string initrd;      // optional
    std::string cmdline;
    std::uint32_t vcpus = 1;
    std::uint64_t memory_bytes = 256ull << 20;
    std::optional<std::chrono::milliseconds> timeout;
    bool interactive = false;  // feed stdin to the serial port
    std::string kvm_path = "/dev/kvm";
    // The nitro I/O model: one NVMe controller per volume spec, served by the card process.
    std::vector<std::string> volumes;
    std::string card_binary;
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
