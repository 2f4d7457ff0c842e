// The hypervisor <-> card control protocol.
//
// The wire format is vfio-user's (qemu docs/interop/vfio-user.rst): a 16-byte header, the same
// command numbers and payload layouts, native byte order. Two deliberate differences:
//   * VERSION carries a fixed binary capability block instead of a JSON object;
//   * only the commands listed in Command exist, and DATA_BOOL in SET_IRQS, region capability
//     chains and ioregionfd sub-regions are refused.
//
// Everything here is pure: decode() takes the bytes of one message and the number of fds that
// arrived with it and returns a typed Message, or an Error of kind Protocol that says what was
// wrong (errno_value holds the errno to put in the error reply). It never trusts a length,
// count, index or address it has not checked, so it can be fed hostile bytes and fuzzed.
// Fds themselves never pass through this file; fd-carrying messages refer to them by position.
//
// Names of spec constants are written in kCamelCase rather than as in the spec because the spec
// spellings are macros in <linux/vfio.h> and <linux/kvm.h>.
#pragma once

#include <compare>
#include <cstddef>
#include <cstdint>
#include <map>
#include <span>
#include <string_view>
#include <variant>
#include <vector>

#include "common/error.hpp"
#include "common/guest_memory.hpp"

namespace common::card {

// ---- Limits --------------------------------------------------------------------------------

inline constexpr std::uint16_t kProtocolMajor = 1;
inline constexpr std::uint16_t kProtocolMinor = 0;

inline constexpr std::size_t kHeaderSize = 16;
inline constexpr std::uint64_t kPageSize = 4096;     // DMA_MAP granularity (spec default pgsizes)
inline constexpr std::uint32_t kMaxDataXfer = 4096;  // REGION_READ/WRITE count, hard cap
inline constexpr std::uint32_t kMaxFdsHard = 253;    // SCM_MAX_FD in the kernel
// AF_UNIX refuses a SEQPACKET message larger than the send buffer (~208 KiB by default).
inline constexpr std::uint32_t kMaxMsgSizeHard = 128 * 1024;
inline constexpr std::uint32_t kMaxRegions = 32;         // PCI uses 9; the rest is room for extras
inline constexpr std::uint32_t kNumIrqIndexes = 5;       // INTX, MSI, MSI-X, ERR, REQ
inline constexpr std::uint32_t kMaxIrqsPerIndex = 2048;  // the MSI-X table limit
inline constexpr std::uint32_t kMaxDmaMapsHard = 65535;

// PCI region and IRQ indexes (<linux/vfio.h> VFIO_PCI_*_INDEX).
inline constexpr std::uint32_t kPciBar0RegionIndex = 0;
inline constexpr std::uint32_t kPciConfigRegionIndex = 7;
inline constexpr std::uint32_t kPciMsixIrqIndex = 2;

// The capability block of VERSION. Each side proposes its own; negotiate() takes the minimum.
// The same struct is the set of limits decode() enforces.
struct Capabilities {
    std::uint32_t max_msg_size = 64 * 1024;  // whole message, header included
    std::uint32_t max_msg_fds = 64;          // fds one message may carry
    std::uint32_t max_data_xfer = kMaxDataXfer;
    std::uint32_t max_dma_maps = 1024;
    bool operator==(const Capabilities&) const = default;
};

struct VersionInfo {
    std::uint16_t major = kProtocolMajor;
    std::uint16_t minor = kProtocolMinor;
    Capabilities caps;
    bool operator==(const VersionInfo&) const = default;
};

// ---- Commands and flag values ---------------------------------------------------------------

enum class Command : std::uint16_t {
    Version = 1,
    DmaMap = 2,
    DmaUnmap = 3,
    DeviceGetInfo = 4,
    DeviceGetRegionInfo = 5,
    DeviceGetRegionIoFds = 6,
    DeviceGetIrqInfo = 7,
    DeviceSetIrqs = 8,
    RegionRead = 9,
    RegionWrite = 10,
    DeviceReset = 13,
};

// The spec's name ("DMA_MAP"), or "UNKNOWN".
[[nodiscard]] std::string_view command_name(Command c);

// Header flags (vfio-user "Header"): bits 0-3 type, bit 4 no_reply, bit 5 error.
inline constexpr std::uint32_t kFlagTypeMask = 0xf;
inline constexpr std::uint32_t kFlagTypeCommand = 0x0;
inline constexpr std::uint32_t kFlagTypeReply = 0x1;
inline constexpr std::uint32_t kFlagNoReply = 1u << 4;
inline constexpr std::uint32_t kFlagError = 1u << 5;

// DMA_MAP flags.
inline constexpr std::uint32_t kDmaRead = 1u << 0;
inline constexpr std::uint32_t kDmaWrite = 1u << 1;
// DEVICE_GET_INFO flags (VFIO_DEVICE_FLAGS_RESET / _PCI).
inline constexpr std::uint32_t kDeviceFlagReset = 1u << 0;
inline constexpr std::uint32_t kDeviceFlagPci = 1u << 1;
// DEVICE_GET_REGION_INFO flags (VFIO_REGION_INFO_FLAG_*). CAPS is refused.
inline constexpr std::uint32_t kRegionFlagRead = 1u << 0;
inline constexpr std::uint32_t kRegionFlagWrite = 1u << 1;
inline constexpr std::uint32_t kRegionFlagMmap = 1u << 2;
inline constexpr std::uint32_t kRegionFlagCaps = 1u << 3;
// DEVICE_GET_IRQ_INFO flags (VFIO_IRQ_INFO_*).
inline constexpr std::uint32_t kIrqInfoEventfd = 1u << 0;
inline constexpr std::uint32_t kIrqInfoMaskable = 1u << 1;
inline constexpr std::uint32_t kIrqInfoAutomasked = 1u << 2;
inline constexpr std::uint32_t kIrqInfoNoresize = 1u << 3;
// DEVICE_SET_IRQS flags (VFIO_IRQ_SET_*): one DATA_ bit and one ACTION_ bit. DATA_BOOL is refused.
inline constexpr std::uint32_t kIrqSetDataNone = 1u << 0;
inline constexpr std::uint32_t kIrqSetDataBool = 1u << 1;
inline constexpr std::uint32_t kIrqSetDataEventfd = 1u << 2;
inline constexpr std::uint32_t kIrqSetActionMask = 1u << 3;
inline constexpr std::uint32_t kIrqSetActionUnmask = 1u << 4;
inline constexpr std::uint32_t kIrqSetActionTrigger = 1u << 5;
// Sub-region flags of DEVICE_GET_REGION_IO_FDS (KVM_IOEVENTFD_FLAG_DATAMATCH). PIO is refused.
inline constexpr std::uint32_t kIoFdDatamatch = 1u << 0;

// ---- Message bodies ------------------------------------------------------------------------
// One struct per command and direction. kCommand/kReply tie a body to its header fields.

struct VersionRequest {
    static constexpr Command kCommand = Command::Version;
    static constexpr bool kReply = false;
    VersionInfo info;
    bool operator==(const VersionRequest&) const = default;
};
struct VersionReply {
    static constexpr Command kCommand = Command::Version;
    static constexpr bool kReply = true;
    VersionInfo info;
    bool operator==(const VersionReply&) const = default;
};

// Exactly one fd (index 0): the memfd holding guest RAM; [offset, offset+size) of it backs
// guest-physical [addr, addr+size). All three are 4 KiB aligned; size > 0.
struct DmaMapRequest {
    static constexpr Command kCommand = Command::DmaMap;
    static constexpr bool kReply = false;
    std::uint32_t flags = kDmaRead | kDmaWrite;
    std::uint64_t offset = 0;
    GuestAddr addr;
    std::uint64_t size = 0;
    bool operator==(const DmaMapRequest&) const = default;
};
struct DmaMapReply {
    static constexpr Command kCommand = Command::DmaMap;
    static constexpr bool kReply = true;
    bool operator==(const DmaMapReply&) const = default;
};

// Must name exactly a previous mapping. The reply echoes it.
struct DmaUnmapRequest {
    static constexpr Command kCommand = Command::DmaUnmap;
    static constexpr bool kReply = false;
    GuestAddr addr;
    std::uint64_t size = 0;
    bool operator==(const DmaUnmapRequest&) const = default;
};
struct DmaUnmapReply {
    static constexpr Command kCommand = Command::DmaUnmap;
    static constexpr bool kReply = true;
    GuestAddr addr;
    std::uint64_t size = 0;
    bool operator==(const DmaUnmapReply&) const = default;
};

struct DeviceGetInfoRequest {
    static constexpr Command kCommand = Command::DeviceGetInfo;
    static constexpr bool kReply = false;
    bool operator==(const DeviceGetInfoRequest&) const = default;
};
struct DeviceGetInfoReply {
    static constexpr Command kCommand = Command::DeviceGetInfo;
    static constexpr bool kReply = true;
    std::uint32_t flags = kDeviceFlagPci | kDeviceFlagReset;
    std::uint32_t num_regions = 0;  // <= kMaxRegions
    std::uint32_t num_irqs = 0;     // <= kNumIrqIndexes
    bool operator==(const DeviceGetInfoReply&) const = default;
};

struct RegionInfoRequest {
    static constexpr Command kCommand = Command::DeviceGetRegionInfo;
    static constexpr bool kReply = false;
    std::uint32_t index = 0;
    bool operator==(const RegionInfoRequest&) const = default;
};
// With kRegionFlagMmap the reply carries one fd to mmap at `offset`; otherwise none.
struct RegionInfoReply {
    static constexpr Command kCommand = Command::DeviceGetRegionInfo;
    static constexpr bool kReply = true;
    std::uint32_t index = 0;
    std::uint32_t flags = 0;
    std::uint64_t size = 0;
    std::uint64_t offset = 0;
    bool operator==(const RegionInfoReply&) const = default;
};

// One ioeventfd sub-region: a write of `size` bytes (0: any size) at `offset` in the region
// signals fd number `fd_index` of the message, optionally only when the value is `datamatch`.
struct IoFdEntry {
    std::uint64_t offset = 0;
    std::uint64_t size = 0;  // 0, 1, 2, 4 or 8 as KVM_IOEVENTFD accepts
    std::uint32_t fd_index = 0;
    std::uint32_t flags = 0;  // kIoFdDatamatch or 0
    std::uint64_t datamatch = 0;
    bool operator==(const IoFdEntry&) const = default;
};
// Either side may carry the sub-regions and their fds: the spec has the card return them in the
// reply; in this project the vmm may instead send the doorbell eventfds it registered with KVM
// in the request, and the card acknowledges with an empty reply. Every fd must be referenced.
struct RegionIoFdsRequest {
    static constexpr Command kCommand = Command::DeviceGetRegionIoFds;
    static constexpr bool kReply = false;
    std::uint32_t index = 0;
    std::vector<IoFdEntry> entries;
    bool operator==(const RegionIoFdsRequest&) const = default;
};
struct RegionIoFdsReply {
    static constexpr Command kCommand = Command::DeviceGetRegionIoFds;
    static constexpr bool kReply = true;
    std::uint32_t index = 0;
    std::vector<IoFdEntry> entries;
    bool operator==(const RegionIoFdsReply&) const = default;
};

struct IrqInfoRequest {
    static constexpr Command kCommand = Command::DeviceGetIrqInfo;
    static constexpr bool kReply = false;
    std::uint32_t index = 0;
    bool operator==(const IrqInfoRequest&) const = default;
};
struct IrqInfoReply {
    static constexpr Command kCommand = Command::DeviceGetIrqInfo;
    static constexpr bool kReply = true;
    std::uint32_t index = 0;
    std::uint32_t flags = 0;
    std::uint32_t count = 0;  // <= kMaxIrqsPerIndex
    bool operator==(const IrqInfoReply&) const = default;
};

// DATA_NONE: no fds. DATA_EVENTFD: `count` fds, fd i serving sub-index start+i, or no fds to
// de-assign [start, start+count). count == 0 with DATA_NONE disables the whole index.
struct SetIrqsRequest {
    static constexpr Command kCommand = Command::DeviceSetIrqs;
    static constexpr bool kReply = false;
    std::uint32_t flags = kIrqSetDataEventfd | kIrqSetActionTrigger;
    std::uint32_t index = kPciMsixIrqIndex;
    std::uint32_t start = 0;
    std::uint32_t count = 0;
    bool operator==(const SetIrqsRequest&) const = default;
};
struct SetIrqsReply {
    static constexpr Command kCommand = Command::DeviceSetIrqs;
    static constexpr bool kReply = true;
    bool operator==(const SetIrqsReply&) const = default;
};

// count and data sizes are in [1, negotiated max_data_xfer]; offset+count does not wrap.
struct RegionReadRequest {
    static constexpr Command kCommand = Command::RegionRead;
    static constexpr bool kReply = false;
    std::uint32_t region = 0;
    std::uint64_t offset = 0;
    std::uint32_t count = 0;
    bool operator==(const RegionReadRequest&) const = default;
};
struct RegionReadReply {
    static constexpr Command kCommand = Command::RegionRead;
    static constexpr bool kReply = true;
    std::uint32_t region = 0;
    std::uint64_t offset = 0;
    std::vector<std::byte> data;
    bool operator==(const RegionReadReply&) const = default;
};
struct RegionWriteRequest {
    static constexpr Command kCommand = Command::RegionWrite;
    static constexpr bool kReply = false;
    std::uint32_t region = 0;
    std::uint64_t offset = 0;
    std::vector<std::byte> data;
    bool operator==(const RegionWriteRequest&) const = default;
};
struct RegionWriteReply {
    static constexpr Command kCommand = Command::RegionWrite;
    static constexpr bool kReply = true;
    std::uint32_t region = 0;
    std::uint64_t offset = 0;
    std::uint32_t count = 0;
    bool operator==(const RegionWriteReply&) const = default;
};

struct DeviceResetRequest {
    static constexpr Command kCommand = Command::DeviceReset;
    static constexpr bool kReply = false;
    bool operator==(const DeviceResetRequest&) const = default;
};
struct DeviceResetReply {
    static constexpr Command kCommand = Command::DeviceReset;
    static constexpr bool kReply = true;
    bool operator==(const DeviceResetReply&) const = default;
};

// A reply with the error bit: no payload, the errno in the header. It may name a command this
// side does not know, so that a peer can refuse one with ENOSYS.
struct ErrorReply {
    Command command = Command::Version;
    std::uint32_t error = 0;
    bool operator==(const ErrorReply&) const = default;
};

using Body = std::variant<VersionRequest, VersionReply, DmaMapRequest, DmaMapReply, DmaUnmapRequest,
                          DmaUnmapReply, DeviceGetInfoRequest, DeviceGetInfoReply,
                          RegionInfoRequest, RegionInfoReply, RegionIoFdsRequest, RegionIoFdsReply,
                          IrqInfoRequest, IrqInfoReply, SetIrqsRequest, SetIrqsReply,
                          RegionReadRequest, RegionReadReply, RegionWriteRequest, RegionWriteReply,
                          DeviceResetRequest, DeviceResetReply, ErrorReply>;

struct Message {
    std::uint16_t id = 0;   // chosen by the sender of a command, echoed by the reply
    bool no_reply = false;  // commands only
    Body body;

    [[nodiscard]] Command command() const;
    [[nodiscard]] bool is_reply() const;
    bool operator==(const Message&) const = default;
};

// The raw header; parse_header only checks that there are 16 bytes. Useful for answering a
// message that failed to decode with an error reply carrying its id.
struct Header {
    std::uint16_t id = 0;
    std::uint16_t command = 0;
    std::uint32_t size = 0;
    std::uint32_t flags = 0;
    std::uint32_t error = 0;
};
[[nodiscard]] Result<Header> parse_header(std::span<const std::byte> bytes);

// ---- Codec ---------------------------------------------------------------------------------

// Checks a capability block: every field within the hard limits, and max_msg_size large enough
// for a maximal REGION_READ reply.
[[nodiscard]] Status validate_capabilities(const Capabilities& caps);

// Decodes one whole message that arrived with fd_count fds. Checks the header against the real
// length and `limits`, the flags, the command, the exact payload size, every field the spec
// constrains, and that fd_count is exactly what the message implies. Errors are of kind
// Protocol with errno_value set for the error reply (mostly EINVAL).
[[nodiscard]] Result<Message> decode(std::span<const std::byte> bytes, std::size_t fd_count,
                                     const Capabilities& limits = {});

// Encodes a message that will travel with fd_count fds. The result is checked with decode()
// under the same limits, so a message this side could not accept is never sent.
[[nodiscard]] Result<std::vector<std::byte>> encode(const Message& msg, std::size_t fd_count,
                                                    const Capabilities& limits = {});

// A reply to `request` with the same id.
[[nodiscard]] Message make_reply(const Message& request, Body body);
// An error reply to a decoded request, or to a header that parsed when the rest did not.
// errno_value 0 is sent as EINVAL. The Error overload uses e.errno_value.
[[nodiscard]] Message error_reply(const Message& request, int errno_value);
[[nodiscard]] Message error_reply(const Message& request, const Error& e);
[[nodiscard]] Message error_reply(const Header& request, int errno_value);

// Version negotiation (vfio-user "Version"): majors must match; the minor and every capability
// is the smaller of the two sides. Both ends compute the same answer, so the server replies
// with it and the client checks the reply by negotiating again.
[[nodiscard]] Result<VersionInfo> negotiate(const VersionInfo& ours, const VersionInfo& theirs);

// ---- DMA map table -------------------------------------------------------------------------

struct DmaMapping {
    GuestAddr addr;
    std::uint64_t size = 0;
    std::uint64_t fd_offset = 0;
    std::uint32_t flags = 0;
    bool operator==(const DmaMapping&) const = default;
};

// The card's record of DMA_MAP/DMA_UNMAP. It only checks guest-physical ranges; overlap in the
// memfd is checked when the regions are handed to GuestMemory::attach. It does not own fds.
class DmaMapTable final {
public:
    explicit DmaMapTable(std::uint32_t max_maps = Capabilities{}.max_dma_maps)
        : max_maps_(max_maps) {}

    // Adds a mapping. A range that overlaps an existing one fails with errno EEXIST (vfio-user
    // DMA_MAP), a full table with ENOSPC, a malformed range with EINVAL. All kind Protocol.
    Status map(const DmaMapRequest& req);
    // Removes exactly [addr, addr+size); anything else fails with ENOENT and changes nothing.
    Status unmap(GuestAddr addr, std::uint64_t size);
    void clear() { maps_.clear(); }

    // The mapping that holds all of [addr, addr+len), or nullptr.
    [[nodiscard]] const DmaMapping* find(GuestAddr addr, std::uint64_t len) const;
    [[nodiscard]] std::size_t size() const { return maps_.size(); }
    [[nodiscard]] bool empty() const { return maps_.empty(); }
    [[nodiscard]] std::vector<DmaMapping> mappings() const;
    // The table as GuestMemory::attach wants it, sorted by guest address.
    [[nodiscard]] std::vector<MemoryRegion> memory_regions() const;

private:
    std::uint32_t max_maps_;
    std::map<std::uint64_t, DmaMapping> maps_;  // keyed by guest address
};

}  // namespace common::card
