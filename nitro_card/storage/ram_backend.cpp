#include "storage/ram_backend.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <fmt/format.h>

namespace nitro_card::storage {

using common::Error;
using common::fail;

common::Result<std::unique_ptr<RamBackend>> RamBackend::create(std::uint64_t size_bytes,
                                                               std::uint32_t queue_depth) {
    if (size_bytes == 0 || size_bytes % kSectorSize != 0)
        return fail(Error::invalid(fmt::format(
            "RAM volume size {} is not a positive multiple of {}", size_bytes, kSectorSize)));
    if (queue_depth == 0 || queue_depth > kMaxQueueDepth)
        return fail(Error::invalid(
            fmt::format("queue depth {} outside 1..{}", queue_depth, kMaxQueueDepth)));
    auto mem = common::Mmap::anonymous(size_bytes);
    if (!mem) return fail(std::move(mem.error()).context("RAM volume"));
    auto event = common::EventFd::create();
    if (!event) return fail(std::move(event.error()).context("RAM volume"));
    return std::unique_ptr<RamBackend>(
        new RamBackend(std::move(*mem), std::move(*event), queue_depth));
}

common::Status RamBackend::submit(const Request& req) {
    if (auto ok = check_request(req, size_bytes()); !ok) return ok;
    if (done_.size() >= depth_) return fail(busy_error(depth_));

    std::byte* at = mem_.data() + req.offset;
    Completion c{.tag = req.tag, .status = 0, .bytes = req.length};
    switch (req.op) {
        case Op::Read:
            for (const iovec& v : req.iov) {
                std::memcpy(v.iov_base, at, v.iov_len);
                at += v.iov_len;
            }
            break;
        case Op::Write:
            for (const iovec& v : req.iov) {
                std::memcpy(at, v.iov_base, v.iov_len);
                at += v.iov_len;
            }
            break;
        case Op::Flush:
            break;
        case Op::WriteZeroes:
        case Op::Discard:
            zero(req.offset, req.length);
            break;
    }
    done_.push_back(c);
    if (auto s = event_.signal(); !s)
        return fail(std::move(s.error()).context("RAM volume completion"));
    return {};
}

// Whole pages are returned to the kernel (they read back as zeros); the partial pages at either
// end are cleared by hand.
void RamBackend::zero(std::uint64_t offset, std::uint64_t length) {
    const auto page = static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
    const std::uint64_t end = offset + length;
    const std::uint64_t first = (offset + page - 1) / page * page;
    const std::uint64_t last = end / page * page;
    std::byte* base = mem_.data();
    if (first >= last) {
        std::memset(base + offset, 0, length);
        return;
    }
    std::memset(base + offset, 0, first - offset);
    std::memset(base + last, 0, end - last);
    if (::madvise(base + first, last - first, MADV_DONTNEED) != 0) {
        // Not expected for a private anonymous mapping; clearing by hand is still correct.
        std::memset(base + first, 0, last - first);
    }
}

std::size_t RamBackend::reap(std::span<Completion> out) {
    (void)event_.consume();
    std::size_t n = 0;
    while (n < out.size() && !done_.empty()) {
        out[n++] = done_.front();
        done_.pop_front();
    }
    if (!done_.empty()) (void)event_.signal();
    return n;
}

}  // namespace nitro_card::storage
