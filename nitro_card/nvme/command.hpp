// The submission queue entry decoder: a 64-byte command, already copied out of guest memory,
// becomes a typed command or the status to complete it with.
//
// Pure functions: the decoder checks what a command says about itself (flags, field ranges, the
// LBA range against the namespace size, queue ids and sizes against the controller's limits).
// Checks that need controller state — does a queue already exist, is the CQ an SQ names present,
// is a CNS or feature supported — stay with the controller. A decode failure is the guest's
// mistake: complete the command with the returned status and DNR set.
#pragma once

#include <cstdint>
#include <expected>
#include <span>
#include <variant>

#include "nvme/spec.hpp"

namespace nitro_card::nvme {

// PRP1/PRP2 as the command gave them; map_prps() interprets them.
struct DataPointer {
    std::uint64_t prp1 = 0;
    std::uint64_t prp2 = 0;
};

// ---- I/O commands (NVM command set) ----------------------------------------------------------

struct ReadWrite {
    bool write = false;
    std::uint32_t nsid = 0;
    std::uint64_t slba = 0;
    std::uint32_t blocks = 0;  // NLB + 1
    std::uint64_t bytes = 0;   // blocks << LBA data size
    bool fua = false;          // force unit access
    DataPointer dptr;
};

struct Flush {
    std::uint32_t nsid = 0;
};

struct WriteZeroes {
    std::uint32_t nsid = 0;
    std::uint64_t slba = 0;
    std::uint32_t blocks = 0;  // NLB + 1
    bool deallocate = false;   // DEAC: the range may be deallocated instead of written
    bool fua = false;
};

struct DatasetManagement {
    std::uint32_t nsid = 0;
    std::uint32_t ranges = 0;  // NR + 1, each a DsmRange in the data buffer
    bool integral_read = false;
    bool integral_write = false;
    bool deallocate = false;  // AD: the discard Linux sends
    DataPointer dptr;
    [[nodiscard]] std::uint64_t bytes() const { return std::uint64_t{ranges} * 16; }
};

using IoCommand = std::variant<ReadWrite, Flush, WriteZeroes, DatasetManagement>;

// ---- Admin commands ---------------------------------------------------------------------------

struct Identify {
    Cns cns{};
    std::uint16_t cntid = 0;
    std::uint8_t csi = 0;
    std::uint32_t nsid = 0;
    DataPointer dptr;  // 4096 bytes
};

struct CreateIoCq {
    std::uint16_t qid = 0;
    std::uint32_t entries = 0;  // QSIZE + 1
    std::uint64_t base = 0;     // page aligned, physically contiguous
    bool interrupts_enabled = false;
    std::uint16_t vector = 0;
};

struct CreateIoSq {
    std::uint16_t qid = 0;
    std::uint32_t entries = 0;  // QSIZE + 1
    std::uint64_t base = 0;     // page aligned, physically contiguous
    std::uint16_t cqid = 0;
    std::uint8_t priority = 0;  // QPRIO; only meaningful with weighted round robin
};

struct DeleteIoSq {
    std::uint16_t qid = 0;
};

struct DeleteIoCq {
    std::uint16_t qid = 0;
};

struct GetLogPage {
    LogPageId lid{};
    std::uint8_t lsp = 0;
    bool retain_async_event = false;  // RAE
    std::uint32_t nsid = 0;
    std::uint64_t dwords = 0;  // NUMD + 1
    std::uint64_t offset = 0;  // LPO, bytes, dword aligned
    DataPointer dptr;
    [[nodiscard]] std::uint64_t bytes() const { return dwords * 4; }
};

struct SetFeatures {
    FeatureId fid{};
    bool save = false;  // SV
    std::uint32_t nsid = 0;
    std::uint32_t cdw11 = 0, cdw12 = 0, cdw13 = 0, cdw14 = 0, cdw15 = 0;
    DataPointer dptr;
};

enum class FeatureSelect : std::uint8_t { Current = 0, Default = 1, Saved = 2, Capabilities = 3 };

struct GetFeatures {
    FeatureId fid{};
    FeatureSelect select = FeatureSelect::Current;
    std::uint32_t nsid = 0;
    std::uint32_t cdw11 = 0;
    DataPointer dptr;
};

struct Abort {
    std::uint16_t sqid = 0;
    std::uint16_t cid = 0;
};

struct AsyncEventRequest {};

// NVMe 1.3 §5.7 (Doorbell Buffer Config): both buffers are page aligned, one page each here.
struct DoorbellBufferConfig {
    std::uint64_t shadow = 0;    // PRP1: shadow doorbells, laid out like the registers
    std::uint64_t eventidx = 0;  // PRP2: EventIdx values, same layout
};

using AdminCommand =
    std::variant<Identify, CreateIoCq, CreateIoSq, DeleteIoSq, DeleteIoCq, GetLogPage, SetFeatures,
                 GetFeatures, Abort, AsyncEventRequest, DoorbellBufferConfig>;

// ---- Limits the decoder checks against ---------------------------------------------------------

struct AdminLimits {
    std::uint64_t page_size = 4096;          // CC.MPS
    std::uint32_t max_queue_entries = 1024;  // CAP.MQES + 1
    std::uint16_t max_io_qid = 64;           // highest I/O queue id the controller allows
    std::uint32_t interrupt_vectors = 1;     // MSI-X vectors the function has
    std::uint64_t max_transfer = 512 * 1024;
};

struct NamespaceGeometry {
    std::uint64_t blocks = 0;    // NSZE
    std::uint8_t lba_shift = 9;  // LBADS of the formatted LBA format
};

struct IoLimits {
    // Namespace i + 1 is namespaces[i]; all are active.
    std::span<const NamespaceGeometry> namespaces;
    std::uint64_t max_transfer = 512 * 1024;
};

// Decodes a command from the admin submission queue.
[[nodiscard]] std::expected<AdminCommand, StatusCode> decode_admin(const SqEntry& e,
                                                                   const AdminLimits& limits);

// Decodes a command from an I/O submission queue.
[[nodiscard]] std::expected<IoCommand, StatusCode> decode_io(const SqEntry& e,
                                                             const IoLimits& limits);

// True when blocks LBAs from slba lie inside a namespace of ns_blocks LBAs (no overflow).
[[nodiscard]] constexpr bool lba_range_valid(std::uint64_t slba, std::uint64_t blocks,
                                             std::uint64_t ns_blocks) {
    return slba <= ns_blocks && blocks <= ns_blocks - slba;
}

}  // namespace nitro_card::nvme
