#include "storage/backend.hpp"

#include <cerrno>

#include <fmt/format.h>

namespace nitro_card::storage {

using common::Error;
using common::fail;

std::string_view to_string(Op op) noexcept {
    switch (op) {
        case Op::Read:
            return "read";
        case Op::Write:
            return "write";
        case Op::Flush:
            return "flush";
        case Op::WriteZeroes:
            return "write-zeroes";
        case Op::Discard:
            return "discard";
    }
    return "unknown";
}

namespace {

common::Status check_buffers(const Request& req) {
    if (req.iov.empty())
        return fail(Error::invalid(fmt::format("{} without buffers", to_string(req.op))));
    if (req.iov.size() > kMaxSegments)
        return fail(Error::invalid(fmt::format("{} with {} segments (at most {})",
                                               to_string(req.op), req.iov.size(), kMaxSegments)));
    std::uint64_t total = 0;
    for (const iovec& v : req.iov) {
        if (v.iov_len != 0 && v.iov_base == nullptr)
            return fail(Error::invalid(fmt::format("{} with a null buffer", to_string(req.op))));
        if (__builtin_add_overflow(total, std::uint64_t{v.iov_len}, &total))
            return fail(
                Error::invalid(fmt::format("{} buffers overflow in length", to_string(req.op))));
    }
    if (total != req.length)
        return fail(Error::invalid(fmt::format("{} of {} bytes with {} bytes of buffers",
                                               to_string(req.op), req.length, total)));
    return {};
}

}  // namespace

common::Status check_request(const Request& req, std::uint64_t size_bytes) {
    if (req.op == Op::Flush) {
        if (req.offset != 0 || req.length != 0 || !req.iov.empty())
            return fail(Error::invalid("flush takes no range and no buffers"));
        return {};
    }
    if (req.length == 0)
        return fail(Error::invalid(fmt::format("zero-length {}", to_string(req.op))));
    if (req.offset % kSectorSize != 0 || req.length % kSectorSize != 0)
        return fail(
            Error::invalid(fmt::format("{} at {:#x} of {:#x} bytes is not aligned to {} bytes",
                                       to_string(req.op), req.offset, req.length, kSectorSize)));
    // Written so that offset + length cannot overflow.
    if (req.offset > size_bytes || req.length > size_bytes - req.offset)
        return fail(Error::out_of_range(
            fmt::format("{} at {:#x} of {:#x} bytes is past the end ({:#x} bytes)",
                        to_string(req.op), req.offset, req.length, size_bytes)));
    if (req.op == Op::Read || req.op == Op::Write) return check_buffers(req);
    if (!req.iov.empty())
        return fail(Error::invalid(fmt::format("{} takes no buffers", to_string(req.op))));
    return {};
}

Error busy_error(std::uint32_t queue_depth) {
    return Error{
        common::ErrorKind::System,
        fmt::format("queue full: {} requests outstanding, reap completions and retry", queue_depth),
        EAGAIN};
}

bool is_busy(const Error& e) noexcept {
    return e.kind == common::ErrorKind::System && e.errno_value == EAGAIN;
}

}  // namespace nitro_card::storage
