#include "storage/rate_limiter.hpp"

#include <algorithm>
#include <limits>

namespace nitro_card::storage {

namespace {

constexpr __int128 kNanosPerSecond = 1'000'000'000;

std::chrono::nanoseconds since(TimePoint from, TimePoint to) {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(to - from);
}

}  // namespace

// A rate of 0 would admit nothing ever; it is read as "no limit" instead.
TokenBucket::TokenBucket(std::uint64_t rate_per_second) noexcept
    : rate_(rate_per_second), units_(static_cast<__int128>(rate_per_second) * kNanosPerSecond) {}

void TokenBucket::refill(TimePoint now) noexcept {
    if (!last_) {
        last_ = now;
        return;
    }
    if (now <= *last_) return;
    const __int128 capacity = static_cast<__int128>(rate_) * kNanosPerSecond;
    const __int128 added = static_cast<__int128>(rate_) * since(*last_, now).count();
    units_ = std::min(capacity, units_ + added);
    last_ = now;
}

TimePoint TokenBucket::available_at(std::uint64_t tokens, TimePoint now) noexcept {
    if (is_unlimited()) return now;
    refill(now);
    // An I/O larger than the whole bucket waits only for a full bucket (see the header).
    const __int128 need = static_cast<__int128>(std::min(tokens, rate_)) * kNanosPerSecond;
    if (units_ >= need) return now;
    const __int128 deficit = need - units_;
    const __int128 wait_ns = (deficit + rate_ - 1) / rate_;
    return std::max(now, *last_) + std::chrono::nanoseconds(static_cast<std::int64_t>(wait_ns));
}

void TokenBucket::take(std::uint64_t tokens) noexcept {
    if (is_unlimited()) return;
    units_ -= static_cast<__int128>(tokens) * kNanosPerSecond;
}

std::int64_t TokenBucket::tokens(TimePoint now) noexcept {
    if (is_unlimited()) return std::numeric_limits<std::int64_t>::max();
    refill(now);
    return static_cast<std::int64_t>(units_ / kNanosPerSecond);
}

namespace {

TokenBucket bucket(const std::optional<std::uint64_t>& rate) {
    return rate ? TokenBucket(*rate) : TokenBucket::unlimited();
}

}  // namespace

RateLimiter::RateLimiter(const Limits& limits) noexcept
    : limits_(limits), iops_(bucket(limits.iops)), bytes_(bucket(limits.bytes_per_second)) {}

Admission RateLimiter::check(std::uint64_t bytes, TimePoint now) noexcept {
    const TimePoint ready =
        std::max(iops_.available_at(io_cost(bytes), now), bytes_.available_at(bytes, now));
    if (ready <= now) return Admission{};
    return Admission{.admitted = false, .retry_at = ready};
}

void RateLimiter::admit(std::uint64_t bytes, TimePoint now) noexcept {
    iops_.take(io_cost(bytes));
    bytes_.take(bytes);
    if (waiting_since_) {
        const auto waited = since(*waiting_since_, now).count();
        if (waited > 0) stats_.throttled_ns += static_cast<std::uint64_t>(waited);
        waiting_since_.reset();
    }
}

void RateLimiter::refuse(TimePoint now) noexcept {
    if (waiting_since_) return;
    waiting_since_ = now;
    ++stats_.throttled_requests;
}

Admission RateLimiter::try_admit(std::uint64_t bytes, TimePoint now) noexcept {
    const Admission a = check(bytes, now);
    if (a)
        admit(bytes, now);
    else
        refuse(now);
    return a;
}

Admission CompositeLimiter::try_admit(std::uint64_t bytes, TimePoint now) noexcept {
    const Admission v = volume_.check(bytes, now);
    const Admission i = instance_.check(bytes, now);
    if (v && i) {
        volume_.admit(bytes, now);
        instance_.admit(bytes, now);
        return Admission{};
    }
    if (!v) volume_.refuse(now);
    if (!i) instance_.refuse(now);
    return Admission{.admitted = false,
                     .retry_at = std::max(v ? now : v.retry_at, i ? now : i.retry_at)};
}

}  // namespace nitro_card::storage
