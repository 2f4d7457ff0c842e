#include "devices/console_sink.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include "common/console.hpp"
#include "common/fd.hpp"

namespace hypervisor {

namespace {

// Writes all of `bytes` (retrying short writes); false on an error.
bool write_all(int fd, const std::uint8_t* p, std::size_t n) {
    while (n > 0) {
        const ssize_t w = ::write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return false;
        p += w;
        n -= static_cast<std::size_t>(w);
    }
    return true;
}

}  // namespace

ConsoleSink::ConsoleSink(int fd, std::uint64_t limit_bytes) : fd_(fd), limit_(limit_bytes) {
    struct stat st {};
    if (limit_ > 0 && ::fstat(fd_, &st) == 0 && S_ISREG(st.st_mode)) {
        bounded_ = true;
        size_ = static_cast<std::uint64_t>(st.st_size);
        if (size_ > limit_) trim();
    }
}

void ConsoleSink::write(std::span<const std::uint8_t> bytes) {
    if (bytes.empty()) return;
    if (!write_all(fd_, bytes.data(), bytes.size())) return;
    if (!bounded_) return;
    size_ += bytes.size();
    if (size_ > limit_) trim();
}

// Keeps the newest half of the limit. The file may be opened with O_APPEND (hostd) or not (a
// shell's redirection): after the truncation both write from the start again.
void ConsoleSink::trim() {
    const std::uint64_t keep = limit_ / 2;
    std::vector<std::uint8_t> tail(keep);
    const off_t from = static_cast<off_t>(size_ - keep);
    // The output may be open write-only: read the same file through a descriptor of its own.
    const common::UniqueFd in(::open(fmt::format("/proc/self/fd/{}", fd_).c_str(), O_RDONLY | O_CLOEXEC));
    std::size_t got = 0;
    while (in.get() >= 0 && got < keep) {
        const ssize_t r = ::pread(in.get(), tail.data() + got, keep - got, from + static_cast<off_t>(got));
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        got += static_cast<std::size_t>(r);
    }
    if (got < keep) {
        // Not readable: start again empty rather than grow without end.
        tail.clear();
        got = 0;
    }
    dropped_ += size_ - got;
    if (::ftruncate(fd_, 0) != 0 || ::lseek(fd_, 0, SEEK_SET) < 0) {
        spdlog::warn("console: cannot trim the output file ({}); it is no longer bounded", std::strerror(errno));
        bounded_ = false;
        return;
    }
    const std::string marker =
        fmt::format("{}{} bytes; {} older bytes dropped]\n", common::kConsoleTrimmedPrefix, limit_, dropped_);
    size_ = 0;
    if (write_all(fd_, reinterpret_cast<const std::uint8_t*>(marker.data()), marker.size())) size_ += marker.size();
    if (got > 0 && write_all(fd_, tail.data(), got)) size_ += got;
    spdlog::info("console: output reached its {} byte limit; kept the newest {} bytes ({} dropped so far)", limit_,
                 got, dropped_);
}

}  // namespace hypervisor
