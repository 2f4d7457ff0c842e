// The NVMe controller driven the way Linux 6.1's nvme driver drives it: registers through
// bar0_read/bar0_write, queues and data in real guest memory (common::GuestMemory), doorbells on
// the slow path or through shadow doorbells plus the ioeventfds doorbells() hands out, MSI-X
// through the eventfds given to set_irqs. Every wait is bounded (kWait).
#include <doctest/doctest.h>

#include <pthread.h>
#include <sched.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <memory>
#include <optional>
#include <set>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "nvme/admin_data.hpp"
#include "nvme/controller.hpp"
#include "nvme/controller_registers.hpp"
#include "nvme/identify.hpp"
#include "nvme/queue.hpp"
#include "nvme/spec.hpp"
#include "storage/file_backend.hpp"
#include "storage/ram_backend.hpp"

using namespace nitro_card::nvme;
using namespace std::chrono_literals;
using common::GuestAddr;
using nitro_card::storage::BlockBackend;
using nitro_card::storage::RamBackend;

namespace {

constexpr std::uint64_t kPage = 4096;
constexpr std::uint64_t kRamBytes = 16 << 20;
constexpr std::uint64_t kVolumeBytes = 4 << 20;
constexpr std::uint64_t kVolumeBlocks = kVolumeBytes / 512;
constexpr char kVolumeId[] = "vol0123456789abcdef0";
constexpr auto kWait = 2s;
constexpr std::uint32_t kMaxTransfer = 128 * 1024;  // MDTS 5

constexpr std::uint8_t op(AdminOpcode o) {
    return static_cast<std::uint8_t>(o);
}
constexpr std::uint8_t op(IoOpcode o) {
    return static_cast<std::uint8_t>(o);
}

// A backend whose completions are held back until release(): commands stay "at the backend"
// for as long as a test needs.
class HeldBackend final : public BlockBackend {
public:
    HeldBackend()
        : inner_(RamBackend::create(kVolumeBytes).value()),
          event_(common::EventFd::create().value()) {}
    [[nodiscard]] std::uint64_t size_bytes() const noexcept override {
        return inner_->size_bytes();
    }
    [[nodiscard]] std::uint32_t queue_depth() const noexcept override {
        return inner_->queue_depth();
    }
    [[nodiscard]] std::uint32_t in_flight() const noexcept override { return inner_->in_flight(); }
    common::Status submit(const nitro_card::storage::Request& r) override {
        auto s = inner_->submit(r);
        if (s) submitted_.fetch_add(1);
        if (s && !held_.load()) (void)event_.signal();
        return s;
    }
    std::size_t reap(std::span<nitro_card::storage::Completion> out) override {
        (void)event_.consume();
        if (held_.load()) return 0;
        const std::size_t n = inner_->reap(out);
        if (inner_->in_flight() > 0) (void)event_.signal();
        return n;
    }
    [[nodiscard]] int completion_fd() const noexcept override { return event_.fd(); }
    void release() {
        held_.store(false);
        (void)event_.signal();
    }
    [[nodiscard]] unsigned submitted() const { return submitted_.load(); }

private:
    std::unique_ptr<RamBackend> inner_;
    common::EventFd event_;
    std::atomic<bool> held_{true};
    std::atomic<unsigned> submitted_{0};
};

// Polling is off unless a case asks for it: most cases pin the doorbell protocol of a worker
// that publishes EventIdx and sleeps after each drain. A polling worker here never backs off
// when it loses its CPU, so it keeps polling on a busy test machine.
ControllerConfig config(std::unique_ptr<BlockBackend> backend = nullptr, unsigned poll_us = 0) {
    ControllerConfig c;
    c.backend = backend ? std::move(backend) : RamBackend::create(kVolumeBytes).value();
    c.serial = kVolumeId;
    c.controller_id = 1;
    c.max_io_queues = 4;
    c.io_thread.poll_us = poll_us;
    c.io_thread.poll_backoff = std::chrono::milliseconds(0);
    return c;
}

// Waits (bounded by kWait) until `done` holds; false when it never did.
template <typename F>
bool eventually(F&& done) {
    const auto deadline = std::chrono::steady_clock::now() + kWait;
    while (!done()) {
        if (std::chrono::steady_clock::now() >= deadline) return false;
        std::this_thread::sleep_for(100us);
    }
    return true;
}

SqEntry command(std::uint8_t opc) {
    SqEntry e{};
    e.opc = opc;
    return e;
}

SqEntry identify(std::uint8_t cns, std::uint32_t nsid, std::uint64_t prp1) {
    auto e = command(op(AdminOpcode::Identify));
    e.nsid = nsid;
    e.prp1 = prp1;
    e.cdw10 = cns;
    return e;
}

SqEntry set_features(FeatureId fid, std::uint32_t cdw11) {
    auto e = command(op(AdminOpcode::SetFeatures));
    e.cdw10 = static_cast<std::uint8_t>(fid);
    e.cdw11 = cdw11;
    return e;
}

SqEntry get_features(FeatureId fid, std::uint32_t sel = 0) {
    auto e = command(op(AdminOpcode::GetFeatures));
    e.cdw10 = static_cast<std::uint8_t>(fid) | sel << 8;
    return e;
}

constexpr std::uint32_t kPc = 1, kIen = 2;

SqEntry create_cq(std::uint16_t qid, std::uint32_t entries, std::uint64_t base,
                  std::uint16_t vector, std::uint32_t flags = kPc | kIen) {
    auto e = command(op(AdminOpcode::CreateIoCq));
    e.prp1 = base;
    e.cdw10 = qid | (entries - 1) << 16;
    e.cdw11 = flags | std::uint32_t{vector} << 16;
    return e;
}

SqEntry create_sq(std::uint16_t qid, std::uint32_t entries, std::uint64_t base, std::uint16_t cqid,
                  std::uint32_t flags = kPc) {
    auto e = command(op(AdminOpcode::CreateIoSq));
    e.prp1 = base;
    e.cdw10 = qid | (entries - 1) << 16;
    e.cdw11 = flags | std::uint32_t{cqid} << 16;
    return e;
}

SqEntry get_log(LogPageId lid, std::uint32_t bytes, std::uint64_t prp1, bool rae = false,
                std::uint32_t nsid = kBroadcastNsid) {
    auto e = command(op(AdminOpcode::GetLogPage));
    e.nsid = nsid;
    e.prp1 = prp1;
    e.cdw10 = static_cast<std::uint8_t>(lid) | (rae ? 1u << 15 : 0u) | (bytes / 4 - 1) << 16;
    return e;
}

SqEntry rw(IoOpcode opc, std::uint64_t slba, std::uint32_t blocks, std::uint64_t prp1,
           std::uint64_t prp2 = 0) {
    auto e = command(op(opc));
    e.nsid = 1;
    e.prp1 = prp1;
    e.prp2 = prp2;
    e.cdw10 = static_cast<std::uint32_t>(slba);
    e.cdw11 = static_cast<std::uint32_t>(slba >> 32);
    e.cdw12 = blocks - 1;
    return e;
}

StatusCode status_of(const CqEntry& c) {
    return status_code(c.status);
}

struct IoQueue {
    std::uint16_t qid = 0;
    std::uint32_t entries = 0;
    std::uint64_t sq = 0, cq = 0;
    std::uint32_t tail = 0, head = 0;
    bool phase = true;
    std::uint16_t next_cid = 0;
};

// The driver side: what Linux's nvme/pci.c does, written against the controller directly.
class Driver {
public:
    explicit Driver(ControllerConfig cfg = config()) {
        mem_ = std::make_shared<common::GuestMemory>(
            common::GuestMemory::create({{GuestAddr(0), kRamBytes, 0}}).value());
        auto c = Controller::create(std::move(cfg));
        REQUIRE(c.has_value());
        ctrl_ = *c;
        ctrl_->attach_memory(mem_);
        std::vector<common::UniqueFd> fds;
        for (unsigned i = 0; i < ctrl_->msix_vectors(); ++i) {
            irqs_.push_back(common::EventFd::create().value());
            fds.emplace_back(::dup(irqs_.back().fd()));
        }
        ctrl_->set_irqs(std::move(fds));
    }

    Controller& ctrl() { return *ctrl_; }
    const common::GuestMemory& mem() const { return *mem_; }
    std::shared_ptr<common::GuestMemory> mem_ptr() const { return mem_; }

    // Page-aligned guest memory, zeroed.
    std::uint64_t alloc(std::uint64_t bytes) {
        const std::uint64_t at = next_;
        next_ += (bytes + kPage - 1) / kPage * kPage;
        REQUIRE(next_ <= kRamBytes);
        auto s = mem_->slice(GuestAddr(at), next_ - at).value();
        std::memset(s.data(), 0, s.size());
        return at;
    }
    std::byte* host(std::uint64_t gpa, std::uint64_t len = 1) {
        return mem_->slice(GuestAddr(gpa), len).value().data();
    }
    template <typename T>
    T get(std::uint64_t gpa) const {
        return mem_->read_obj<T>(GuestAddr(gpa)).value();
    }
    template <typename T>
    void put(std::uint64_t gpa, const T& v) {
        REQUIRE(mem_->write_obj(GuestAddr(gpa), v));
    }
    // Memory the controller writes concurrently: one acquire load, as a driver's READ_ONCE.
    std::uint32_t load32(std::uint64_t gpa) {
        return std::atomic_ref<std::uint32_t>(*reinterpret_cast<std::uint32_t*>(host(gpa, 4)))
            .load(std::memory_order_acquire);
    }
    // A CQE once its phase tag says it is new: dword 3 (with the phase) first, then the rest.
    std::optional<CqEntry> cqe(std::uint64_t gpa, bool phase) {
        const std::uint32_t dw3 = load32(gpa + offsetof(CqEntry, cid));
        if (((dw3 >> 16) & 1) != (phase ? 1u : 0u)) return std::nullopt;
        return get<CqEntry>(gpa);
    }

    std::uint32_t rd32(std::uint64_t off) {
        return static_cast<std::uint32_t>(ctrl_->bar0_read(off, 4));
    }
    void wr32(std::uint64_t off, std::uint32_t v) { ctrl_->bar0_write(off, 4, v); }
    // lo_hi_readq/lo_hi_writeq, as nvme/pci.c accesses CAP, ASQ and ACQ.
    std::uint64_t rd64(std::uint64_t off) { return rd32(off) | std::uint64_t{rd32(off + 4)} << 32; }
    void wr64(std::uint64_t off, std::uint64_t v) {
        wr32(off, static_cast<std::uint32_t>(v));
        wr32(off + 4, static_cast<std::uint32_t>(v >> 32));
    }
    std::uint64_t irqs(unsigned vector) { return irqs_.at(vector).consume().value(); }

    static constexpr std::uint32_t kCc = (cc::CSS_NVM << 4) |
                                         (std::uint32_t{kSqEntrySizeLog2} << 16) |
                                         (std::uint32_t{kCqEntrySizeLog2} << 20);

    // nvme_pci_configure_admin_queue + nvme_enable_ctrl (nvme/pci.c:1851-1898, core.c:2377).
    void enable(std::uint32_t depth = 32) {
        REQUIRE(rd32(reg::CSTS) != 0xffffffff);
        cap_ = rd64(reg::CAP);
        wr32(reg::CC, 0);
        REQUIRE((rd32(reg::CSTS) & 1) == 0);
        admin_depth_ = depth;
        asq_ = alloc(depth * sizeof(SqEntry));
        acq_ = alloc(depth * sizeof(CqEntry));
        wr32(reg::AQA, (depth - 1) | (depth - 1) << 16);
        wr64(reg::ASQ, asq_);
        wr64(reg::ACQ, acq_);
        wr32(reg::CC, kCc);
        REQUIRE(rd32(reg::CC) == kCc);
        wr32(reg::CC, kCc | 1);
        REQUIRE((rd32(reg::CSTS) & 1) == 1);
        admin_tail_ = admin_head_ = 0;
        admin_phase_ = true;
        shadow_ = eventidx_ = 0;
    }

    std::uint16_t admin_submit(SqEntry e) {
        e.cid = next_admin_cid_++;
        put(asq_ + admin_tail_ * sizeof(SqEntry), e);
        admin_tail_ = (admin_tail_ + 1) % admin_depth_;
        wr32(reg::DOORBELL_BASE, admin_tail_);
        return e.cid;
    }
    std::optional<CqEntry> admin_poll() {
        const auto c = cqe(acq_ + admin_head_ * sizeof(CqEntry), admin_phase_);
        if (!c) return std::nullopt;
        if (++admin_head_ == admin_depth_) admin_head_ = 0, admin_phase_ = !admin_phase_;
        wr32(reg::DOORBELL_BASE + 4, admin_head_);
        return c;
    }
    // Admin commands complete inside the doorbell write: the CQE is there when it returns.
    CqEntry admin(const SqEntry& e) {
        const std::uint16_t cid = admin_submit(e);
        auto c = admin_poll();
        REQUIRE(c.has_value());
        CHECK(c->cid == cid);
        CHECK(c->sqid == 0);
        CHECK(c->sqhd == admin_tail_);
        return *c;
    }
    StatusCode admin_status(const SqEntry& e) { return status_of(admin(e)); }

    IoQueue create_queue(std::uint16_t qid, std::uint32_t entries, std::uint16_t vector,
                         std::uint32_t cq_entries = 0) {
        IoQueue q;
        q.qid = qid;
        q.entries = entries;
        const std::uint32_t cqn = cq_entries ? cq_entries : entries;
        q.cq = alloc(cqn * sizeof(CqEntry));
        q.sq = alloc(entries * sizeof(SqEntry));
        REQUIRE(admin_status(create_cq(qid, cqn, q.cq, vector)) == StatusCode::Success);
        REQUIRE(admin_status(create_sq(qid, entries, q.sq, qid)) == StatusCode::Success);
        cq_entries_[qid] = cqn;
        return q;
    }

    // Doorbell Buffer Config: shadow doorbells in PRP1, EventIdx in PRP2.
    void dbbuf() {
        shadow_ = alloc(kPage);
        eventidx_ = alloc(kPage);
        auto e = command(op(AdminOpcode::DoorbellBufferConfig));
        e.prp1 = shadow_;
        e.prp2 = eventidx_;
        REQUIRE(admin_status(e) == StatusCode::Success);
    }
    std::uint32_t event_idx(std::uint16_t qid, bool cq) {
        return load32(eventidx_ + 8 * qid + (cq ? 4 : 0));
    }
    std::uint32_t shadow(std::uint16_t qid, bool cq) {
        return get<std::uint32_t>(shadow_ + 8 * qid + (cq ? 4 : 0));
    }

    // The MMIO doorbell write KVM turns into an ioeventfd signal once the vmm registered it.
    void ring_ioeventfd(std::uint64_t offset) {
        for (const auto& d : ctrl_->doorbells())
            if (d.offset == offset) {
                const std::uint64_t one = 1;
                REQUIRE(::write(d.eventfd, &one, sizeof one) == sizeof one);
                ++ioeventfd_rings;
                return;
            }
        FAIL("no ioeventfd for doorbell ", offset);
    }
    void store_shadow(std::uint16_t qid, bool cq, std::uint32_t value) {
        std::atomic_ref<std::uint32_t>(
            *reinterpret_cast<std::uint32_t*>(host(shadow_ + 8 * qid + (cq ? 4 : 0), 4)))
            .store(value, std::memory_order_seq_cst);
    }
    // nvme_write_sq_db / nvme_ring_cq_doorbell with nvme_dbbuf_update_and_check_event.
    void publish(std::uint16_t qid, bool cq, std::uint32_t value, std::uint32_t old) {
        const std::uint64_t reg = cq ? cq_head_doorbell(qid, 0) : sq_tail_doorbell(qid, 0);
        if (shadow_ == 0) return wr32(reg, value);
        store_shadow(qid, cq, value);
        std::atomic_thread_fence(std::memory_order_seq_cst);
        const auto ei = static_cast<std::uint16_t>(event_idx(qid, cq));
        if (need_event(ei, static_cast<std::uint16_t>(value), static_cast<std::uint16_t>(old)))
            ring_ioeventfd(reg);
    }

    // Writes entries into the SQ and rings once.
    std::uint16_t io_put(IoQueue& q, SqEntry e) {
        e.cid = q.next_cid++;
        put(q.sq + q.tail * sizeof(SqEntry), e);
        q.tail = (q.tail + 1) % q.entries;
        return e.cid;
    }
    void io_ring(IoQueue& q, std::uint32_t old_tail) { publish(q.qid, false, q.tail, old_tail); }
    std::uint16_t io_submit(IoQueue& q, const SqEntry& e) {
        const std::uint32_t old = q.tail;
        const std::uint16_t cid = io_put(q, e);
        io_ring(q, old);
        return cid;
    }
    std::optional<CqEntry> io_poll(IoQueue& q, bool update_head = true) {
        const auto c = cqe(q.cq + q.head * sizeof(CqEntry), q.phase);
        if (!c) return std::nullopt;
        const std::uint32_t old = q.head;
        if (++q.head == cq_entries_[q.qid]) q.head = 0, q.phase = !q.phase;
        if (update_head) publish(q.qid, true, q.head, old);
        return c;
    }
    CqEntry io_wait(IoQueue& q, bool update_head = true) {
        const auto deadline = std::chrono::steady_clock::now() + kWait;
        while (std::chrono::steady_clock::now() < deadline) {
            if (auto c = io_poll(q, update_head)) return *c;
            std::this_thread::sleep_for(100us);
        }
        FAIL("no completion on queue ", q.qid, " within 2 s");
        return {};
    }
    CqEntry io(IoQueue& q, const SqEntry& e) {
        const std::uint16_t cid = io_submit(q, e);
        const CqEntry c = io_wait(q);
        CHECK(c.cid == cid);
        CHECK(c.sqid == q.qid);
        return c;
    }
    StatusCode io_status(IoQueue& q, const SqEntry& e) { return status_of(io(q, e)); }

    // PRP1/PRP2 for a guest-contiguous buffer, with a PRP list when it spans over two pages
    // (nvme_pci_setup_prps).
    std::pair<std::uint64_t, std::uint64_t> prps(std::uint64_t gpa, std::uint64_t len) {
        const std::uint64_t first = std::min(len, kPage - gpa % kPage);
        if (len <= first) return {gpa, 0};
        const std::uint64_t second = gpa + first;
        if (len - first <= kPage) return {gpa, second};
        const std::uint64_t list = alloc(kPage);
        std::uint64_t i = 0;
        for (std::uint64_t at = second; at < gpa + len; at += kPage) put(list + 8 * i++, at);
        return {gpa, list};
    }

    unsigned ioeventfd_rings = 0;
    std::uint64_t cap_ = 0;

private:
    std::shared_ptr<common::GuestMemory> mem_;
    std::shared_ptr<Controller> ctrl_;
    std::vector<common::EventFd> irqs_;
    std::uint64_t next_ = 0x10000;
    std::uint64_t asq_ = 0, acq_ = 0;
    std::uint32_t admin_depth_ = 0, admin_tail_ = 0, admin_head_ = 0;
    bool admin_phase_ = true;
    std::uint16_t next_admin_cid_ = 0x100;
    std::uint64_t shadow_ = 0, eventidx_ = 0;
    std::uint32_t cq_entries_[64] = {};
};

void fill(std::byte* p, std::size_t n, unsigned seed) {
    for (std::size_t i = 0; i < n; ++i) p[i] = static_cast<std::byte>((i * 131 + seed) >> 3);
}

bool zeroes(const std::byte* p, std::size_t n) {
    for (std::size_t i = 0; i < n; ++i)
        if (p[i] != std::byte{0}) return false;
    return true;
}

std::string ascii(const char* field, std::size_t n) {
    return std::string(field, n);
}

}  // namespace

// ---- identity and registers -------------------------------------------------------------------

TEST_CASE("nvme controller: EBS identity in config space and Identify Controller") {
    Driver d;
    const auto hdr = d.ctrl().config_header();
    REQUIRE(hdr.size() == 64);
    auto u16 = [&](std::size_t o) { return static_cast<std::uint16_t>(hdr[o] | hdr[o + 1] << 8); };
    CHECK(u16(0x00) == 0x1d0f);
    CHECK(u16(0x02) == 0x8061);
    CHECK(u16(0x2c) == 0x1d0f);
    CHECK(u16(0x2e) == 0x8061);
    CHECK(hdr[0x0b] == 0x01);
    CHECK(hdr[0x0a] == 0x08);
    CHECK(hdr[0x09] == 0x02);
    CHECK(d.ctrl().bar0_size() == 16 * 1024);
    CHECK(d.ctrl().msix_vectors() == 5);
    CHECK(d.ctrl().serial() == kVolumeId);

    d.enable();
    const std::uint64_t buf = d.alloc(kPage);
    REQUIRE(d.admin_status(identify(1, 0, buf)) == StatusCode::Success);
    const auto id = d.get<IdentifyController>(buf);
    CHECK(id.vid == 0x1d0f);
    CHECK(id.ssvid == 0x1d0f);
    CHECK(ascii(id.sn, 20) == kVolumeId);
    CHECK(ascii(id.mn, 40) == fmt::format("{:<40}", "Amazon Elastic Block Store"));
    CHECK(ascii(id.fr, 8) == "1.0     ");
    CHECK(id.mdts == 5);
    CHECK(id.cntlid == 1);
    CHECK(id.ver == version(1, 4, 0));
    CHECK((id.oacs & OACS_DBBUF) != 0);
    CHECK(id.oncs == (ONCS_DSM | ONCS_WRITE_ZEROES));
    CHECK((id.vwc & VWC_PRESENT) != 0);
    CHECK(id.sgls == 0);
    CHECK(id.nn == 1);
    CHECK(id.sqes == 0x66);
    CHECK(id.cqes == 0x44);
    CHECK(id.oaes == 0);
    CHECK(id.lpa == 0);
    CHECK(id.kas == 0);
    CHECK(id.apsta == 0);
    const std::string nqn(id.subnqn);
    CHECK(nqn.starts_with("nqn.2014-08.org.nvmexpress:uuid:"));
    CHECK(nqn.size() == 32 + 36);

    // Another volume gets another SUBNQN and NGUID; instance storage has its own model and id.
    auto other = config();
    other.serial = "vol0fedcba987654321f";
    other.kind = VolumeKind::InstanceStore;
    auto c2 = Controller::create(std::move(other));
    REQUIRE(c2.has_value());
    CHECK((*c2)->info().subnqn != d.ctrl().info().subnqn);
    CHECK((*c2)->info().nguid != d.ctrl().info().nguid);
    CHECK((*c2)->info().model == "Amazon EC2 NVMe Instance Storage");
    CHECK((*c2)->config_header()[2] == 0x00);
    CHECK((*c2)->config_header()[3] == 0xcd);
}

TEST_CASE("nvme controller: configuration is validated") {
    auto no_backend = config();
    no_backend.backend.reset();
    CHECK_FALSE(Controller::create(std::move(no_backend)).has_value());
    auto long_serial = config();
    long_serial.serial = "vol0123456789abcdef0123";
    CHECK_FALSE(Controller::create(std::move(long_serial)).has_value());
    auto no_queues = config();
    no_queues.max_io_queues = 0;
    CHECK_FALSE(Controller::create(std::move(no_queues)).has_value());
    auto big_mdts = config();
    big_mdts.mdts = 12;
    CHECK_FALSE(Controller::create(std::move(big_mdts)).has_value());
    CHECK(is_ebs_volume_id(kVolumeId));
    CHECK_FALSE(is_ebs_volume_id("vol0123456789abcdef"));
    CHECK_FALSE(is_ebs_volume_id("vol0123456789abcdefg"));
}

TEST_CASE("nvme registers: accesses Linux makes, and the ones it must not") {
    RegisterFile r(0x0000'0020'0f01'03ffull, version(1, 4, 0));
    CHECK(r.read(reg::CAP, 8).value() == 0x0000'0020'0f01'03ffull);
    CHECK(r.read(reg::CAP, 4).value() == 0x0f01'03ff);
    CHECK(r.read(reg::CAP + 4, 4).value() == 0x20);
    CHECK(r.read(reg::VS, 4).value() == 0x00010400);
    CHECK(r.read(reg::CC, 2).error() == RegisterFault::BadSize);
    CHECK(r.read(reg::CC + 1, 4).error() == RegisterFault::BadSize);
    CHECK(r.read(reg::CC, 8).error() == RegisterFault::BadSize);
    CHECK(r.read(0x40, 4).error() == RegisterFault::Hole);
    CHECK(r.write(reg::CAP, 4, 0).error() == RegisterFault::ReadOnly);
    CHECK(r.write(reg::CSTS, 4, 1).error() == RegisterFault::ReadOnly);
    // ASQ as two dwords (lo_hi_writeq) and as one qword.
    REQUIRE(r.write(reg::ASQ, 4, 0x1234'5000).has_value());
    REQUIRE(r.write(reg::ASQ + 4, 4, 0x1).has_value());
    CHECK(r.asq() == 0x1'1234'5000ull);
    REQUIRE(r.write(reg::ACQ, 8, 0x2'0000'3000ull).has_value());
    CHECK(r.acq() == 0x2'0000'3000ull);
    // Reserved bits of AQA and CC read back as zero.
    REQUIRE(r.write(reg::AQA, 4, 0xffff'ffff).has_value());
    CHECK(r.aqa() == 0x0fff'0fff);
    auto w = r.write(reg::CC, 4, 0xffff'ffff);
    REQUIRE(w.has_value());
    CHECK(w->reg == reg::CC);
    CHECK(w->new_value == writable::CC);
    // INTMS/INTMC accept writes and keep nothing (MSI-X only).
    REQUIRE(r.write(reg::INTMS, 4, 1).has_value());
    CHECK(r.read(reg::INTMS, 4).value() == 0);
    r.reset();
    CHECK(r.cc() == 0);
    CHECK(r.read(reg::CAP, 8).value() == 0x0000'0020'0f01'03ffull);
}

TEST_CASE("nvme controller: CAP, VS, enable, shutdown and disable") {
    Driver d;
    const std::uint64_t cap = d.rd64(reg::CAP);
    CHECK(cap::MQES.get(cap) == 1023);
    CHECK(cap::CQR.get(cap) == 1);
    CHECK(cap::TO.get(cap) > 0);
    CHECK(cap::DSTRD.get(cap) == 0);
    CHECK(((cap >> 37) & 1) == 1);  // CSS: NVM command set
    CHECK(((cap >> 43) & 1) == 0);  // no I/O command sets (CSI) path
    CHECK(cap::MPSMIN.get(cap) == 0);
    CHECK(cap::MPSMAX.get(cap) == 0);
    CHECK(d.ctrl().bar0_read(reg::CAP, 8) == cap);
    CHECK(d.rd32(reg::VS) == 0x00010400);
    CHECK(d.rd32(reg::CSTS) == 0);
    CHECK(d.rd32(reg::CMBSZ) == 0);
    CHECK(d.rd32(reg::INTMS) == 0);

    // Odd sizes, misaligned and unknown offsets are ignored, counted, and change nothing.
    const auto bad_before = d.ctrl().stats().bad_register_accesses;
    d.ctrl().bar0_write(reg::CC, 2, 1);
    d.ctrl().bar0_write(reg::CC + 2, 4, 1);
    d.ctrl().bar0_write(reg::VS, 4, 0);
    d.ctrl().bar0_write(0x1002, 4, 1);
    d.ctrl().bar0_write(0x1000, 8, 1);
    d.ctrl().bar0_write(0x4000, 4, 1);
    CHECK(d.rd32(reg::CC) == 0);
    CHECK(d.rd32(reg::VS) == 0x00010400);
    CHECK(d.ctrl().stats().bad_register_accesses == bad_before + 6);

    d.enable();
    CHECK(d.rd32(reg::CSTS) == 1);
    // Shutdown: SHST reads "complete" once the write returns.
    d.wr32(reg::CC, Driver::kCc | 1 | cc::SHN_NORMAL << 14);
    CHECK(csts::SHST.get(d.rd32(reg::CSTS)) == csts::SHST_COMPLETE);
    // Disable: RDY drops; the admin doorbell of a disabled controller does nothing.
    d.wr32(reg::CC, Driver::kCc);
    CHECK((d.rd32(reg::CSTS) & 1) == 0);
    d.enable();
    CHECK(d.rd32(reg::CSTS) == 1);
    CHECK(d.ctrl().stats().slow_path_accesses() > 0);

    // reset(): registers back to power-on values.
    d.ctrl().reset();
    CHECK(d.rd32(reg::CC) == 0);
    CHECK(d.rd32(reg::CSTS) == 0);
    CHECK(d.rd64(reg::ASQ) == 0);
    CHECK(d.rd64(reg::CAP) == cap);
}

TEST_CASE("nvme controller: CC.EN = 1 with bad admin queue registers sets CSTS.CFS") {
    Driver d;
    const std::uint64_t q = d.alloc(kPage);
    auto try_enable = [&](std::uint32_t aqa, std::uint64_t asq, std::uint64_t acq,
                          std::uint32_t cc) {
        d.wr32(reg::CC, 0);
        d.wr32(reg::AQA, aqa);
        d.wr64(reg::ASQ, asq);
        d.wr64(reg::ACQ, acq);
        d.wr32(reg::CC, cc);
        d.wr32(reg::CC, cc | 1);
        return d.rd32(reg::CSTS);
    };
    const std::uint32_t good = 31 | 31 << 16;
    CHECK(try_enable(0, q, q + 2048, Driver::kCc) == 2);              // one-entry queues
    CHECK(try_enable(good, q + 64, q + 2048, Driver::kCc) == 2);      // ASQ not page aligned
    CHECK(try_enable(good, kRamBytes, q, Driver::kCc) == 2);          // ASQ outside guest RAM
    CHECK(try_enable(good, q, q + 2048, Driver::kCc | 1 << 7) == 2);  // 8 KiB pages
    CHECK(try_enable(good, q, q + 4096, Driver::kCc) == 1);           // and a good one
}

// ---- the admin sequence Linux 6.1 sends (devices.md §2.4) ------------------------------------

TEST_CASE("nvme controller: Linux 6.1 bring-up, identify and queue setup") {
    Driver d;
    d.enable();
    const std::uint64_t buf = d.alloc(kPage);

    REQUIRE(d.admin_status(identify(1, 0, buf)) == StatusCode::Success);
    CHECK(d.irqs(0) >= 1);  // vector 0 after admin completions

    // Set Features Number of Queues: one queue asked (0-based 0), one granted.
    auto nq = d.admin(set_features(FeatureId::NumberOfQueues, 0));
    CHECK(status_of(nq) == StatusCode::Success);
    CHECK(nq.dw0 == 0);
    // More than the controller has: capped at max_io_queues (4, 0-based 3).
    nq = d.admin(set_features(FeatureId::NumberOfQueues, 63 | 63 << 16));
    CHECK(nq.dw0 == (3u | 3u << 16));
    CHECK(d.admin_status(set_features(FeatureId::NumberOfQueues, 0xffff)) ==
          StatusCode::InvalidField);

    IoQueue q1 = d.create_queue(1, 64, 1);
    // Number of Queues may not change once I/O queues exist.
    CHECK(d.admin_status(set_features(FeatureId::NumberOfQueues, 0)) ==
          StatusCode::CommandSequenceError);
    CHECK(d.ctrl().doorbells().empty());  // no ioeventfds before Doorbell Buffer Config
    d.dbbuf();
    const auto dbs = d.ctrl().doorbells();
    REQUIRE(dbs.size() == 2);
    CHECK(dbs[0].offset == 0x1008);
    CHECK(dbs[1].offset == 0x100c);
    CHECK(dbs[0].size == 4);
    CHECK(dbs[0].eventfd >= 0);
    CHECK(d.admin_status(set_features(FeatureId::AsyncEventConfiguration, 0x100)) ==
          StatusCode::Success);

    // Identify CNS 6 (I/O command set controller): an NVMe error Linux tolerates.
    auto cns6 = identify(6, 0, buf);
    CHECK(d.admin_status(cns6) == StatusCode::InvalidField);
    CHECK(d.admin_status(identify(0x10, 0, buf)) == StatusCode::InvalidField);

    // CNS 2: the active namespace list is {1}.
    REQUIRE(d.admin_status(identify(2, 0, buf)) == StatusCode::Success);
    CHECK(d.get<std::uint32_t>(buf) == 1);
    CHECK(d.get<std::uint32_t>(buf + 4) == 0);
    REQUIRE(d.admin_status(identify(2, 1, buf)) == StatusCode::Success);
    CHECK(d.get<std::uint32_t>(buf) == 0);

    // CNS 3: an NGUID descriptor, the same NGUID as Identify Namespace.
    REQUIRE(d.admin_status(identify(3, 1, buf)) == StatusCode::Success);
    const auto desc = d.get<NamespaceIdDescriptor>(buf);
    CHECK(desc.nidt == NIDT_NGUID);
    CHECK(desc.nidl == 16);
    std::array<std::uint8_t, 16> nguid{};
    std::memcpy(nguid.data(), d.host(buf + 4, 16), 16);
    CHECK(nguid == d.ctrl().info().nguid);
    CHECK(d.get<std::uint8_t>(buf + 20) == 0);  // list end

    // CNS 0 (twice, as Linux does).
    for (int i = 0; i < 2; ++i) {
        REQUIRE(d.admin_status(identify(0, 1, buf)) == StatusCode::Success);
        const auto ns = d.get<IdentifyNamespace>(buf);
        CHECK(ns.nsze == kVolumeBlocks);
        CHECK(ns.ncap == kVolumeBlocks);
        CHECK(ns.nlbaf == 0);
        CHECK(ns.flbas == 0);
        CHECK(ns.lbaf[0].lbads == 9);
        CHECK(std::memcmp(ns.nguid, nguid.data(), 16) == 0);
    }
    CHECK(d.admin_status(identify(0, 2, buf)) == StatusCode::InvalidNamespace);
    CHECK(d.admin_status(identify(3, 0, buf)) == StatusCode::InvalidNamespace);

    // And the namespace reads: the first I/O goes through the shadow doorbell and ioeventfd.
    const std::uint64_t data = d.alloc(kPage);
    CHECK(d.io_status(q1, rw(IoOpcode::Read, 0, 8, data)) == StatusCode::Success);
    CHECK(d.ioeventfd_rings >= 1);
    CHECK(d.irqs(1) >= 1);
    CHECK(d.ctrl().stats().admin_commands >= 15);
}

TEST_CASE("nvme controller: features, logs, abort and asynchronous events") {
    Driver d;
    d.enable();
    const std::uint64_t buf = d.alloc(kPage);

    auto vwc = d.admin(get_features(FeatureId::VolatileWriteCache));
    CHECK(vwc.dw0 == 1);
    CHECK(d.admin_status(set_features(FeatureId::VolatileWriteCache, 0)) == StatusCode::Success);
    CHECK(d.admin(get_features(FeatureId::VolatileWriteCache)).dw0 == 0);
    CHECK(d.admin(get_features(FeatureId::VolatileWriteCache, 1)).dw0 == 1);  // default
    CHECK(d.admin(get_features(FeatureId::NumberOfQueues)).dw0 == (3u | 3u << 16));
    CHECK(d.admin_status(set_features(FeatureId::InterruptCoalescing, 0x0a05)) ==
          StatusCode::Success);
    CHECK(d.admin(get_features(FeatureId::InterruptCoalescing)).dw0 == 0x0a05);
    CHECK(d.admin_status(set_features(FeatureId::Arbitration, 3)) == StatusCode::Success);
    CHECK(d.admin(get_features(FeatureId::TemperatureThreshold)).dw0 == kWarningTempK);
    CHECK(d.admin_status(set_features(FeatureId::PowerManagement, 1)) == StatusCode::InvalidField);
    CHECK(d.admin_status(set_features(FeatureId::Timestamp, 0)) == StatusCode::InvalidField);
    CHECK(d.admin_status(set_features(static_cast<FeatureId>(0x7f), 0)) ==
          StatusCode::InvalidField);
    CHECK(d.admin_status(get_features(static_cast<FeatureId>(0x7f))) == StatusCode::InvalidField);
    auto save = set_features(FeatureId::Arbitration, 0);
    save.cdw10 |= 1u << 31;
    CHECK(d.admin_status(save) == StatusCode::FeatureNotSaveable);

    // Abort: "not aborted".
    auto abort = command(op(AdminOpcode::Abort));
    abort.cdw10 = 1 | 5u << 16;
    const auto a = d.admin(abort);
    CHECK(status_of(a) == StatusCode::Success);
    CHECK((a.dw0 & 1) == 1);

    // Logs: error log empty, SMART sane, firmware slot 1 = FR.
    std::memset(d.host(buf, kPage), 0xff, kPage);
    REQUIRE(d.admin_status(get_log(LogPageId::ErrorInformation, 64, buf)) == StatusCode::Success);
    CHECK(zeroes(d.host(buf, 64), 64));
    REQUIRE(d.admin_status(get_log(LogPageId::SmartHealth, 512, buf)) == StatusCode::Success);
    const auto smart = d.get<SmartLog>(buf);
    CHECK((smart.temperature[0] | smart.temperature[1] << 8) == 310);
    CHECK(smart.avail_spare == 100);
    CHECK(smart.critical_warning == 0);
    REQUIRE(d.admin_status(get_log(LogPageId::FirmwareSlot, 512, buf)) == StatusCode::Success);
    const auto fw = d.get<FirmwareSlotLog>(buf);
    CHECK(fw.afi == 1);
    CHECK(ascii(fw.frs[0], 8) == "1.0     ");
    CHECK(d.admin_status(get_log(LogPageId::CommandsSupportedAndEffects, 64, buf)) ==
          StatusCode::InvalidLogPage);
    CHECK(d.admin_status(get_log(static_cast<LogPageId>(0x70), 64, buf)) ==
          StatusCode::InvalidLogPage);
    CHECK(d.admin_status(get_log(LogPageId::SmartHealth, 512, buf, false, 1)) ==
          StatusCode::InvalidField);

    // Asynchronous Event Requests are held, at most AERL + 1 of them.
    for (int i = 0; i <= kAsyncEventLimit; ++i) {
        d.admin_submit(command(op(AdminOpcode::AsyncEventRequest)));
        CHECK_FALSE(d.admin_poll().has_value());
    }
    CHECK(d.admin_status(command(op(AdminOpcode::AsyncEventRequest))) ==
          StatusCode::AsyncEventRequestLimitExceeded);
    (void)d.irqs(0);

    // A doorbell of a queue that does not exist: ignored, reported through a held AER.
    d.wr32(sq_tail_doorbell(3, 0), 1);
    auto ev = d.admin_poll();
    REQUIRE(ev.has_value());
    CHECK(status_of(*ev) == StatusCode::Success);
    CHECK((ev->dw0 & 0x7) == static_cast<unsigned>(AsyncEventType::ErrorStatus));
    CHECK(((ev->dw0 >> 8) & 0xff) ==
          static_cast<unsigned>(ErrorEventInfo::InvalidDoorbellRegister));
    CHECK(((ev->dw0 >> 16) & 0xff) == static_cast<unsigned>(LogPageId::ErrorInformation));
    CHECK(d.irqs(0) >= 1);
    // Masked until the error log is read with RAE = 0.
    d.wr32(sq_tail_doorbell(3, 0), 1);
    CHECK_FALSE(d.admin_poll().has_value());
    REQUIRE(d.admin_status(get_log(LogPageId::ErrorInformation, 64, buf, true)) ==
            StatusCode::Success);
    d.wr32(sq_tail_doorbell(3, 0), 1);
    CHECK_FALSE(d.admin_poll().has_value());
    REQUIRE(d.admin_status(get_log(LogPageId::ErrorInformation, 64, buf, false)) ==
            StatusCode::Success);
    // An admin SQ tail past the queue: Invalid Doorbell Write Value, and the write is ignored.
    d.wr32(reg::DOORBELL_BASE, 32);
    ev = d.admin_poll();
    REQUIRE(ev.has_value());
    CHECK(((ev->dw0 >> 8) & 0xff) ==
          static_cast<unsigned>(ErrorEventInfo::InvalidDoorbellWriteValue));
    CHECK(d.ctrl().stats().invalid_doorbells == 4);
    // The admin queue still serves.
    CHECK(d.admin_status(identify(1, 0, buf)) == StatusCode::Success);
}

// ---- I/O ---------------------------------------------------------------------------------------

namespace {

// Writes `bytes` from a fresh pattern at `slba`, reads them back into another buffer placed at
// `offset` in its first page, and compares.
void round_trip(Driver& d, IoQueue& q, std::uint64_t slba, std::uint64_t bytes,
                std::uint64_t offset, unsigned seed) {
    const std::uint64_t src = d.alloc(bytes + kPage) + offset;
    const std::uint64_t dst = d.alloc(bytes + kPage) + offset;
    fill(d.host(src, bytes), bytes, seed);
    const auto blocks = static_cast<std::uint32_t>(bytes / 512);
    auto [w1, w2] = d.prps(src, bytes);
    REQUIRE(d.io_status(q, rw(IoOpcode::Write, slba, blocks, w1, w2)) == StatusCode::Success);
    auto [r1, r2] = d.prps(dst, bytes);
    REQUIRE(d.io_status(q, rw(IoOpcode::Read, slba, blocks, r1, r2)) == StatusCode::Success);
    CHECK(std::memcmp(d.host(src, bytes), d.host(dst, bytes), bytes) == 0);
}

void io_suite(Driver& d, IoQueue& q) {
    round_trip(d, q, 0, 512, 0, 1);                   // PRP1 only
    round_trip(d, q, 100, 4096, 512, 2);              // PRP1 with an offset + PRP2
    round_trip(d, q, 200, 8192, 0, 3);                // PRP1 + PRP2
    round_trip(d, q, 300, 64 * 1024, 0, 4);           // PRP list
    round_trip(d, q, 600, kMaxTransfer, 1024, 5);     // MDTS, PRP1 offset, list
    round_trip(d, q, kVolumeBlocks - 8, 4096, 0, 6);  // the last blocks

    // Flush.
    CHECK(d.io_status(q, command(op(IoOpcode::Flush))) == StatusCode::InvalidNamespace);
    auto flush = command(op(IoOpcode::Flush));
    flush.nsid = 1;
    CHECK(d.io_status(q, flush) == StatusCode::Success);

    // Write Zeroes over part of a written range.
    const std::uint64_t buf = d.alloc(8192);
    fill(d.host(buf, 8192), 8192, 9);
    REQUIRE(d.io_status(q, rw(IoOpcode::Write, 1000, 16, buf, buf + 4096)) == StatusCode::Success);
    auto wz = rw(IoOpcode::WriteZeroes, 1004, 4, 0);
    REQUIRE(d.io_status(q, wz) == StatusCode::Success);
    std::memset(d.host(buf, 8192), 0xff, 8192);
    REQUIRE(d.io_status(q, rw(IoOpcode::Read, 1000, 16, buf, buf + 4096)) == StatusCode::Success);
    CHECK_FALSE(zeroes(d.host(buf, 2048), 2048));
    CHECK(zeroes(d.host(buf + 2048, 2048), 2048));
    CHECK_FALSE(zeroes(d.host(buf + 4096, 4096), 4096));

    // Dataset Management, deallocate two ranges (and one empty one).
    fill(d.host(buf, 8192), 8192, 10);
    REQUIRE(d.io_status(q, rw(IoOpcode::Write, 2000, 16, buf, buf + 4096)) == StatusCode::Success);
    const std::uint64_t ranges = d.alloc(kPage);
    d.put(ranges, DsmRange{0, 2, 2000});
    d.put(ranges + 16, DsmRange{0, 0, 0});
    d.put(ranges + 32, DsmRange{0, 4, 2010});
    auto dsm = command(op(IoOpcode::DatasetManagement));
    dsm.nsid = 1;
    dsm.prp1 = ranges;
    dsm.cdw10 = 2;       // three ranges
    dsm.cdw11 = 1 << 2;  // AD
    REQUIRE(d.io_status(q, dsm) == StatusCode::Success);
    REQUIRE(d.io_status(q, rw(IoOpcode::Read, 2000, 16, buf, buf + 4096)) == StatusCode::Success);
    CHECK(zeroes(d.host(buf, 1024), 1024));
    CHECK_FALSE(zeroes(d.host(buf + 1024, 4096), 4096));
    CHECK(zeroes(d.host(buf + 5120, 2048), 2048));
    CHECK_FALSE(zeroes(d.host(buf + 7168, 1024), 1024));
}

}  // namespace

TEST_CASE("nvme controller: I/O through slow-path doorbells") {
    Driver d;
    d.enable();
    REQUIRE(d.admin(set_features(FeatureId::NumberOfQueues, 1 | 1 << 16)).dw0 == (1u | 1u << 16));
    IoQueue q = d.create_queue(1, 64, 1);
    (void)d.irqs(1);
    io_suite(d, q);
    CHECK(d.ioeventfd_rings == 0);
    CHECK(d.irqs(1) >= 1);
    const auto s = d.ctrl().stats();
    CHECK(s.bytes_written >= 512 + 4096 + 8192 + 64 * 1024 + kMaxTransfer);
    CHECK(s.bytes_read >= s.bytes_written - 2 * 8192);
    CHECK(s.write_commands >= 8);
    CHECK(s.read_commands >= 8);
    CHECK(s.doorbell_writes > 0);

    // A second queue pair on another vector, and the SMART data units follow the counters.
    IoQueue q2 = d.create_queue(2, 16, 2);
    round_trip(d, q2, 3000, 4096, 0, 11);
    CHECK(d.irqs(2) >= 1);
    const std::uint64_t log = d.alloc(kPage);
    REQUIRE(d.admin_status(get_log(LogPageId::SmartHealth, 512, log)) == StatusCode::Success);
    const auto smart = d.get<SmartLog>(log);
    std::uint64_t units = 0, reads = 0;
    std::memcpy(&units, smart.data_units_written, 8);
    std::memcpy(&reads, smart.host_read_commands, 8);
    CHECK(units == (d.ctrl().stats().bytes_written / 512 + 999) / 1000);
    CHECK(reads == d.ctrl().stats().read_commands);
}

TEST_CASE("nvme controller: I/O through shadow doorbells, ioeventfds and EventIdx") {
    Driver d;
    d.enable();
    IoQueue q = d.create_queue(1, 32, 1);
    d.dbbuf();
    CHECK(d.event_idx(1, false) == 0);
    io_suite(d, q);
    CHECK(d.ioeventfd_rings > 0);
    // After draining the SQ the controller published EventIdx = the tail it processed.
    CHECK(d.event_idx(1, false) == q.tail);

    // A batch of 8 behind one doorbell completes with one interrupt.
    (void)d.irqs(1);
    const std::uint64_t buf = d.alloc(8 * 512);
    const std::uint32_t old = q.tail;
    for (std::uint32_t i = 0; i < 8; ++i)
        (void)d.io_put(q, rw(IoOpcode::Read, i, 1, buf + 512 * i));
    const unsigned rings = d.ioeventfd_rings;
    d.io_ring(q, old);
    CHECK(d.ioeventfd_rings == rings + 1);
    for (int i = 0; i < 8; ++i) CHECK(status_of(d.io_wait(q)) == StatusCode::Success);
    CHECK(d.irqs(1) == 1);
    CHECK(d.event_idx(1, false) == q.tail);

    // Queues created after Doorbell Buffer Config use shadow doorbells from the start.
    IoQueue q2 = d.create_queue(2, 8, 2);
    CHECK(d.ctrl().doorbells().size() == 4);
    for (int i = 0; i < 20; ++i)
        round_trip(d, q2, 4000 + 8 * static_cast<std::uint64_t>(i), 4096, 0,
                   20 + static_cast<unsigned>(i));
    // A slow-path doorbell write (the vmm has not registered the ioeventfd yet) is a wake-up
    // too; the value still comes from the shadow doorbell.
    (void)d.io_put(q, rw(IoOpcode::Read, 0, 1, buf));
    d.store_shadow(1, false, q.tail);
    d.ctrl().bar0_write(sq_tail_doorbell(1, 0), 4, q.tail);
    CHECK(status_of(d.io_wait(q)) == StatusCode::Success);
}

TEST_CASE("nvme controller: a full CQ holds completions until the host frees entries") {
    for (const bool shadow : {false, true}) {
        CAPTURE(shadow);
        Driver d;
        d.enable();
        IoQueue q = d.create_queue(1, 16, 1, 4);  // a 4-entry CQ holds 3 completions
        if (shadow) d.dbbuf();
        const std::uint64_t buf = d.alloc(10 * 512);
        const std::uint32_t old = q.tail;
        for (std::uint32_t i = 0; i < 10; ++i)
            (void)d.io_put(q, rw(IoOpcode::Read, i, 1, buf + 512 * i));
        d.io_ring(q, old);
        // Three arrive; the fourth slot stays free (head == tail means empty).
        for (int i = 0; i < 3; ++i) (void)d.io_wait(q, false);
        std::this_thread::sleep_for(20ms);
        CHECK_FALSE(d.io_poll(q, false).has_value());
        // Releasing them lets the rest through, a CQ's worth at a time.
        std::set<std::uint16_t> seen;
        unsigned got = 3;
        std::uint32_t published = 0;
        while (got < 10) {
            d.publish(1, true, q.head, published);
            published = q.head;
            for (int i = 0; i < 3 && got < 10; ++i, ++got) seen.insert(d.io_wait(q, false).cid);
        }
        CHECK(seen.size() == 7);
        if (shadow) CHECK(d.ioeventfd_rings >= 2);
    }
}

// ---- hostile guests ----------------------------------------------------------------------------

TEST_CASE("nvme controller: bad queue creation is refused with the right status") {
    Driver d;
    d.enable();
    const std::uint64_t mem = d.alloc(64 * kPage);
    CHECK(d.admin_status(create_cq(1, 1, mem, 1)) == StatusCode::InvalidQueueSize);  // qsize 0
    CHECK(d.admin_status(create_cq(1, 1025, mem, 1)) ==
          StatusCode::InvalidQueueSize);  // > MQES + 1
    CHECK(d.admin_status(create_cq(0, 16, mem, 1)) ==
          StatusCode::InvalidQueueIdentifier);  // admin qid
    CHECK(d.admin_status(create_cq(5, 16, mem, 1)) ==
          StatusCode::InvalidQueueIdentifier);  // > max queues
    CHECK(d.admin_status(create_cq(1, 16, mem, 1, kIen)) == StatusCode::InvalidField);  // PC = 0
    CHECK(d.admin_status(create_cq(1, 16, mem, 5)) == StatusCode::InvalidInterruptVector);
    CHECK(d.admin_status(create_cq(1, 512, kRamBytes - kPage, 1)) ==
          StatusCode::InvalidField);  // past RAM
    CHECK(d.admin_status(create_cq(1, 16, 1ull << 40, 1)) == StatusCode::InvalidField);
    CHECK(d.admin_status(create_cq(1, 16, mem + 512, 1)) == StatusCode::PrpOffsetInvalid);
    CHECK(d.admin_status(create_sq(1, 16, mem, 1)) ==
          StatusCode::CompletionQueueInvalid);  // no CQ 1
    REQUIRE(d.admin_status(create_cq(1, 16, mem, 1)) == StatusCode::Success);
    CHECK(d.admin_status(create_cq(1, 16, mem + kPage, 1)) ==
          StatusCode::InvalidQueueIdentifier);  // exists
    CHECK(d.admin_status(create_sq(1, 0x10000, mem + kPage, 1)) == StatusCode::InvalidQueueSize);
    CHECK(d.admin_status(create_sq(1, 16, mem + kPage, 2)) == StatusCode::CompletionQueueInvalid);
    CHECK(d.admin_status(create_sq(1, 128, kRamBytes - kPage, 1)) == StatusCode::InvalidField);
    REQUIRE(d.admin_status(create_sq(1, 16, mem + kPage, 1)) == StatusCode::Success);
    CHECK(d.admin_status(create_sq(1, 16, mem + 2 * kPage, 1)) ==
          StatusCode::InvalidQueueIdentifier);
    // A CQ in use cannot go; deleting what does not exist is Invalid Queue Identifier.
    auto del_cq = command(op(AdminOpcode::DeleteIoCq));
    del_cq.cdw10 = 1;
    auto del_sq = command(op(AdminOpcode::DeleteIoSq));
    del_sq.cdw10 = 1;
    CHECK(d.admin_status(del_cq) == StatusCode::InvalidQueueDeletion);
    REQUIRE(d.admin_status(del_sq) == StatusCode::Success);
    CHECK(d.admin_status(del_sq) == StatusCode::InvalidQueueIdentifier);
    REQUIRE(d.admin_status(del_cq) == StatusCode::Success);
    CHECK(d.admin_status(del_cq) == StatusCode::InvalidQueueIdentifier);
    del_cq.cdw10 = 0;
    CHECK(d.admin_status(del_cq) == StatusCode::InvalidQueueIdentifier);
    // Doorbell Buffer Config outside guest RAM, or not page aligned.
    auto dbbuf = command(op(AdminOpcode::DoorbellBufferConfig));
    dbbuf.prp1 = kRamBytes;
    dbbuf.prp2 = mem;
    CHECK(d.admin_status(dbbuf) == StatusCode::InvalidField);
    dbbuf.prp1 = mem + 8;
    CHECK(d.admin_status(dbbuf) == StatusCode::InvalidField);
    // Unknown admin opcodes; Identify into a buffer outside guest RAM.
    CHECK(d.admin_status(command(0x7f)) == StatusCode::InvalidOpcode);
    CHECK(d.admin_status(identify(1, 0, kRamBytes)) == StatusCode::DataTransferError);
    // The queues can be made again.
    IoQueue q = d.create_queue(1, 16, 1);
    round_trip(d, q, 0, 4096, 0, 1);
}

TEST_CASE("nvme controller: malformed I/O gets an error status and the queue keeps serving") {
    for (const bool shadow : {false, true}) {
        CAPTURE(shadow);
        Driver d;
        d.enable();
        IoQueue q = d.create_queue(1, 64, 1);
        if (shadow) d.dbbuf();
        const std::uint64_t buf = d.alloc(kMaxTransfer + kPage);
        const std::uint64_t list = d.alloc(kPage);

        // PRPs outside guest RAM: data page, second page, list page, list entry.
        CHECK(d.io_status(q, rw(IoOpcode::Read, 0, 8, kRamBytes)) == StatusCode::DataTransferError);
        CHECK(d.io_status(q, rw(IoOpcode::Read, 0, 16, buf, kRamBytes)) ==
              StatusCode::DataTransferError);
        CHECK(d.io_status(q, rw(IoOpcode::Read, 0, 64, buf, kRamBytes)) ==
              StatusCode::DataTransferError);
        d.put(list, std::uint64_t{1} << 44);
        CHECK(d.io_status(q, rw(IoOpcode::Write, 0, 24, buf, list)) ==
              StatusCode::DataTransferError);
        // Misaligned PRP1 and PRP2.
        CHECK(d.io_status(q, rw(IoOpcode::Read, 0, 1, buf + 2)) == StatusCode::PrpOffsetInvalid);
        CHECK(d.io_status(q, rw(IoOpcode::Read, 0, 16, buf, buf + 4096 + 512)) ==
              StatusCode::PrpOffsetInvalid);
        // A PRP list that chains back to itself: its only two slots are a data page and a
        // pointer to the same list page.
        const std::uint64_t loop = list + kPage - 16;
        d.put(loop, buf + kPage);
        d.put(loop + 8, list);
        CHECK(d.io_status(q, rw(IoOpcode::Read, 0, 32, buf, loop)) ==
              StatusCode::DataTransferError);
        // Over MDTS.
        CHECK(d.io_status(q, rw(IoOpcode::Read, 0, kMaxTransfer / 512 + 1, buf, list)) ==
              StatusCode::InvalidField);
        // LBA past the end, and a range that wraps.
        CHECK(d.io_status(q, rw(IoOpcode::Read, kVolumeBlocks, 1, buf)) ==
              StatusCode::LbaOutOfRange);
        CHECK(d.io_status(q, rw(IoOpcode::Write, kVolumeBlocks - 1, 2, buf, buf + kPage)) ==
              StatusCode::LbaOutOfRange);
        CHECK(d.io_status(q, rw(IoOpcode::Read, ~0ull, 1, buf)) == StatusCode::LbaOutOfRange);
        auto wz = rw(IoOpcode::WriteZeroes, kVolumeBlocks - 4, 8, 0);
        CHECK(d.io_status(q, wz) == StatusCode::LbaOutOfRange);
        // A DSM range past the end.
        d.put(list, DsmRange{0, 8, kVolumeBlocks - 4});
        auto dsm = command(op(IoOpcode::DatasetManagement));
        dsm.nsid = 1;
        dsm.prp1 = list;
        dsm.cdw11 = 1 << 2;
        CHECK(d.io_status(q, dsm) == StatusCode::LbaOutOfRange);
        // Bad opcodes, a bad namespace, SGLs, fused commands.
        CHECK(d.io_status(q, command(0x7f)) == StatusCode::InvalidOpcode);
        CHECK(d.io_status(q, command(op(IoOpcode::Compare))) == StatusCode::InvalidOpcode);
        CHECK(d.io_status(q, rw(IoOpcode::Read, 0, 1, buf)) == StatusCode::Success);
        auto bad_ns = rw(IoOpcode::Read, 0, 1, buf);
        bad_ns.nsid = 2;
        CHECK(d.io_status(q, bad_ns) == StatusCode::InvalidNamespace);
        auto sgl = rw(IoOpcode::Read, 0, 1, buf);
        sgl.flags = 0x40;
        CHECK(d.io_status(q, sgl) == StatusCode::InvalidField);
        // Errors carry Do Not Retry.
        const auto e = d.io(q, command(0x7f));
        CHECK(status_dnr(e.status));
        // Still serving.
        round_trip(d, q, 10, kMaxTransfer, 0, 3);
        CHECK(d.ctrl().stats().error_completions >= 18);
        CHECK(d.rd32(reg::CSTS) == 1);
    }
}

TEST_CASE("nvme controller: bad doorbell values are ignored and reported") {
    Driver d;
    d.enable();
    IoQueue q = d.create_queue(1, 16, 1);
    d.admin_submit(command(op(AdminOpcode::AsyncEventRequest)));
    REQUIRE_FALSE(d.admin_poll().has_value());

    // An SQ tail past the queue size: ignored (nothing fetched), reported.
    d.wr32(sq_tail_doorbell(1, 0), 16);
    auto ev = d.admin_poll();
    REQUIRE(ev.has_value());
    CHECK(((ev->dw0 >> 8) & 0xff) ==
          static_cast<unsigned>(ErrorEventInfo::InvalidDoorbellWriteValue));
    // A CQ head past the queue size and a doorbell past the queues: no AER left, still ignored.
    d.wr32(cq_head_doorbell(1, 0), 99);
    d.wr32(cq_head_doorbell(4, 0), 1);
    d.wr32(sq_tail_doorbell(200, 0), 1);
    CHECK(d.ctrl().stats().invalid_doorbells == 4);
    CHECK(d.io_status(q, rw(IoOpcode::Read, 0, 1, d.alloc(512))) == StatusCode::Success);

    // With shadow doorbells, a shadow tail past the queue size is ignored until it is sane.
    d.dbbuf();
    const std::uint64_t buf = d.alloc(512);
    const std::uint32_t old = q.tail;
    (void)d.io_put(q, rw(IoOpcode::Read, 0, 1, buf));
    d.publish(1, false, 100, old);
    d.ring_ioeventfd(sq_tail_doorbell(1, 0));
    std::this_thread::sleep_for(20ms);
    CHECK_FALSE(d.io_poll(q).has_value());
    d.publish(1, false, q.tail, old);
    d.ring_ioeventfd(sq_tail_doorbell(1, 0));
    CHECK(status_of(d.io_wait(q)) == StatusCode::Success);
    CHECK(d.rd32(reg::CSTS) == 1);
}

// ---- lifetime: memory, reset, throttling --------------------------------------------------------

TEST_CASE("nvme controller: detach and reset wait for I/O at the backend") {
    auto held = std::make_unique<HeldBackend>();
    HeldBackend* backend = held.get();
    Driver d(config(std::move(held)));
    d.enable();
    IoQueue q = d.create_queue(1, 16, 1);
    const std::uint64_t buf = d.alloc(kPage);

    // A read sits at the backend; detaching guest RAM waits for it.
    const std::uint16_t cid = d.io_submit(q, rw(IoOpcode::Read, 0, 8, buf));
    const auto deadline = std::chrono::steady_clock::now() + kWait;
    while (backend->submitted() == 0 && std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(100us);
    REQUIRE(backend->submitted() == 1);
    std::atomic<bool> detached{false};
    std::thread control([&] {
        d.ctrl().detach_memory();
        detached = true;
    });
    std::this_thread::sleep_for(20ms);
    CHECK_FALSE(detached.load());
    backend->release();
    control.join();
    CHECK(detached.load());
    // Its completion was posted before the memory went.
    auto c = d.io_poll(q);
    REQUIRE(c.has_value());
    CHECK(c->cid == cid);

    // Without guest RAM nothing is fetched; with it back, the command runs.
    const std::uint32_t old = q.tail;
    (void)d.io_put(q, rw(IoOpcode::Read, 0, 8, buf));
    d.io_ring(q, old);
    std::this_thread::sleep_for(20ms);
    CHECK_FALSE(d.io_poll(q).has_value());
    d.ctrl().attach_memory(d.mem_ptr());
    CHECK(status_of(d.io_wait(q)) == StatusCode::Success);

    // CC.EN = 0 drops the queues: doorbells go, the queues can be created again.
    d.dbbuf();
    CHECK(d.ctrl().doorbells().size() == 2);
    d.wr32(reg::CC, Driver::kCc);
    CHECK(d.ctrl().doorbells().empty());
    d.enable();
    IoQueue again = d.create_queue(1, 16, 1);
    round_trip(d, again, 8, 4096, 0, 7);
    d.ctrl().reset();
    CHECK(d.rd32(reg::CSTS) == 0);
}

TEST_CASE(
    "nvme controller: a command still at the backend when the controller resets posts nothing") {
    // A backend that holds completions until released, released by another thread while the
    // control thread waits in CC.EN = 0.
    auto held = std::make_unique<HeldBackend>();
    HeldBackend* backend = held.get();
    Driver d(config(std::move(held)));
    d.enable();
    IoQueue q = d.create_queue(1, 16, 1);
    (void)d.io_submit(q, rw(IoOpcode::Read, 0, 8, d.alloc(kPage)));
    const auto deadline = std::chrono::steady_clock::now() + kWait;
    while (backend->submitted() == 0 && std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(100us);
    std::thread releaser([&] {
        std::this_thread::sleep_for(20ms);
        backend->release();
    });
    d.wr32(reg::CC, Driver::kCc);  // returns once the read finished
    releaser.join();
    CHECK((d.rd32(reg::CSTS) & 1) == 0);
    CHECK_FALSE(d.io_poll(q).has_value());
}

TEST_CASE("nvme controller: the rate limiter throttles and the time is counted") {
    auto cfg = config();
    cfg.volume_limits = nitro_card::storage::Limits{10, std::nullopt};  // 10 IOPS, a 10-I/O burst
    Driver d(std::move(cfg));
    d.enable();
    IoQueue q = d.create_queue(1, 32, 1);
    const std::uint64_t buf = d.alloc(12 * 512);
    const auto start = std::chrono::steady_clock::now();
    const std::uint32_t old = q.tail;
    for (std::uint32_t i = 0; i < 12; ++i)
        (void)d.io_put(q, rw(IoOpcode::Read, i, 1, buf + 512 * i));
    d.io_ring(q, old);
    for (int i = 0; i < 12; ++i) CHECK(status_of(d.io_wait(q)) == StatusCode::Success);
    const auto elapsed = std::chrono::steady_clock::now() - start;
    CHECK(elapsed >= 150ms);  // the 11th and 12th wait 100 ms each
    const auto s = d.ctrl().stats();
    CHECK(s.throttled_commands == 2);
    CHECK(s.throttled_ns >= 150'000'000);
}

TEST_CASE("nvme controller: a shared instance limiter and a file-backed volume") {
    auto instance = std::make_shared<SharedRateLimiter>(nitro_card::storage::Limits::unlimited());
    char path[] = "/tmp/nvme_controller_test_XXXXXX";
    const int fd = ::mkstemp(path);
    REQUIRE(fd >= 0);
    ::close(fd);
    ::unlink(path);
    nitro_card::storage::FileBackendOptions o;
    o.create_size = kVolumeBytes;
    auto file = nitro_card::storage::FileBackend::open(path, o);
    REQUIRE(file.has_value());
    auto cfg = config(std::move(*file));
    cfg.instance_limiter = instance;
    {
        Driver d(std::move(cfg));
        d.enable();
        IoQueue q = d.create_queue(1, 16, 1);
        d.dbbuf();
        // Write-through mode: every write is flushed before it completes.
        REQUIRE(d.admin_status(set_features(FeatureId::VolatileWriteCache, 0)) ==
                StatusCode::Success);
        io_suite(d, q);
        d.wr32(reg::CC, Driver::kCc | 1 | cc::SHN_NORMAL << 14);
        CHECK(csts::SHST.get(d.rd32(reg::CSTS)) == csts::SHST_COMPLETE);
    }
    CHECK(instance->stats().throttled_requests == 0);
    ::unlink(path);
}

TEST_CASE("nvme controller: Delete I/O SQ aborts what it has not started and waits for the rest") {
    auto cfg = config();
    cfg.volume_limits = nitro_card::storage::Limits{1, std::nullopt};  // one I/O per second
    Driver d(std::move(cfg));
    d.enable();
    IoQueue q = d.create_queue(1, 16, 1);
    const std::uint64_t buf = d.alloc(3 * 512);
    const std::uint32_t old = q.tail;
    for (std::uint32_t i = 0; i < 3; ++i)
        (void)d.io_put(q, rw(IoOpcode::Read, i, 1, buf + 512 * i));
    d.io_ring(q, old);
    // The first is admitted at once; the other two wait a second each for the limiter.
    CHECK(status_of(d.io_wait(q)) == StatusCode::Success);
    auto del_sq = command(op(AdminOpcode::DeleteIoSq));
    del_sq.cdw10 = 1;
    REQUIRE(d.admin_status(del_sq) == StatusCode::Success);
    for (int i = 0; i < 2; ++i) {
        auto c = d.io_poll(q);
        REQUIRE(c.has_value());
        CHECK(status_of(*c) == StatusCode::AbortSqDeleted);
    }
    auto del_cq = command(op(AdminOpcode::DeleteIoCq));
    del_cq.cdw10 = 1;
    CHECK(d.admin_status(del_cq) == StatusCode::Success);
    CHECK(d.ctrl().stats().throttled_commands == 1);

    // With a command at the backend, the deletion waits for it and its completion is posted.
    auto held = std::make_unique<HeldBackend>();
    HeldBackend* backend = held.get();
    Driver h(config(std::move(held)));
    h.enable();
    IoQueue hq = h.create_queue(1, 16, 1);
    const std::uint16_t cid = h.io_submit(hq, rw(IoOpcode::Read, 0, 1, h.alloc(512)));
    const auto deadline = std::chrono::steady_clock::now() + kWait;
    while (backend->submitted() == 0 && std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(100us);
    std::thread releaser([&] {
        std::this_thread::sleep_for(20ms);
        backend->release();
    });
    CHECK(h.admin_status(del_sq) == StatusCode::Success);
    releaser.join();
    auto c = h.io_poll(hq);
    REQUIRE(c.has_value());
    CHECK(c->cid == cid);
    CHECK(status_of(*c) == StatusCode::Success);
}

TEST_CASE("nvme controller: a CQ that left guest RAM is a fatal error (CSTS.CFS) until reset") {
    Driver d;
    d.enable();
    // CQ in the upper half of guest RAM, SQ in the lower half.
    constexpr std::uint64_t kHalf = kRamBytes / 2;
    (void)d.alloc(kHalf);
    const std::uint64_t cq = d.alloc(16 * sizeof(CqEntry));
    const std::uint64_t sq = 0x8000;
    REQUIRE(d.admin_status(create_cq(1, 16, cq, 1)) == StatusCode::Success);
    REQUIRE(d.admin_status(create_sq(1, 16, sq, 1)) == StatusCode::Success);

    // The vmm unmaps the upper half (DMA_UNMAP): the card rebuilds its view without it.
    auto fd = common::MemFd::adopt(common::UniqueFd(::dup(d.mem().memfd().fd())));
    REQUIRE(fd.has_value());
    auto lower = common::GuestMemory::attach(std::move(*fd), {{GuestAddr(0), kHalf, 0}});
    REQUIRE(lower.has_value());
    d.ctrl().detach_memory();
    d.ctrl().attach_memory(std::make_shared<const common::GuestMemory>(std::move(*lower)));

    REQUIRE(d.mem().write_obj(GuestAddr(sq), rw(IoOpcode::Read, 0, 1, 0x9000)));
    d.wr32(sq_tail_doorbell(1, 0), 1);
    const auto deadline = std::chrono::steady_clock::now() + kWait;
    while ((d.rd32(reg::CSTS) & 2) == 0 && std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(100us);
    CHECK(d.rd32(reg::CSTS) == 3);  // RDY | CFS
    // A controller reset clears it.
    d.ctrl().detach_memory();
    d.ctrl().attach_memory(d.mem_ptr());
    d.enable();
    CHECK(d.rd32(reg::CSTS) == 1);
    IoQueue q = d.create_queue(1, 16, 1);
    round_trip(d, q, 0, 4096, 0, 1);
}

// ---- adaptive polling
// ----------------------------------------------------------------------------

// A window far longer than any pause between this test's I/Os (the cap, 100 ms), so the worker
// is still polling whenever the driver submits.
constexpr unsigned kLongPollUs = kMaxPollUs;

TEST_CASE("nvme controller: polling picks up shadow-only submissions and the guest never rings") {
    // No back-off: on a loaded machine the worker would otherwise stop polling for a while when
    // it loses its CPU, and then (correctly) ask for doorbells; that is the back-off test's job.
    auto cfg = config(nullptr, kLongPollUs);
    cfg.io_thread.poll_backoff = std::chrono::milliseconds(0);
    Driver d(std::move(cfg));
    d.enable();
    IoQueue q = d.create_queue(1, 8, 1);  // 8 entries: the I/Os below go round it many times
    d.dbbuf();
    const std::uint64_t buf = d.alloc(8 * 512);
    // The first I/O may ring (the worker can be asleep); from then on the worker polls.
    CHECK(d.io_status(q, rw(IoOpcode::Read, 0, 1, buf)) == StatusCode::Success);
    const unsigned rings = d.ioeventfd_rings;

    // Only the shadow doorbell: no EventIdx check, no eventfd.
    for (std::uint32_t i = 0; i < 20; ++i) {
        const std::uint16_t cid = d.io_put(q, rw(IoOpcode::Read, i, 1, buf));
        d.store_shadow(1, false, q.tail);
        const CqEntry c = d.io_wait(q, false);
        CHECK(c.cid == cid);
        CHECK(status_of(c) == StatusCode::Success);
        d.store_shadow(1, true, q.head);
    }
    CHECK(d.ioeventfd_rings == rings);

    // The driver's own rule (nvme_dbbuf_need_event) for SQ tails and CQ heads, one I/O at a
    // time and in batches that fill the ring (7 of 8 entries): EventIdx always stays where no
    // update steps over it, lap after lap.
    for (int i = 0; i < 40; ++i) round_trip(d, q, 8 * static_cast<std::uint64_t>(i), 512, 0, 7);
    for (int batch = 0; batch < 6; ++batch) {
        const std::uint32_t old = q.tail;
        for (std::uint32_t i = 0; i < 7; ++i)
            (void)d.io_put(q, rw(IoOpcode::Read, i, 1, buf + 512 * i));
        d.io_ring(q, old);
        for (int i = 0; i < 7; ++i) CHECK(status_of(d.io_wait(q)) == StatusCode::Success);
    }
    CHECK(d.ioeventfd_rings == rings);

    const auto s = d.ctrl().stats();
    CHECK(s.poll_hits > 0);
    CHECK(s.io_commands == 1 + 20 + 80 + 42);
}

TEST_CASE("nvme controller: when the polling window expires EventIdx asks for the next doorbell") {
    constexpr unsigned kShortPollUs = 2000;
    Driver d(config(nullptr, kShortPollUs));
    d.enable();
    IoQueue q = d.create_queue(1, 16, 1);
    d.dbbuf();
    const std::uint64_t buf = d.alloc(512);
    for (int round = 0; round < 3; ++round) {
        CAPTURE(round);
        CHECK(d.io_status(q, rw(IoOpcode::Read, 0, 1, buf)) == StatusCode::Success);
        // No more work: once the window has passed, EventIdx is the tail processed.
        CHECK(eventually([&] { return d.event_idx(1, false) == q.tail; }));
        std::this_thread::sleep_for(10ms);  // the worker is in epoll by now
        CHECK(d.event_idx(1, false) == q.tail);

        // So the driver rings for the next submission, and the eventfd wakes the worker.
        const auto before = d.ctrl().stats();
        const unsigned rings = d.ioeventfd_rings;
        const std::uint32_t old = q.tail;
        const std::uint16_t cid = d.io_put(q, rw(IoOpcode::Read, 1, 1, buf));
        d.io_ring(q, old);
        CHECK(d.ioeventfd_rings == rings + 1);
        const CqEntry c = d.io_wait(q);
        CHECK(c.cid == cid);
        CHECK(status_of(c) == StatusCode::Success);
        CHECK(d.ctrl().stats().doorbell_wakeups > before.doorbell_wakeups);
    }
    const auto s = d.ctrl().stats();
    CHECK(s.poll_ns >= 3ull * kShortPollUs * 1000 / 2);  // three windows ran out at least
}

TEST_CASE("nvme controller: with polling off the worker publishes EventIdx after every drain") {
    Driver d(config(nullptr, 0));
    d.enable();
    IoQueue q = d.create_queue(1, 16, 1);
    d.dbbuf();
    const std::uint64_t buf = d.alloc(512);
    for (int i = 0; i < 20; ++i) {
        const unsigned rings = d.ioeventfd_rings;
        CHECK(d.io_status(q, rw(IoOpcode::Read, 0, 1, buf)) == StatusCode::Success);
        CHECK(d.ioeventfd_rings == rings + 1);  // every submission after a drain rings
        CHECK(d.event_idx(1, false) == q.tail);
    }
    const auto s = d.ctrl().stats();
    CHECK(s.poll_hits == 0);
    CHECK(s.poll_ns == 0);
    CHECK(s.doorbell_wakeups > 0);
}

TEST_CASE("nvme controller: the I/O suite, bad I/O and a full CQ with the worker polling") {
    {
        Driver d(config(nullptr, kLongPollUs));
        d.enable();
        IoQueue q = d.create_queue(1, 32, 1);
        d.dbbuf();
        io_suite(d, q);
        IoQueue q2 = d.create_queue(2, 8, 2);  // created while the worker polls
        for (int i = 0; i < 12; ++i)
            round_trip(d, q2, 4000 + 8 * static_cast<std::uint64_t>(i), 4096, 0, 30);
        // A malformed command and a PRP outside guest RAM: error statuses, the queue goes on.
        CHECK(d.io_status(q, command(0x7f)) == StatusCode::InvalidOpcode);
        CHECK(d.io_status(q, rw(IoOpcode::Read, 0, 8, kRamBytes)) == StatusCode::DataTransferError);
        round_trip(d, q, 0, 4096, 0, 31);
    }
    {
        // A 4-entry CQ holds 3: the rest wait for the host to free entries, which it announces
        // with a CQ head doorbell (EventIdx = the head while the CQ is full), polling or not.
        Driver d(config(nullptr, kLongPollUs));
        d.enable();
        IoQueue q = d.create_queue(1, 16, 1, 4);
        d.dbbuf();
        const std::uint64_t buf = d.alloc(10 * 512);
        const std::uint32_t old = q.tail;
        for (std::uint32_t i = 0; i < 10; ++i)
            (void)d.io_put(q, rw(IoOpcode::Read, i, 1, buf + 512 * i));
        d.io_ring(q, old);
        for (int i = 0; i < 3; ++i) (void)d.io_wait(q, false);
        std::this_thread::sleep_for(20ms);
        CHECK_FALSE(d.io_poll(q, false).has_value());
        std::set<std::uint16_t> seen;
        unsigned got = 3;
        std::uint32_t published = 0;
        while (got < 10) {
            d.publish(1, true, q.head, published);
            published = q.head;
            for (int i = 0; i < 3 && got < 10; ++i, ++got) seen.insert(d.io_wait(q, false).cid);
        }
        CHECK(seen.size() == 7);
    }
}

TEST_CASE("nvme controller: a polling worker that loses its CPU stops polling for a while") {
    // The worker and a spinning thread share one CPU: a yield in the polling loop hands the
    // CPU to the spinner for a time slice, which the worker notices.
    cpu_set_t allowed;
    REQUIRE(::sched_getaffinity(0, sizeof allowed, &allowed) == 0);
    int cpu = 0;
    while (cpu < CPU_SETSIZE && !CPU_ISSET(cpu, &allowed)) ++cpu;
    REQUIRE(cpu < CPU_SETSIZE);
    auto cfg = config(nullptr, kLongPollUs);
    cfg.io_thread.cpus = {cpu};
    cfg.io_thread.poll_backoff = 10s;  // the rest of the case runs backed off
    Driver d(std::move(cfg));
    d.enable();
    IoQueue q = d.create_queue(1, 16, 1);
    d.dbbuf();
    const std::uint64_t buf = d.alloc(512);

    std::atomic<bool> stop{false};
    std::thread spinner([&] {
        cpu_set_t one;
        CPU_ZERO(&one);
        CPU_SET(cpu, &one);
        (void)::pthread_setaffinity_np(::pthread_self(), sizeof one, &one);
        const auto deadline = std::chrono::steady_clock::now() + kWait;
        while (!stop.load() && std::chrono::steady_clock::now() < deadline) {
        }
    });
    CHECK(d.io_status(q, rw(IoOpcode::Read, 0, 1, buf)) == StatusCode::Success);
    CHECK(eventually([&] { return d.ctrl().stats().poll_backoffs > 0; }));
    stop.store(true);
    spinner.join();

    // Backed off, the worker publishes EventIdx after each drain and sleeps: the driver rings
    // for every submission, and each completes.
    for (int i = 0; i < 5; ++i) {
        const unsigned rings = d.ioeventfd_rings;
        CHECK(d.io_status(q, rw(IoOpcode::Read, 0, 1, buf)) == StatusCode::Success);
        CHECK(d.ioeventfd_rings == rings + 1);
        CHECK(d.event_idx(1, false) == q.tail);
    }
}

TEST_CASE("nvme controller: a polling window longer than the cap is refused") {
    auto c = Controller::create(config(nullptr, kMaxPollUs + 1));
    CHECK_FALSE(c.has_value());
}
