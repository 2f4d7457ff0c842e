// Encoding and decoding of the vmm <-> dom0 link messages (dom0_link.hpp), and sending them
// over a common::card::UnixSocket.
//
// decode() is pure: it takes the bytes of one packet and the number of fds that came with it and
// returns a typed message, or an Error of kind Protocol saying what was wrong. It checks the
// type, the exact size, every count, NUL termination of every string field, the fd count, and
// (for Attach) the region table through common::RegionTable::validate plus the places of the
// xenstore page and the grant-table frames. It is fed hostile bytes by a fuzzer.
// encode() refuses to produce a message decode() would reject, so both sides fail early.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <variant>
#include <vector>

#include "common/error.hpp"
#include "common/fd.hpp"
#include "common/guest_memory.hpp"
#include "common/unix_socket.hpp"
#include "xen_model/link/dom0_link.hpp"

namespace xen_model::link {

// A region of the guest's memfd with its kind (Ram or Special).
struct AttachRegion {
    common::MemoryRegion region;
    RegionKind kind = RegionKind::Ram;
};

// Fds: [guest memfd, store kick eventfd, store notify eventfd].
struct AttachMsg {
    static constexpr MsgType kType = MsgType::Attach;
    static constexpr std::size_t kFds = 3;
    std::uint32_t vcpus = 1;
    std::string name;                   // < kNameMax bytes, no NUL inside
    std::uint64_t memfd_size = 0;
    std::vector<AttachRegion> regions;  // 1..kMaxRegions; validated as a RegionTable
    std::uint64_t store_gpa = 0;        // page aligned, inside a Special region
    std::uint32_t store_port = 0;
    std::uint32_t grant_frames = 0;     // 1..abi::kGrantFramesMax
    std::uint64_t grant_table_gpa = 0;  // page aligned; all frames inside one Special region
    std::vector<std::string> volumes;   // 0..kMaxVolumes specs, each < kVolumeSpecMax bytes

    // The regions as common::GuestMemory::attach wants them.
    [[nodiscard]] std::vector<common::MemoryRegion> memory_regions() const;
};

struct AttachReplyMsg {
    static constexpr MsgType kType = MsgType::AttachReply;
    static constexpr std::size_t kFds = 0;
    std::int32_t status = 0;  // 0 or -errno
    std::uint32_t domid = 0;  // 1..0x7fef when status == 0
    std::string message;      // < 128 bytes
};

// Fds: [kick eventfd, notify eventfd].
struct BindMsg {
    static constexpr MsgType kType = MsgType::Bind;
    static constexpr std::size_t kFds = 2;
    std::uint32_t request_id = 0;
    std::uint32_t guest_port = 0;
};

struct BindReplyMsg {
    static constexpr MsgType kType = MsgType::BindReply;
    static constexpr std::size_t kFds = 0;
    std::uint32_t request_id = 0;
    std::uint32_t guest_port = 0;
    std::int32_t status = 0;  // 0 or a negative errno
};

struct UnbindMsg {
    static constexpr MsgType kType = MsgType::Unbind;
    static constexpr std::size_t kFds = 0;
    std::uint32_t guest_port = 0;
};

struct PortClosedMsg {
    static constexpr MsgType kType = MsgType::PortClosed;
    static constexpr std::size_t kFds = 0;
    std::uint32_t guest_port = 0;
};

using Message = std::variant<AttachMsg, AttachReplyMsg, BindMsg, BindReplyMsg, UnbindMsg, PortClosedMsg>;

// Ports are event-channel numbers of a 2-level guest (0 is never valid).
inline constexpr std::uint32_t kMaxPort = 4095;
// Domain ids dom0 hands out: 1 .. below DOMID_FIRST_RESERVED.
inline constexpr std::uint32_t kMaxDomid = 0x7fef;

// The number of fds a message of this type carries.
[[nodiscard]] std::size_t fds_for(const Message& m);
[[nodiscard]] const char* type_name(const Message& m);

// Bytes of one packet; fails (kind InvalidArgument) if the message breaks a rule decode checks.
[[nodiscard]] common::Result<std::vector<std::byte>> encode(const Message& m);
// Decodes one packet that arrived with nfds fds. Errors are of kind Protocol.
[[nodiscard]] common::Result<Message> decode(std::span<const std::byte> bytes, std::size_t nfds);

struct ReceivedLinkMessage {
    Message msg;
    std::vector<common::UniqueFd> fds;  // exactly fds_for(msg), in the documented order
};

// Encodes and sends m with fds (which must be fds_for(m) many; they stay the caller's).
common::Status send_message(const common::card::UnixSocket& sock, const Message& m,
                            std::span<const int> fds = {});
// Receives and decodes one message. On any error the received fds are closed. A peer close is
// reported as by UnixSocket::recv (common::card::is_peer_closed).
[[nodiscard]] common::Result<ReceivedLinkMessage> recv_message(const common::card::UnixSocket& sock,
                                                               int timeout_ms = -1);

}  // namespace xen_model::link
