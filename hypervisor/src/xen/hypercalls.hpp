// The one Xen hypercall dispatcher (reference §3.4). Every transport (KVM_EXIT_XEN, the
// hypercall page, patched instructions) ends in dispatch(): number and arguments in, the value
// for RAX out (>= 0, or a negative Xen errno). Unknown hypercalls and sub-operations give
// -ENOSYS.
//
// Pointer arguments are guest-virtual. They are translated page by page through GuestVirtual
// (KVM_TRANSLATE on the calling vCPU; identity in tests), so a struct that straddles a page is
// read and written correctly; an address that does not translate or is not guest memory gives
// -EFAULT. Arguments are copied out of the guest once and checked on the copy.
//
// Thread safety: dispatch() runs on any vCPU thread concurrently; counters are atomics, the
// remaining state is guarded by mu_ or lives in EventChannels.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "common/guest_memory.hpp"
#include "xen/event_channels.hpp"
#include "xen/xen_defs.hpp"

namespace hypervisor::xen {

// Guest-virtual to guest-physical, one address at a time (the caller walks page by page).
class GuestVirtual {
public:
    virtual ~GuestVirtual() = default;
    [[nodiscard]] virtual std::optional<std::uint64_t> translate(std::uint64_t gva) = 0;
};

// What the dispatcher needs from the rest of the vmm.
class HypercallEnv {
public:
    virtual ~HypercallEnv() = default;
    // The guest sent on a port bound to dom0.
    virtual void kick_dom0(std::uint32_t port) = 0;
    // The guest closed a port bound to dom0.
    virtual void dom0_port_closed(std::uint32_t port) = 0;
    // SCHEDOP_shutdown with a valid reason (poweroff, reboot, crash, watchdog).
    virtual void shutdown(std::uint32_t reason) = 0;
    // Guest-physical address of grant frame 0 (BAR1 of the platform device).
    [[nodiscard]] virtual std::uint64_t grant_frames_gpa() const = 0;
};

struct HypercallConfig {
    std::vector<common::MemoryRegion> ram;  // guest RAM: where shared_info and vcpu_info may go
    std::uint32_t store_port = 0;           // HVM_PARAM_STORE_EVTCHN
    std::uint64_t store_pfn = 0;            // HVM_PARAM_STORE_PFN
    // Hypercalls from CPL3 are refused with -EPERM, as Xen does, unless this is set (the probe
    // guest, whose frontend runs at CPL3; a documented departure).
    bool allow_user_mode = false;
};

struct HypercallArgs {
    std::uint64_t nr;
    std::array<std::uint64_t, 5> a;  // RDI, RSI, RDX, R10, R8
};

class Hypercalls final {
public:
    Hypercalls(const common::GuestMemory& mem, EventChannels& events, HypercallEnv& env, HypercallConfig cfg);

    // vcpu: the caller's index; user_mode: it runs at CPL3.
    std::int64_t dispatch(std::uint32_t vcpu, bool user_mode, const HypercallArgs& args, GuestVirtual& gv);

    // The domain id dom0 assigned (accepted besides DOMID_SELF in domid fields).
    void set_domid(std::uint16_t id) { domid_.store(id); }
    // "memory_op 12, event_channel_op 3400, ..." plus event-channel sends, for the log at VM end.
    [[nodiscard]] std::string summary() const;
    [[nodiscard]] std::uint64_t count(std::uint64_t nr) const;
    [[nodiscard]] std::uint64_t total() const;

private:
    std::int64_t xen_version(const HypercallArgs& a, GuestVirtual& gv);
    std::int64_t memory_op(const HypercallArgs& a, GuestVirtual& gv);
    std::int64_t hvm_op(const HypercallArgs& a, GuestVirtual& gv);
    std::int64_t vcpu_op(const HypercallArgs& a, GuestVirtual& gv);
    std::int64_t event_channel_op(std::uint32_t vcpu, const HypercallArgs& a, GuestVirtual& gv);
    std::int64_t grant_table_op(const HypercallArgs& a, GuestVirtual& gv);
    std::int64_t sched_op(const HypercallArgs& a, GuestVirtual& gv);

    // Copies between guest-virtual memory and a host buffer, page by page.
    bool copy_in(GuestVirtual& gv, std::uint64_t gva, void* out, std::size_t len) const;
    bool copy_out(GuestVirtual& gv, std::uint64_t gva, const void* in, std::size_t len) const;
    template <typename T>
    bool read(GuestVirtual& gv, std::uint64_t gva, T& out) const { return copy_in(gv, gva, &out, sizeof(T)); }
    template <typename T>
    bool write(GuestVirtual& gv, std::uint64_t gva, const T& in) const { return copy_out(gv, gva, &in, sizeof(T)); }
    [[nodiscard]] bool in_ram(std::uint64_t gpa, std::uint64_t len) const;
    [[nodiscard]] bool self(std::uint16_t domid) const;

    const common::GuestMemory& mem_;
    EventChannels& events_;
    HypercallEnv& env_;
    HypercallConfig cfg_;
    std::atomic<std::uint16_t> domid_{0x7ff0};
    std::mutex mu_;  // guards the fields below
    std::uint64_t callback_irq_ = 0;
    std::uint32_t grant_frames_ = 0;  // frames the guest has placed (highest idx + 1)
    std::array<std::atomic<std::uint64_t>, kMaxHypercall + 1> counts_{};  // last: all others
    std::atomic<std::uint64_t> sends_{0}, sends_dom0_{0}, refused_user_{0};
};

}  // namespace hypervisor::xen
