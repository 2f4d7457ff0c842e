// The I/O command pipeline on the worker thread (NVM command set spec §3):
//
//   fetch -> decode -> admission queue (rate limiter, guest RAM) -> map PRPs -> backend ops,
//   one after the other -> CQE held for its CQ -> posted by post_all()
//
// A command owns a slot from fetch until its CQE is queued; there are as many slots as the
// backend holds requests, so the SQ itself is the queue for anything beyond that.
#include <sys/timerfd.h>

#include <array>
#include <cstring>
#include <variant>

#include <spdlog/spdlog.h>

#include "nvme/identify.hpp"
#include "nvme/io.hpp"
#include "nvme/prp.hpp"

namespace nitro_card::nvme {

namespace {

constexpr std::uint64_t kPageSize = 4096;  // CC.MPS = 0, the only page size (MPSMAX = 0)

template <typename... F>
struct Overloaded : F... {
    using F::operator()...;
};
template <typename... F>
Overloaded(F...) -> Overloaded<F...>;

// The status a failed backend request completes with (§4.2.3.3).
StatusCode backend_failure(storage::Op op) {
    switch (op) {
        case storage::Op::Read:
            return StatusCode::UnrecoveredReadError;
        case storage::Op::Write:
        case storage::Op::WriteZeroes:
            return StatusCode::WriteFault;
        case storage::Op::Flush:
        case storage::Op::Discard:
            return StatusCode::InternalError;
    }
    return StatusCode::InternalError;
}

}  // namespace

void IoWorker::accept(Sq& sq, const SqEntry& entry) {
    ControllerCounters::add(counters_.io_commands);
    ++progress_;
    ++sq.outstanding;
    const IoLimits limits{std::span<const NamespaceGeometry>(&ns_, 1), max_transfer_};
    auto decoded = decode_io(entry, limits);
    if (!decoded) {
        // The guest's mistake: complete with the decoder's status and Do Not Retry.
        complete(sq, entry.cid, decoded.error(), true);
        return;
    }
    const std::uint32_t slot = free_slots_.back();
    free_slots_.pop_back();
    Command& c = slots_[slot];
    ++c.generation;
    c.sqid = sq.qid;
    c.cid = entry.cid;
    c.io = *decoded;
    c.iov.clear();
    c.ops.clear();
    c.next_op = 0;
    c.throttled = false;
    const auto* rw = std::get_if<ReadWrite>(&c.io);
    c.limiter_bytes = rw != nullptr ? rw->bytes : 0;
    admit_queue_.push_back(slot);
}

void IoWorker::pump() {
    // Admitted commands first: their next op only waits for room at the backend.
    while (!submit_queue_.empty()) {
        if (submit_next(submit_queue_.front()) == Submit::Busy) return;
        submit_queue_.pop_front();
    }
    admit();
}

// Offers the head of the admission queue to the limiters, as their contract asks: a refused
// head is retried before anything behind it, when the timer says it fits.
void IoWorker::admit() {
    if (quiesce_ || !mem_) return;
    const storage::TimePoint now = storage::Clock::now();
    while (!admit_queue_.empty() && submit_queue_.empty()) {
        const std::uint32_t slot = admit_queue_.front();
        Command& c = slots_[slot];
        const storage::Admission a =
            instance_limiter_ ? instance_limiter_->try_admit(volume_limiter_, c.limiter_bytes, now)
                              : volume_limiter_.try_admit(c.limiter_bytes, now);
        if (!a) {
            if (!c.throttled) ControllerCounters::add(counters_.throttled_commands);
            c.throttled = true;
            if (!throttled_since_) throttled_since_ = now;
            arm_timer(a.retry_at);
            return;
        }
        if (throttled_since_) {
            const auto waited =
                std::chrono::duration_cast<std::chrono::nanoseconds>(now - *throttled_since_);
            ControllerCounters::add(counters_.throttled_ns,
                                    static_cast<std::uint64_t>(waited.count()));
            throttled_since_.reset();
        }
        admit_queue_.pop_front();
        if (const StatusCode st = prepare(c); st != StatusCode::Success) {
            finish(slot, st, true);
            continue;
        }
        if (c.ops.empty()) {
            finish(slot, StatusCode::Success, false);
            continue;
        }
        if (submit_next(slot) == Submit::Busy) submit_queue_.push_back(slot);
    }
}

void IoWorker::arm_timer(storage::TimePoint at) {
    // steady_clock is CLOCK_MONOTONIC on Linux, the timerfd's clock.
    const auto ns =
        std::chrono::duration_cast<std::chrono::nanoseconds>(at.time_since_epoch()).count();
    itimerspec spec{};
    spec.it_value.tv_sec = static_cast<time_t>(ns / 1'000'000'000);
    spec.it_value.tv_nsec = static_cast<long>(ns % 1'000'000'000);
    if (spec.it_value.tv_sec == 0 && spec.it_value.tv_nsec == 0) spec.it_value.tv_nsec = 1;
    if (::timerfd_settime(timer_.get(), TFD_TIMER_ABSTIME, &spec, nullptr) != 0)
        spdlog::error("nvme io: timerfd_settime: {}", std::strerror(errno));
}

// Maps the command's buffers in the current guest RAM and lists its backend ops.
StatusCode IoWorker::prepare(Command& c) {
    const unsigned shift = ns_.lba_shift;
    // Without a volatile write cache every write is durable when it completes.
    const auto durable = [&](bool fua) {
        if (fua || !write_cache_) c.ops.push_back({storage::Op::Flush, 0, 0});
    };
    return std::visit(
        Overloaded{
            [&](const ReadWrite& rw) -> StatusCode {
                const GuestMemoryTranslator translator(*mem_);
                auto segments = map_prps(rw.dptr.prp1, rw.dptr.prp2, rw.bytes,
                                         PrpLimits{kPageSize, max_transfer_}, translator);
                if (!segments) return to_status(segments.error());
                for (const Segment& s : *segments)
                    c.iov.push_back(iovec{s.host.data(), s.host.size()});
                c.ops.push_back({rw.write ? storage::Op::Write : storage::Op::Read,
                                 rw.slba << shift, rw.bytes});
                if (rw.write) durable(rw.fua);
                return StatusCode::Success;
            },
            [&](const Flush&) -> StatusCode {
                c.ops.push_back({storage::Op::Flush, 0, 0});
                return StatusCode::Success;
            },
            [&](const WriteZeroes& w) -> StatusCode {
                // DEAC: the range may be deallocated; a discard reads back as zeroes too.
                c.ops.push_back({w.deallocate ? storage::Op::Discard : storage::Op::WriteZeroes,
                                 w.slba << shift, std::uint64_t{w.blocks} << shift});
                durable(w.fua);
                return StatusCode::Success;
            },
            [&](const DatasetManagement& d) -> StatusCode { return prepare_dsm(c, d); },
        },
        c.io);
}

// Dataset Management (NVM command set §3.2.3): only Attribute Deallocate does anything; the
// integral read/write hints are advisory.
StatusCode IoWorker::prepare_dsm(Command& c, const DatasetManagement& d) {
    if (!d.deallocate) return StatusCode::Success;
    const GuestMemoryTranslator translator(*mem_);
    auto segments = map_prps(d.dptr.prp1, d.dptr.prp2, d.bytes(),
                             PrpLimits{kPageSize, max_transfer_}, translator);
    if (!segments) return to_status(segments.error());

    // GUEST-SHARED: the ranges are copied once into a local array and checked there. The
    // segments add up to d.bytes() <= 256 ranges, the array's size.
    std::array<DsmRange, kMaxDsmRanges> ranges;
    std::size_t copied = 0;
    for (const Segment& s : *segments) {
        std::memcpy(reinterpret_cast<std::byte*>(ranges.data()) + copied, s.host.data(),
                    s.host.size());
        copied += s.host.size();
    }
    const unsigned shift = ns_.lba_shift;
    for (std::uint32_t i = 0; i < d.ranges; ++i) {
        const DsmRange& r = ranges[i];
        if (r.nlb == 0) continue;
        if (!lba_range_valid(r.slba, r.nlb, ns_.blocks)) return StatusCode::LbaOutOfRange;
        c.ops.push_back({storage::Op::Discard, r.slba << shift, std::uint64_t{r.nlb} << shift});
    }
    return StatusCode::Success;
}

IoWorker::Submit IoWorker::submit_next(std::uint32_t slot) {
    Command& c = slots_[slot];
    const BackendOp& op = c.ops[c.next_op];
    storage::Request req;
    req.op = op.op;
    req.offset = op.offset;
    req.length = op.length;
    if (op.op == storage::Op::Read || op.op == storage::Op::Write) req.iov = c.iov;
    req.tag = std::uint64_t{c.generation} << 32 | slot;
    if (auto s = backend_->submit(req); !s) {
        if (storage::is_busy(s.error())) return Submit::Busy;
        // The decoder and the PRP walker let through only what the backend takes, so this is
        // the host's problem; the guest gets an error status and the queue keeps going.
        spdlog::warn("nvme io: SQ {} cid {}: backend refused {}: {}", c.sqid, c.cid,
                     storage::to_string(op.op), s.error().message);
        finish(slot,
               s.error().kind == common::ErrorKind::OutOfRange ? StatusCode::LbaOutOfRange
                                                               : StatusCode::InternalError,
               false);
        return Submit::Failed;
    }
    ++c.next_op;
    ++in_flight_;
    return Submit::Sent;
}

void IoWorker::reap() {
    (void)backend_->poll_completions(
        [this](const storage::Completion& done) { on_backend_done(done); });
}

void IoWorker::on_backend_done(const storage::Completion& done) {
    ++progress_;
    if (in_flight_ > 0) --in_flight_;
    if (done.tag == kFlushTag) {
        flush_pending_ = false;
        flush_result_ = done.status == 0;
        return;
    }
    const auto slot = static_cast<std::uint32_t>(done.tag);
    const auto generation = static_cast<std::uint32_t>(done.tag >> 32);
    if (slot >= slots_.size() || slots_[slot].generation != generation) {
        spdlog::error("nvme io: completion for an unknown request (tag {:#x})", done.tag);
        return;
    }
    Command& c = slots_[slot];
    if (discard_) return;  // reset: nothing is posted, drop_everything() frees the slot
    if (done.status < 0) {
        const storage::Op op = c.ops[c.next_op - 1].op;
        spdlog::warn("nvme io: SQ {} cid {}: {} failed: {}", c.sqid, c.cid, storage::to_string(op),
                     std::strerror(-done.status));
        finish(slot, backend_failure(op), false);
        return;
    }
    if (c.next_op < c.ops.size()) {
        submit_queue_.push_back(slot);
        return;
    }
    if (const auto* rw = std::get_if<ReadWrite>(&c.io)) {
        ControllerCounters::add(rw->write ? counters_.write_commands : counters_.read_commands);
        ControllerCounters::add(rw->write ? counters_.bytes_written : counters_.bytes_read,
                                rw->bytes);
    }
    finish(slot, StatusCode::Success, false);
}

void IoWorker::finish(std::uint32_t slot, StatusCode status, bool dnr) {
    const Command& c = slots_[slot];
    if (Sq* sq = sqs_.at(c.sqid).get(); sq != nullptr) complete(*sq, c.cid, status, dnr);
    free_slots_.push_back(slot);
}

// Queues the CQE for the SQ's CQ; post_all() writes it once the CQ has room.
void IoWorker::complete(Sq& sq, std::uint16_t cid, StatusCode status, bool dnr) {
    if (sq.outstanding > 0) --sq.outstanding;
    if (status != StatusCode::Success) ControllerCounters::add(counters_.error_completions);
    if (discard_) return;
    Cq* cq = cqs_.at(sq.cqid).get();
    if (cq == nullptr) return;
    cq->pending.push_back(CqEntry{0, 0, static_cast<std::uint16_t>(sq.ring.head()), sq.qid, cid,
                                  status_field(status, false, dnr)});
}

}  // namespace nitro_card::nvme
