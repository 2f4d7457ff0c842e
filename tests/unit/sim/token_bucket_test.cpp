// Token buckets in simulated time: grants are exact, not approximately right.
#include <doctest/doctest.h>

#include "model/limits.hpp"
#include "token_bucket.hpp"

using namespace hostsim;

namespace {

// Takes tokens one at a time as early as the bucket allows; returns the grant times up to `until`.
std::vector<Ps> greedy(TokenBucket& b, Ps until) {
    std::vector<Ps> times;
    Ps t = 0;
    for (;;) {
        t = b.available_at(t, 1);
        if (t > until) break;
        b.take(t, 1);
        times.push_back(t);
    }
    return times;
}

}  // namespace

TEST_CASE("a bucket grants exactly depth + rate x time tokens") {
    TokenBucket b(1000, 10, 10);
    const auto times = greedy(b, kPsPerS);
    CHECK(times.size() == 10 + 1000);
    for (std::size_t i = 0; i < 10; ++i) CHECK(times[i] == 0);  // the initial depth at once
    for (std::size_t k = 1; k <= 1000; ++k) CHECK(times[9 + k] == static_cast<Ps>(k) * 1'000'000'000);  // k ms
}

TEST_CASE("a rate that does not divide a second: every grant at the exact ceiling") {
    TokenBucket b(3, 1, 0);
    const auto times = greedy(b, 10 * kPsPerS);
    CHECK(times.size() == 30);
    for (std::size_t k = 1; k <= times.size(); ++k) {
        const Ps exact = static_cast<Ps>((k * 1'000'000'000'000ULL + 2) / 3);  // ceil(k / 3 s) in ps
        CHECK(times[k - 1] == exact);
    }
}

TEST_CASE("no drift over a long run at a high rate") {
    TokenBucket b(18750, 187, 187);
    const auto times = greedy(b, 60 * kPsPerS);
    CHECK(times.size() == 187 + 18750ULL * 60);
}

TEST_CASE("an unused bucket fills to its depth and no further") {
    TokenBucket b(100, 5, 0);
    CHECK(b.tokens_at(kPsPerS / 100) == 1);
    CHECK(b.tokens_at(10 * kPsPerS) == 5);
    CHECK(b.available_at(10 * kPsPerS, 5) == 10 * kPsPerS);
    CHECK(b.available_at(10 * kPsPerS, 6) == 10 * kPsPerS);  // clamped to the depth
}

TEST_CASE("an unlimited bucket never delays") {
    TokenBucket b(TokenBucket::kUnlimited, 1, 0);
    CHECK(b.available_at(123, 1'000'000) == 123);
}

TEST_CASE("instance limits: burst credits give the maximum, none give the baseline") {
    InstanceConfig c;
    c.type = InstanceType{"m5.large", 2, 3600, 18750, 650, 4750};
    auto admitted_in_one_second = [](InstanceLimits& l) {
        int n = 0;
        for (;;) {
            const Ps t = l.admit(0, 4096, false);
            if (t > kPsPerS) return n;
            ++n;
        }
    };
    c.burst_credits = false;
    InstanceLimits base(c);
    CHECK(admitted_in_one_second(base) == 3600);
    c.burst_credits = true;
    InstanceLimits burst(c);
    CHECK(admitted_in_one_second(burst) == 18750 + 187);  // the peak bucket's 10 ms depth, then the rate
    c.limits = false;
    InstanceLimits none(c);
    CHECK(none.admit(5, 4096, false) == 5);
}
