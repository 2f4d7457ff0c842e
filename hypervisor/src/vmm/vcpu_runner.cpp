#include "vmm/vcpu_runner.hpp"

#include <time.h>

#include <chrono>

#include <spdlog/spdlog.h>

#include <cerrno>
#include <cstring>
#include <fmt/format.h>

namespace hypervisor {

namespace {
template <class... Ts>
struct Overloaded : Ts... { using Ts::operator()...; };
}  // namespace

void VcpuRunner::request_exit() {
    exit_requested_.store(true);
    vcpu_.run_state()->immediate_exit = 1;
}

void VcpuRunner::run_loop() {
    while (!exit_requested_.load() && !ctl_.stopping()) {
        int r = vcpu_.run();
        if (r == -EINTR || r == -EAGAIN) continue;
        if (r < 0) {
            ctl_.request_stop(StopReason::HostError, kStatusHostError,
                              fmt::format("vCPU {}: KVM_RUN failed: {}", vcpu_.id(), std::strerror(-r)));
            break;
        }
        exits_.fetch_add(1, std::memory_order_relaxed);
        const auto t0 = std::chrono::steady_clock::now();
        const bool go_on = handle(decode_exit(*vcpu_.run_state(), mmap_size_));
        handling_ns_.fetch_add(static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                   std::chrono::steady_clock::now() - t0).count()),
                               std::memory_order_relaxed);
        if (!go_on) break;
    }
    // This thread's CPU time (guest time included), read by the machine's exit log.
    timespec ts{};
    if (::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) == 0)
        cpu_ns_.store(static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000'000u + static_cast<std::uint64_t>(ts.tv_nsec));
    exited_.store(true);
}

bool VcpuRunner::handle(const VcpuExit& e) {
    return std::visit(
        Overloaded{
            [&](const PioExit& x) { handle_pio(x); return true; },
            [&](const MmioExit& x) { handle_mmio(x); return true; },
            [&](const IgnoredExit&) { return true; },
            [&](const HltExit&) { return true; },
            [&](const ShutdownExit&) {
                report_crash("triple fault (shutdown)");
                return false;
            },
            [&](const SystemEventExit& x) {
                if (x.type == KVM_SYSTEM_EVENT_RESET) ctl_.request_stop(StopReason::Reset, 0, "guest reset");
                else ctl_.request_stop(StopReason::Shutdown, 0, fmt::format("guest system event {}", x.type));
                return false;
            },
            [&](const InternalErrorExit& x) {
                std::string d = fmt::format("KVM internal error, suberror {}", x.suberror);
                for (std::uint32_t i = 0; i < std::min<std::uint32_t>(x.ndata, 4); ++i)
                    d += fmt::format(" data[{}]={:#x}", i, x.data[i]);
                report_crash(d);
                return false;
            },
            [&](const FailEntryExit& x) {
                report_crash(fmt::format("VM entry failed, hardware reason {:#x}", x.reason));
                return false;
            },
            [&](const MsrExit& x) {
                auto& m = vcpu_.run_state()->msr;
                std::uint64_t data = x.data;
                bool ok = hooks_ && hooks_->msr(vcpu_, x.index, x.write, data);
                m.error = ok ? 0 : 1;
                if (ok && !x.write) m.data = data;
                return true;
            },
            [&](const XenHcallExit&) {
                if (hooks_) hooks_->xen_hypercall(vcpu_, vcpu_.run_state()->xen);
                return true;
            },
            [&](const UnknownExit& x) {
                report_crash(fmt::format("unexpected exit reason {}", x.reason));
                return false;
            },
        },
        e);
}

void VcpuRunner::handle_pio(const PioExit& e) {
    if (hooks_ && e.write && e.count == 1 && hooks_->port_write(vcpu_, e.port)) return;
    auto* base = reinterpret_cast<std::uint8_t*>(vcpu_.run_state()) + e.data_offset;
    for (std::uint32_t i = 0; i < e.count; ++i) {
        std::span<std::uint8_t> d(base + i * e.size, e.size);
        bool ok = e.write ? pio_.write(e.port, d) : pio_.read(e.port, d);
        if (!ok) {
            if (!e.write) std::memset(d.data(), 0xff, d.size());
            note_unclaimed("port", e.port, e.size, e.write);
        }
    }
}

void VcpuRunner::handle_mmio(const MmioExit& e) {
    auto& m = vcpu_.run_state()->mmio;
    std::span<std::uint8_t> d(m.data, e.len);
    bool ok = e.write ? mmio_.write(e.addr, d) : mmio_.read(e.addr, d);
    if (!ok) {
        if (!e.write) std::memset(d.data(), 0xff, d.size());
        note_unclaimed("MMIO", e.addr, e.len, e.write);
    }
}

void VcpuRunner::note_unclaimed(const char* kind, std::uint64_t addr, std::size_t size, bool write) {
    // The first few, then every 1024th: a guest probing ports must not flood the log.
    ++unclaimed_;
    if (unclaimed_ <= 8 || unclaimed_ % 1024 == 0)
        spdlog::debug("vCPU {}: unclaimed {} {} {:#x}/{} (#{})", vcpu_.id(), kind, write ? "write" : "read",
                      addr, size, unclaimed_);
}

void VcpuRunner::report_crash(const std::string& what) {
    std::string msg = fmt::format("vCPU {}: {}", vcpu_.id(), what);
    auto regs = vcpu_.get_regs();
    auto sregs = vcpu_.get_sregs();
    if (regs && sregs) {
        msg += fmt::format(
            "\n  rip={:#018x} rsp={:#018x} rflags={:#x} cs={:#x} (cpl {}) cr0={:#x} cr3={:#x} cr4={:#x} efer={:#x}"
            "\n  rax={:#x} rbx={:#x} rcx={:#x} rdx={:#x} rsi={:#x} rdi={:#x}",
            regs->rip, regs->rsp, regs->rflags, sregs->cs.selector, sregs->cs.selector & 3, sregs->cr0,
            sregs->cr3, sregs->cr4, sregs->efer, regs->rax, regs->rbx, regs->rcx, regs->rdx, regs->rsi, regs->rdi);
        // On AMD, KVM answers a shutdown by re-initialising the vCPU (its VMCB is undefined
        // afterwards), so what reads back is the reset state, not where the guest failed.
        if (regs->rip == 0xfff0 && sregs->cs.selector == 0xf000 && (sregs->cr0 & 1) == 0)
            msg += "\n  (these are the vCPU's reset values: KVM re-initialised it after the fault, as it does on "
                   "AMD; the state at the fault is lost)";
        std::uint64_t lin = sregs->cs.base + regs->rip;
        auto gpa = (sregs->cr0 & 0x80000000u) ? vcpu_.translate(lin) : common::Result<std::uint64_t>(lin);
        if (gpa) {
            std::uint8_t insn[16];
            if (mem_.read(common::GuestAddr(*gpa), std::as_writable_bytes(std::span(insn)))) {
                msg += "\n  instruction bytes:";
                for (auto b : insn) msg += fmt::format(" {:02x}", b);
            }
        }
    }
    ctl_.request_stop(StopReason::GuestCrash, kStatusGuestCrash, msg);
}

}  // namespace hypervisor
