// Numbers and guest-visible layouts of the Xen hypercall ABI that only the vmm needs: hypercall
// and sub-operation numbers, argument structs, shared_info/vcpu_info offsets, CPUID leaves and
// the fixed ports. Values follow Xen's public headers for x86-64 guests (include/xen/interface/
// in Linux 6.1); the reference notes are /work/shared/reference/xen-abi.md (§ numbers below).
// Layouts shared with dom0 live in xen_model/abi/xen_abi.hpp.
#pragma once

#include <cstddef>
#include <cstdint>

namespace hypervisor::xen {

// ---- Transport (§7.2) ----
inline constexpr std::uint16_t kHypercallPort = 0x1e;    // `out %al,$0x1e` in stubs and patches
inline constexpr std::uint32_t kHypercallMsr = 0x40000000;
inline constexpr std::uint32_t kStubSize = 32;           // one stub per hypercall number
inline constexpr std::uint32_t kMaxHypercall = 64;       // counted separately below this

// ---- Version and CPUID (§3.2) ----
inline constexpr std::uint32_t kVersionMajor = 4, kVersionMinor = 17;
inline constexpr std::uint32_t kCpuidBase = 0x40000000;
inline constexpr std::uint32_t kCpuidVcpuIdPresent = 1u << 3, kCpuidUpcallVector = 1u << 6;

// ---- Hypercall numbers (xen.h) ----
namespace hc {
inline constexpr std::uint64_t memory_op = 12, xen_version = 17, console_io = 18, grant_table_op = 20,
                               vm_assist = 21, vcpu_op = 24, sched_op = 29, event_channel_op = 32,
                               physdev_op = 33, hvm_op = 34;
const char* name(std::uint64_t nr);
}  // namespace hc

// ---- Sub-operations ----
namespace xenver {
inline constexpr std::uint64_t version = 0, get_features = 6, pagesize = 7;
}
namespace xenmem {
inline constexpr std::uint64_t add_to_physmap = 7;
inline constexpr std::uint32_t space_shared_info = 0, space_grant_table = 1;
inline constexpr std::uint64_t idx_grant_table_status = 1ull << 31;
}
namespace hvmop {
inline constexpr std::uint64_t set_param = 0, get_param = 1, pagetable_dying = 9, get_mem_type = 15,
                               set_evtchn_upcall_vector = 23;
}
namespace hvm_param {
inline constexpr std::uint32_t callback_irq = 0, store_pfn = 1, store_evtchn = 2, console_pfn = 17,
                               console_evtchn = 18, count = 64;
}
namespace vcpuop {
inline constexpr std::uint64_t register_vcpu_info = 10;
}
namespace evtchnop {
inline constexpr std::uint64_t bind_interdomain = 0, bind_virq = 1, bind_pirq = 2, close = 3, send = 4,
                               status = 5, alloc_unbound = 6, bind_ipi = 7, bind_vcpu = 8, unmask = 9,
                               reset = 10, init_control = 11, expand_array = 12, set_priority = 13;
}
namespace gnttabop {
inline constexpr std::uint64_t query_size = 6, set_version = 8;
}
namespace schedop {
inline constexpr std::uint64_t yield = 0, block = 1, shutdown = 2, poll = 3;
inline constexpr std::uint32_t poweroff = 0, reboot = 1, suspend = 2, crash = 3, watchdog = 4,
                               soft_reset = 5;
inline constexpr std::uint32_t poll_max_ports = 128;
}

// XENFEAT bits advertised (§3.3): writable_page_tables, writable_descriptor_tables,
// auto_translated_physmap. Nothing else.
inline constexpr std::uint32_t kFeatures = (1u << 0) | (1u << 1) | (1u << 2);

// ---- Argument structs (x86-64 layouts) ----
struct XenFeatureInfo {
    std::uint32_t submap_idx;
    std::uint32_t submap;
};
static_assert(sizeof(XenFeatureInfo) == 8);

struct AddToPhysmap {
    std::uint16_t domid;
    std::uint16_t size;
    std::uint32_t space;
    std::uint64_t idx;
    std::uint64_t gpfn;
};
static_assert(sizeof(AddToPhysmap) == 24);

struct HvmParam {
    std::uint16_t domid;
    std::uint16_t pad;
    std::uint32_t index;
    std::uint64_t value;
};
static_assert(sizeof(HvmParam) == 16);

struct HvmUpcallVector {
    std::uint32_t vcpu;
    std::uint8_t vector;
    std::uint8_t pad[3];
};
static_assert(sizeof(HvmUpcallVector) == 8);

struct RegisterVcpuInfo {
    std::uint64_t mfn;
    std::uint32_t offset;
    std::uint32_t rsvd;
};
static_assert(sizeof(RegisterVcpuInfo) == 16);

struct EvtchnAllocUnbound {
    std::uint16_t dom;
    std::uint16_t remote_dom;
    std::uint32_t port;  // out
};
struct EvtchnBindVirq {
    std::uint32_t virq;
    std::uint32_t vcpu;
    std::uint32_t port;  // out
};
struct EvtchnBindIpi {
    std::uint32_t vcpu;
    std::uint32_t port;  // out
};
struct EvtchnBindVcpu {
    std::uint32_t port;
    std::uint32_t vcpu;
};
struct EvtchnPort {  // send, close, unmask
    std::uint32_t port;
};
struct EvtchnStatus {
    std::uint16_t dom;
    std::uint16_t pad0;
    std::uint32_t port;
    std::uint32_t status;  // out, EVTCHNSTAT_*
    std::uint32_t vcpu;    // out
    std::uint16_t u_dom;   // unbound/interdomain: remote domain; virq: low half of virq
    std::uint16_t u_pad;
    std::uint32_t u_port;  // interdomain: remote port
};
static_assert(sizeof(EvtchnAllocUnbound) == 8 && sizeof(EvtchnBindVirq) == 12 && sizeof(EvtchnBindIpi) == 8);
static_assert(sizeof(EvtchnStatus) == 24 && offsetof(EvtchnStatus, u_dom) == 16);
namespace evtchn_stat {
inline constexpr std::uint32_t closed = 0, unbound = 1, interdomain = 2, pirq = 3, virq = 4, ipi = 5;
}
inline constexpr std::uint32_t kNrVirqs = 24;

struct GnttabQuerySize {
    std::uint16_t dom;
    std::uint16_t pad;
    std::uint32_t nr_frames;
    std::uint32_t max_nr_frames;
    std::int16_t status;
    std::uint16_t pad2;
};
static_assert(sizeof(GnttabQuerySize) == 16 && offsetof(GnttabQuerySize, status) == 12);

struct GnttabSetVersion {
    std::uint32_t version;
};

struct SchedShutdown {
    std::uint32_t reason;
};
struct SchedPoll {
    std::uint64_t ports;  // guest-virtual address of evtchn_port_t[nr_ports]
    std::uint32_t nr_ports;
    std::uint32_t pad;
    std::uint64_t timeout;
};
static_assert(sizeof(SchedPoll) == 24);

// ---- shared_info and vcpu_info (§3.5) ----
inline constexpr std::uint64_t kVcpuInfoSize = 64;
inline constexpr std::uint64_t kVcpuUpcallPending = 0, kVcpuUpcallMask = 1, kVcpuPendingSel = 8;
inline constexpr std::uint32_t kLegacyVcpus = 32;  // vcpu_info slots inside shared_info
inline constexpr std::uint64_t kSharedPending = 2048, kSharedMask = 2560;
inline constexpr std::uint32_t kMaxPorts = 4096;  // 2-level ABI, 64-bit guests

// ---- Platform PCI device and fixed ports (§3.7) ----
inline constexpr std::uint16_t kPlatformVendor = 0x5853, kPlatformDevice = 0x0001;
inline constexpr std::uint32_t kPlatformClass = 0xff8000;
inline constexpr std::uint64_t kPlatformBar0Size = 0x100;
inline constexpr std::uint64_t kPlatformBar1Size = 16ull << 20;
inline constexpr std::uint16_t kUnplugPort = 0x10;  // ports 0x10..0x13
inline constexpr std::uint16_t kUnplugMagic = 0x49d2;
inline constexpr std::uint8_t kUnplugProtocol = 1;
inline constexpr std::uint16_t kDebugConsolePort = 0xe9;

}  // namespace hypervisor::xen
