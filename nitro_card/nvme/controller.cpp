#include "nvme/controller.hpp"

#include <unistd.h>

#include <cstring>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "nvme/admin_data.hpp"

namespace nitro_card::nvme {

namespace {

using common::Error;
using common::fail;

constexpr unsigned kDstrd = 0;               // 4-byte doorbell stride
constexpr std::uint64_t kReadyTimeout = 15;  // CAP.TO in 500 ms units; ready is immediate here
constexpr unsigned kLoudBadAccesses = 16;    // then bad accesses are logged at debug level
// The doorbell area of BAR0 holds this many queue pairs; doorbells past max_io_queues are
// writes to queues that do not exist.
constexpr std::uint16_t kMaxDoorbellQid =
    static_cast<std::uint16_t>((Controller::kBar0Size - reg::DOORBELL_BASE) / 8 - 1);

bool printable(std::string_view s) {
    for (char c : s)
        if (c < 0x20 || c > 0x7e) return false;
    return true;
}

common::Status check_text(std::string_view what, std::string_view s, std::size_t max,
                          bool required) {
    if (required && s.empty()) return fail(Error::invalid(fmt::format("{} is empty", what)));
    if (s.size() > max)
        return fail(
            Error::invalid(fmt::format("{} '{}' is longer than {} characters", what, s, max)));
    if (!printable(s))
        return fail(Error::invalid(fmt::format("{} '{}' is not printable ASCII", what, s)));
    return {};
}

std::uint64_t capabilities(const ControllerInfo& info) {
    std::uint64_t cap = 0;
    cap = cap::MQES.replace(cap, info.max_queue_entries - 1);
    cap = cap::CQR.replace(cap, 1);  // queues must be physically contiguous
    cap = cap::TO.replace(cap, kReadyTimeout);
    cap = cap::DSTRD.replace(cap, kDstrd);
    cap = cap::CSS.replace(cap, cap::CSS_NVM);  // NVM only: Linux then skips the CSI paths
    cap = cap::MPSMIN.replace(cap, 0);          // 4 KiB, what Linux requires
    cap = cap::MPSMAX.replace(cap, 0);
    return cap;
}

common::Result<ControllerInfo> resolve(const ControllerConfig& c) {
    ControllerInfo info;
    const bool ebs = c.kind == VolumeKind::Ebs;
    info.device_id = info.subsystem_id = ebs ? kEbsDeviceId : kInstanceStoreDeviceId;
    info.serial = c.serial;
    info.model = c.model.empty() ? std::string(ebs ? kEbsModel : kInstanceStoreModel) : c.model;
    info.firmware = c.firmware;
    info.device_name = c.device_name;
    info.nguid = volume_guid(c.serial);
    info.subnqn = c.subnqn.empty() ? uuid_nqn(info.nguid) : c.subnqn;
    info.cntlid = c.controller_id;
    if (auto s = check_text("serial", info.serial, 20, true); !s) return fail(std::move(s.error()));
    if (auto s = check_text("model", info.model, 40, true); !s) return fail(std::move(s.error()));
    if (auto s = check_text("firmware revision", info.firmware, 8, true); !s)
        return fail(std::move(s.error()));
    if (auto s = check_text("SUBNQN", info.subnqn, 223, true); !s)
        return fail(std::move(s.error()));
    if (auto s = check_text("device name", info.device_name, 32, false); !s)
        return fail(std::move(s.error()));
    if (ebs && !is_ebs_volume_id(info.serial))
        spdlog::warn("nvme: serial '{}' is not an EBS volume id (vol + 17 hex digits)",
                     info.serial);

    if (c.max_io_queues == 0 || c.max_io_queues > Controller::kMaxIoQueues)
        return fail(Error::invalid(fmt::format("{} I/O queues: 1..{} supported", c.max_io_queues,
                                               Controller::kMaxIoQueues)));
    if (c.mqes == 0 || c.mqes > 0xffff)
        return fail(Error::invalid(fmt::format("MQES {} outside 1..65535", c.mqes)));
    if (c.mdts == 0 || c.mdts > 8)
        return fail(Error::invalid(fmt::format("MDTS {} outside 1..8 (8 KiB..1 MiB)", c.mdts)));
    if (c.lba_shift != 9 && c.lba_shift != 12)
        return fail(
            Error::invalid(fmt::format("LBA size 2^{}: only 512 and 4096 bytes", c.lba_shift)));
    info.max_io_queues = static_cast<std::uint16_t>(c.max_io_queues);
    info.max_queue_entries = c.mqes + 1;
    info.mdts = static_cast<std::uint8_t>(c.mdts);
    info.msix_vectors = c.max_io_queues + 1;

    if (!c.backend) return fail(Error::invalid("no backend"));
    const std::uint64_t size = c.backend->size_bytes();
    const std::uint64_t lba = std::uint64_t{1} << c.lba_shift;
    if (size == 0 || size % lba != 0)
        return fail(Error::invalid(
            fmt::format("volume of {} bytes is not a whole number of {}-byte LBAs", size, lba)));
    info.ns = NamespaceGeometry{size / lba, static_cast<std::uint8_t>(c.lba_shift)};
    return info;
}

}  // namespace

bool is_ebs_volume_id(std::string_view id) {
    if (id.size() != 20 || id.substr(0, 3) != "vol") return false;
    for (char c : id.substr(3))
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
    return true;
}

ControllerStats snapshot(const ControllerCounters& c) {
    const auto get = [](const std::atomic<std::uint64_t>& a) {
        return a.load(std::memory_order_relaxed);
    };
    ControllerStats s;
    s.admin_commands = get(c.admin_commands);
    s.io_commands = get(c.io_commands);
    s.read_commands = get(c.read_commands);
    s.write_commands = get(c.write_commands);
    s.bytes_read = get(c.bytes_read);
    s.bytes_written = get(c.bytes_written);
    s.error_completions = get(c.error_completions);
    s.throttled_commands = get(c.throttled_commands);
    s.throttled_ns = get(c.throttled_ns);
    s.slow_path_reads = get(c.slow_path_reads);
    s.slow_path_writes = get(c.slow_path_writes);
    s.doorbell_writes = get(c.doorbell_writes);
    s.invalid_doorbells = get(c.invalid_doorbells);
    s.bad_register_accesses = get(c.bad_register_accesses);
    s.interrupts = get(c.interrupts);
    s.doorbell_wakeups = get(c.doorbell_wakeups);
    s.poll_hits = get(c.poll_hits);
    s.poll_ns = get(c.poll_ns);
    s.poll_backoffs = get(c.poll_backoffs);
    return s;
}

common::Result<std::shared_ptr<Controller>> Controller::create(ControllerConfig config) {
    auto info = resolve(config);
    if (!info) return fail(std::move(info.error()).context("NVMe controller"));
    auto ctrl = std::shared_ptr<Controller>(new Controller(std::move(*info)));

    IoWorkerConfig wc;
    wc.backend = std::move(config.backend);
    wc.volume_limits = config.volume_limits;
    wc.instance_limiter = std::move(config.instance_limiter);
    wc.ns = ctrl->info_.ns;
    wc.max_transfer = ctrl->info_.max_transfer();
    wc.max_qid = ctrl->info_.max_io_queues;
    wc.thread = std::move(config.io_thread);
    auto worker = IoWorker::start(std::move(wc), ctrl->counters_, ctrl->fatal_);
    if (!worker) return fail(std::move(worker.error()).context("NVMe controller"));
    ctrl->worker_ = std::move(*worker);
    ctrl->admin_ = std::make_unique<AdminQueue>(ctrl->info_, ctrl->regs_, ctrl->queues_,
                                                *ctrl->worker_, ctrl->counters_, ctrl->fatal_);
    return ctrl;
}

Controller::Controller(ControllerInfo info)
    : info_(std::move(info)), regs_(capabilities(info_), kVersion), queues_(info_.max_io_queues) {}

Controller::~Controller() {
    admin_.reset();
    worker_.reset();  // joins the worker before the memory and eventfds it uses go
}

std::vector<std::uint8_t> Controller::config_header() const {
    std::vector<std::uint8_t> h(64, 0);
    const auto put16 = [&](std::size_t at, std::uint16_t v) { std::memcpy(h.data() + at, &v, 2); };
    put16(0x00, info_.vendor_id);
    put16(0x02, info_.device_id);
    h[0x09] = static_cast<std::uint8_t>(info_.class_code);        // programming interface
    h[0x0a] = static_cast<std::uint8_t>(info_.class_code >> 8);   // subclass
    h[0x0b] = static_cast<std::uint8_t>(info_.class_code >> 16);  // class
    put16(0x2c, info_.subsystem_vendor_id);
    put16(0x2e, info_.subsystem_id);
    return h;
}

// ---- guest RAM and interrupts ----------------------------------------------------------------

void Controller::attach_memory(std::shared_ptr<const common::GuestMemory> mem) {
    mem_ = std::move(mem);
    worker_->set_memory(mem_);
    // Admin commands rung while guest RAM was away run now.
    if (admin_->process(mem_.get()) > 0) raise(0);
}

void Controller::detach_memory() {
    worker_->set_memory(nullptr);
    mem_.reset();
}

void Controller::set_irqs(std::vector<common::UniqueFd> irqs) {
    std::vector<int> fds;
    fds.reserve(irqs.size());
    for (const auto& fd : irqs) fds.push_back(fd.get());
    worker_->set_irqs(std::move(fds));
    irqs_ = std::move(irqs);  // the old eventfds close after the worker stopped using them
}

void Controller::raise(std::uint16_t vector) {
    if (vector >= irqs_.size() || !irqs_[vector]) return;
    const std::uint64_t one = 1;
    if (::write(irqs_[vector].get(), &one, sizeof one) == sizeof one)
        ControllerCounters::add(counters_.interrupts);
}

// ---- registers --------------------------------------------------------------------------------

void Controller::bad_access(std::string_view what, std::uint64_t offset, unsigned size,
                            std::string_view why) {
    const std::uint64_t n = counters_.bad_register_accesses.fetch_add(1, std::memory_order_relaxed);
    const auto level = n < kLoudBadAccesses ? spdlog::level::warn : spdlog::level::debug;
    spdlog::log(level, "nvme {}: BAR0 {} of {} bytes at {:#x} ignored: {}", info_.serial, what,
                size, offset, why);
}

std::uint64_t Controller::bar0_read(std::uint64_t offset, unsigned size) {
    ControllerCounters::add(counters_.slow_path_reads);
    if (offset >= kBar0Size) {
        bad_access("read", offset, size, "past BAR0");
        return 0;
    }
    // Doorbells are write-only; they read as zero.
    if (offset >= reg::DOORBELL_BASE) return 0;
    if (fatal_.load()) regs_.set_csts(csts::CFS.replace(regs_.csts(), 1));
    auto v = regs_.read(static_cast<std::uint32_t>(offset), size);
    if (!v) {
        if (v.error() != RegisterFault::Hole) bad_access("read", offset, size, describe(v.error()));
        return 0;  // reserved space reads as zero
    }
    return *v;
}

void Controller::bar0_write(std::uint64_t offset, unsigned size, std::uint64_t value) {
    ControllerCounters::add(counters_.slow_path_writes);
    if (offset >= kBar0Size) {
        bad_access("write", offset, size, "past BAR0");
        return;
    }
    if (offset >= reg::DOORBELL_BASE) {
        doorbell_written(offset, size, value);
        return;
    }
    auto w = regs_.write(static_cast<std::uint32_t>(offset), size, value);
    if (!w) {
        bad_access("write", offset, size, describe(w.error()));
        return;
    }
    if (w->reg == reg::CC)
        cc_written(static_cast<std::uint32_t>(w->old_value),
                   static_cast<std::uint32_t>(w->new_value));
}

// NVMe 2.0 §3.1.4.5 (CC) and §3.6.1 (initialization): EN 0 -> 1 starts the admin queue with
// AQA/ASQ/ACQ, EN 1 -> 0 is a controller reset, SHN asks for a shutdown.
void Controller::cc_written(std::uint32_t old_cc, std::uint32_t new_cc) {
    const bool was_enabled = cc::EN.get(old_cc) != 0;
    const bool enabling = cc::EN.get(new_cc) != 0;
    std::uint32_t cc = new_cc;
    if (was_enabled && enabling) {
        // CSS, MPS and AMS are fixed while the controller is enabled.
        for (const auto& f : {cc::CSS, cc::MPS, cc::AMS}) cc = f.replace(cc, f.get(old_cc));
    }
    regs_.set_cc(cc);

    if (cc::SHN.get(cc) != cc::SHN_NONE && cc::SHN.get(old_cc) == cc::SHN_NONE) shutdown();
    if (was_enabled && !enabling) {
        disable();
    } else if (!was_enabled && enabling) {
        enable();
    }
}

void Controller::enable() {
    const auto refuse = [&](std::string_view why) {
        // CSTS.CFS with RDY still 0: the host's ready wait times out and it gives up.
        spdlog::warn("nvme {}: CC.EN = 1 refused: {}", info_.serial, why);
        regs_.set_csts(csts::CFS.replace(regs_.csts(), 1));
    };
    const std::uint32_t cc = regs_.cc();
    if (cc::CSS.get(cc) != cc::CSS_NVM) return refuse("CC.CSS is not the NVM command set");
    if (cc::MPS.get(cc) != 0) return refuse("CC.MPS is not 4 KiB (CAP.MPSMAX = 0)");
    if (cc::AMS.get(cc) != 0) return refuse("CC.AMS is not round robin");
    const std::uint32_t sq_entries = aqa::ASQS.get(regs_.aqa()) + 1;
    const std::uint32_t cq_entries = aqa::ACQS.get(regs_.aqa()) + 1;
    if (sq_entries < 2 || cq_entries < 2) return refuse("an admin queue of one entry");
    const std::uint64_t asq = regs_.asq(), acq = regs_.acq();
    if ((asq | acq) & 0xfff) return refuse("ASQ or ACQ is not page aligned");
    if (!mem_) return refuse("no guest memory");
    if (!mem_->slice(common::GuestAddr(asq), queue_bytes(sq_entries, kSqEntrySizeLog2)) ||
        !mem_->slice(common::GuestAddr(acq), queue_bytes(cq_entries, kCqEntrySizeLog2)))
        return refuse("an admin queue outside guest RAM");
    admin_->enable(common::GuestAddr(asq), sq_entries, common::GuestAddr(acq), cq_entries);
    regs_.set_csts(csts::RDY.replace(0, 1));
}

void Controller::disable() {
    worker_->reset();
    queues_.clear();
    admin_->disable();
    fatal_.store(false);
    const std::uint32_t shst = csts::SHST.get(regs_.csts());
    regs_.set_csts(csts::SHST.replace(0, shst));  // RDY = 0, CFS = 0; a finished shutdown stays
}

// CC.SHN (§3.6.2): commands at the backend finish and the volume is flushed before SHST says
// complete, so a host that powers off next loses nothing it wrote.
void Controller::shutdown() {
    if (ready() && !worker_->flush()) spdlog::error("nvme {}: shutdown flush failed", info_.serial);
    regs_.set_csts(csts::SHST.replace(regs_.csts(), csts::SHST_COMPLETE));
}

void Controller::reset() {
    disable();
    regs_.reset();
}

// ---- doorbells --------------------------------------------------------------------------------

void Controller::doorbell_written(std::uint64_t offset, unsigned size, std::uint64_t value) {
    auto db = decode_doorbell(offset, kDstrd, kMaxDoorbellQid);
    if (size != 4 || !db) {
        bad_access("doorbell write", offset, size, "not a 4-byte doorbell");
        return;
    }
    ControllerCounters::add(counters_.doorbell_writes);
    if (!ready() || !admin_->enabled()) return;  // a disabled controller ignores doorbells
    const auto v = static_cast<std::uint32_t>(value);
    if (db->qid == 0) return admin_doorbell(*db, v);

    const IoCqRecord* cq = db->completion ? queues_.cq(db->qid) : nullptr;
    const IoSqRecord* sq = db->completion ? nullptr : queues_.sq(db->qid);
    if (cq == nullptr && sq == nullptr)
        return invalid_doorbell(*db, v, ErrorEventInfo::InvalidDoorbellRegister);
    DoorbellSlot& slot = cq != nullptr ? *cq->doorbell : *sq->doorbell;
    if (!doorbell_value_valid(v, cq != nullptr ? cq->size : sq->size))
        return invalid_doorbell(*db, v, ErrorEventInfo::InvalidDoorbellWriteValue);
    // The worker checks a CQ head against what it posted; here only the range is known.
    slot.store(v);
    slot.kick();
}

void Controller::admin_doorbell(DoorbellRef db, std::uint32_t value) {
    unsigned posted = 0;
    if (!db.completion) {
        if (!doorbell_value_valid(value, admin_->sq_entries()))
            return invalid_doorbell(db, value, ErrorEventInfo::InvalidDoorbellWriteValue);
        posted = admin_->sq_tail_written(mem_.get(), value);
    } else {
        const auto r = admin_->cq_head_written(mem_.get(), value);
        if (!r) return invalid_doorbell(db, value, ErrorEventInfo::InvalidDoorbellWriteValue);
        posted = *r;
    }
    if (posted > 0) raise(0);
}

// §5.2.1: the write is ignored and reported as an error event if the host asked for events.
void Controller::invalid_doorbell(DoorbellRef db, std::uint32_t value, ErrorEventInfo why) {
    const std::uint64_t n = counters_.invalid_doorbells.fetch_add(1, std::memory_order_relaxed);
    const auto level = n < kLoudBadAccesses ? spdlog::level::warn : spdlog::level::debug;
    spdlog::log(level, "nvme {}: {} doorbell of queue {} written with {}: {}", info_.serial,
                db.completion ? "CQ head" : "SQ tail", db.qid, value,
                why == ErrorEventInfo::InvalidDoorbellRegister ? "no such queue" : "invalid value");
    if (admin_->report_error(mem_.get(), why) > 0) raise(0);
}

std::vector<Doorbell> Controller::doorbells() const {
    std::vector<Doorbell> out;
    if (!admin_->shadow()) return out;
    queues_.for_each_sq([&](std::uint16_t qid, const IoSqRecord& r) {
        out.push_back(Doorbell{sq_tail_doorbell(qid, kDstrd), 4, r.doorbell->fd()});
    });
    queues_.for_each_cq([&](std::uint16_t qid, const IoCqRecord& r) {
        out.push_back(Doorbell{cq_head_doorbell(qid, kDstrd), 4, r.doorbell->fd()});
    });
    return out;
}

}  // namespace nitro_card::nvme
