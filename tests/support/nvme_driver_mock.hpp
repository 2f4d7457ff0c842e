// The driver side of an NVMe controller, for tests: what Linux 6.1's nvme/pci.c does to bring a
// controller up and run queues (devices.md §2), written against guest memory and a RegisterPort.
//
// It owns nothing of the device: rings, PRP lists and data buffers live in the guest memory it
// is given (the memfd the controller maps too), registers and slow-path doorbells go through the
// port, and once Doorbell Buffer Config is on it writes shadow doorbells and signals the
// doorbell eventfds the device handed out (what KVM does for an ioeventfd), falling back to an
// MMIO write for a doorbell without one.
//
// Waits are bounded: a completion is polled for in 1 ms steps for at most kNvmeWait, and a
// missing one throws std::runtime_error naming the queue and command, which fails the test.
// Not thread-safe: one test thread drives it.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <utility>
#include <vector>

#include "common/fd.hpp"
#include "common/guest_memory.hpp"
#include "nvme/queue.hpp"
#include "nvme/spec.hpp"
#include "support/register_port.hpp"

namespace testsupport {

namespace nvme = nitro_card::nvme;

inline constexpr std::chrono::milliseconds kNvmeWait{5000};
inline constexpr std::uint64_t kNvmePage = 4096;  // CC.MPS = 0

// ---- Command builders (NVMe 2.0 §5, NVM command set §3). The mock fills in the cid. ----------

inline constexpr std::uint32_t kCreateQueuePc = 1u << 0;  // physically contiguous
inline constexpr std::uint32_t kCreateCqIen = 1u << 1;    // interrupts enabled

[[nodiscard]] nvme::SqEntry admin_cmd(nvme::AdminOpcode opc);
[[nodiscard]] nvme::SqEntry identify_cmd(nvme::Cns cns, std::uint32_t nsid, std::uint64_t prp1);
[[nodiscard]] nvme::SqEntry set_features_cmd(nvme::FeatureId fid, std::uint32_t cdw11);
[[nodiscard]] nvme::SqEntry get_features_cmd(nvme::FeatureId fid, std::uint32_t select = 0);
// QSIZE is written as entries - 1, so entries = 1 gives the invalid QSIZE 0.
[[nodiscard]] nvme::SqEntry create_cq_cmd(std::uint16_t qid, std::uint32_t entries,
                                          std::uint64_t base, std::uint16_t vector,
                                          bool interrupts);
[[nodiscard]] nvme::SqEntry create_sq_cmd(std::uint16_t qid, std::uint32_t entries,
                                          std::uint64_t base, std::uint16_t cqid);
[[nodiscard]] nvme::SqEntry dbbuf_cmd(std::uint64_t shadow, std::uint64_t event_idx);
[[nodiscard]] nvme::SqEntry io_cmd(nvme::IoOpcode opc, std::uint64_t slba, std::uint32_t blocks,
                                   std::uint64_t prp1, std::uint64_t prp2 = 0);
[[nodiscard]] nvme::SqEntry flush_cmd();

[[nodiscard]] inline nvme::StatusCode status_of(const nvme::CqEntry& c) {
    return nvme::status_code(c.status);
}

// One I/O queue pair as the driver tracks it.
struct IoQueue {
    std::uint16_t qid = 0;
    std::uint32_t sq_entries = 0, cq_entries = 0;
    std::uint64_t sq = 0, cq = 0;  // guest addresses
    std::uint32_t tail = 0, head = 0;
    bool phase = true;
    std::uint16_t next_cid = 0;
};

class NvmeDriverMock final {
public:
    // Allocations come from guest [heap_base, heap_end), which must be guest RAM in `mem`.
    NvmeDriverMock(const common::GuestMemory& mem, RegisterPort& regs, std::uint64_t heap_base,
                   std::uint64_t heap_end);

    // ---- guest memory ----
    // Page-aligned, zeroed guest memory.
    [[nodiscard]] std::uint64_t alloc(std::uint64_t bytes);
    [[nodiscard]] std::span<std::byte> host(std::uint64_t gpa, std::uint64_t len) const;
    template <typename T>
    [[nodiscard]] T get(std::uint64_t gpa) const {
        return mem_.read_obj<T>(common::GuestAddr(gpa)).value();
    }
    template <typename T>
    void put(std::uint64_t gpa, const T& v) const {
        (void)mem_.write_obj(common::GuestAddr(gpa), v).value();
    }
    // PRP1/PRP2 for a guest-contiguous buffer, with a PRP list (allocated here) when it spans
    // more than two pages (nvme_pci_setup_prps).
    [[nodiscard]] std::pair<std::uint64_t, std::uint64_t> prps(std::uint64_t gpa,
                                                               std::uint64_t len);

    // ---- registers ----
    [[nodiscard]] std::uint32_t rd32(std::uint64_t off) { return regs_.read32(off); }
    void wr32(std::uint64_t off, std::uint32_t v) { regs_.write32(off, v); }
    // lo_hi_readq / lo_hi_writeq, as nvme/pci.c accesses CAP, ASQ and ACQ.
    [[nodiscard]] std::uint64_t rd64(std::uint64_t off);
    void wr64(std::uint64_t off, std::uint64_t v);

    // CC as Linux writes it: NVM command set, 4 KiB pages, round robin, 64/16-byte entries.
    static constexpr std::uint32_t kCc = nvme::cc::CSS.put(nvme::cc::CSS_NVM) |
                                         nvme::cc::IOSQES.put(nvme::kSqEntrySizeLog2) |
                                         nvme::cc::IOCQES.put(nvme::kCqEntrySizeLog2);

    // CC.EN = 0 and a bounded wait for CSTS.RDY = 0. False on timeout.
    [[nodiscard]] bool disable();
    // nvme_pci_configure_admin_queue + nvme_enable_ctrl (nvme/pci.c:1851-1898): disable, admin
    // queues of `depth` entries in fresh guest memory, CC with EN = 1, bounded wait for RDY.
    // False when RDY does not come (CSTS.CFS, or a timeout).
    [[nodiscard]] bool enable(std::uint32_t depth = 32);
    [[nodiscard]] std::uint64_t cap() const { return cap_; }

    // ---- admin queue (slow-path doorbells only: Linux never shadows qid 0) ----
    std::uint16_t admin_submit(nvme::SqEntry e);
    // The completion of `cid` if it has arrived (draining the admin CQ as nvme_irq does).
    [[nodiscard]] std::optional<nvme::CqEntry> admin_try(std::uint16_t cid);
    [[nodiscard]] nvme::CqEntry admin_wait(std::uint16_t cid);
    nvme::CqEntry admin(const nvme::SqEntry& e) { return admin_wait(admin_submit(e)); }
    [[nodiscard]] nvme::StatusCode admin_status(const nvme::SqEntry& e) {
        return status_of(admin(e));
    }

    // ---- I/O queues ----
    // Create I/O CQ then SQ, both of `entries` entries, in fresh guest memory. The statuses of
    // the two commands (the SQ is not attempted when the CQ fails).
    [[nodiscard]] std::pair<nvme::StatusCode, nvme::StatusCode> create_queue(IoQueue& q,
                                                                             std::uint16_t qid,
                                                                             std::uint32_t entries,
                                                                             std::uint16_t vector,
                                                                             bool interrupts);
    // Doorbell Buffer Config with two fresh pages. From a Success on, I/O doorbells are shadowed.
    [[nodiscard]] nvme::StatusCode enable_shadow_doorbells();
    [[nodiscard]] bool shadowed() const { return shadow_ != 0; }
    [[nodiscard]] std::uint32_t shadow_value(std::uint16_t qid, bool cq) const;
    [[nodiscard]] std::uint32_t event_idx(std::uint16_t qid, bool cq) const;
    // Waits (bounded) until the controller publishes EventIdx == value for a queue's doorbell:
    // it has caught up with the guest there and wants a doorbell for the next update.
    [[nodiscard]] bool wait_event_idx(std::uint16_t qid, bool cq, std::uint32_t value);
    // The eventfds KVM would signal for MMIO writes at these BAR0 offsets.
    void set_doorbell_fds(std::vector<std::pair<std::uint64_t, common::UniqueFd>> fds);

    // Writes an entry at the SQ tail (no doorbell yet); returns its cid.
    std::uint16_t io_put(IoQueue& q, nvme::SqEntry e);
    // Publishes the SQ tail: an MMIO write, or the shadow value plus a doorbell if EventIdx asks.
    void io_ring(IoQueue& q, std::uint32_t old_tail);
    std::uint16_t io_submit(IoQueue& q, const nvme::SqEntry& e);
    // The next CQE by phase tag, if there is one; consuming it moves the CQ head.
    [[nodiscard]] std::optional<nvme::CqEntry> io_poll(IoQueue& q);
    [[nodiscard]] nvme::CqEntry io_wait(IoQueue& q);
    // Submits, waits, checks the CQE belongs to the command (throws if not).
    nvme::CqEntry io(IoQueue& q, const nvme::SqEntry& e);
    [[nodiscard]] nvme::StatusCode io_status(IoQueue& q, const nvme::SqEntry& e) {
        return status_of(io(q, e));
    }

    // Doorbells delivered each way since construction.
    [[nodiscard]] unsigned mmio_doorbells() const { return mmio_doorbells_; }
    [[nodiscard]] unsigned ioeventfd_doorbells() const { return ioeventfd_doorbells_; }
    [[nodiscard]] unsigned skipped_doorbells() const { return skipped_doorbells_; }

private:
    // A CQE whose phase tag matches `phase`: dword 3 with one acquire load (READ_ONCE), then
    // the rest.
    [[nodiscard]] std::optional<nvme::CqEntry> cqe_at(std::uint64_t gpa, bool phase) const;
    // nvme_write_sq_db / nvme_ring_cq_doorbell with nvme_dbbuf_update_and_check_event.
    void publish(std::uint16_t qid, bool cq, std::uint32_t value, std::uint32_t old);
    void drain_admin();

    const common::GuestMemory& mem_;
    RegisterPort& regs_;
    std::uint64_t next_, end_;
    std::uint64_t cap_ = 0;

    std::uint64_t asq_ = 0, acq_ = 0;
    std::uint32_t admin_depth_ = 0, admin_tail_ = 0, admin_head_ = 0;
    bool admin_phase_ = true;
    std::uint16_t next_admin_cid_ = 0x100;
    std::map<std::uint16_t, nvme::CqEntry> admin_done_;

    std::uint64_t shadow_ = 0, event_idx_ = 0;
    std::map<std::uint64_t, common::UniqueFd> doorbell_fds_;
    unsigned mmio_doorbells_ = 0, ioeventfd_doorbells_ = 0, skipped_doorbells_ = 0;
};

}  // namespace testsupport
