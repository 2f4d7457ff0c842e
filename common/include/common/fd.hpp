// Move-only owners of kernel handles. Destructors close and never throw.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>

#include "common/error.hpp"

namespace common {

class UniqueFd final {
public:
    UniqueFd() = default;
    explicit UniqueFd(int fd) noexcept : fd_(fd) {}
    UniqueFd(UniqueFd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
    UniqueFd& operator=(UniqueFd&& o) noexcept {
        if (this != &o) reset(std::exchange(o.fd_, -1));
        return *this;
    }
    UniqueFd(const UniqueFd&) = delete;
    UniqueFd& operator=(const UniqueFd&) = delete;
    ~UniqueFd() { reset(); }

    [[nodiscard]] int get() const noexcept { return fd_; }
    [[nodiscard]] bool valid() const noexcept { return fd_ >= 0; }
    explicit operator bool() const noexcept { return valid(); }
    // Gives up ownership; the caller closes.
    [[nodiscard]] int release() noexcept { return std::exchange(fd_, -1); }
    void reset(int fd = -1) noexcept;

    // Opens a path; the error names the path.
    [[nodiscard]] static Result<UniqueFd> open(const std::string& path, int flags, unsigned mode = 0);

private:
    int fd_ = -1;
};

// An eventfd counter: signal() adds one, consume() reads and clears.
class EventFd final {
public:
    [[nodiscard]] static Result<EventFd> create(bool nonblocking = true);
    [[nodiscard]] int fd() const noexcept { return fd_.get(); }
    Status signal(std::uint64_t n = 1) const;
    // Returns the accumulated count, or 0 when nothing was pending (non-blocking mode).
    Result<std::uint64_t> consume() const;

private:
    explicit EventFd(UniqueFd fd) : fd_(std::move(fd)) {}
    UniqueFd fd_;
};

// Anonymous shared memory that can be passed to another process and mapped there.
class MemFd final {
public:
    [[nodiscard]] static Result<MemFd> create(const std::string& name, std::uint64_t size);
    // Adopts an fd received from another process; its size is read with fstat.
    [[nodiscard]] static Result<MemFd> adopt(UniqueFd fd);
    [[nodiscard]] int fd() const noexcept { return fd_.get(); }
    [[nodiscard]] std::uint64_t size() const noexcept { return size_; }

private:
    MemFd(UniqueFd fd, std::uint64_t size) : fd_(std::move(fd)), size_(size) {}
    UniqueFd fd_;
    std::uint64_t size_ = 0;
};

// A memory mapping, unmapped on destruction.
class Mmap final {
public:
    Mmap() = default;
    Mmap(Mmap&& o) noexcept
        : addr_(std::exchange(o.addr_, nullptr)), len_(std::exchange(o.len_, 0)) {}
    Mmap& operator=(Mmap&& o) noexcept;
    Mmap(const Mmap&) = delete;
    Mmap& operator=(const Mmap&) = delete;
    ~Mmap();

    // Maps len bytes of fd at offset, shared, read/write unless prot says otherwise.
    [[nodiscard]] static Result<Mmap> map_shared(int fd, std::size_t len, std::uint64_t offset,
                                                 int prot);
    [[nodiscard]] static Result<Mmap> anonymous(std::size_t len);
    // Maps len bytes of a file read-only and private (for reading it once).
    [[nodiscard]] static Result<Mmap> map_file(int fd, std::size_t len);

    [[nodiscard]] std::byte* data() const noexcept { return static_cast<std::byte*>(addr_); }
    [[nodiscard]] std::size_t size() const noexcept { return len_; }

private:
    Mmap(void* a, std::size_t l) : addr_(a), len_(l) {}
    void* addr_ = nullptr;
    std::size_t len_ = 0;
};

}  // namespace common
