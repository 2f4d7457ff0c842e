// The parts of the Xen ABI that the vmm (hypervisor/) and dom0 (xen_model/) both see: grant
// entries, the xenstore ring and wire format, shared rings and blkif, xenbus states, and where
// the vmm puts the Xen special pages. Layouts follow Xen's public headers for x86-64 guests
// (include/xen/interface/ in Linux 6.1); the static_asserts pin the sizes and offsets.
//
// Everything here lives in guest memory that the guest may change at any time: readers copy a
// field once, check it, and use the copy.
#pragma once

#include <cstddef>
#include <cstdint>

namespace xen_model::abi {

inline constexpr std::uint64_t kPageSize = 4096;
inline constexpr std::uint16_t kDom0 = 0;        // the backend domain
inline constexpr std::uint16_t kDomidSelf = 0x7ff0;

// ---- Xen special area (outside E820 RAM, reserved), as QEMU places it ----
inline constexpr std::uint64_t kSpecialAreaGpa = 0xfeff8000;
inline constexpr std::uint64_t kSpecialAreaSize = 4 * kPageSize;
inline constexpr std::uint64_t kConsolePfn = 0xfeff8;   // no PV console: reported as 0
inline constexpr std::uint64_t kXenstorePfn = 0xfeff9;

// ---- Errno values Xen returns (negated), Linux numbering ----
namespace err {
inline constexpr std::int64_t kPerm = -1, kNoEnt = -2, kSrch = -3, kIo = -5, kTooBig = -7, kBadF = -9,
                              kNoMem = -12, kAccess = -13, kFault = -14, kBusy = -16, kExist = -17,
                              kInval = -22, kNoSpc = -28, kNoSys = -38, kNotSup = -95;
}

// ---- Grant table v1 ----
struct GrantEntryV1 {
    std::uint16_t flags;
    std::uint16_t domid;  // the domain allowed to access the frame
    std::uint32_t frame;  // guest frame number
};
static_assert(sizeof(GrantEntryV1) == 8);
inline constexpr std::uint32_t kGrantEntriesPerFrame = kPageSize / sizeof(GrantEntryV1);  // 512
inline constexpr std::uint16_t kGtfInvalid = 0, kGtfPermitAccess = 1, kGtfTypeMask = 3;
inline constexpr std::uint16_t kGtfReadonly = 1 << 2, kGtfReading = 1 << 3, kGtfWriting = 1 << 4;
inline constexpr std::uint16_t kGtfSubPage = 1 << 8;
inline constexpr std::uint32_t kGrantFramesMax = 64;  // frames the guest may add (query_size)
// Linux reserves refs 0..7 for the toolstack.
inline constexpr std::uint32_t kGrantReservedRefs = 8;

// ---- Xenstore ring (io/xs_wire.h) ----
inline constexpr std::uint32_t kXsRingSize = 1024;
struct XenstoreInterface {
    char req[kXsRingSize];  // guest -> xenstored
    char rsp[kXsRingSize];  // xenstored -> guest
    std::uint32_t req_cons, req_prod;
    std::uint32_t rsp_cons, rsp_prod;
    std::uint32_t server_features;
    std::uint32_t connection;  // 0 = connected
    std::uint32_t error;
};
static_assert(offsetof(XenstoreInterface, req_cons) == 2048);
static_assert(offsetof(XenstoreInterface, connection) == 2068);

struct XsMsgHeader {
    std::uint32_t type;
    std::uint32_t req_id;
    std::uint32_t tx_id;
    std::uint32_t len;  // payload bytes that follow
};
static_assert(sizeof(XsMsgHeader) == 16);
inline constexpr std::uint32_t kXsPayloadMax = 4096;
inline constexpr std::uint32_t kXsAbsPathMax = 3072, kXsRelPathMax = 2048;

enum class XsType : std::uint32_t {
    Control = 0, Directory = 1, Read = 2, GetPerms = 3, Watch = 4, Unwatch = 5,
    TransactionStart = 6, TransactionEnd = 7, Introduce = 8, Release = 9, GetDomainPath = 10,
    Write = 11, Mkdir = 12, Rm = 13, SetPerms = 14, WatchEvent = 15, Error = 16, IsDomainIntroduced = 17,
    Resume = 18, SetTarget = 19, ResetWatches = 21, DirectoryPart = 22,
};

// ---- Xenbus device states ----
enum class XenbusState : std::uint32_t {
    Unknown = 0, Initialising = 1, InitWait = 2, Initialised = 3, Connected = 4, Closing = 5,
    Closed = 6, Reconfiguring = 7, Reconfigured = 8,
};

// ---- Shared rings (io/ring.h): producer/consumer indices, then entries at 64 ----
struct SringHeader {
    std::uint32_t req_prod;
    std::uint32_t req_event;
    std::uint32_t rsp_prod;
    std::uint32_t rsp_event;
    std::uint8_t pad[48];
};
static_assert(sizeof(SringHeader) == 64);
// Entries in a one-page ring whose slots (a union of request and response) are slot_size bytes:
// the largest power of two that fits.
constexpr std::uint32_t ring_entries(std::size_t slot_size) {
    std::uint32_t n = 1;
    while ((n * 2) * slot_size <= kPageSize - sizeof(SringHeader)) n *= 2;
    return n;
}

// ---- blkif (io/blkif.h) ----
inline constexpr std::uint8_t kBlkifOpRead = 0, kBlkifOpWrite = 1, kBlkifOpWriteBarrier = 2,
                              kBlkifOpFlushDiskcache = 3, kBlkifOpDiscard = 5, kBlkifOpIndirect = 6;
inline constexpr std::int16_t kBlkifRspOkay = 0, kBlkifRspError = -1, kBlkifRspEopnotsupp = -2;
inline constexpr std::uint32_t kBlkifMaxSegments = 11;
inline constexpr std::uint32_t kSectorSize = 512;
inline constexpr std::uint32_t kSectorsPerPage = kPageSize / kSectorSize;

struct BlkifSegment {
    std::uint32_t gref;
    std::uint8_t first_sect;
    std::uint8_t last_sect;
    std::uint16_t pad;
};
static_assert(sizeof(BlkifSegment) == 8);

struct BlkifRequest {
    std::uint8_t operation;
    std::uint8_t nr_segments;
    std::uint16_t handle;
    std::uint32_t pad;
    std::uint64_t id;
    std::uint64_t sector_number;
    BlkifSegment seg[kBlkifMaxSegments];
};
static_assert(sizeof(BlkifRequest) == 112);
static_assert(offsetof(BlkifRequest, seg) == 24);

struct BlkifResponse {
    std::uint64_t id;
    std::uint8_t operation;
    std::uint8_t pad;
    std::int16_t status;
    std::uint32_t pad2;
};
static_assert(sizeof(BlkifResponse) == 16);
inline constexpr std::uint32_t kBlkifRingEntries = ring_entries(sizeof(BlkifRequest));
static_assert(kBlkifRingEntries == 32);

// Virtual-device numbers of xvda, xvdb, ...: (202 << 8) | (disk << 4).
constexpr std::uint32_t xvd_number(std::uint32_t disk) { return (202u << 8) | (disk << 4); }

}  // namespace xen_model::abi
