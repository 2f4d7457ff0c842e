// An exact token bucket in integer arithmetic: the level is kept in units of 1e-12 token, so a
// rate in tokens per second adds exactly `rate` units per simulated picosecond. No rounding drift:
// over any interval the bucket grants exactly depth + floor(rate * seconds) tokens.
#pragma once

#include <algorithm>
#include <cstdint>

#include "units.hpp"

namespace hostsim {

class TokenBucket final {
public:
    using u128 = unsigned __int128;
    static constexpr std::uint64_t kUnlimited = 0;

    // rate_per_s = 0 means unlimited (every request is admitted at once). depth >= 1 token.
    // initial: tokens in the bucket at time 0 (clamped to depth).
    TokenBucket(std::uint64_t rate_per_s, std::uint64_t depth, std::uint64_t initial)
        : rate_(rate_per_s),
          depth_units_(static_cast<u128>(std::max<std::uint64_t>(depth, 1)) * kUnitsPerToken),
          level_(std::min(static_cast<u128>(initial) * kUnitsPerToken, depth_units_)) {}

    bool unlimited() const { return rate_ == kUnlimited; }

    // Earliest time >= now at which n tokens are in the bucket. n may exceed the depth only for an
    // unlimited bucket; a limited one clamps n to its depth (a request larger than the bucket waits
    // for a full bucket and empties it).
    Ps available_at(Ps now, std::uint64_t n) const {
        if (unlimited()) return now;
        const Ps from = std::max(now, last_);
        const u128 level = level_at(from);
        const u128 need = std::min(static_cast<u128>(n) * kUnitsPerToken, depth_units_);
        if (level >= need) return from;
        const u128 deficit = need - level;
        const u128 wait = (deficit + rate_ - 1) / rate_;  // ceil: the token is whole at that ps
        return from + static_cast<Ps>(wait);
    }

    // Takes n tokens at time `at` (>= the last take); the caller got `at` from available_at().
    void take(Ps at, std::uint64_t n) {
        if (unlimited()) return;
        const Ps from = std::max(at, last_);
        u128 level = level_at(from);
        const u128 need = std::min(static_cast<u128>(n) * kUnitsPerToken, depth_units_);
        level = level >= need ? level - need : 0;
        level_ = level;
        last_ = from;
    }

    // Whole tokens in the bucket at time t >= the last take.
    std::uint64_t tokens_at(Ps t) const {
        return static_cast<std::uint64_t>(level_at(std::max(t, last_)) / kUnitsPerToken);
    }

private:
    static constexpr u128 kUnitsPerToken = 1'000'000'000'000ULL;

    // The level may exceed the depth by less than one picosecond of refill: the bucket became full
    // inside the last picosecond, and a take at this tick stands for one at that exact instant.
    // Clamping at the depth itself would drop those units and make every later grant late.
    u128 level_at(Ps t) const {
        const u128 added = static_cast<u128>(t - last_) * rate_;
        return std::min(level_ + added, depth_units_ + (rate_ > 0 ? rate_ - 1 : 0));
    }

    std::uint64_t rate_;
    u128 depth_units_;
    u128 level_;
    Ps last_ = 0;
};

}  // namespace hostsim
