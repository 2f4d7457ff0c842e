// Errors as values: every runtime path returns std::expected<T, Error>.
#pragma once

#include <cerrno>
#include <cstring>
#include <expected>
#include <fmt/format.h>
#include <string>
#include <utility>

namespace common {

enum class ErrorKind {
    System,           // a system call failed; errno_value holds why
    InvalidArgument,  // bad user input (CLI, config, file contents)
    OutOfRange,       // an address or length outside what exists
    NotFound,
    Unsupported,      // the host or the guest lacks something we need
    GuestFault,       // the guest asked for something it may not have
    Protocol,         // a malformed message from a peer process
};

struct [[nodiscard]] Error {
    ErrorKind kind = ErrorKind::System;
    std::string message;
    int errno_value = 0;

    // Builds an error from the current errno, prefixed with what was being done.
    static Error from_errno(std::string_view what) {
        int e = errno;
        return Error{ErrorKind::System, fmt::format("{}: {}", what, std::strerror(e)), e};
    }
    static Error invalid(std::string msg) { return Error{ErrorKind::InvalidArgument, std::move(msg), 0}; }
    static Error out_of_range(std::string msg) { return Error{ErrorKind::OutOfRange, std::move(msg), 0}; }
    static Error unsupported(std::string msg) { return Error{ErrorKind::Unsupported, std::move(msg), 0}; }
    static Error not_found(std::string msg) { return Error{ErrorKind::NotFound, std::move(msg), 0}; }

    // Adds outer context: "loading kernel: open /x: No such file".
    Error context(std::string_view outer) && {
        message = fmt::format("{}: {}", outer, message);
        return std::move(*this);
    }
};

template <typename T>
using Result = std::expected<T, Error>;

using Status = std::expected<void, Error>;

inline std::unexpected<Error> fail(Error e) { return std::unexpected<Error>(std::move(e)); }

}  // namespace common
