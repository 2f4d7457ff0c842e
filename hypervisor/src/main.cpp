// nitrovm: boots one guest on /dev/kvm. `nitrovm run [options] -- ARGS`.
// Exit status: the guest's; 2 for bad input; 124 timeout; 125 guest crash; 126 host error.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fmt/format.h>

#include "cli.hpp"
#include "common/log.hpp"
#include "devices/vm_control.hpp"
#include "storage/volume_spec.hpp"
#include "vmm/machine.hpp"

namespace {

namespace fs = std::filesystem;

constexpr const char* kLinuxCmdline =
    "console=ttyS0 reboot=k panic=-1 quiet pci=lastbus=1 i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd";

// Default images live beside the binary: build/bin/nitrovm -> build/guest, build/images.
fs::path build_dir() {
    std::error_code ec;
    auto exe = fs::read_symlink("/proc/self/exe", ec);
    return ec ? fs::path(".") : exe.parent_path().parent_path();
}

int usage_error(const std::string& msg) {
    std::fprintf(stderr, "nitrovm: error: %s\n", msg.c_str());
    return hypervisor::kStatusUsage;
}

}  // namespace

int main(int argc, char** argv) {
    auto start = std::chrono::steady_clock::now();
    CLI::App app{"nitrovm: a KVM hypervisor for the probe guest and stock Linux"};
    app.require_subcommand(1);
    std::string log_level = "info";
    app.add_option("--log-level", log_level, "trace, debug, info, warn, error or off")->capture_default_str();

    auto* run = app.add_subcommand("run", "boot one guest; exit status = the guest's");
    run->fallthrough();
    std::string guest = "probe", kernel, initrd, cmdline, memory = "256M";
    std::uint32_t vcpus = 1;
    double timeout_s = 0;
    std::string interactive = "auto";
    std::string console_limit = "64M";
    std::vector<std::string> guest_args;
    std::string io_model = "auto";
    std::vector<std::string> volumes;
    bool xen_patch = false;
    std::optional<std::uint64_t> instance_iops, instance_mbps;
    run->add_option("--guest", guest, "probe or linux (selects default kernel, initrd, command line)")
        ->check(CLI::IsMember({"probe", "linux"}))->capture_default_str();
    run->add_option("--kernel", kernel, "kernel: a PVH ELF or a bzImage");
    run->add_option("--initrd", initrd, "initial ramdisk");
    run->add_option("--cmdline", cmdline, "kernel command line (guest arguments are appended)");
    run->add_option("--vcpus", vcpus, "number of vCPUs")->capture_default_str();
    run->add_option("--memory", memory, "guest RAM, e.g. 256M or 1G")->capture_default_str();
    run->add_option("--timeout", timeout_s, "seconds before the VM is stopped (0: none); exit status 124");
    run->add_option("--console-limit", console_limit,
                    "when stdout is a file, keep it under this size (the newest output stays; 0: no limit)")
        ->capture_default_str();
    run->add_option("--interactive", interactive, "feed stdin to the guest console: auto, yes, no")
        ->check(CLI::IsMember({"auto", "yes", "no"}));
    run->add_option("--io-model", io_model,
                    "none, nitro (NVMe from the card) or xen (Xen ABI, disks from dom0); auto: nitro when "
                    "volumes are given")
        ->check(CLI::IsMember({"auto", "none", "nitro", "xen"}));
    run->add_flag("--xen-patch-hypercalls", xen_patch,
                  "xen: rewrite the vmmcall/vmcall of a PVH ELF kernel (a vmlinux) into port I/O, for kernels "
                  "without a hypercall page (unsupported binary patching)");
    run->add_option("--volume", volumes,
                    "PATH[,size=64M][,iops=N][,mbps=N][,ram]: an EBS volume as an NVMe controller (repeatable; "
                    "nvme0n1, nvme1n1, ... in order; with --io-model xen a disk from dom0: xvda, xvdb, ...); "
                    "a missing file with a size is created")
        ->allow_extra_args(false);  // one value per --volume, so "-- ARGS" stays the guest's
    run->add_option("--instance-iops", instance_iops, "the instance's EBS IOPS cap, shared by its volumes (card)");
    run->add_option("--instance-mbps", instance_mbps, "the instance's EBS bandwidth cap in MiB/s, shared (card)");
    run->add_option("args", guest_args, "after --: the probe's workload, or the command Linux's /init runs");
    app.positionals_at_end();

    try {
        app.parse(argc, argv);
    } catch (const CLI::CallForHelp& e) {
        return app.exit(e);
    } catch (const CLI::ParseError& e) {
        return usage_error(e.what());
    }
    if (auto s = common::setup_logging("nitrovm", log_level); !s) return usage_error(s.error().message);

    hypervisor::MachineConfig cfg;
    auto mem = hypervisor::cli::parse_size(memory);
    if (!mem) return usage_error("--memory: " + mem.error().message);
    cfg.memory_bytes = *mem;
    cfg.vcpus = vcpus;
    if (timeout_s < 0) return usage_error("--timeout must not be negative");
    if (timeout_s > 0) cfg.timeout = std::chrono::milliseconds(static_cast<long long>(timeout_s * 1000));
    cfg.interactive = interactive == "yes" || (interactive == "auto" && ::isatty(STDIN_FILENO));
    if (console_limit == "0") {
        cfg.console_limit_bytes = 0;
    } else {
        auto limit = hypervisor::cli::parse_size(console_limit);
        if (!limit) return usage_error("--console-limit: " + limit.error().message);
        if (*limit < 4096) return usage_error("--console-limit: at least 4K (or 0 for no limit)");
        cfg.console_limit_bytes = *limit;
    }

    for (const auto& v : volumes) {
        if (auto spec = nitro_card::storage::parse_volume_spec(v); !spec) return usage_error(spec.error().message);
    }
    if (io_model == "none" && !volumes.empty()) return usage_error("--volume needs --io-model nitro or xen");
    if (xen_patch && io_model != "xen") return usage_error("--xen-patch-hypercalls needs --io-model xen");
    if (io_model == "xen") cfg.io_model = hypervisor::IoModel::Xen;
    else if (io_model == "nitro" || (io_model == "auto" && !volumes.empty())) cfg.io_model = hypervisor::IoModel::Nitro;
    cfg.volumes = volumes;
    cfg.xen_patch_hypercalls = xen_patch;
    cfg.probe_guest = guest == "probe";
    if (instance_iops) cfg.card_args.insert(cfg.card_args.end(), {"--instance-iops", std::to_string(*instance_iops)});
    if (instance_mbps) cfg.card_args.insert(cfg.card_args.end(), {"--instance-mbps", std::to_string(*instance_mbps)});
    cfg.log_level = log_level;

    auto args = hypervisor::cli::join_guest_args(guest_args);
    if (!args) return usage_error(args.error().message);
    fs::path base = build_dir();
    cfg.card_binary = (base / "bin" / "nitro-card").string();
    cfg.dom0_binary = (base / "bin" / "xen-dom0").string();
    if (guest == "probe") {
        cfg.kernel = kernel.empty() ? (base / "guest" / "probe.elf").string() : kernel;
        cfg.initrd = initrd;
        cfg.cmdline = cmdline;
        if (!args->empty()) cfg.cmdline += (cfg.cmdline.empty() ? "" : " ") + *args;
    } else {
        cfg.kernel = kernel.empty() ? (base / "images" / "vmlinuz").string() : kernel;
        cfg.initrd = initrd.empty() && kernel.empty() ? (base / "images" / "initramfs.cpio.gz").string() : initrd;
        cfg.cmdline = cmdline.empty() ? kLinuxCmdline : cmdline;
        if (!args->empty()) cfg.cmdline += " -- " + *args;
        cfg.elf_is_linux = true;
    }
    if (!fs::is_regular_file(cfg.kernel))
        return usage_error(fmt::format("kernel {} does not exist or is not a file", cfg.kernel));
    if (!cfg.initrd.empty() && !fs::is_regular_file(cfg.initrd))
        return usage_error(fmt::format("initrd {} does not exist or is not a file", cfg.initrd));

    auto machine = hypervisor::Machine::build(cfg, start);
    if (!machine) {
        if (machine.error().kind == common::ErrorKind::System && machine.error().errno_value == 0)
            return usage_error(machine.error().message);
        spdlog::debug("setup failed: {}", machine.error().message);
        return usage_error(machine.error().message);
    }
    return (*machine)->run();
}
