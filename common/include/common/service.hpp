// What the host's long-running processes (nitro-card, xen-dom0, hostd) share: SIGTERM and SIGINT
// taken synchronously by one waiting thread, and the readiness byte a parent waits for.
#pragma once

#include <signal.h>
#include <time.h>
#include <unistd.h>

#include <chrono>

namespace common {

class StopSignals final {
public:
    // Blocks SIGTERM and SIGINT in the calling thread and every thread it starts afterwards (so
    // construct it before any), and ignores SIGPIPE.
    StopSignals() {
        sigemptyset(&set_);
        sigaddset(&set_, SIGTERM);
        sigaddset(&set_, SIGINT);
        ::pthread_sigmask(SIG_BLOCK, &set_, nullptr);
        ::signal(SIGPIPE, SIG_IGN);
    }
    // The signal that arrived within `tick`, or 0.
    [[nodiscard]] int wait_for(std::chrono::milliseconds tick) const {
        const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(tick).count();
        timespec ts{static_cast<time_t>(ns / 1'000'000'000), static_cast<long>(ns % 1'000'000'000)};
        const int sig = ::sigtimedwait(&set_, nullptr, &ts);
        return sig > 0 ? sig : 0;
    }
    // Waits as long as it takes.
    [[nodiscard]] int wait() const {
        int sig = 0;
        ::sigwait(&set_, &sig);
        return sig;
    }

private:
    sigset_t set_{};
};

// Tells the parent that started this process with --ready-fd that it serves: one byte, then
// the fd is closed. Nothing happens for fd < 0.
inline void signal_ready(int fd) {
    if (fd < 0) return;
    const char b = 1;
    (void)!::write(fd, &b, 1);
    ::close(fd);
}

}  // namespace common
