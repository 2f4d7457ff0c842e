// An NVMe controller (NVMe 1.4 over PCIe) for one volume, as the card serves it to a guest: the
// device model Linux 6.1's nvme driver needs (devices.md §2).
//
// Parts, one concern each:
//   controller_registers  CAP/VS/CC/CSTS/AQA/ASQ/ACQ as data; legal accesses decided in one place
//   admin                 the admin queue pair and admin commands, on the control thread
//   io_worker/io_commands the I/O queues, on a worker thread that owns the backend
//   queues                rings in guest memory, shadow doorbells, the queue registry
// This class ties them to the transport's Device interface: register accesses, CC.EN/SHN,
// slow-path doorbells, guest RAM and MSI-X eventfds.
//
// Threading: every Device call comes from the control thread (device.hpp). Admin commands run
// inside bar0_write. The I/O path runs on the worker; the control thread reaches it only through
// IoWorker's blocking calls and DoorbellSlot atomics. stats() may be called from any thread.
//
// Lock order: the controller takes no lock of its own; IoWorker's task mutex and the shared
// instance limiter's mutex are leaves.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/error.hpp"
#include "common/fd.hpp"
#include "common/guest_memory.hpp"
#include "nvme/admin.hpp"
#include "nvme/controller_info.hpp"
#include "nvme/controller_registers.hpp"
#include "nvme/io.hpp"
#include "nvme/queues.hpp"
#include "storage/backend.hpp"
#include "storage/rate_limiter.hpp"
#include "transport/device.hpp"

namespace nitro_card::nvme {

struct ControllerConfig {
    std::unique_ptr<storage::BlockBackend> backend;
    // The volume's limits (EBS: the volume type's IOPS and throughput), and optionally the
    // instance's, shared by all of its controllers.
    storage::Limits volume_limits = storage::Limits::unlimited();
    std::shared_ptr<SharedRateLimiter> instance_limiter;

    VolumeKind kind = VolumeKind::Ebs;
    std::string serial;  // EBS: the volume id, "vol" + 17 hex digits; at most 20 characters
    std::string model;   // empty: the kind's model name
    std::string firmware = "1.0";
    std::string subnqn;       // empty: a UUID NQN derived from the serial (unique per volume)
    std::string device_name;  // optional: the block device name EBS reports ("sdf")
    std::uint16_t controller_id = 0;

    unsigned max_io_queues = 4;  // I/O queue pairs (one per vCPU); MSI-X vectors = this + 1
    unsigned mqes = 1023;        // CAP.MQES: largest queue, 0-based
    unsigned mdts = 5;           // 2^MDTS × 4 KiB per command: 128 KiB
    unsigned lba_shift = 9;      // 512-byte LBAs (12: 4 KiB)
    IoThreadConfig io_thread;
};

class Controller final : public Device {
public:
    inline static constexpr std::uint64_t kBar0Size = 16 * 1024;
    inline static constexpr unsigned kMaxIoQueues = 256;

    // Validates the config (serial, strings, limits, a backend whose size is a whole number of
    // LBAs) and starts the I/O worker.
    [[nodiscard]] static common::Result<std::shared_ptr<Controller>> create(
        ControllerConfig config);
    ~Controller() override;
    Controller(const Controller&) = delete;
    Controller& operator=(const Controller&) = delete;

    [[nodiscard]] std::vector<std::uint8_t> config_header() const override;
    [[nodiscard]] std::uint64_t bar0_size() const override { return kBar0Size; }
    [[nodiscard]] unsigned msix_vectors() const override { return info_.msix_vectors; }
    void attach_memory(std::shared_ptr<const common::GuestMemory> mem) override;
    void detach_memory() override;
    void set_irqs(std::vector<common::UniqueFd> irqs) override;
    [[nodiscard]] std::uint64_t bar0_read(std::uint64_t offset, unsigned size) override;
    void bar0_write(std::uint64_t offset, unsigned size, std::uint64_t value) override;
    // The SQ tail and CQ head doorbells of every I/O queue, once Doorbell Buffer Config is on
    // (before that an ioeventfd would lose the value written; devices.md §2.6).
    [[nodiscard]] std::vector<Doorbell> doorbells() const override;
    void reset() override;

    [[nodiscard]] const ControllerInfo& info() const { return info_; }
    [[nodiscard]] const std::string& serial() const { return info_.serial; }
    [[nodiscard]] ControllerStats stats() const { return snapshot(counters_); }

private:
    explicit Controller(ControllerInfo info);

    void cc_written(std::uint32_t old_cc, std::uint32_t new_cc);
    void enable();
    void disable();
    void shutdown();
    void doorbell_written(std::uint64_t offset, unsigned size, std::uint64_t value);
    void admin_doorbell(DoorbellRef db, std::uint32_t value);
    void invalid_doorbell(DoorbellRef db, std::uint32_t value, ErrorEventInfo why);
    void bad_access(std::string_view what, std::uint64_t offset, unsigned size,
                    std::string_view why);
    void raise(std::uint16_t vector);
    [[nodiscard]] bool ready() const { return csts::RDY.get(regs_.csts()) != 0; }

    const ControllerInfo info_;
    ControllerCounters counters_;
    std::atomic<bool> fatal_{false};  // CSTS.CFS; the worker sets it too
    RegisterFile regs_;
    QueueRegistry queues_;
    std::shared_ptr<const common::GuestMemory> mem_;
    std::vector<common::UniqueFd> irqs_;  // outlive the worker, which signals them
    std::unique_ptr<IoWorker> worker_;
    std::unique_ptr<AdminQueue> admin_;
};

}  // namespace nitro_card::nvme
