// The admin queue pair and the admin command set (NVMe 2.0 §5), run on the control thread inside
// the slow-path admin doorbell write, so the vmm sees a command's effect when its write returns.
//
// The commands Linux 6.1 sends (devices.md §2.4): Identify CNS 0/1/2/3, Set/Get Features, Create
// and Delete I/O CQ/SQ, Doorbell Buffer Config, Abort, Asynchronous Event Request, Get Log Page.
// Each entry is copied once from the admin SQ, decoded by decode_admin() (field checks), then
// checked against controller state here (queue existence, allocation, guest RAM).
//
// Threading: control thread only. Queue creation and deletion block until the I/O worker has
// applied them (IoWorker's contract).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <optional>
#include <span>
#include <vector>

#include "common/guest_memory.hpp"
#include "nvme/admin_data.hpp"
#include "nvme/command.hpp"
#include "nvme/controller_info.hpp"
#include "nvme/controller_registers.hpp"
#include "nvme/io.hpp"
#include "nvme/queues.hpp"

namespace nitro_card::nvme {

class AdminQueue final {
public:
    AdminQueue(const ControllerInfo& info, const RegisterFile& regs, QueueRegistry& queues,
               IoWorker& worker, ControllerCounters& counters, std::atomic<bool>& fatal);

    // CC.EN 0 -> 1 with AQA/ASQ/ACQ the controller validated.
    void enable(common::GuestAddr asq, std::uint32_t sq_entries, common::GuestAddr acq,
                std::uint32_t cq_entries);
    // CC.EN 1 -> 0: forgets the queues, held AERs, pending events, shadow doorbells and feature
    // values. The I/O queues are the controller's to tear down.
    void disable();
    [[nodiscard]] bool enabled() const { return sq_.has_value(); }
    [[nodiscard]] std::uint32_t sq_entries() const { return sq_ ? sq_->size() : 0; }
    [[nodiscard]] std::uint32_t cq_entries() const { return cq_ ? cq_->size() : 0; }

    // Slow-path admin doorbells; the caller checked the value against the queue size. Each
    // runs what it can and returns the number of CQEs posted (the caller raises vector 0).
    // `mem` may be null (guest RAM detached): the commands then wait for process().
    [[nodiscard]] unsigned sq_tail_written(const common::GuestMemory* mem, std::uint32_t tail);
    // nullopt: the head releases entries never posted (Invalid Doorbell Write Value).
    [[nodiscard]] std::optional<unsigned> cq_head_written(const common::GuestMemory* mem,
                                                          std::uint32_t head);
    // Runs commands that are waiting (after guest RAM comes back).
    [[nodiscard]] unsigned process(const common::GuestMemory* mem);

    // An error event (§5.2.1: Invalid Doorbell Register / Write Value): completes a held AER,
    // or is kept until one arrives. Events of the type are then masked until the host reads the
    // Error Information log with RAE = 0 (§5.2). Returns the CQEs posted.
    [[nodiscard]] unsigned report_error(const common::GuestMemory* mem, ErrorEventInfo info);

    // Doorbell Buffer Config in force, if any.
    [[nodiscard]] const std::optional<ShadowBuffers>& shadow() const { return shadow_; }

private:
    struct Outcome {
        StatusCode status = StatusCode::Success;
        std::uint32_t dw0 = 0;
        bool dnr = false;
        bool held = false;  // AER: completed later
        static Outcome ok(std::uint32_t dw0 = 0) {
            return {StatusCode::Success, dw0, false, false};
        }
        static Outcome fail(StatusCode s) { return {s, 0, true, false}; }
    };
    // Feature values (§5.27.1), back to defaults on reset.
    struct Features {
        std::uint32_t arbitration = 0;
        std::uint32_t power_management = 0;
        std::uint32_t temperature_over = kWarningTempK;  // TMPSEL 0, THSEL 0
        std::uint32_t temperature_under = 0;             // TMPSEL 0, THSEL 1
        std::uint32_t error_recovery = 0;
        bool write_cache = true;
        std::uint32_t interrupt_coalescing = 0;
        std::uint32_t interrupt_vector_config = 0;
        std::uint32_t write_atomicity = 0;
        std::uint32_t async_event_config = 0;
    };

    [[nodiscard]] unsigned run(const common::GuestMemory& mem);
    [[nodiscard]] unsigned deliver_events(const common::GuestMemory& mem);
    [[nodiscard]] bool post(const common::GuestMemory& mem, std::uint16_t cid, const Outcome& o);
    [[nodiscard]] Outcome execute(const common::GuestMemory& mem, const SqEntry& e);
    [[nodiscard]] AdminLimits limits() const;
    // Copies `data` to the host buffer PRP1/PRP2 describe (admin data is at most MDTS).
    [[nodiscard]] Outcome transfer(const common::GuestMemory& mem, const DataPointer& dptr,
                                   std::span<const std::byte> data, std::uint32_t dw0 = 0);

    Outcome handle(const common::GuestMemory& mem, const Identify& c);
    Outcome handle(const common::GuestMemory& mem, const CreateIoCq& c);
    Outcome handle(const common::GuestMemory& mem, const CreateIoSq& c);
    Outcome handle(const common::GuestMemory& mem, const DeleteIoSq& c);
    Outcome handle(const common::GuestMemory& mem, const DeleteIoCq& c);
    Outcome handle(const common::GuestMemory& mem, const GetLogPage& c);
    Outcome handle(const common::GuestMemory& mem, const SetFeatures& c);
    Outcome handle(const common::GuestMemory& mem, const GetFeatures& c);
    Outcome handle(const common::GuestMemory& mem, const Abort& c);
    Outcome handle(const common::GuestMemory& mem, const AsyncEventRequest& c);
    Outcome handle(const common::GuestMemory& mem, const DoorbellBufferConfig& c);
    [[nodiscard]] std::optional<std::uint32_t> feature_value(FeatureId fid, FeatureSelect sel,
                                                             std::uint32_t cdw11) const;

    const ControllerInfo& info_;
    const RegisterFile& regs_;
    QueueRegistry& queues_;
    IoWorker& worker_;
    ControllerCounters& counters_;
    std::atomic<bool>& fatal_;
    const std::chrono::steady_clock::time_point created_ = std::chrono::steady_clock::now();

    std::optional<SubmissionRing> sq_;
    std::optional<CompletionRing> cq_;
    std::uint32_t sq_tail_ = 0;
    std::uint16_t sqs_allocated_;  // Set Features Number of Queues, 1-based counts
    std::uint16_t cqs_allocated_;
    Features features_;
    std::vector<std::uint16_t> held_aers_;  // command ids, oldest first
    std::deque<std::uint32_t> events_;      // AER dword 0 values not yet reported
    bool error_events_masked_ = false;
    std::optional<ShadowBuffers> shadow_;
};

}  // namespace nitro_card::nvme
