// The link between a vmm and the dom0 process (xen-dom0), one connection per guest domain.
//
// Transport: the AF_UNIX SOCK_SEQPACKET socket of common/unix_socket.hpp (UnixSocket::send /
// recv with SCM_RIGHTS), one message per packet. Every message starts with LinkHeader; its
// payload is the fixed struct named by the type. Both sides check type, size and field ranges
// and answer a malformed message with an error (or drop the connection), never a crash.
//
// Conversation (vmm = client, dom0 = server listening on its socket path):
//
//   vmm  -> dom0  Attach        fds: [guest memfd, store kick eventfd, store notify eventfd]
//   dom0 -> vmm   AttachReply   domid assigned by dom0 (1, 2, ...), or an error status
//   dom0 -> vmm   Bind          fds: [kick eventfd, notify eventfd]   (any time after attach)
//   vmm  -> dom0  BindReply     status of that bind
//   dom0 -> vmm   Unbind        dom0 closes its end of a port
//   vmm  -> dom0  PortClosed    the guest closed (EVTCHNOP_close) a port bound to dom0
//   either side closes the socket: the domain is gone; dom0 stops its backends and removes
//   the domain's xenstore nodes.
//
// Event channels stay in the vmm (it owns the guest's shared_info). For every guest port bound
// to dom0 there are two eventfds:
//   kick   - the vmm writes it when the guest sends on the port (EVTCHNOP_send); dom0 waits on it.
//   notify - dom0 writes it to notify the guest; the vmm's event thread reads it, sets the port
//            pending in shared_info and injects the upcall. Every notification thus goes
//            through the hypervisor, as on Xen.
// The xenstore port is bound by the vmm before the guest starts and travels in Attach.
//
// Guest memory: dom0 rebuilds the vmm's GuestMemory from the memfd and the region table in
// Attach (common::GuestMemory::attach). Regions of kind Ram are guest RAM; grants may only name
// frames inside them. The Special regions (xenstore page, grant-table frames) are reachable by
// dom0 but never through a grant.
#pragma once

#include <cstdint>

namespace xen_model::link {

inline constexpr std::uint32_t kVersion = 1;

enum class MsgType : std::uint32_t {
    Attach = 1,
    AttachReply = 2,
    Bind = 3,
    BindReply = 4,
    Unbind = 5,
    PortClosed = 6,
};

struct LinkHeader {
    std::uint32_t type;  // MsgType
    std::uint32_t size;  // bytes of the whole message, header included
};
static_assert(sizeof(LinkHeader) == 8);

inline constexpr std::uint32_t kMaxRegions = 8;
inline constexpr std::uint32_t kMaxVolumes = 16;
inline constexpr std::uint32_t kVolumeSpecMax = 256;  // bytes, NUL-terminated inside
inline constexpr std::uint32_t kNameMax = 64;

enum class RegionKind : std::uint32_t { Ram = 0, Special = 1 };

struct LinkRegion {
    std::uint64_t base;       // guest-physical
    std::uint64_t size;
    std::uint64_t fd_offset;  // in the memfd
    std::uint32_t kind;       // RegionKind
    std::uint32_t pad;
};
static_assert(sizeof(LinkRegion) == 32);

struct Attach {
    LinkHeader hdr;
    std::uint32_t version;      // kVersion
    std::uint32_t vcpus;
    char name[kNameMax];        // instance name, NUL-terminated; xenstore "name"
    std::uint64_t memfd_size;   // bytes of the memfd
    std::uint32_t region_count;
    std::uint32_t volume_count;
    LinkRegion regions[kMaxRegions];
    std::uint64_t store_gpa;        // the xenstore ring page (abi::kXenstorePfn << 12)
    std::uint32_t store_port;       // the guest's port for xenstore (HVM_PARAM_STORE_EVTCHN)
    std::uint32_t grant_frames;     // frames in the grant-table region (abi::kGrantFramesMax)
    std::uint64_t grant_table_gpa;  // first grant-table frame; frame i at + i * 4096
    // Volumes in order: xvda, xvdb, ... Same syntax as the card's (storage/volume_spec.hpp).
    char volumes[kMaxVolumes][kVolumeSpecMax];
};

struct AttachReply {
    LinkHeader hdr;
    std::int32_t status;  // 0, or -errno
    std::uint32_t domid;  // valid when status == 0
    char message[128];    // why, when status != 0
};

struct Bind {
    LinkHeader hdr;
    std::uint32_t request_id;  // echoed in BindReply
    std::uint32_t guest_port;  // an unbound guest port whose remote domain is dom0
};

struct BindReply {
    LinkHeader hdr;
    std::uint32_t request_id;
    std::uint32_t guest_port;
    std::int32_t status;  // 0, or a negative Xen errno (abi::err): -EINVAL bad port, -EBUSY bound
    std::uint32_t pad;
};

struct Unbind {
    LinkHeader hdr;
    std::uint32_t guest_port;
    std::uint32_t pad;
};

struct PortClosed {
    LinkHeader hdr;
    std::uint32_t guest_port;
    std::uint32_t pad;
};

inline constexpr std::uint32_t kMaxMessage = sizeof(Attach);

}  // namespace xen_model::link
