// NVMe over PCIe as data: controller registers and their fields, opcodes, status codes and the
// submission/completion queue entries (NVMe 2.0 base specification; Linux 6.1 include/linux/nvme.h
// is the guest's view of the same layouts).
//
// Everything here is a constant or a constexpr helper; the controller, the decoder and the tests
// share these definitions so a number from the spec appears in exactly one place.
#pragma once

#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <string_view>
#include <type_traits>

namespace nitro_card::nvme {

// The guest is x86: every multi-byte NVMe field is little endian, as is the host.
static_assert(std::endian::native == std::endian::little, "NVMe structures are little endian");

// A bit field of a register or command dword. `put` drops bits that do not fit the field.
template <typename T>
struct Field {
    static_assert(std::is_same_v<T, std::uint32_t> || std::is_same_v<T, std::uint64_t>);
    unsigned shift;
    unsigned width;

    [[nodiscard]] constexpr T mask() const {
        const T ones = width >= sizeof(T) * 8 ? ~T{0} : (T{1} << width) - 1;
        return static_cast<T>(ones << shift);
    }
    [[nodiscard]] constexpr T get(T reg) const { return (reg & mask()) >> shift; }
    [[nodiscard]] constexpr T put(T value) const { return (value << shift) & mask(); }
    [[nodiscard]] constexpr T replace(T reg, T value) const { return (reg & ~mask()) | put(value); }
};

// ---------------------------------------------------------------------------------------------
// Controller registers (NVMe 2.0 §3.1.4, BAR0)

namespace reg {
inline constexpr std::uint32_t CAP = 0x00;    // Controller Capabilities, 64-bit
inline constexpr std::uint32_t VS = 0x08;     // Version
inline constexpr std::uint32_t INTMS = 0x0c;  // Interrupt Mask Set (INTx/MSI only)
inline constexpr std::uint32_t INTMC = 0x10;  // Interrupt Mask Clear (INTx/MSI only)
inline constexpr std::uint32_t CC = 0x14;     // Controller Configuration
inline constexpr std::uint32_t CSTS = 0x1c;   // Controller Status
inline constexpr std::uint32_t NSSR = 0x20;   // NVM Subsystem Reset
inline constexpr std::uint32_t AQA = 0x24;    // Admin Queue Attributes
inline constexpr std::uint32_t ASQ = 0x28;    // Admin Submission Queue Base, 64-bit
inline constexpr std::uint32_t ACQ = 0x30;    // Admin Completion Queue Base, 64-bit
inline constexpr std::uint32_t CMBLOC = 0x38;
inline constexpr std::uint32_t CMBSZ = 0x3c;
// Doorbells: SQy tail at DOORBELL_BASE + (2y) * stride, CQy head at + stride (§3.1.4.21).
inline constexpr std::uint32_t DOORBELL_BASE = 0x1000;
}  // namespace reg

enum class RegisterAccess : std::uint8_t { ReadOnly, ReadWrite };

struct RegisterInfo {
    std::string_view name;
    std::uint32_t offset;
    std::uint32_t width;  // bytes: 4 or 8
    RegisterAccess access;
};

// The property registers a controller implements, for decoding MMIO in one place. CMBLOC and
// CMBSZ read as zero (no controller memory buffer).
inline constexpr std::array<RegisterInfo, 12> kRegisters{{
    {"CAP", reg::CAP, 8, RegisterAccess::ReadOnly},
    {"VS", reg::VS, 4, RegisterAccess::ReadOnly},
    {"INTMS", reg::INTMS, 4, RegisterAccess::ReadWrite},
    {"INTMC", reg::INTMC, 4, RegisterAccess::ReadWrite},
    {"CC", reg::CC, 4, RegisterAccess::ReadWrite},
    {"CSTS", reg::CSTS, 4, RegisterAccess::ReadOnly},
    {"NSSR", reg::NSSR, 4, RegisterAccess::ReadWrite},
    {"AQA", reg::AQA, 4, RegisterAccess::ReadWrite},
    {"ASQ", reg::ASQ, 8, RegisterAccess::ReadWrite},
    {"ACQ", reg::ACQ, 8, RegisterAccess::ReadWrite},
    {"CMBLOC", reg::CMBLOC, 4, RegisterAccess::ReadOnly},
    {"CMBSZ", reg::CMBSZ, 4, RegisterAccess::ReadOnly},
}};

// The register whose bytes contain `offset`, or nullptr for a hole in the property space.
[[nodiscard]] constexpr const RegisterInfo* find_register(std::uint32_t offset) {
    for (const auto& r : kRegisters)
        if (offset >= r.offset && offset - r.offset < r.width) return &r;
    return nullptr;
}

// Byte distance between consecutive doorbells for CAP.DSTRD.
[[nodiscard]] constexpr std::uint64_t doorbell_stride(unsigned dstrd) {
    return std::uint64_t{4} << dstrd;
}
[[nodiscard]] constexpr std::uint64_t sq_tail_doorbell(std::uint16_t qid, unsigned dstrd) {
    return reg::DOORBELL_BASE + 2u * std::uint64_t{qid} * doorbell_stride(dstrd);
}
[[nodiscard]] constexpr std::uint64_t cq_head_doorbell(std::uint16_t qid, unsigned dstrd) {
    return sq_tail_doorbell(qid, dstrd) + doorbell_stride(dstrd);
}

// VS and Identify VER encoding (§3.1.4.2).
[[nodiscard]] constexpr std::uint32_t version(std::uint32_t major, std::uint32_t minor,
                                              std::uint32_t tertiary) {
    return major << 16 | minor << 8 | tertiary;
}

// CAP fields (§3.1.4.1).
namespace cap {
inline constexpr Field<std::uint64_t> MQES{0, 16};  // max queue entries, 0-based
inline constexpr Field<std::uint64_t> CQR{16, 1};   // contiguous queues required
inline constexpr Field<std::uint64_t> AMS{17, 2};
inline constexpr Field<std::uint64_t> TO{24, 8};     // ready timeout, 500 ms units
inline constexpr Field<std::uint64_t> DSTRD{32, 4};  // doorbell stride, 4 << DSTRD bytes
inline constexpr Field<std::uint64_t> NSSRS{36, 1};
inline constexpr Field<std::uint64_t> CSS{37, 8};
inline constexpr Field<std::uint64_t> BPS{45, 1};
inline constexpr Field<std::uint64_t> MPSMIN{48, 4};  // 2^(12 + MPSMIN) bytes
inline constexpr Field<std::uint64_t> MPSMAX{52, 4};
inline constexpr Field<std::uint64_t> PMRS{56, 1};
inline constexpr Field<std::uint64_t> CMBS{57, 1};
inline constexpr std::uint64_t CSS_NVM = 1u << 0;  // value of the CSS field: NVM command set
}  // namespace cap

// CC fields (§3.1.4.5).
namespace cc {
inline constexpr Field<std::uint32_t> EN{0, 1};
inline constexpr Field<std::uint32_t> CSS{4, 3};
inline constexpr Field<std::uint32_t> MPS{7, 4};  // page size 2^(12 + MPS)
inline constexpr Field<std::uint32_t> AMS{11, 3};
inline constexpr Field<std::uint32_t> SHN{14, 2};
inline constexpr Field<std::uint32_t> IOSQES{16, 4};  // log2 of the SQ entry size
inline constexpr Field<std::uint32_t> IOCQES{20, 4};  // log2 of the CQ entry size
inline constexpr Field<std::uint32_t> CRIME{24, 1};
inline constexpr std::uint32_t CSS_NVM = 0;
inline constexpr std::uint32_t SHN_NONE = 0, SHN_NORMAL = 1, SHN_ABRUPT = 2;
}  // namespace cc

// CSTS fields (§3.1.4.6).
namespace csts {
inline constexpr Field<std::uint32_t> RDY{0, 1};
inline constexpr Field<std::uint32_t> CFS{1, 1};
inline constexpr Field<std::uint32_t> SHST{2, 2};
inline constexpr Field<std::uint32_t> NSSRO{4, 1};
inline constexpr Field<std::uint32_t> PP{5, 1};
inline constexpr std::uint32_t SHST_NORMAL = 0, SHST_OCCURRING = 1, SHST_COMPLETE = 2;
}  // namespace csts

// AQA fields (§3.1.4.8): both sizes 0-based.
namespace aqa {
inline constexpr Field<std::uint32_t> ASQS{0, 12};
inline constexpr Field<std::uint32_t> ACQS{16, 12};
}  // namespace aqa

// The memory page size selected by CC.MPS (or described by CAP.MPSMIN/MPSMAX).
[[nodiscard]] constexpr std::uint64_t page_size_from_mps(std::uint32_t mps) {
    return std::uint64_t{1} << (12 + (mps & 0xf));
}

// ---------------------------------------------------------------------------------------------
// Opcodes (§5 admin, NVM command set spec §3 for I/O)

enum class AdminOpcode : std::uint8_t {
    DeleteIoSq = 0x00,
    CreateIoSq = 0x01,
    GetLogPage = 0x02,
    DeleteIoCq = 0x04,
    CreateIoCq = 0x05,
    Identify = 0x06,
    Abort = 0x08,
    SetFeatures = 0x09,
    GetFeatures = 0x0a,
    AsyncEventRequest = 0x0c,
    KeepAlive = 0x18,
    DoorbellBufferConfig = 0x7c,
};

enum class IoOpcode : std::uint8_t {
    Flush = 0x00,
    Write = 0x01,
    Read = 0x02,
    WriteUncorrectable = 0x04,
    Compare = 0x05,
    WriteZeroes = 0x08,
    DatasetManagement = 0x09,
};

// Identify CNS values (§5.17.1) the Linux 6.1 driver sends.
enum class Cns : std::uint8_t {
    Namespace = 0x00,
    Controller = 0x01,
    ActiveNamespaceList = 0x02,
    NamespaceDescriptorList = 0x03,
    CsNamespace = 0x05,
    CsController = 0x06,
};

// Feature identifiers (§5.27.1).
enum class FeatureId : std::uint8_t {
    Arbitration = 0x01,
    PowerManagement = 0x02,
    TemperatureThreshold = 0x04,
    ErrorRecovery = 0x05,
    VolatileWriteCache = 0x06,
    NumberOfQueues = 0x07,
    InterruptCoalescing = 0x08,
    InterruptVectorConfiguration = 0x09,
    WriteAtomicityNormal = 0x0a,
    AsyncEventConfiguration = 0x0b,
    AutonomousPowerStateTransition = 0x0c,
    HostMemoryBuffer = 0x0d,
    Timestamp = 0x0e,
    KeepAliveTimer = 0x0f,
    HostBehaviorSupport = 0x16,
};

// Log page identifiers (§5.16.1).
enum class LogPageId : std::uint8_t {
    ErrorInformation = 0x01,
    SmartHealth = 0x02,
    FirmwareSlot = 0x03,
    ChangedNamespaceList = 0x04,
    CommandsSupportedAndEffects = 0x05,
};

// Namespace ID meaning "all namespaces" (§3.2.1.2).
inline constexpr std::uint32_t kBroadcastNsid = 0xffffffff;

// ---------------------------------------------------------------------------------------------
// Status (§4.2.3)

enum class StatusCodeType : std::uint8_t {
    Generic = 0,
    CommandSpecific = 1,
    MediaAndDataIntegrity = 2,
    PathRelated = 3,
    VendorSpecific = 7,
};

// SCT in bits 10:8, SC in bits 7:0: the same encoding Linux compares against after dropping
// the phase bit, so a value reads the same in a guest log.
enum class StatusCode : std::uint16_t {
    // Generic command status (§4.2.3.1)
    Success = 0x000,
    InvalidOpcode = 0x001,
    InvalidField = 0x002,
    CommandIdConflict = 0x003,
    DataTransferError = 0x004,
    PowerLossAbort = 0x005,
    InternalError = 0x006,
    AbortRequested = 0x007,
    AbortSqDeleted = 0x008,
    AbortFusedFailed = 0x009,
    AbortFusedMissing = 0x00a,
    InvalidNamespace = 0x00b,  // Invalid Namespace or Format
    CommandSequenceError = 0x00c,
    PrpOffsetInvalid = 0x013,
    OperationDenied = 0x015,
    LbaOutOfRange = 0x080,
    CapacityExceeded = 0x081,
    NamespaceNotReady = 0x082,
    // Command specific status (§4.2.3.2)
    CompletionQueueInvalid = 0x100,
    InvalidQueueIdentifier = 0x101,
    InvalidQueueSize = 0x102,
    AbortCommandLimitExceeded = 0x103,
    AsyncEventRequestLimitExceeded = 0x105,
    InvalidInterruptVector = 0x108,
    InvalidLogPage = 0x109,
    InvalidQueueDeletion = 0x10c,
    FeatureNotSaveable = 0x10d,
    FeatureNotChangeable = 0x10e,
    FeatureNotNamespaceSpecific = 0x10f,
    ConflictingAttributes = 0x180,  // NVM command set: Dataset Management, Write Zeroes
    WriteToReadOnlyRange = 0x182,
    // Media and data integrity errors (§4.2.3.3)
    WriteFault = 0x280,
    UnrecoveredReadError = 0x281,
    AccessDenied = 0x286,
};

[[nodiscard]] constexpr StatusCodeType status_type(StatusCode s) {
    return static_cast<StatusCodeType>((static_cast<std::uint16_t>(s) >> 8) & 0x7);
}
[[nodiscard]] constexpr std::uint8_t status_value(StatusCode s) {
    return static_cast<std::uint8_t>(static_cast<std::uint16_t>(s) & 0xff);
}

// The 16 bits of CQE dword 3 above the command identifier (§4.2.3): P in bit 0, SC in 8:1,
// SCT in 11:9, CRD in 13:12 (always 0 here), M in 14, DNR in 15.
[[nodiscard]] constexpr std::uint16_t status_field(StatusCode s, bool phase, bool dnr = false,
                                                   bool more = false) {
    const unsigned code = static_cast<std::uint16_t>(s) & 0x7ff;
    return static_cast<std::uint16_t>((phase ? 1u : 0u) | code << 1 | (more ? 1u << 14 : 0u) |
                                      (dnr ? 1u << 15 : 0u));
}
[[nodiscard]] constexpr bool status_phase(std::uint16_t field) {
    return field & 1u;
}
[[nodiscard]] constexpr StatusCode status_code(std::uint16_t field) {
    return static_cast<StatusCode>((field >> 1) & 0x7ff);
}
[[nodiscard]] constexpr bool status_dnr(std::uint16_t field) {
    return field & 0x8000u;
}

// ---------------------------------------------------------------------------------------------
// Queue entries (§4.2, §4.2.1). The guest writes these; copy one out of guest memory once and
// decode the copy.

inline constexpr std::uint8_t kSqEntrySizeLog2 = 6;  // CC.IOSQES, Identify SQES
inline constexpr std::uint8_t kCqEntrySizeLog2 = 4;  // CC.IOCQES, Identify CQES

// Command dword 0 flags byte.
namespace sqe_flags {
inline constexpr std::uint8_t FUSE_MASK = 0x03;  // fused operation
inline constexpr std::uint8_t RESERVED_MASK = 0x3c;
inline constexpr std::uint8_t PSDT_MASK = 0xc0;  // 00b = PRPs; otherwise SGLs
}  // namespace sqe_flags

struct SqEntry {
    std::uint8_t opc;
    std::uint8_t flags;  // FUSE 1:0, PSDT 7:6
    std::uint16_t cid;
    std::uint32_t nsid;
    std::uint32_t cdw2;
    std::uint32_t cdw3;
    std::uint64_t mptr;
    std::uint64_t prp1;
    std::uint64_t prp2;
    std::uint32_t cdw10;
    std::uint32_t cdw11;
    std::uint32_t cdw12;
    std::uint32_t cdw13;
    std::uint32_t cdw14;
    std::uint32_t cdw15;
};
static_assert(std::is_trivially_copyable_v<SqEntry> && std::is_standard_layout_v<SqEntry>);
static_assert(sizeof(SqEntry) == std::size_t{1} << kSqEntrySizeLog2);
static_assert(offsetof(SqEntry, cid) == 2 && offsetof(SqEntry, nsid) == 4);
static_assert(offsetof(SqEntry, mptr) == 16 && offsetof(SqEntry, prp1) == 24);
static_assert(offsetof(SqEntry, prp2) == 32 && offsetof(SqEntry, cdw10) == 40);
static_assert(offsetof(SqEntry, cdw15) == 60);

struct CqEntry {
    std::uint32_t dw0;  // command specific result
    std::uint32_t dw1;
    std::uint16_t sqhd;  // SQ head pointer
    std::uint16_t sqid;
    std::uint16_t cid;
    std::uint16_t status;  // status_field(): phase and status
};
static_assert(std::is_trivially_copyable_v<CqEntry> && std::is_standard_layout_v<CqEntry>);
static_assert(sizeof(CqEntry) == std::size_t{1} << kCqEntrySizeLog2);
static_assert(offsetof(CqEntry, sqhd) == 8 && offsetof(CqEntry, sqid) == 10);
static_assert(offsetof(CqEntry, cid) == 12 && offsetof(CqEntry, status) == 14);

// ---------------------------------------------------------------------------------------------
// Asynchronous events (§5.2): the dword 0 an Asynchronous Event Request completes with.

enum class AsyncEventType : std::uint8_t {
    ErrorStatus = 0,
    SmartHealthStatus = 1,
    Notice = 2,
    IoCommandSpecific = 6,
    VendorSpecific = 7,
};

// Event information for AsyncEventType::ErrorStatus (§5.2.1, Figure "Error Status").
enum class ErrorEventInfo : std::uint8_t {
    InvalidDoorbellRegister = 0x00,  // a write to a doorbell of a queue that does not exist
    InvalidDoorbellWriteValue = 0x01,
    DiagnosticFailure = 0x02,
    PersistentInternalError = 0x03,
    TransientInternalError = 0x04,
    FirmwareImageLoadError = 0x05,
};

[[nodiscard]] constexpr std::uint32_t async_event_result(AsyncEventType type, std::uint8_t info,
                                                         LogPageId log) {
    return static_cast<std::uint32_t>(type) | std::uint32_t{info} << 8 |
           std::uint32_t{static_cast<std::uint8_t>(log)} << 16;
}

}  // namespace nitro_card::nvme
