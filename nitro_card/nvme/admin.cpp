#include "nvme/admin.hpp"

#include <algorithm>
#include <cstring>
#include <variant>

#include <spdlog/spdlog.h>

#include "nvme/admin_data.hpp"
#include "nvme/prp.hpp"

namespace nitro_card::nvme {

namespace {

constexpr std::uint64_t kPageSize = 4096;  // CC.MPS = 0 is the only page size (MPSMAX = 0)

template <typename T>
std::span<const std::byte> bytes_of(const T& v) {
    static_assert(std::is_trivially_copyable_v<T>);
    return std::as_bytes(std::span<const T, 1>(&v, 1));
}

constexpr std::uint16_t lo16(std::uint32_t v) {
    return static_cast<std::uint16_t>(v & 0xffff);
}
constexpr std::uint16_t hi16(std::uint32_t v) {
    return static_cast<std::uint16_t>(v >> 16);
}

// Features that are not namespace specific take NSID 0 or FFFFFFFFh (§5.27).
bool controller_scope(std::uint32_t nsid) {
    return nsid == 0 || nsid == kBroadcastNsid;
}

}  // namespace

AdminQueue::AdminQueue(const ControllerInfo& info, const RegisterFile& regs, QueueRegistry& queues,
                       IoWorker& worker, ControllerCounters& counters, std::atomic<bool>& fatal)
    : info_(info),
      regs_(regs),
      queues_(queues),
      worker_(worker),
      counters_(counters),
      fatal_(fatal),
      sqs_allocated_(info.max_io_queues),
      cqs_allocated_(info.max_io_queues) {}

void AdminQueue::enable(common::GuestAddr asq, std::uint32_t sq_entries, common::GuestAddr acq,
                        std::uint32_t cq_entries) {
    sq_.emplace(asq, sq_entries);
    cq_.emplace(acq, cq_entries);
    sq_tail_ = 0;
}

void AdminQueue::disable() {
    sq_.reset();
    cq_.reset();
    sq_tail_ = 0;
    sqs_allocated_ = cqs_allocated_ = info_.max_io_queues;
    features_ = Features{};
    held_aers_.clear();
    events_.clear();
    error_events_masked_ = false;
    shadow_.reset();
}

unsigned AdminQueue::sq_tail_written(const common::GuestMemory* mem, std::uint32_t tail) {
    sq_tail_ = tail;
    return process(mem);
}

std::optional<unsigned> AdminQueue::cq_head_written(const common::GuestMemory* mem,
                                                    std::uint32_t head) {
    if (!cq_ || !cq_->update_head(head)) return std::nullopt;
    // Room in the CQ may let waiting commands and events through.
    return process(mem);
}

unsigned AdminQueue::process(const common::GuestMemory* mem) {
    if (!enabled() || mem == nullptr) return 0;
    return run(*mem);
}

unsigned AdminQueue::run(const common::GuestMemory& mem) {
    unsigned posted = deliver_events(mem);
    while (sq_->head() != sq_tail_) {
        // The host sizes the admin CQ for everything it submits; when it is full anyway the
        // rest waits in the SQ until a CQ head doorbell makes room.
        if (cq_->free_slots() == 0) break;
        auto entry = sq_->fetch(mem);
        if (!entry) {
            spdlog::error("nvme admin: SQ entry not in guest RAM: {}", entry.error().message);
            fatal_.store(true);
            break;
        }
        ControllerCounters::add(counters_.admin_commands);
        const Outcome o = execute(mem, *entry);
        if (o.held) {
            held_aers_.push_back(entry->cid);
            posted += deliver_events(mem);
            continue;
        }
        if (post(mem, entry->cid, o)) ++posted;
    }
    return posted;
}

bool AdminQueue::post(const common::GuestMemory& mem, std::uint16_t cid, const Outcome& o) {
    const CqEntry e{o.dw0, 0,   static_cast<std::uint16_t>(sq_->head()),
                    0,     cid, status_field(o.status, false, o.dnr)};
    if (auto s = cq_->post(mem, e); !s) {
        // CSTS.CFS: a fatal error the controller cannot report in the CQ (§3.1.4.6).
        spdlog::error("nvme admin: cannot post a completion: {}", s.error().message);
        fatal_.store(true);
        return false;
    }
    if (o.status != StatusCode::Success) ControllerCounters::add(counters_.error_completions);
    return true;
}

AdminLimits AdminQueue::limits() const {
    AdminLimits l;
    l.page_size = kPageSize;
    l.max_queue_entries = info_.max_queue_entries;
    l.max_io_qid = info_.max_io_queues;
    l.interrupt_vectors = info_.msix_vectors;
    l.max_transfer = info_.max_transfer();
    return l;
}

AdminQueue::Outcome AdminQueue::execute(const common::GuestMemory& mem, const SqEntry& e) {
    auto cmd = decode_admin(e, limits());
    if (!cmd) return Outcome::fail(cmd.error());
    return std::visit([&](const auto& c) { return handle(mem, c); }, *cmd);
}

AdminQueue::Outcome AdminQueue::transfer(const common::GuestMemory& mem, const DataPointer& dptr,
                                         std::span<const std::byte> data, std::uint32_t dw0) {
    const GuestMemoryTranslator translator(mem);
    auto segments = map_prps(dptr.prp1, dptr.prp2, data.size(),
                             PrpLimits{kPageSize, info_.max_transfer()}, translator);
    if (!segments) return Outcome::fail(to_status(segments.error()));
    std::size_t at = 0;
    for (const Segment& s : *segments) {
        std::memcpy(s.host.data(), data.data() + at, s.host.size());
        at += s.host.size();
    }
    return Outcome::ok(dw0);
}

// ---- Identify (§5.17) ---------------------------------------------------------------------

AdminQueue::Outcome AdminQueue::handle(const common::GuestMemory& mem, const Identify& c) {
    switch (c.cns) {
        case Cns::Namespace: {
            if (c.nsid != kNamespaceId) return Outcome::fail(StatusCode::InvalidNamespace);
            const IdentifyNamespace ns = identify_namespace(info_);
            return transfer(mem, c.dptr, bytes_of(ns));
        }
        case Cns::Controller: {
            const IdentifyController id = identify_controller(info_);
            return transfer(mem, c.dptr, bytes_of(id));
        }
        case Cns::ActiveNamespaceList: {
            // FFFFFFFEh and FFFFFFFFh are not NSIDs a list can follow (§5.17.2.2).
            if (c.nsid >= 0xfffffffe) return Outcome::fail(StatusCode::InvalidNamespace);
            const Page list = active_namespace_list(c.nsid);
            return transfer(mem, c.dptr, list);
        }
        case Cns::NamespaceDescriptorList: {
            if (c.nsid != kNamespaceId) return Outcome::fail(StatusCode::InvalidNamespace);
            const Page list = namespace_descriptors(info_);
            return transfer(mem, c.dptr, list);
        }
        case Cns::CsNamespace:
        case Cns::CsController:
            break;
    }
    // CNS 06h (I/O command set controller) and the rest: Linux tolerates any NVMe status for
    // CNS 6 (nvme/core.c nvme_init_non_mdts_limits).
    return Outcome::fail(StatusCode::InvalidField);
}

// ---- Queue management (§5.4-5.7) ------------------------------------------------------------

AdminQueue::Outcome AdminQueue::handle(const common::GuestMemory& mem, const CreateIoCq& c) {
    if (c.qid > cqs_allocated_ || queues_.cq(c.qid) != nullptr)
        return Outcome::fail(StatusCode::InvalidQueueIdentifier);
    if (cc::IOCQES.get(regs_.cc()) != kCqEntrySizeLog2)
        return Outcome::fail(StatusCode::InvalidField);
    if (!mem.slice(common::GuestAddr(c.base), queue_bytes(c.entries, kCqEntrySizeLog2)))
        return Outcome::fail(StatusCode::InvalidField);
    auto doorbell = DoorbellSlot::create();
    if (!doorbell) {
        spdlog::error("nvme admin: Create I/O CQ {}: {}", c.qid, doorbell.error().message);
        return Outcome{StatusCode::InternalError, 0, false, false};
    }
    worker_.add_cq(IoCqSetup{c.qid, common::GuestAddr(c.base), c.entries, c.interrupts_enabled,
                             c.vector, *doorbell});
    queues_.add_cq(c.qid, IoCqRecord{c.entries, c.interrupts_enabled, c.vector, 0, *doorbell});
    return Outcome::ok();
}

AdminQueue::Outcome AdminQueue::handle(const common::GuestMemory& mem, const CreateIoSq& c) {
    if (c.qid > sqs_allocated_ || queues_.sq(c.qid) != nullptr)
        return Outcome::fail(StatusCode::InvalidQueueIdentifier);
    if (queues_.cq(c.cqid) == nullptr) return Outcome::fail(StatusCode::CompletionQueueInvalid);
    if (cc::IOSQES.get(regs_.cc()) != kSqEntrySizeLog2)
        return Outcome::fail(StatusCode::InvalidField);
    if (!mem.slice(common::GuestAddr(c.base), queue_bytes(c.entries, kSqEntrySizeLog2)))
        return Outcome::fail(StatusCode::InvalidField);
    auto doorbell = DoorbellSlot::create();
    if (!doorbell) {
        spdlog::error("nvme admin: Create I/O SQ {}: {}", c.qid, doorbell.error().message);
        return Outcome{StatusCode::InternalError, 0, false, false};
    }
    worker_.add_sq(IoSqSetup{c.qid, c.cqid, common::GuestAddr(c.base), c.entries, *doorbell});
    queues_.add_sq(c.qid, IoSqRecord{c.entries, c.cqid, *doorbell});
    return Outcome::ok();
}

AdminQueue::Outcome AdminQueue::handle(const common::GuestMemory&, const DeleteIoSq& c) {
    if (queues_.sq(c.qid) == nullptr) return Outcome::fail(StatusCode::InvalidQueueIdentifier);
    worker_.delete_sq(c.qid);
    queues_.remove_sq(c.qid);
    return Outcome::ok();
}

AdminQueue::Outcome AdminQueue::handle(const common::GuestMemory&, const DeleteIoCq& c) {
    const IoCqRecord* cq = queues_.cq(c.qid);
    if (cq == nullptr) return Outcome::fail(StatusCode::InvalidQueueIdentifier);
    if (cq->sq_count > 0) return Outcome::fail(StatusCode::InvalidQueueDeletion);
    worker_.delete_cq(c.qid);
    queues_.remove_cq(c.qid);
    return Outcome::ok();
}

// NVMe 1.3 §5.7: PRP1 is the shadow doorbell page, PRP2 the EventIdx page. Linux carries on
// without shadow doorbells when this fails (nvme/pci.c nvme_dbbuf_set).
AdminQueue::Outcome AdminQueue::handle(const common::GuestMemory& mem,
                                       const DoorbellBufferConfig& c) {
    if (c.shadow == c.eventidx || !mem.slice(common::GuestAddr(c.shadow), kPageSize) ||
        !mem.slice(common::GuestAddr(c.eventidx), kPageSize))
        return Outcome::fail(StatusCode::InvalidField);
    shadow_ = ShadowBuffers{common::GuestAddr(c.shadow), common::GuestAddr(c.eventidx)};
    worker_.set_shadow(shadow_);
    return Outcome::ok();
}

// ---- Log pages (§5.16) ------------------------------------------------------------------------

AdminQueue::Outcome AdminQueue::handle(const common::GuestMemory& mem, const GetLogPage& c) {
    std::vector<std::byte> log;
    switch (c.lid) {
        case LogPageId::ErrorInformation:
            log.resize(kErrorLogBytes);
            // Reading the log with RAE = 0 clears the error event (§5.2).
            if (!c.retain_async_event) error_events_masked_ = false;
            break;
        case LogPageId::SmartHealth: {
            // LPA bit 0 = 0: no per-namespace SMART data.
            if (!controller_scope(c.nsid)) return Outcome::fail(StatusCode::InvalidField);
            const auto age = std::chrono::duration_cast<std::chrono::seconds>(
                std::chrono::steady_clock::now() - created_);
            const SmartLog s = smart_log(snapshot(counters_), age);
            const auto b = bytes_of(s);
            log.assign(b.begin(), b.end());
            break;
        }
        case LogPageId::FirmwareSlot: {
            const FirmwareSlotLog f = firmware_slot_log(info_);
            const auto b = bytes_of(f);
            log.assign(b.begin(), b.end());
            break;
        }
        default:
            return Outcome::fail(StatusCode::InvalidLogPage);
    }
    if (c.offset >= log.size()) return Outcome::fail(StatusCode::InvalidField);
    // Bytes past the end of the log read as zero.
    std::vector<std::byte> out(c.bytes());
    const std::size_t n = std::min<std::size_t>(out.size(), log.size() - c.offset);
    std::memcpy(out.data(), log.data() + c.offset, n);
    return transfer(mem, c.dptr, out);
}

// ---- Features (§5.27) -------------------------------------------------------------------------

AdminQueue::Outcome AdminQueue::handle(const common::GuestMemory&, const SetFeatures& c) {
    if (c.save) return Outcome::fail(StatusCode::FeatureNotSaveable);
    if (!controller_scope(c.nsid)) return Outcome::fail(StatusCode::FeatureNotNamespaceSpecific);
    switch (c.fid) {
        case FeatureId::NumberOfQueues: {
            const std::uint32_t nsqr = lo16(c.cdw11), ncqr = hi16(c.cdw11);
            if (nsqr == 0xffff || ncqr == 0xffff) return Outcome::fail(StatusCode::InvalidField);
            // Only before any I/O queue exists (§5.27.1.5).
            if (!queues_.empty()) return Outcome::fail(StatusCode::CommandSequenceError);
            sqs_allocated_ =
                static_cast<std::uint16_t>(std::min<std::uint32_t>(nsqr + 1, info_.max_io_queues));
            cqs_allocated_ =
                static_cast<std::uint16_t>(std::min<std::uint32_t>(ncqr + 1, info_.max_io_queues));
            return Outcome::ok(*feature_value(c.fid, FeatureSelect::Current, 0));
        }
        case FeatureId::VolatileWriteCache:
            features_.write_cache = (c.cdw11 & 1) != 0;
            worker_.set_write_cache(features_.write_cache);
            return Outcome::ok();
        case FeatureId::AsyncEventConfiguration:
            features_.async_event_config = c.cdw11;
            return Outcome::ok();
        case FeatureId::InterruptCoalescing:
            features_.interrupt_coalescing = c.cdw11 & 0xffff;
            return Outcome::ok();
        case FeatureId::Arbitration:
            features_.arbitration = c.cdw11;
            return Outcome::ok();
        case FeatureId::ErrorRecovery:
            features_.error_recovery = c.cdw11;
            return Outcome::ok();
        case FeatureId::WriteAtomicityNormal:
            features_.write_atomicity = c.cdw11 & 1;
            return Outcome::ok();
        case FeatureId::PowerManagement:
            if ((c.cdw11 & 0x1f) != 0) return Outcome::fail(StatusCode::InvalidField);  // NPSS = 0
            features_.power_management = c.cdw11 & 0xff;
            return Outcome::ok();
        case FeatureId::TemperatureThreshold: {
            const unsigned tmpsel = (c.cdw11 >> 16) & 0xf, thsel = (c.cdw11 >> 20) & 0x3;
            if (tmpsel != 0 || thsel > 1) return Outcome::fail(StatusCode::InvalidField);
            (thsel == 0 ? features_.temperature_over : features_.temperature_under) = lo16(c.cdw11);
            return Outcome::ok();
        }
        case FeatureId::InterruptVectorConfiguration:
            if (lo16(c.cdw11) >= info_.msix_vectors) return Outcome::fail(StatusCode::InvalidField);
            features_.interrupt_vector_config = c.cdw11 & 0x1ffff;
            return Outcome::ok();
        default:
            // Timestamp, APST, Host Behavior, Keep Alive, HMB...: not advertised.
            return Outcome::fail(StatusCode::InvalidField);
    }
}

AdminQueue::Outcome AdminQueue::handle(const common::GuestMemory&, const GetFeatures& c) {
    if (!controller_scope(c.nsid)) return Outcome::fail(StatusCode::FeatureNotNamespaceSpecific);
    auto v = feature_value(c.fid, c.select, c.cdw11);
    if (!v) return Outcome::fail(StatusCode::InvalidField);
    return Outcome::ok(*v);
}

// Dword 0 of Get Features. Nothing is saveable, so "saved" reads the default; the capabilities
// select reports "changeable" (bit 2) for what Set Features accepts (§5.15.1).
std::optional<std::uint32_t> AdminQueue::feature_value(FeatureId fid, FeatureSelect sel,
                                                       std::uint32_t cdw11) const {
    const bool current = sel == FeatureSelect::Current;
    const Features defaults;
    const Features& f = current ? features_ : defaults;
    std::uint32_t v = 0;
    switch (fid) {
        case FeatureId::NumberOfQueues: {
            const std::uint32_t nsq = current ? sqs_allocated_ : info_.max_io_queues;
            const std::uint32_t ncq = current ? cqs_allocated_ : info_.max_io_queues;
            v = (ncq - 1) << 16 | (nsq - 1);
            break;
        }
        case FeatureId::VolatileWriteCache:
            v = f.write_cache ? 1 : 0;
            break;
        case FeatureId::AsyncEventConfiguration:
            v = f.async_event_config;
            break;
        case FeatureId::InterruptCoalescing:
            v = f.interrupt_coalescing;
            break;
        case FeatureId::Arbitration:
            v = f.arbitration;
            break;
        case FeatureId::ErrorRecovery:
            v = f.error_recovery;
            break;
        case FeatureId::WriteAtomicityNormal:
            v = f.write_atomicity;
            break;
        case FeatureId::PowerManagement:
            v = f.power_management;
            break;
        case FeatureId::TemperatureThreshold: {
            const unsigned tmpsel = (cdw11 >> 16) & 0xf, thsel = (cdw11 >> 20) & 0x3;
            if (tmpsel != 0 || thsel > 1) return std::nullopt;
            v = thsel == 0 ? f.temperature_over : f.temperature_under;
            break;
        }
        case FeatureId::InterruptVectorConfiguration:
            if (lo16(cdw11) >= info_.msix_vectors) return std::nullopt;
            // Coalescing Disable (bit 16) for the vector asked about; nothing is coalesced.
            v = std::uint32_t{lo16(cdw11)} | (current ? (f.interrupt_vector_config & 0x10000) : 0);
            break;
        default:
            return std::nullopt;
    }
    if (sel == FeatureSelect::Capabilities) return fid == FeatureId::NumberOfQueues ? 0u : 1u << 2;
    return v;
}

// ---- Abort and asynchronous events (§5.1, §5.2) ----------------------------------------------

AdminQueue::Outcome AdminQueue::handle(const common::GuestMemory&, const Abort&) {
    // Commands run to completion here; dword 0 bit 0 = 1 says "not aborted". Linux then waits
    // for the command itself (nvme/pci.c abort_endio).
    return Outcome::ok(1);
}

AdminQueue::Outcome AdminQueue::handle(const common::GuestMemory&, const AsyncEventRequest&) {
    if (held_aers_.size() > kAsyncEventLimit)
        return Outcome::fail(StatusCode::AsyncEventRequestLimitExceeded);
    return Outcome{StatusCode::Success, 0, false, true};
}

unsigned AdminQueue::report_error(const common::GuestMemory* mem, ErrorEventInfo info) {
    if (!enabled() || error_events_masked_) return 0;
    // One retained event per type (§5.2): a second error before the first is reported adds
    // nothing the host would see.
    const auto result = async_event_result(
        AsyncEventType::ErrorStatus, static_cast<std::uint8_t>(info), LogPageId::ErrorInformation);
    if (events_.empty()) events_.push_back(result);
    return mem == nullptr ? 0 : deliver_events(*mem);
}

unsigned AdminQueue::deliver_events(const common::GuestMemory& mem) {
    unsigned posted = 0;
    while (!events_.empty() && !held_aers_.empty() && cq_->free_slots() > 0) {
        const std::uint16_t cid = held_aers_.front();
        if (!post(mem, cid, Outcome::ok(events_.front()))) break;
        held_aers_.erase(held_aers_.begin());
        events_.pop_front();
        error_events_masked_ = true;
        ++posted;
    }
    return posted;
}

}  // namespace nitro_card::nvme
