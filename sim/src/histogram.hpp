// Latency histogram: 32 linear steps per power of two (a value is within 1.6 % of its bucket middle),
// so percentiles of millions of samples need a few kilobytes and merge exactly.
#pragma once

#include <array>
#include <bit>
#include <cstdint>

namespace hostsim {

class Histogram final {
public:
    void add(std::uint64_t ns) {
        ++counts_[index(ns)];
        ++total_;
        sum_ += static_cast<double>(ns);
    }
    void merge(const Histogram& o) {
        for (std::size_t i = 0; i < counts_.size(); ++i) counts_[i] += o.counts_[i];
        total_ += o.total_;
        sum_ += o.sum_;
    }
    std::uint64_t count() const { return total_; }
    double mean_ns() const { return total_ ? sum_ / static_cast<double>(total_) : 0.0; }

    // The q-quantile (0 < q <= 1) in ns: the middle of the bucket holding it.
    double quantile_ns(double q) const {
        if (total_ == 0) return 0.0;
        const auto rank = static_cast<std::uint64_t>(q * static_cast<double>(total_) + 0.999999);
        std::uint64_t seen = 0;
        for (std::size_t i = 0; i < counts_.size(); ++i) {
            seen += counts_[i];
            if (seen >= rank && counts_[i] > 0) return middle(i);
        }
        return middle(counts_.size() - 1);
    }

private:
    static constexpr unsigned kSubBits = 6;
    static constexpr std::size_t kSub = 1u << kSubBits;
    static constexpr std::size_t kBuckets = kSub * 58;

    static std::size_t index(std::uint64_t v) {
        if (v < kSub) return static_cast<std::size_t>(v);
        const unsigned msb = 63u - static_cast<unsigned>(std::countl_zero(v));
        const unsigned shift = msb - kSubBits + 1;  // keeps kSubBits significant bits (top one set)
        const std::size_t sub = static_cast<std::size_t>(v >> shift) - kSub / 2;
        return kSub + (shift - 1) * (kSub / 2) + sub;
    }
    static double middle(std::size_t i) {
        if (i < kSub) return static_cast<double>(i);
        const std::size_t shift = (i - kSub) / (kSub / 2) + 1;
        const std::size_t sub = (i - kSub) % (kSub / 2) + kSub / 2;
        const double lo = static_cast<double>(static_cast<std::uint64_t>(sub) << shift);
        const double width = static_cast<double>(std::uint64_t{1} << shift);
        return lo + width / 2.0;
    }

    std::array<std::uint64_t, kBuckets> counts_{};
    std::uint64_t total_ = 0;
    double sum_ = 0.0;
};

}  // namespace hostsim
