// What an NVMe controller is (identity and limits, fixed at creation) and what it has done
// (counters for metrics). Shared by the controller's register, admin and I/O parts.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

#include "nvme/command.hpp"

namespace nitro_card::nvme {

// Which Amazon device the controller presents itself as. Linux 6.1 matches both by class code;
// the ids only select the quirk NVME_QUIRK_DMA_ADDRESS_BITS_48 (nvme/pci.c:3679-3690).
enum class VolumeKind : std::uint8_t { Ebs, InstanceStore };

inline constexpr std::uint16_t kAmazonVendorId = 0x1d0f;
inline constexpr std::uint16_t kEbsDeviceId = 0x8061;
inline constexpr std::uint16_t kInstanceStoreDeviceId = 0xcd00;
inline constexpr std::uint32_t kNvmeClassCode = 0x010802;  // mass storage, NVM, NVM Express
inline constexpr std::string_view kEbsModel = "Amazon Elastic Block Store";
inline constexpr std::string_view kInstanceStoreModel = "Amazon EC2 NVMe Instance Storage";

// True for an EBS volume id: "vol" followed by 17 lower-case hex digits (20 characters, which
// is exactly the Identify SN field).
[[nodiscard]] bool is_ebs_volume_id(std::string_view id);

// The resolved identity and limits of one controller. Built once by Controller::create from a
// validated config; every part of the controller reads it, none changes it.
struct ControllerInfo {
    // PCI identity (config header) and Identify Controller VID/SSVID.
    std::uint16_t vendor_id = kAmazonVendorId;
    std::uint16_t device_id = kEbsDeviceId;
    std::uint16_t subsystem_vendor_id = kAmazonVendorId;
    std::uint16_t subsystem_id = kEbsDeviceId;
    std::uint32_t class_code = kNvmeClassCode;

    // Identify Controller strings (§5.17.2.1): SN, MN, FR space padded; SUBNQN NUL terminated.
    std::string serial;
    std::string model;
    std::string firmware;
    std::string subnqn;
    std::string device_name;  // vendor-specific area: the block device name EBS reports

    std::uint16_t cntlid = 0;
    std::uint16_t max_io_queues = 4;         // I/O queue pairs; qids 1..max_io_queues
    std::uint32_t max_queue_entries = 1024;  // CAP.MQES + 1
    std::uint8_t mdts = 5;                   // 2^MDTS pages of 4 KiB per command
    unsigned msix_vectors = 5;               // vector 0 for admin, one per I/O queue
    NamespaceGeometry ns;                    // namespace 1, the whole volume
    std::array<std::uint8_t, 16> nguid{};    // namespace id: unique per volume

    [[nodiscard]] std::uint64_t max_transfer() const { return std::uint64_t{4096} << mdts; }
};

// Monotonic counters, written by the control and worker threads with relaxed atomics (they are
// statistics, nothing synchronises on them).
struct ControllerCounters {
    std::atomic<std::uint64_t> admin_commands{0};
    std::atomic<std::uint64_t> io_commands{0};
    std::atomic<std::uint64_t> read_commands{0};
    std::atomic<std::uint64_t> write_commands{0};
    std::atomic<std::uint64_t> bytes_read{0};
    std::atomic<std::uint64_t> bytes_written{0};
    std::atomic<std::uint64_t> error_completions{0};
    std::atomic<std::uint64_t> throttled_commands{0};
    std::atomic<std::uint64_t> throttled_ns{0};
    std::atomic<std::uint64_t> slow_path_reads{0};
    std::atomic<std::uint64_t> slow_path_writes{0};
    std::atomic<std::uint64_t> doorbell_writes{0};  // slow-path doorbells only
    std::atomic<std::uint64_t> invalid_doorbells{0};
    std::atomic<std::uint64_t> bad_register_accesses{0};
    std::atomic<std::uint64_t> interrupts{0};
    // The I/O worker's polling: epoll wake-ups that an SQ or CQ doorbell (ioeventfd or slow
    // path) caused, polling passes that found work, the time spent polling without any, and
    // the times polling stopped for a while because the worker lost its CPU while spinning.
    std::atomic<std::uint64_t> doorbell_wakeups{0};
    std::atomic<std::uint64_t> poll_hits{0};
    std::atomic<std::uint64_t> poll_ns{0};
    std::atomic<std::uint64_t> poll_backoffs{0};

    static void add(std::atomic<std::uint64_t>& c, std::uint64_t n = 1) {
        c.fetch_add(n, std::memory_order_relaxed);
    }
};

// A snapshot of ControllerCounters.
struct ControllerStats {
    std::uint64_t admin_commands = 0;
    std::uint64_t io_commands = 0;
    std::uint64_t read_commands = 0;
    std::uint64_t write_commands = 0;
    std::uint64_t bytes_read = 0;
    std::uint64_t bytes_written = 0;
    std::uint64_t error_completions = 0;
    std::uint64_t throttled_commands = 0;
    std::uint64_t throttled_ns = 0;
    std::uint64_t slow_path_reads = 0;
    std::uint64_t slow_path_writes = 0;
    std::uint64_t doorbell_writes = 0;
    std::uint64_t invalid_doorbells = 0;
    std::uint64_t bad_register_accesses = 0;
    std::uint64_t interrupts = 0;
    std::uint64_t doorbell_wakeups = 0;
    std::uint64_t poll_hits = 0;
    std::uint64_t poll_ns = 0;
    std::uint64_t poll_backoffs = 0;
    [[nodiscard]] std::uint64_t slow_path_accesses() const {
        return slow_path_reads + slow_path_writes;
    }
};

[[nodiscard]] ControllerStats snapshot(const ControllerCounters& c);

}  // namespace nitro_card::nvme
