// Xen 2-level event channels, kept by the vmm over the guest's shared_info and vcpu_info pages
// (reference §3.5, §3.8).
//
// The port table (4096 ports, port 0 invalid) lives here; the pending/mask bitmaps and the
// per-vCPU upcall flags live in guest memory and are changed with atomics, as Xen does, because
// the guest changes them concurrently. Every guest-memory access goes through
// common::GuestMemory (GUEST-SHARED). Upcalls leave through an UpcallSink (an MSI to the vCPU's
// local APIC in the vmm, a recorder in tests).
//
// Thread safety: every public method may be called from any thread (vCPU threads, the dom0
// event thread, the housekeeping timer). One mutex guards the table and the per-vCPU state;
// the sink is called with it held, so a sink must not call back into this class.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "common/guest_memory.hpp"
#include "xen/xen_defs.hpp"

namespace hypervisor::xen {

class UpcallSink {
public:
    virtual ~UpcallSink() = default;
    // Injects `vector` on vCPU `vcpu` (fixed, edge). Spurious calls are harmless to the guest.
    virtual void upcall(std::uint32_t vcpu, std::uint8_t vector) = 0;
};

struct EventStats {
    std::uint64_t raises = 0;     // ports newly set pending
    std::uint64_t upcalls = 0;    // injections, re-kicks included
    std::uint64_t rekicks = 0;    // injections by the housekeeping timer
    std::uint64_t lost = 0;       // raises that found no shared_info / vcpu_info to write
};

class EventChannels final {
public:
    EventChannels(const common::GuestMemory& mem, std::uint32_t vcpus, UpcallSink& sink);

    // ---- Guest configuration (hypercalls; arguments already range-checked by the caller) ----
    // shared_info moved to gpa (page aligned, in RAM); the caller zeroed it.
    void set_shared_info(common::GuestAddr gpa);
    [[nodiscard]] std::optional<common::GuestAddr> shared_info() const;
    // VCPUOP_register_vcpu_info: the 64 bytes at gpa become vCPU v's vcpu_info. The current
    // contents move there (as Xen copies them), and a pending upcall is re-sent. Returns 0 or
    // a negative Xen errno (bad vCPU, misaligned).
    std::int64_t set_vcpu_info(std::uint32_t vcpu, common::GuestAddr gpa);
    // HVMOP_set_evtchn_upcall_vector: vector >= 0x10, or 0 to turn the upcall off.
    std::int64_t set_upcall_vector(std::uint32_t vcpu, std::uint8_t vector);

    // ---- EVTCHNOP_* from the guest: a port (>= 1) or a negative Xen errno ----
    std::int64_t alloc_unbound(std::uint16_t remote_dom);
    std::int64_t bind_virq(std::uint32_t virq, std::uint32_t vcpu);
    std::int64_t bind_ipi(std::uint32_t vcpu);
    std::int64_t bind_vcpu(std::uint32_t port, std::uint32_t vcpu);
    struct CloseResult {
        std::int64_t rc;
        bool was_dom0;  // the port was bound to dom0: tell dom0 (PortClosed)
    };
    CloseResult close(std::uint32_t port);
    struct SendResult {
        std::int64_t rc;
        bool to_dom0;  // the port is bound to dom0: the caller kicks dom0
    };
    SendResult send(std::uint32_t port);
    std::int64_t unmask(std::uint32_t port);
    std::int64_t status(std::uint32_t port, EvtchnStatus& out) const;

    // ---- The dom0 side ----
    // A port bound to dom0 from the start (the xenstore port).
    std::int64_t preallocate_dom0();
    // dom0 binds a guest port that is unbound with remote domain 0: 0, -EINVAL or -EBUSY.
    std::int64_t bind_dom0(std::uint32_t port);
    // dom0 closed its end: the guest port goes back to unbound (as on Xen). False if it was not
    // bound to dom0.
    bool unbind_dom0(std::uint32_t port);
    [[nodiscard]] bool bound_to_dom0(std::uint32_t port) const;

    // ---- Delivery ----
    // Sets the port pending and, following §3.5 with the §3.8 mitigation, injects the upcall
    // on the vCPU the port is bound to. Unbound or free ports are ignored.
    void raise(std::uint32_t port);
    // Re-sends the upcall to vCPUs whose upcall_pending stayed set since the previous tick.
    void housekeeping_tick();
    // SCHEDOP_poll: true as soon as one of the ports is pending, false after the timeout.
    bool wait_any_pending(std::span<const std::uint32_t> ports, std::chrono::microseconds timeout);
    [[nodiscard]] bool pending(std::uint32_t port) const;
    [[nodiscard]] bool masked(std::uint32_t port) const;

    [[nodiscard]] EventStats stats() const;
    // Lines describing what the guest has not taken yet: each pending port (its kind, vCPU and
    // mask) and each vCPU whose upcall flag or selector is set. Empty when nothing waits. For
    // the log when a guest ends or stops answering.
    [[nodiscard]] std::vector<std::string> pending_report() const;
    [[nodiscard]] std::uint32_t vcpus() const { return static_cast<std::uint32_t>(vcpu_.size()); }

private:
    enum class Kind : std::uint8_t { Free, Unbound, Dom0, Virq, Ipi };
    struct Port {
        Kind kind = Kind::Free;
        std::uint32_t vcpu = 0;
        std::uint32_t virq = 0;
        std::uint16_t remote_dom = 0;
    };
    struct Vcpu {
        std::optional<common::GuestAddr> info;  // registered vcpu_info
        std::uint8_t vector = 0;
        bool seen_pending = false;  // upcall_pending at the previous housekeeping tick
    };

    std::int64_t alloc_locked();
    [[nodiscard]] bool valid_port(std::uint32_t port) const { return port >= 1 && port < kMaxPorts; }
    [[nodiscard]] std::optional<common::GuestAddr> vcpu_info_locked(std::uint32_t vcpu) const;
    // Steps 3-5 of §3.5 for a port that is pending and not masked.
    void deliver_locked(std::uint32_t port, std::uint32_t vcpu);
    void inject_locked(std::uint32_t vcpu);
    // GUEST-SHARED: atomic bit operations on the shared_info bitmaps.
    [[nodiscard]] std::uint64_t* word_locked(std::uint64_t offset, std::uint32_t port) const;
    [[nodiscard]] bool bit_locked(std::uint64_t offset, std::uint32_t port) const;

    const common::GuestMemory& mem_;
    UpcallSink& sink_;
    mutable std::mutex mu_;
    std::condition_variable poll_cv_;
    std::vector<Port> ports_;
    std::vector<Vcpu> vcpu_;
    std::optional<common::GuestAddr> shared_info_;
    EventStats stats_;
};

}  // namespace hypervisor::xen
