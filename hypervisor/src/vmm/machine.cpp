#include "vmm/machine.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sys/stat.h>
#include <pthread.h>
#include <signal.h>
#include <termios.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <fmt/format.h>
#include <fstream>
#include <iterator>
#include <thread>

#include "boot/acpi.hpp"
#include "common/cpu_time.hpp"
#include "boot/cpu_setup.hpp"
#include "boot/layout.hpp"
#include "boot/loader.hpp"
#include "boot/memory_map.hpp"
#include "boot/mptable.hpp"
#include "devices/bus.hpp"
#include "devices/platform.hpp"
#include "devices/serial.hpp"
#include "devices/test_device.hpp"
#include "devices/vm_control.hpp"
#include "kvm/cpuid.hpp"
#include "kvm/kvm.hpp"
#include "nitro/card_process.hpp"
#include "nitro/remote_function.hpp"
#include "pci/root_bus.hpp"
#include "vmm/irq_router.hpp"
#include "vmm/vcpu_runner.hpp"
#include "xen/hypercall_patch.hpp"
#include "xen/platform_device.hpp"
#include "xen/xen_defs.hpp"
#include "xen/xen_domain.hpp"
#include "xen_model/abi/xen_abi.hpp"

namespace hypervisor {

using common::Error;
using common::fail;
using common::Result;

namespace {

constexpr int kKickSignal = SIGUSR1;
constexpr std::uint32_t kSerialIrq = 4;
constexpr std::uint16_t kCom1 = 0x3f8;

// Xen mode: the special area (xenstore ring page) and the grant frames are extra regions of the
// guest-memory memfd, after RAM, so dom0 maps them with the rest.
std::vector<common::MemoryRegion> xen_regions(std::uint64_t ram_bytes) {
    namespace abi = xen_model::abi;
    return {{common::GuestAddr(abi::kSpecialAreaGpa), abi::kSpecialAreaSize, ram_bytes},
            {common::GuestAddr(layout::kXenPlatformBar1), abi::kGrantFramesMax * abi::kPageSize,
             ram_bytes + abi::kSpecialAreaSize}};
}

// A kernel or initrd file, mapped read-only for as long as loading takes: its pages stay in the
// page cache instead of being copied into the vmm's own memory first.
struct MappedFile {
    common::Mmap map;
    [[nodiscard]] std::span<const std::uint8_t> bytes() const {
        return {reinterpret_cast<const std::uint8_t*>(map.data()), map.size()};
    }
};

Result<MappedFile> map_file(const std::string& path, std::string_view what) {
    auto fd = common::UniqueFd::open(path, O_RDONLY);
    if (!fd) return fail(std::move(fd.error()).context(std::string(what)));
    struct stat st{};
    if (::fstat(fd->get(), &st) != 0) return fail(Error::from_errno(fmt::format("{} {}", what, path)));
    if (!S_ISREG(st.st_mode)) return fail(Error::invalid(fmt::format("{} {} is not a regular file", what, path)));
    if (st.st_size == 0) return fail(Error::invalid(fmt::format("{} {} is empty", what, path)));
    auto m = common::Mmap::map_file(fd->get(), static_cast<std::size_t>(st.st_size));
    if (!m) return fail(std::move(m.error()).context(fmt::format("{} {}", what, path)));
    return MappedFile{std::move(*m)};
}

// The vmm's own memory, apart from guest RAM (which is shared memory: RssShmem).
void log_memory_use() {
    std::ifstream f("/proc/self/status");
    std::string line;
    long anon = -1, file = -1, shmem = -1, hwm = -1;
    while (std::getline(f, line)) {
        auto value = [&](const char* key, long& out) {
            if (line.rfind(key, 0) == 0) out = std::strtol(line.c_str() + std::strlen(key), nullptr, 10);
        };
        value("RssAnon:", anon);
        value("RssFile:", file);
        value("RssShmem:", shmem);
        value("VmHWM:", hwm);
    }
    spdlog::info("vmm memory: own RSS {} KiB (anon {} + file {}), guest RAM touched {} KiB, peak RSS {} KiB",
                 anon + file, anon, file, shmem, hwm);
}

// Puts the terminal in raw mode for the guest's console and restores it on destruction.
class RawTerminal final {
public:
    RawTerminal() {
        if (::tcgetattr(STDIN_FILENO, &saved_) != 0) return;
        termios raw = saved_;
        ::cfmakeraw(&raw);
        raw.c_oflag |= OPOST | ONLCR;  // keep newline translation for the vmm's own logs
        active_ = ::tcsetattr(STDIN_FILENO, TCSANOW, &raw) == 0;
    }
    ~RawTerminal() {
        if (active_) ::tcsetattr(STDIN_FILENO, TCSANOW, &saved_);
    }
    RawTerminal(const RawTerminal&) = delete;
    RawTerminal& operator=(const RawTerminal&) = delete;

private:
    termios saved_{};
    bool active_ = false;
};

// Doorbell ioeventfds of remote devices, registered with this VM.
class KvmIoEvents final : public nitro::IoEventRegistrar {
public:
    explicit KvmIoEvents(KvmVm& vm) : vm_(vm) {}
    common::Status add(int fd, std::uint64_t gpa, std::uint32_t len, std::optional<std::uint64_t> dm) override {
        return vm_.ioeventfd(fd, gpa, len, false, true, dm);
    }
    common::Status remove(int fd, std::uint64_t gpa, std::uint32_t len, std::optional<std::uint64_t> dm) override {
        return vm_.ioeventfd(fd, gpa, len, false, false, dm);
    }

private:
    KvmVm& vm_;
};

// NVMe registers after whose write the card may change its fast-path doorbells: CC (enable,
// reset) and the admin submission queue's doorbell (Doorbell Buffer Config, queue creation).
constexpr std::uint64_t kNvmeCc = 0x14, kNvmeAdminSqDoorbell = 0x1000;

class KvmMachine final : public Machine {
public:
    KvmMachine(KvmSystem sys, KvmVm vm, common::GuestMemory mem, const MachineConfig& cfg,
               std::chrono::steady_clock::time_point start)
        : cfg_(cfg), start_(start), sys_(std::move(sys)), vm_(std::move(vm)), mem_(std::move(mem)),
          router_(vm_),
          pci_(mmio_,
               cfg.io_model == IoModel::Xen ? layout::kXenPlatformBar1 + xen::kPlatformBar1Size
                                            : layout::kMmioHoleStart,
               layout::kPciMmioEnd) {}

    ~KvmMachine() override { stop_threads(); }

    common::Status setup();
    int run() override;

private:
    common::Status setup_memory();
    common::Status setup_devices();
    common::Status setup_nitro();
    common::Status setup_xen();
    common::Status setup_vcpus(const BootEntry& entry);
    void add_tsc_rate_param();
    void stop_threads();
    void stdin_pump();

    MachineConfig cfg_;
    std::chrono::steady_clock::time_point start_;
    KvmSystem sys_;
    KvmVm vm_;
    common::GuestMemory mem_;
    VmControl ctl_;
    std::unique_ptr<xen::XenDomain> xen_;
    Bus pio_{"pio"};
    Bus mmio_{"mmio"};
    IrqRouter router_;
    KvmIoEvents ioevents_{vm_};
    std::optional<nitro::CardProcess> card_;
    pci::RootBus pci_;
    std::shared_ptr<Serial16550> serial_;
    std::vector<std::unique_ptr<VcpuRunner>> vcpus_;
    std::vector<std::thread> threads_;
    std::thread stdin_thread_;
    std::atomic<bool> stopping_{false};
};

common::Status KvmMachine::setup_memory() {
    std::uint32_t slot = 0;
    for (const auto& r : mem_.table().regions()) {
        if (auto s = vm_.set_user_memory_region(slot++, r.base.value(), r.size, mem_.host_base_for_kernel(r)); !s)
            return s;
    }
    return {};
}

common::Status KvmMachine::setup_devices() {
    if (auto s = vm_.set_tss_addr(layout::kKvmTss); !s) spdlog::debug("{}", s.error().message);
    if (auto s = vm_.set_identity_map_addr(layout::kKvmIdentityMap); !s) spdlog::debug("{}", s.error().message);
    if (auto s = vm_.create_irqchip(); !s) return s;
    if (auto s = vm_.create_pit(); !s) return s;
    if (auto s = vm_.mask_pic(); !s) return s;
    if (auto s = router_.init(); !s) return s;

    serial_ = std::make_shared<Serial16550>(ConsoleSink(STDOUT_FILENO, cfg_.console_limit_bytes), [this](bool level) {
        if (auto s = vm_.irq_line(kSerialIrq, level); !s) spdlog::warn("serial IRQ: {}", s.error().message);
    });
    auto add_pio = [&](std::uint64_t base, std::uint64_t len, std::shared_ptr<BusDevice> d) {
        return pio_.add(base, len, std::move(d));
    };
    if (auto s = add_pio(kCom1, 8, serial_); !s) return s;
    if (auto s = add_pio(0x60, 5, std::make_shared<I8042>(ctl_)); !s) return s;
    if (auto s = add_pio(kDebugExitPort, 1, std::make_shared<DebugExitPort>(ctl_)); !s) return s;
    if (auto s = add_pio(kBootMarkerPort, 1, std::make_shared<BootMarker>(start_)); !s) return s;
    if (auto s = add_pio(pci::kConfigAddressPort, 4, pci_.address_port()); !s) return s;
    if (auto s = add_pio(pci::kConfigDataPort, 4, pci_.data_port()); !s) return s;

    if (auto d = pci_.add(std::make_shared<pci::HostBridge>()); !d) return fail(std::move(d.error()));
    auto test = TestDevice::create(pci_, router_);
    if (!test) return fail(std::move(test.error()).context("creating the test device"));
    if (auto d = pci_.add(*test); !d) return fail(std::move(d.error()));
    switch (cfg_.io_model) {
        case IoModel::Nitro: return setup_nitro();
        case IoModel::Xen: return setup_xen();
        case IoModel::None: return {};
    }
    return {};
}

common::Status KvmMachine::setup_xen() {
    std::vector<common::MemoryRegion> ram = ram_regions(cfg_.memory_bytes);
    xen::XenDomainConfig xc{cfg_.vcpus, cfg_.probe_guest, ram, layout::kXenPlatformBar1};
    auto d = xen::XenDomain::create(sys_, vm_, mem_, ctl_, std::move(xc));
    if (!d) return fail(std::move(d.error()).context("Xen mode"));
    xen_ = std::move(*d);
    auto platform = std::make_shared<xen::PlatformDevice>(layout::kXenPlatformIo, layout::kXenPlatformBar1);
    if (auto dev = pci_.add(platform); !dev) return fail(std::move(dev.error()));
    if (auto s = pio_.add(layout::kXenPlatformIo, xen::kPlatformBar0Size, std::make_shared<xen::PlatformIoBar>()); !s)
        return s;
    if (auto s = pio_.add(xen::kUnplugPort, 4, std::make_shared<xen::UnplugPorts>()); !s) return s;
    if (auto s = pio_.add(xen::kDebugConsolePort, 1, std::make_shared<xen::DebugConsole>()); !s) return s;
    return {};
}

common::Status KvmMachine::setup_nitro() {
    if (cfg_.volumes.empty()) return {};
    auto card = nitro::CardProcess::start(cfg_.card_binary, cfg_.volumes, cfg_.log_level, cfg_.vcpus,
                                          std::chrono::seconds(10), cfg_.card_args);
    if (!card) return fail(std::move(card.error()));
    card_.emplace(std::move(*card));
    for (std::size_t i = 0; i < cfg_.volumes.size(); ++i) {
        nitro::RemoteDeviceSpec spec{card_->socket_path(i), fmt::format("nvme{}", i), {kNvmeCc, kNvmeAdminSqDoorbell},
                                     std::min<unsigned>(64, cfg_.vcpus + 1)};
        auto fn = nitro::RemoteFunction::connect(spec, mem_, pci_, router_, ioevents_);
        if (!fn) return fail(std::move(fn.error()));
        if (auto d = pci_.add(*fn); !d) return fail(std::move(d.error()));
    }
    return {};
}

common::Status KvmMachine::setup_vcpus(const BootEntry& entry) {
    auto supported = sys_.supported_cpuid();
    if (!supported) return fail(std::move(supported.error()));
    for (std::uint32_t id = 0; id < cfg_.vcpus; ++id) {
        auto vcpu = vm_.create_vcpu(id, sys_.vcpu_mmap_size());
        if (!vcpu) return fail(std::move(vcpu.error()));
        auto cpuid = filter_cpuid(*supported, id, cfg_.vcpus);
        if (xen_) {
            cpuid = xen_cpuid(std::move(cpuid), id);
            if (!xen::enable_sync_regs(sys_, *vcpu) && id == 0)
                spdlog::info("xen: KVM cannot sync registers into kvm_run; hypercalls use KVM_GET_REGS/SET_REGS");
        }
        if (auto s = vcpu->set_cpuid(cpuid); !s) return s;
        if (auto s = vcpu->set_lapic_lint(true, true); !s) return s;
        kvm_fpu fpu{};
        fpu.fcw = 0x37f;
        fpu.mxcsr = 0x1f80;
        if (auto s = vcpu->set_fpu(fpu); !s) return s;
        if (id == 0) {  // APs wait for INIT/SIPI in the in-kernel local APIC
            auto sregs = vcpu->get_sregs();
            if (!sregs) return fail(std::move(sregs.error()));
            spdlog::debug("vCPU 0: APIC base {:#x} at creation", sregs->apic_base);
            if (auto s = vcpu->set_sregs(boot_sregs(*sregs, entry.mode)); !s) return s;
            if (auto s = vcpu->set_regs(boot_regs(entry)); !s) return s;
        }
        vcpus_.push_back(std::make_unique<VcpuRunner>(std::move(*vcpu), sys_.vcpu_mmap_size(), pio_, mmio_, mem_, ctl_,
                                                      xen_.get()));
    }
    return {};
}

// Xen mode offers Linux no paravirtual clock (no kvmclock, no Xen pvclock), so it calibrates
// its TSC against the PIT, which fails when the host is itself emulated or busy; the kernel then
// marks the TSC unstable and boots on jiffies alone. The vmm knows the rate: it hands it over
// as tsc_early_khz= on the command line, unless the user's command line sets it.
void KvmMachine::add_tsc_rate_param() {
    if (cfg_.cmdline.find("tsc_early_khz=") != std::string::npos) return;
    auto khz = vm_.tsc_khz();
    if (!khz) {
        spdlog::warn("xen: {}; Linux will calibrate the TSC itself", khz.error().message);
        return;
    }
    const std::string param = fmt::format("tsc_early_khz={}", *khz);
    // Kernel parameters go before " -- ", after which come the guest's arguments.
    const auto dashes = cfg_.cmdline.find(" -- ");
    if (dashes == std::string::npos)
        cfg_.cmdline += (cfg_.cmdline.empty() ? "" : " ") + param;
    else
        cfg_.cmdline.insert(dashes, " " + param);
    spdlog::debug("xen: {} added to the kernel command line", param);
}

common::Status KvmMachine::setup() {
    if (auto s = setup_memory(); !s) return s;
    if (auto s = setup_devices(); !s) return s;

    auto kernel_file = map_file(cfg_.kernel, "kernel");
    if (!kernel_file) return fail(std::move(kernel_file.error()));
    auto kernel = kernel_file->bytes();
    std::optional<MappedFile> initrd_file;
    std::span<const std::uint8_t> initrd;
    if (!cfg_.initrd.empty()) {
        auto i = map_file(cfg_.initrd, "initrd");
        if (!i) return fail(std::move(i.error()));
        initrd_file = std::move(*i);
        initrd = initrd_file->bytes();
    }
    if (auto s = write_mptable(mem_, cfg_.vcpus); !s) return s;
    auto rsdp = write_acpi(mem_, cfg_.vcpus, AcpiOptions{.declare_no_vga = !xen_});
    if (xen_ && cfg_.elf_is_linux) add_tsc_rate_param();
    if (!rsdp) return fail(std::move(rsdp.error()));
    Result<BootEntry> entry = fail(Error::invalid("unreachable"));
    switch (detect_kernel(kernel)) {
        case KernelFormat::PvhElf:
            entry = cfg_.elf_is_linux ? load_vmlinux(mem_, kernel, cfg_.cmdline, initrd, *rsdp)
                                      : load_pvh(mem_, kernel, cfg_.cmdline, initrd, *rsdp);
            break;
        case KernelFormat::BzImage: entry = load_bzimage(mem_, kernel, cfg_.cmdline, initrd, *rsdp); break;
        case KernelFormat::Unknown:
            return fail(Error::invalid(fmt::format("kernel {}: neither a PVH ELF nor a bzImage", cfg_.kernel)));
    }
    if (!entry) return fail(std::move(entry.error()).context(fmt::format("kernel {}", cfg_.kernel)));
    if (xen_ && cfg_.xen_patch_hypercalls) {
        auto at = xen::patch_loaded_kernel(mem_, kernel);
        if (!at) return fail(std::move(at.error()).context(fmt::format("kernel {}", cfg_.kernel)));
        spdlog::info("xen: patched the kernel's vmmcall/vmcall pair at {:#x} into port {:#x} calls", *at,
                     xen::kHypercallPort);
    }
    if (auto s = write_boot_tables(mem_, entry->mode); !s) return s;
    spdlog::debug("kernel {} loaded, entry {:#x} ({})", cfg_.kernel, entry->rip,
                  entry->mode == EntryMode::Pvh32 ? "PVH 32-bit" : "64-bit boot protocol");
    if (auto s = setup_vcpus(*entry); !s) return s;
    if (xen_) {
        xen::Dom0Config dc;
        dc.binary = cfg_.dom0_binary;
        dc.log_level = cfg_.log_level;
        dc.vcpus = cfg_.vcpus;
        dc.volumes = cfg_.volumes;
        for (const auto& r : mem_.table().regions()) {
            bool special = r.base.value() >= layout::kMmioHoleStart && r.base.value() < layout::k4G;
            dc.regions.push_back({r, special});
        }
        if (auto s = xen_->start_dom0(std::move(dc)); !s) return s;
    }
    return {};
}

void KvmMachine::stdin_pump() {
    RawTerminal raw;
    while (!stopping_.load()) {
        pollfd p{STDIN_FILENO, POLLIN, 0};
        int r = ::poll(&p, 1, 100);
        if (r <= 0 || !(p.revents & POLLIN)) {
            if (r < 0 && errno != EINTR) return;
            if (p.revents & (POLLHUP | POLLERR)) return;
            continue;
        }
        std::uint8_t buf[256];
        ssize_t n = ::read(STDIN_FILENO, buf, sizeof buf);
        if (n <= 0) return;
        serial_->push_input(std::span(buf, static_cast<std::size_t>(n)));
    }
}

int KvmMachine::run() {
    if (xen_) xen_->start_housekeeping();
    for (auto& v : vcpus_) {
        threads_.emplace_back([r = v.get()] { r->run_loop(); });
        // "vcpuN": how a host agent finds the vCPU threads to put under a CPU cap.
        ::pthread_setname_np(threads_.back().native_handle(), fmt::format("vcpu{}", threads_.size() - 1).c_str());
    }
    if (cfg_.interactive) stdin_thread_ = std::thread([this] { stdin_pump(); });
    std::optional<std::chrono::steady_clock::time_point> deadline;
    if (cfg_.timeout) deadline = std::chrono::steady_clock::now() + *cfg_.timeout;
    auto stop = ctl_.wait(deadline);
    if (!stop) {
        ctl_.request_stop(StopReason::Timeout, kStatusTimeout,
                          fmt::format("timeout after {} ms", cfg_.timeout->count()));
        stop = ctl_.wait(std::nullopt);
    }
    stop_threads();
    log_memory_use();
    if (xen_) xen_->log_summary();
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start_);
    std::uint64_t exits = 0, unclaimed = 0, handling_ns = 0, vcpu_cpu_ns = 0;
    for (const auto& v : vcpus_) {
        exits += v->exits();
        unclaimed += v->unclaimed();
        handling_ns += v->handling_ns();
        vcpu_cpu_ns += v->cpu_ns();
    }
    // For the benchmarks' "host CPU per I/O": what the vmm spent beside the guest.
    const auto cpu = common::process_cpu_time();
    spdlog::info("vmm cpu time: {:.1f} ms in all; vCPU threads {:.1f} ms (guest time included), of which {:.1f} ms "
                 "handling exits in the vmm; other threads {:.1f} ms",
                 cpu.total_ms(), static_cast<double>(vcpu_cpu_ns) / 1e6, static_cast<double>(handling_ns) / 1e6,
                 std::max(0.0, cpu.total_ms() - static_cast<double>(vcpu_cpu_ns) / 1e6));
    if (unclaimed)
        spdlog::info("{} guest accesses to unclaimed ports or MMIO were ignored (--log-level debug lists them)",
                     unclaimed);
    switch (stop->reason) {
        case StopReason::GuestExit:
        case StopReason::Reset:
        case StopReason::Shutdown:
            spdlog::info("VM ended after {} ms ({}), {} vCPU exits, exit status {}", ms.count(), stop->detail,
                         exits, stop->status);
            break;
        default:
            spdlog::error("VM ended after {} ms, exit status {}: {}", ms.count(), stop->status, stop->detail);
    }
    return stop->status;
}

void KvmMachine::stop_threads() {
    stopping_.store(true);
    for (std::size_t i = 0; i < threads_.size(); ++i) {
        if (!threads_[i].joinable()) continue;
        vcpus_[i]->request_exit();
        // Kick the thread out of KVM_RUN until it leaves; immediate_exit makes the next
        // KVM_RUN return at once, the signal interrupts one in progress.
        while (!vcpus_[i]->exited()) {
            ::pthread_kill(threads_[i].native_handle(), kKickSignal);
            std::this_thread::sleep_for(std::chrono::microseconds(200));
        }
        threads_[i].join();
    }
    threads_.clear();
    if (stdin_thread_.joinable()) stdin_thread_.join();
}

}  // namespace

Result<std::unique_ptr<Machine>> Machine::build(const MachineConfig& cfg,
                                                std::chrono::steady_clock::time_point start) {
    // The kick signal must interrupt KVM_RUN (no SA_RESTART) and do nothing else.
    struct sigaction sa{};
    sa.sa_handler = [](int) {};
    sigemptyset(&sa.sa_mask);
    ::sigaction(kKickSignal, &sa, nullptr);

    if (cfg.vcpus == 0 || cfg.vcpus > kMaxMpCpus)
        return fail(Error::invalid(fmt::format("--vcpus {}: must be 1 to {}", cfg.vcpus, kMaxMpCpus)));
    if (cfg.memory_bytes < layout::kMinMemory || cfg.memory_bytes % 4096)
        return fail(Error::invalid(fmt::format("--memory {} MiB: at least {} MiB and a whole number of pages",
                                               cfg.memory_bytes >> 20, layout::kMinMemory >> 20)));
    auto sys = KvmSystem::open(cfg.kvm_path);
    if (!sys) return fail(std::move(sys.error()));
    if (sys->software_module())
        spdlog::warn("/dev/kvm is provided by {} (no hardware virtualization): guest code at CPL0 is "
                     "emulated and slow; stock Linux guests crawl here, the probe guest runs fine",
                     *sys->software_module());
    auto vm = sys->create_vm();
    if (!vm) return fail(std::move(vm.error()));
    auto regions = ram_regions(cfg.memory_bytes);
    if (cfg.io_model == IoModel::Xen) {
        auto extra = xen_regions(cfg.memory_bytes);
        regions.insert(regions.end(), extra.begin(), extra.end());
    }
    auto mem = common::GuestMemory::create(std::move(regions));
    if (!mem) return fail(std::move(mem.error()));
    auto m = std::make_unique<KvmMachine>(std::move(*sys), std::move(*vm), std::move(*mem), cfg, start);
    if (auto s = m->setup(); !s) return fail(std::move(s.error()));
    return std::unique_ptr<Machine>(std::move(m));
}

}  // namespace hypervisor
