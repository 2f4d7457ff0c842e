// A volume stored in a raw image file or a block device, driven through io_uring.
//
// I/O mode: the file is opened twice, once buffered and once with O_DIRECT. Requests whose
// range and buffers meet the O_DIRECT alignment the kernel reports (statx STATX_DIOALIGN) go
// through the direct descriptor and bypass the host page cache; the rest (guest buffers are often
// not aligned) go through the buffered one. Linux keeps the two coherent: a direct write
// invalidates the cached pages it overlaps and a direct read first writes back dirty ones.
// Overlapping requests in flight at the same time have no defined order, as on NVMe. When the
// filesystem refuses O_DIRECT, or the options disable it, everything is buffered.
//
// Flush is fdatasync. WriteZeroes is fallocate(ZERO_RANGE) and Discard is
// fallocate(PUNCH_HOLE); where the filesystem lacks either, the range is overwritten with zeros
// instead, so both always read back as zeros.
//
// Files on memory file systems (tmpfs, ramfs) are read and written differently: by copying
// through a shared mapping of the file, during submit(). io_uring cannot read or write them
// without blocking, so it hands each request to one of its worker threads, which costs several
// times the copy itself (about 2.5 us of CPU per 4 KiB read against 0.4 us for the copy on the
// development machine). A fault on the mapping (the file was truncated, or tmpfs is full under a
// sparse file) fails the request with EIO or ENOSPC (guarded_copy.hpp). Flush, WriteZeroes and
// Discard take the io_uring path in either case.
//
// The ring's eventfd is completion_fd(): the kernel signals it for every completion, and the
// backend itself when a request finished during submit().
#pragma once

#include <liburing.h>

#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/fd.hpp"
#include "storage/backend.hpp"

namespace nitro_card::storage {

struct FileBackendOptions {
    // When the path does not exist, create a sparse file of this many bytes (a positive multiple
    // of kSectorSize). Without it a missing file is an error. An existing file must already
    // have this size: a volume is never resized behind its user's back.
    std::optional<std::uint64_t> create_size{};
    std::uint32_t queue_depth = kDefaultQueueDepth;
    // Try O_DIRECT for aligned requests. False forces buffered I/O for everything.
    bool try_direct = true;
    // submit() leaves requests in the ring until kick() or reap(): one system call for a batch.
    // Only for users that call kick() before they wait (the NVMe worker does, once per pass).
    bool batch_submissions = false;
    // Serve reads and writes of a file on tmpfs or ramfs through a shared mapping (see above).
    // False keeps them on io_uring.
    bool map_memory_files = true;
};

class FileBackend final : public BlockBackend {
public:
    // Opens (or creates) the volume and sets up its ring. Errors name the path.
    [[nodiscard]] static common::Result<std::unique_ptr<FileBackend>> open(
        const std::string& path, const FileBackendOptions& options = {});
    // Waits for the requests the kernel still holds, so no I/O outlives the backend.
    ~FileBackend() override;

    [[nodiscard]] std::uint64_t size_bytes() const noexcept override { return size_; }
    [[nodiscard]] std::uint32_t queue_depth() const noexcept override { return depth_; }
    [[nodiscard]] std::uint32_t in_flight() const noexcept override {
        return depth_ - static_cast<std::uint32_t>(free_.size());
    }
    common::Status submit(const Request& req) override;
    std::size_t reap(std::span<Completion> out) override;
    [[nodiscard]] int completion_fd() const noexcept override { return event_.fd(); }
    void kick() override { flush_submissions(); }

    [[nodiscard]] const std::string& path() const noexcept { return path_; }
    // True when aligned requests bypass the page cache.
    [[nodiscard]] bool direct() const noexcept { return direct_fd_.valid(); }
    // Read and write requests served buffered although direct(), because of their alignment.
    [[nodiscard]] std::uint64_t buffered_fallbacks() const noexcept { return buffered_fallbacks_; }
    // True when reads and writes copy through a mapping of the file (a memory file system).
    [[nodiscard]] bool mapped() const noexcept { return mapped_.size() != 0; }

private:
    // Owns one io_uring instance.
    class Ring final {
    public:
        Ring() = default;
        Ring(const Ring&) = delete;
        Ring& operator=(const Ring&) = delete;
        ~Ring();
        [[nodiscard]] common::Status init(unsigned entries);
        [[nodiscard]] io_uring* get() noexcept { return &ring_; }

    private:
        io_uring ring_{};
        bool live_ = false;
    };

    enum class Stage : std::uint8_t { Transfer, Sync, Allocate, ZeroFill };

    // One outstanding request. At most one SQE per slot is queued or in the kernel at a time, so
    // the ring (queue_depth entries, twice as many CQEs) can neither fill nor overflow.
    struct Slot {
        Stage stage = Stage::Transfer;
        Op op = Op::Read;
        std::uint64_t tag = 0;
        std::uint64_t length = 0;     // as submitted
        std::uint64_t offset = 0;     // where the next transfer starts
        std::uint64_t remaining = 0;  // bytes not yet transferred or zeroed
        std::vector<iovec> iov;       // the caller's segments, consumed from `next` on
        std::size_t next = 0;
        bool force_buffered = false;  // the direct descriptor refused this request
        bool sent_direct = false;     // the SQE in flight uses the direct descriptor
        Completion result;
    };

    FileBackend(std::string path, common::UniqueFd fd, common::EventFd event, std::uint64_t size,
                std::uint32_t depth);
    [[nodiscard]] common::Status setup_direct();
    [[nodiscard]] common::Status setup_ring();
    [[nodiscard]] common::Status setup_mapping();
    void copy_mapped(std::uint32_t idx);
    void note_ready();

    [[nodiscard]] bool direct_fits(std::uint64_t offset, std::span<const iovec> iov) const noexcept;
    io_uring_sqe* next_sqe(std::uint32_t idx);
    void queue_transfer(std::uint32_t idx);
    void queue_zero_chunk(std::uint32_t idx);
    void start_allocate(std::uint32_t idx);
    void on_allocate_result(std::uint32_t idx, int res);
    void on_cqe(std::uint32_t idx, int res);
    bool retry_buffered(std::uint32_t idx, int res);
    void finish(std::uint32_t idx, int status);
    void flush_submissions();

    std::string path_;
    common::UniqueFd fd_;         // buffered
    common::UniqueFd direct_fd_;  // O_DIRECT, or invalid
    std::uint64_t size_;
    std::uint32_t depth_;
    std::uint32_t dio_mem_align_ = 4096;
    std::uint32_t dio_offset_align_ = 4096;
    bool async_fallocate_ = false;
    bool zero_range_ok_ = true;
    bool punch_hole_ok_ = true;
    std::uint64_t buffered_fallbacks_ = 0;
    std::uint32_t sqes_in_kernel_ = 0;  // queued or submitted, completion not yet seen
    bool unsubmitted_ = false;          // SQEs wait for io_uring_submit
    bool options_batch_ = false;        // FileBackendOptions::batch_submissions
    common::Mmap zeros_;                // source for zero-fill writes, mapped on first use
    common::Mmap mapped_;               // the whole file, when it lives on a memory file system
    bool signalled_ = false;            // event_ raised for requests finished in submit()
    bool ring_signals_ = false;         // the kernel may have raised event_ since it was cleared
    std::vector<Slot> slots_;
    std::vector<std::uint32_t> free_;
    std::deque<std::uint32_t> ready_;  // finished slots, in completion order
    common::EventFd event_;
    // Declared last so it is torn down first, before the buffers its requests point into.
    Ring ring_;
};

}  // namespace nitro_card::storage
