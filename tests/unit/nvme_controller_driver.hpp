// The NVMe controller tests' driver: the controller driven the way Linux 6.1's nvme driver
// drives it: registers through bar0_read/bar0_write, queues and data in real guest memory
// (common::GuestMemory), doorbells on the slow path or through shadow doorbells plus the
// ioeventfds doorbells() hands out, MSI-X through the eventfds given to set_irqs. Every wait
// is bounded (kWait). Shared by the nvme_controller_*_test.cpp files.
#pragma once

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


namespace nvme_ctrl_test {

using namespace nitro_card::nvme;
using namespace std::chrono_literals;
using common::GuestAddr;
using nitro_card::storage::BlockBackend;
using nitro_card::storage::RamBackend;


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
inline ControllerConfig config(std::unique_ptr<BlockBackend> backend = nullptr, unsigned poll_us = 0) {
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
inline bool eventually(F&& done) {
    const auto deadline = std::chrono::steady_clock::now() + kWait;
    while (!done()) {
        if (std::chrono::steady_clock::now() >= deadline) return false;
        std::this_thread::sleep_for(100us);
    }
    return true;
}

inline SqEntry command(std::uint8_t opc) {
    SqEntry e{};
    e.opc = opc;
    return e;
}

inline SqEntry identify(std::uint8_t cns, std::uint32_t nsid, std::uint64_t prp1) {
    auto e = command(op(AdminOpcode::Identify));
    e.nsid = nsid;
    e.prp1 = prp1;
    e.cdw10 = cns;
    return e;
}

inline SqEntry set_features(FeatureId fid, std::uint32_t cdw11) {
    auto e = command(op(AdminOpcode::SetFeatures));
    e.cdw10 = static_cast<std::uint8_t>(fid);
    e.cdw11 = cdw11;
    return e;
}

inline SqEntry get_features(FeatureId fid, std::uint32_t sel = 0) {
    auto e = command(op(AdminOpcode::GetFeatures));
    e.cdw10 = static_cast<std::uint8_t>(fid) | sel << 8;
    return e;
}

constexpr std::uint32_t kPc = 1, kIen = 2;

inline SqEntry create_cq(std::uint16_t qid, std::uint32_t entries, std::uint64_t base,
                  std::uint16_t vector, std::uint32_t flags = kPc | kIen) {
    auto e = command(op(AdminOpcode::CreateIoCq));
    e.prp1 = base;
    e.cdw10 = qid | (entries - 1) << 16;
    e.cdw11 = flags | std::uint32_t{vector} << 16;
    return e;
}

inline SqEntry create_sq(std::uint16_t qid, std::uint32_t entries, std::uint64_t base, std::uint16_t cqid,
                  std::uint32_t flags = kPc) {
    auto e = command(op(AdminOpcode::CreateIoSq));
    e.prp1 = base;
    e.cdw10 = qid | (entries - 1) << 16;
    e.cdw11 = flags | std::uint32_t{cqid} << 16;
    return e;
}

inline SqEntry get_log(LogPageId lid, std::uint32_t bytes, std::uint64_t prp1, bool rae = false,
                std::uint32_t nsid = kBroadcastNsid) {
    auto e = command(op(AdminOpcode::GetLogPage));
    e.nsid = nsid;
    e.prp1 = prp1;
    e.cdw10 = static_cast<std::uint8_t>(lid) | (rae ? 1u << 15 : 0u) | (bytes / 4 - 1) << 16;
    return e;
}

inline SqEntry rw(IoOpcode opc, std::uint64_t slba, std::uint32_t blocks, std::uint64_t prp1,
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

inline StatusCode status_of(const CqEntry& c) {
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

inline void fill(std::byte* p, std::size_t n, unsigned seed) {
    for (std::size_t i = 0; i < n; ++i) p[i] = static_cast<std::byte>((i * 131 + seed) >> 3);
}

inline bool zeroes(const std::byte* p, std::size_t n) {
    for (std::size_t i = 0; i < n; ++i)
        if (p[i] != std::byte{0}) return false;
    return true;
}

inline std::string ascii(const char* field, std::size_t n) {
    return std::string(field, n);
}



// Writes `bytes` from a fresh pattern at `slba`, reads them back into another buffer placed at
// `offset` in its first page, and compares.
inline void round_trip(Driver& d, IoQueue& q, std::uint64_t slba, std::uint64_t bytes,
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

inline void io_suite(Driver& d, IoQueue& q) {
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


}  // namespace nvme_ctrl_test
