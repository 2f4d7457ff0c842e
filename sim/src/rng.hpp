// A seeded generator and the few distributions the model draws from. Written out here (not
// <random>'s distributions) so that a seed gives the same stream on every standard library.
#pragma once

#include <cmath>
#include <cstdint>

namespace hostsim {

class Rng final {
public:
    explicit Rng(std::uint64_t seed) {
        // splitmix64 expands the seed into xoshiro256**'s state (never all zero).
        for (auto& word : s_) {
            seed += 0x9e3779b97f4a7c15ULL;
            std::uint64_t z = seed;
            z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
            z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
            word = z ^ (z >> 31);
        }
    }

    std::uint64_t next() {
        const std::uint64_t result = rotl(s_[1] * 5, 7) * 9;
        const std::uint64_t t = s_[1] << 17;
        s_[2] ^= s_[0];
        s_[3] ^= s_[1];
        s_[1] ^= s_[2];
        s_[0] ^= s_[3];
        s_[2] ^= t;
        s_[3] = rotl(s_[3], 45);
        return result;
    }

    // Uniform in (0, 1]: never 0, so log() below is finite.
    double uniform() { return (static_cast<double>(next() >> 11) + 1.0) * 0x1.0p-53; }

    // Uniform integer in [0, n); n > 0.
    std::uint64_t below(std::uint64_t n) { return next() % n; }

    double exponential(double mean) { return -mean * std::log(uniform()); }

    // Erlang: the sum of `shape` exponentials, `mean` in all (shape 1: exponential; the larger,
    // the closer to the mean every draw is: coefficient of variation 1/sqrt(shape)).
    double erlang(double mean, int shape) {
        if (shape <= 1) return exponential(mean);
        double sum = 0.0;
        for (int k = 0; k < shape; ++k) sum -= std::log(uniform());
        return mean * sum / shape;
    }

    double normal() {
        // Box-Muller; the second variate is dropped to keep the stream simple.
        const double u1 = uniform();
        const double u2 = uniform();
        return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
    }

    // Log-normal given its median and 99th percentile (p99 >= median).
    double lognormal_median_p99(double median, double p99) {
        if (median <= 0.0) return 0.0;
        const double sigma = p99 > median ? std::log(p99 / median) / 2.3263478740408408 : 0.0;
        return median * std::exp(sigma * normal());
    }

private:
    static std::uint64_t rotl(std::uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
    std::uint64_t s_[4]{};
};

}  // namespace hostsim
