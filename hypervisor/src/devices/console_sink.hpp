// Where the guest's console output goes: a file descriptor (the vmm's stdout). When that is a
// regular file and a limit is set, the file never grows past it: once it would, it keeps the
// newest half of the limit behind a line saying how much older output was dropped. A guest that
// prints without end cannot fill the host's disk, and the end of its output (a panic, the last
// words before a hang) is what stays. A terminal or a pipe is written as is: its reader decides.
#pragma once

#include <cstdint>
#include <span>

namespace hypervisor {

class ConsoleSink final {
public:
    // limit_bytes 0: no limit.
    ConsoleSink(int fd, std::uint64_t limit_bytes);

    // Best effort: a closed or failing output must not stop the guest.
    void write(std::span<const std::uint8_t> bytes);
    [[nodiscard]] std::uint64_t dropped_bytes() const { return dropped_; }

private:
    void trim();

    int fd_;
    std::uint64_t limit_;
    bool bounded_ = false;    // a regular file with a limit
    std::uint64_t size_ = 0;  // the file's size as this sink left it
    std::uint64_t dropped_ = 0;
};

}  // namespace hypervisor
