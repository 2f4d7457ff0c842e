#include "nvme/command.hpp"

#include <optional>

namespace nitro_card::nvme {

namespace {

using std::unexpected;

constexpr std::uint16_t lo16(std::uint32_t v) {
    return static_cast<std::uint16_t>(v & 0xffff);
}
constexpr std::uint16_t hi16(std::uint32_t v) {
    return static_cast<std::uint16_t>(v >> 16);
}
constexpr std::uint8_t byte0(std::uint32_t v) {
    return static_cast<std::uint8_t>(v & 0xff);
}
constexpr bool bit(std::uint32_t v, unsigned n) {
    return (v >> n) & 1u;
}

// Command dword 0 (§4.2): this controller supports neither fused operations (FUSES = 0) nor
// SGLs (SGLS = 0, and SGLs are never allowed for admin commands over PCIe), and the bits
// between them are reserved.
std::optional<StatusCode> check_flags(const SqEntry& e) {
    if (e.flags & (sqe_flags::FUSE_MASK | sqe_flags::RESERVED_MASK | sqe_flags::PSDT_MASK))
        return StatusCode::InvalidField;
    return std::nullopt;
}

bool admin_opcode_supported(AdminOpcode op) {
    switch (op) {
        case AdminOpcode::DeleteIoSq:
        case AdminOpcode::CreateIoSq:
        case AdminOpcode::GetLogPage:
        case AdminOpcode::DeleteIoCq:
        case AdminOpcode::CreateIoCq:
        case AdminOpcode::Identify:
        case AdminOpcode::Abort:
        case AdminOpcode::SetFeatures:
        case AdminOpcode::GetFeatures:
        case AdminOpcode::AsyncEventRequest:
        case AdminOpcode::DoorbellBufferConfig:
            return true;
        case AdminOpcode::KeepAlive:
            return false;  // KAS = 0: no keep-alive
    }
    return false;
}

bool page_aligned(std::uint64_t addr, std::uint64_t page_size) {
    return (addr & (page_size - 1)) == 0;
}

// Create I/O Completion Queue (§5.4).
std::expected<AdminCommand, StatusCode> decode_create_cq(const SqEntry& e, const AdminLimits& l) {
    CreateIoCq c;
    c.qid = lo16(e.cdw10);
    const std::uint32_t qsize = hi16(e.cdw10);
    c.entries = qsize + 1;
    c.base = e.prp1;
    c.interrupts_enabled = bit(e.cdw11, 1);
    c.vector = hi16(e.cdw11);
    if (c.qid == 0 || c.qid > l.max_io_qid) return unexpected(StatusCode::InvalidQueueIdentifier);
    // QSIZE is 0-based; a one-entry queue (QSIZE 0) is invalid.
    if (qsize == 0 || c.entries > l.max_queue_entries)
        return unexpected(StatusCode::InvalidQueueSize);
    // CAP.CQR = 1: queues must be physically contiguous (PC = 1).
    if (!bit(e.cdw11, 0)) return unexpected(StatusCode::InvalidField);
    if (c.interrupts_enabled && c.vector >= l.interrupt_vectors)
        return unexpected(StatusCode::InvalidInterruptVector);
    if (!page_aligned(c.base, l.page_size)) return unexpected(StatusCode::PrpOffsetInvalid);
    return c;
}

// Create I/O Submission Queue (§5.5). Whether the CQ exists is the controller's check.
std::expected<AdminCommand, StatusCode> decode_create_sq(const SqEntry& e, const AdminLimits& l) {
    CreateIoSq c;
    c.qid = lo16(e.cdw10);
    const std::uint32_t qsize = hi16(e.cdw10);
    c.entries = qsize + 1;
    c.base = e.prp1;
    c.priority = static_cast<std::uint8_t>((e.cdw11 >> 1) & 0x3);
    c.cqid = hi16(e.cdw11);
    if (c.qid == 0 || c.qid > l.max_io_qid) return unexpected(StatusCode::InvalidQueueIdentifier);
    if (qsize == 0 || c.entries > l.max_queue_entries)
        return unexpected(StatusCode::InvalidQueueSize);
    if (!bit(e.cdw11, 0)) return unexpected(StatusCode::InvalidField);
    // An I/O SQ may not complete into the admin CQ.
    if (c.cqid == 0 || c.cqid > l.max_io_qid) return unexpected(StatusCode::CompletionQueueInvalid);
    if (!page_aligned(c.base, l.page_size)) return unexpected(StatusCode::PrpOffsetInvalid);
    return c;
}

// Delete I/O SQ/CQ (§5.6, §5.7): the admin queues cannot be deleted.
template <typename Delete>
std::expected<AdminCommand, StatusCode> decode_delete(const SqEntry& e, const AdminLimits& l) {
    Delete d;
    d.qid = lo16(e.cdw10);
    if (d.qid == 0 || d.qid > l.max_io_qid) return unexpected(StatusCode::InvalidQueueIdentifier);
    return d;
}

// Get Log Page (§5.16).
std::expected<AdminCommand, StatusCode> decode_get_log_page(const SqEntry& e,
                                                            const AdminLimits& l) {
    GetLogPage g;
    g.lid = static_cast<LogPageId>(byte0(e.cdw10));
    g.lsp = static_cast<std::uint8_t>((e.cdw10 >> 8) & 0x7f);
    g.retain_async_event = bit(e.cdw10, 15);
    g.nsid = e.nsid;
    g.dwords = ((std::uint64_t{lo16(e.cdw11)} << 16) | hi16(e.cdw10)) + 1;
    g.offset = std::uint64_t{e.cdw13} << 32 | e.cdw12;
    g.dptr = {e.prp1, e.prp2};
    if (g.offset & 0x3) return unexpected(StatusCode::InvalidField);
    if (g.bytes() > l.max_transfer) return unexpected(StatusCode::InvalidField);
    return g;
}

std::expected<AdminCommand, StatusCode> decode_get_features(const SqEntry& e) {
    GetFeatures g;
    g.fid = static_cast<FeatureId>(byte0(e.cdw10));
    const unsigned sel = (e.cdw10 >> 8) & 0x7;
    if (sel > 3) return unexpected(StatusCode::InvalidField);  // 100b..111b reserved
    g.select = static_cast<FeatureSelect>(sel);
    g.nsid = e.nsid;
    g.cdw11 = e.cdw11;
    g.dptr = {e.prp1, e.prp2};
    return g;
}

std::expected<AdminCommand, StatusCode> decode_dbbuf(const SqEntry& e, const AdminLimits& l) {
    DoorbellBufferConfig d{e.prp1, e.prp2};
    if (!page_aligned(d.shadow, l.page_size) || !page_aligned(d.eventidx, l.page_size))
        return unexpected(StatusCode::InvalidField);
    return d;
}

// The namespace an I/O command names, or Invalid Namespace. The broadcast NSID is refused too:
// Identify VWC says Flush does not support it, and no other I/O command here allows it.
std::expected<NamespaceGeometry, StatusCode> io_namespace(const SqEntry& e, const IoLimits& l) {
    if (e.nsid == 0 || e.nsid > l.namespaces.size())
        return unexpected(StatusCode::InvalidNamespace);
    const NamespaceGeometry ns = l.namespaces[e.nsid - 1];
    // A host configuration error, not the guest's: keeps `blocks << lba_shift` far from overflow.
    if (ns.lba_shift < 9 || ns.lba_shift > 16) return unexpected(StatusCode::InternalError);
    return ns;
}

std::uint64_t slba_of(const SqEntry& e) {
    return std::uint64_t{e.cdw11} << 32 | e.cdw10;
}

// Read and Write (NVM command set §3.2.4, §3.2.6): NLB 0-based in CDW12 15:0, FUA bit 30.
std::expected<IoCommand, StatusCode> decode_read_write(const SqEntry& e, const IoLimits& l,
                                                       bool write) {
    auto ns = io_namespace(e, l);
    if (!ns) return unexpected(ns.error());
    ReadWrite rw;
    rw.write = write;
    rw.nsid = e.nsid;
    rw.slba = slba_of(e);
    rw.blocks = std::uint32_t{lo16(e.cdw12)} + 1;
    rw.bytes = std::uint64_t{rw.blocks} << ns->lba_shift;
    rw.fua = bit(e.cdw12, 30);
    rw.dptr = {e.prp1, e.prp2};
    // Over MDTS is Invalid Field in Command (§5.17.2.1, MDTS).
    if (rw.bytes > l.max_transfer) return unexpected(StatusCode::InvalidField);
    if (!lba_range_valid(rw.slba, rw.blocks, ns->blocks))
        return unexpected(StatusCode::LbaOutOfRange);
    return rw;
}

// Write Zeroes (NVM command set §3.2.8): no data transfer, so MDTS does not apply.
std::expected<IoCommand, StatusCode> decode_write_zeroes(const SqEntry& e, const IoLimits& l) {
    auto ns = io_namespace(e, l);
    if (!ns) return unexpected(ns.error());
    WriteZeroes w;
    w.nsid = e.nsid;
    w.slba = slba_of(e);
    w.blocks = std::uint32_t{lo16(e.cdw12)} + 1;
    w.deallocate = bit(e.cdw12, 25);
    w.fua = bit(e.cdw12, 30);
    if (!lba_range_valid(w.slba, w.blocks, ns->blocks))
        return unexpected(StatusCode::LbaOutOfRange);
    return w;
}

// Dataset Management (NVM command set §3.2.3): NR 0-based in CDW10 7:0; the ranges themselves
// are data the controller reads and checks with lba_range_valid().
std::expected<IoCommand, StatusCode> decode_dsm(const SqEntry& e, const IoLimits& l) {
    auto ns = io_namespace(e, l);
    if (!ns) return unexpected(ns.error());
    DatasetManagement d;
    d.nsid = e.nsid;
    d.ranges = std::uint32_t{byte0(e.cdw10)} + 1;
    d.integral_read = bit(e.cdw11, 0);
    d.integral_write = bit(e.cdw11, 1);
    d.deallocate = bit(e.cdw11, 2);
    d.dptr = {e.prp1, e.prp2};
    if (d.bytes() > l.max_transfer) return unexpected(StatusCode::InvalidField);
    return d;
}

}  // namespace

std::expected<AdminCommand, StatusCode> decode_admin(const SqEntry& e, const AdminLimits& limits) {
    const auto op = static_cast<AdminOpcode>(e.opc);
    if (!admin_opcode_supported(op)) return unexpected(StatusCode::InvalidOpcode);
    if (auto bad = check_flags(e)) return unexpected(*bad);
    // A page size the controller could not have accepted would make every alignment check
    // meaningless; it is a host bug, not the guest's.
    if (limits.page_size < 4096 || (limits.page_size & (limits.page_size - 1)) != 0)
        return unexpected(StatusCode::InternalError);

    switch (op) {
        case AdminOpcode::Identify: {
            Identify id;
            id.cns = static_cast<Cns>(byte0(e.cdw10));
            id.cntid = hi16(e.cdw10);
            id.csi = static_cast<std::uint8_t>(e.cdw11 >> 24);
            id.nsid = e.nsid;
            id.dptr = {e.prp1, e.prp2};
            return id;
        }
        case AdminOpcode::CreateIoCq:
            return decode_create_cq(e, limits);
        case AdminOpcode::CreateIoSq:
            return decode_create_sq(e, limits);
        case AdminOpcode::DeleteIoSq:
            return decode_delete<DeleteIoSq>(e, limits);
        case AdminOpcode::DeleteIoCq:
            return decode_delete<DeleteIoCq>(e, limits);
        case AdminOpcode::GetLogPage:
            return decode_get_log_page(e, limits);
        case AdminOpcode::SetFeatures: {
            SetFeatures s;
            s.fid = static_cast<FeatureId>(byte0(e.cdw10));
            s.save = bit(e.cdw10, 31);
            s.nsid = e.nsid;
            s.cdw11 = e.cdw11;
            s.cdw12 = e.cdw12;
            s.cdw13 = e.cdw13;
            s.cdw14 = e.cdw14;
            s.cdw15 = e.cdw15;
            s.dptr = {e.prp1, e.prp2};
            return s;
        }
        case AdminOpcode::GetFeatures:
            return decode_get_features(e);
        case AdminOpcode::Abort:
            return Abort{lo16(e.cdw10), hi16(e.cdw10)};
        case AdminOpcode::AsyncEventRequest:
            return AsyncEventRequest{};
        case AdminOpcode::DoorbellBufferConfig:
            return decode_dbbuf(e, limits);
        case AdminOpcode::KeepAlive:
            break;
    }
    return unexpected(StatusCode::InvalidOpcode);
}

std::expected<IoCommand, StatusCode> decode_io(const SqEntry& e, const IoLimits& limits) {
    const auto op = static_cast<IoOpcode>(e.opc);
    switch (op) {
        case IoOpcode::Flush:
        case IoOpcode::Write:
        case IoOpcode::Read:
        case IoOpcode::WriteZeroes:
        case IoOpcode::DatasetManagement:
            break;
        case IoOpcode::WriteUncorrectable:
        case IoOpcode::Compare:
        default:
            return unexpected(StatusCode::InvalidOpcode);
    }
    if (auto bad = check_flags(e)) return unexpected(*bad);

    switch (op) {
        case IoOpcode::Flush: {
            auto ns = io_namespace(e, limits);
            if (!ns) return unexpected(ns.error());
            return Flush{e.nsid};
        }
        case IoOpcode::Write:
            return decode_read_write(e, limits, true);
        case IoOpcode::Read:
            return decode_read_write(e, limits, false);
        case IoOpcode::WriteZeroes:
            return decode_write_zeroes(e, limits);
        case IoOpcode::DatasetManagement:
            return decode_dsm(e, limits);
        default:
            break;
    }
    return unexpected(StatusCode::InvalidOpcode);
}

}  // namespace nitro_card::nvme
