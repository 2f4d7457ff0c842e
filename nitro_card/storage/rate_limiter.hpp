// EBS-style I/O limits: token buckets for IOPS and bytes per second, per volume and per instance.
//
// Rules, following EBS:
// - An I/O of up to 256 KiB costs one IOPS token; a larger one costs ceil(bytes / 256 KiB), as
//   EBS splits large I/Os into 256 KiB units. Every I/O, even a zero-byte flush, costs at least
//   one.
// - Each bucket holds at most one second's worth of tokens and starts full, so an idle volume
//   can absorb a burst of one second's allowance at once and is held to the rate after that.
// - An I/O larger than a whole bucket is admitted once the bucket is full and leaves it in debt;
//   the debt is paid back at the rate, so the long-run rate still holds.
//
// Time is a parameter of every call, never read from a clock here, so tests run in simulated
// time. Token counts are kept in token-nanoseconds (integers), so no rounding drifts.
//
// Threading: not thread-safe. An instance limiter shared by several volumes must be used from the
// one worker that serves them.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>

namespace nitro_card::storage {

using Clock = std::chrono::steady_clock;
using TimePoint = Clock::time_point;

inline constexpr std::uint64_t kIoUnitBytes = 256 * 1024;
inline constexpr std::uint64_t kGp3Iops = 3000;
inline constexpr std::uint64_t kGp3BytesPerSecond = 125ULL << 20;  // 125 MiB/s

// IOPS tokens an I/O of `bytes` costs (see the rules above).
[[nodiscard]] constexpr std::uint64_t io_cost(std::uint64_t bytes) noexcept {
    const std::uint64_t units = bytes / kIoUnitBytes + (bytes % kIoUnitBytes != 0 ? 1 : 0);
    return units == 0 ? 1 : units;
}

class TokenBucket final {
public:
    // A bucket that admits everything.
    [[nodiscard]] static TokenBucket unlimited() noexcept { return TokenBucket(); }
    // rate_per_second > 0 tokens per second; holds at most rate_per_second tokens; starts full.
    explicit TokenBucket(std::uint64_t rate_per_second) noexcept;

    [[nodiscard]] bool is_unlimited() const noexcept { return rate_ == 0; }
    [[nodiscard]] std::uint64_t rate() const noexcept { return rate_; }

    // The earliest time at which `tokens` can be taken: `now` if they can be taken now.
    [[nodiscard]] TimePoint available_at(std::uint64_t tokens, TimePoint now) noexcept;
    // Takes tokens; call only after available_at(tokens, now) returned now.
    void take(std::uint64_t tokens) noexcept;
    // Whole tokens in the bucket at `now` (negative while in debt).
    [[nodiscard]] std::int64_t tokens(TimePoint now) noexcept;

private:
    TokenBucket() = default;
    void refill(TimePoint now) noexcept;

    std::uint64_t rate_ = 0;  // 0: unlimited
    __int128 units_ = 0;      // tokens × 1e9
    std::optional<TimePoint> last_;
};

// Limits of one volume or one instance. nullopt means unlimited.
struct Limits {
    std::optional<std::uint64_t> iops{};
    std::optional<std::uint64_t> bytes_per_second{};

    [[nodiscard]] static Limits gp3() noexcept { return {kGp3Iops, kGp3BytesPerSecond}; }
    [[nodiscard]] static Limits unlimited() noexcept { return {}; }
    bool operator==(const Limits&) const = default;
};

struct Admission {
    bool admitted = true;
    // When refused: the earliest time the same request can be admitted, if nothing else takes
    // tokens in between.
    TimePoint retry_at{};
    explicit operator bool() const noexcept { return admitted; }
};

// Throttling seen by one limiter. A request is throttled when it is refused at least once; the
// time from its first refusal to its admission is added to throttled_ns. As with EBS's
// "performance exceeded" counters, this measures how long demand exceeded the limit.
struct ThrottleStats {
    std::uint64_t throttled_requests = 0;
    std::uint64_t throttled_ns = 0;
};

// IOPS and bandwidth limits of one volume or one instance.
//
// Contract for the accounting: after a refusal, the caller retries that same request before
// offering any other (a queue waits at its head), and does not give up on it. With several
// heads waiting on one limiter, overlapping waits count once.
class RateLimiter final {
public:
    explicit RateLimiter(const Limits& limits) noexcept;

    // Admits an I/O of `bytes` (taking io_cost(bytes) IOPS tokens and `bytes` byte tokens), or
    // refuses it without taking anything.
    [[nodiscard]] Admission try_admit(std::uint64_t bytes, TimePoint now) noexcept;

    [[nodiscard]] const Limits& limits() const noexcept { return limits_; }
    // Waits finished so far; a wait still in progress is not included.
    [[nodiscard]] ThrottleStats stats() const noexcept { return stats_; }

private:
    friend class CompositeLimiter;
    // Refills and says whether the I/O fits, without taking tokens or touching the accounting.
    [[nodiscard]] Admission check(std::uint64_t bytes, TimePoint now) noexcept;
    void admit(std::uint64_t bytes, TimePoint now) noexcept;
    void refuse(TimePoint now) noexcept;

    Limits limits_;
    TokenBucket iops_;
    TokenBucket bytes_;
    std::optional<TimePoint> waiting_since_;
    ThrottleStats stats_;
};

// A volume's limiter together with its instance's: an I/O is admitted only when both admit it,
// and a refusal by one takes no tokens from the other. Each limiter accounts for the refusals it
// made itself. Holds references; both limiters must outlive it.
class CompositeLimiter final {
public:
    CompositeLimiter(RateLimiter& volume, RateLimiter& instance) noexcept
        : volume_(volume), instance_(instance) {}

    [[nodiscard]] Admission try_admit(std::uint64_t bytes, TimePoint now) noexcept;

private:
    RateLimiter& volume_;
    RateLimiter& instance_;
};

}  // namespace nitro_card::storage
