// The block-device backend shared by the NVMe controller (card process) and blkback (dom0).
//
// Both I/O models hand a backend the same requests: a byte range of the volume and host iovecs
// that point into guest memory the caller has already bounds-checked. The backend never sees guest
// addresses. Requests complete asynchronously; completion_fd() becomes readable when completions
// are waiting, so a worker's epoll loop can wait on it next to its doorbells.
//
// Threading: a backend is owned by one worker thread; submit() and poll_completions() must be
// called from that thread. None of the methods block on I/O.
#pragma once

#include <sys/uio.h>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

#include "common/error.hpp"

namespace nitro_card::storage {

// The logical block size every backend exposes. Offsets and lengths are multiples of it.
inline constexpr std::uint32_t kSectorSize = 512;
inline constexpr std::uint32_t kDefaultQueueDepth = 128;
// Above this a queue depth is a configuration mistake, not a tuning choice.
inline constexpr std::uint32_t kMaxQueueDepth = 4096;
// The most iovecs one request may carry (the kernel's IOV_MAX for readv/writev).
inline constexpr std::size_t kMaxSegments = 1024;

enum class Op : std::uint8_t {
    Read,
    Write,
    Flush,        // make completed writes durable; takes no range
    WriteZeroes,  // the range reads back as zeros; blocks stay allocated where the host can
    Discard,      // deallocate the range; it reads back as zeros afterwards
};

[[nodiscard]] std::string_view to_string(Op op) noexcept;

struct Request {
    Op op = Op::Read;
    std::uint64_t offset = 0;  // bytes from the start of the volume
    std::uint64_t length = 0;  // bytes; must equal the total iovec length for Read and Write
    // Host buffers for Read (filled) and Write (drained). The array is copied during submit();
    // the buffers themselves must stay mapped until the request's completion is reaped.
    std::span<const iovec> iov{};
    std::uint64_t tag = 0;  // returned untouched in the completion
};

struct Completion {
    std::uint64_t tag = 0;
    std::int32_t status = 0;  // 0, or -errno
    std::uint64_t bytes = 0;  // bytes read or written; the range length for zeroes and discard
};

// Checks a request against a volume of size_bytes before any I/O is started: alignment to
// kSectorSize, offset + length without overflow and inside the volume, iovecs that add up to the
// length (Read, Write) or are absent (the others), and Flush without a range. Errors are
// OutOfRange for ranges past the end, InvalidArgument for everything else.
[[nodiscard]] common::Status check_request(const Request& req, std::uint64_t size_bytes);

// The error submit() returns when queue_depth() requests are outstanding. The caller keeps the
// request and retries after reaping completions.
[[nodiscard]] common::Error busy_error(std::uint32_t queue_depth);
// True for busy_error(): common::ErrorKind has no kind of its own for it, so it is a System
// error with errno EAGAIN.
[[nodiscard]] bool is_busy(const common::Error& e) noexcept;

class BlockBackend {
public:
    BlockBackend() = default;
    BlockBackend(const BlockBackend&) = delete;
    BlockBackend& operator=(const BlockBackend&) = delete;
    virtual ~BlockBackend() = default;

    [[nodiscard]] std::uint32_t block_size() const noexcept { return kSectorSize; }
    [[nodiscard]] virtual std::uint64_t size_bytes() const noexcept = 0;
    // Requests count from submit() until their completion is reaped.
    [[nodiscard]] virtual std::uint32_t queue_depth() const noexcept = 0;
    [[nodiscard]] virtual std::uint32_t in_flight() const noexcept = 0;

    // Starts a request. Fails without touching the volume when check_request() refuses it, and
    // with busy_error() when queue_depth() requests are outstanding. On success exactly one
    // Completion with req.tag is reaped later, whatever the I/O outcome.
    virtual common::Status submit(const Request& req) = 0;

    // Hands requests that submit() queued to the kernel. A backend may hold them back to hand
    // several over at once (FileBackendOptions::batch_submissions); its user then calls kick()
    // before it waits on completion_fd(). reap() kicks too.
    virtual void kick() {}

    // Moves up to out.size() finished requests into out and returns how many. Never blocks.
    // Clears completion_fd() and re-arms it if completions remain that did not fit.
    virtual std::size_t reap(std::span<Completion> out) = 0;

    // Readable (POLLIN) while completions are waiting to be reaped.
    [[nodiscard]] virtual int completion_fd() const noexcept = 0;

    // Calls on_completion(const Completion&) for each finished request and returns the count.
    // The callback may submit new requests; to keep one call bounded when they complete at
    // once (RamBackend), a call delivers at most queue_depth() completions and leaves the rest
    // signalled on completion_fd().
    template <typename F>
    std::size_t poll_completions(F&& on_completion) {
        std::array<Completion, 32> batch;
        const std::size_t limit = queue_depth();
        std::size_t total = 0;
        while (total < limit) {
            const std::size_t want = std::min(batch.size(), limit - total);
            const std::size_t n = reap(std::span(batch).first(want));
            for (std::size_t i = 0; i < n; ++i) on_completion(batch[i]);
            total += n;
            if (n < want) break;
        }
        return total;
    }
};

}  // namespace nitro_card::storage
