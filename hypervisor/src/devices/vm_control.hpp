// How a VM ends: the first stop request wins; the main thread waits for it.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>

namespace hypervisor {

enum class StopReason { GuestExit, Reset, Shutdown, GuestCrash, HostError, Timeout };

struct StopRequest {
    StopReason reason;
    int status;
    std::string detail;
};

// Exit statuses of nitrovm beyond the guest's own (documented in the README).
inline constexpr int kStatusUsage = 2;
inline constexpr int kStatusTimeout = 124;
inline constexpr int kStatusGuestCrash = 125;
inline constexpr int kStatusHostError = 126;

class VmControl final {
public:
    // Records the stop unless one was already recorded. Thread-safe.
    void request_stop(StopReason reason, int status, std::string detail);
    // Remembers an exit status for a later reset (the guest wrote the exit port).
    [[nodiscard]] bool stopping() const;
    // Waits until a stop is requested or the deadline passes (then returns nullopt).
    std::optional<StopRequest> wait(std::optional<std::chrono::steady_clock::time_point> deadline);

private:
    mutable std::mutex mu_;
    std::condition_variable cv_;
    std::optional<StopRequest> stop_;
};

}  // namespace hypervisor
