// CPU policies of EC2 types, as pure arithmetic driven by measured CPU time.
//  - T family (burstable): 1 credit = one vCPU at 100 % for one minute. Credits are earned at
//    credits_per_hour (= baseline % x vCPUs x 60) up to max_credits (24 h of earnings); T2 launch
//    credits sit beside the balance, are spent first and do not count toward the cap.
//    Standard mode: with an empty balance the instance is capped at its baseline (baseline % x
//    vCPUs of one host CPU) until it has saved one credit again. Unlimited mode: it is never
//    capped; what it spends beyond the balance is counted as surplus and repaid from later
//    earnings first.
//  - Flex: capped at the baseline (40 % per vCPU) only once its allowance above the baseline is
//    used up; the allowance refills at burst_time_percent of wall time up to that share of 24 h.
//  - none: no cap.
#pragma once

#include <cstdint>
#include <string>

namespace hostd::cpu {

// Credits per hour a type earns for a per-vCPU baseline (percent).
[[nodiscard]] constexpr double credits_per_hour(double baseline_percent, std::uint32_t vcpus) {
    return baseline_percent / 100.0 * vcpus * 60.0;
}
// The per-vCPU baseline (percent) a rate of earning stands for.
[[nodiscard]] constexpr double baseline_percent(double credits_per_hour, std::uint32_t vcpus) {
    return credits_per_hour / vcpus / 60.0 * 100.0;
}
// Credits spent by cpu_seconds of vCPU time (any number of vCPUs).
[[nodiscard]] constexpr double credits_for_cpu_seconds(double cpu_seconds) { return cpu_seconds / 60.0; }

enum class PolicyKind { None, CreditsStandard, CreditsUnlimited, Flex };

struct PolicyState {
    double balance = 0;          // accrued credits (or flex allowance seconds)
    double launch_credits = 0;   // T2 standard launch credits left
    double surplus = 0;          // unlimited: spent beyond the balance, not repaid
    double earned = 0;           // totals since launch
    double spent = 0;
    bool capped = false;
};

class CpuPolicy final {
public:
    static CpuPolicy none(std::uint32_t vcpus);
    static CpuPolicy credits(bool unlimited, std::uint32_t vcpus, double credits_per_hour, double max_credits,
                             double initial_balance, double launch_credits);
    static CpuPolicy flex(std::uint32_t vcpus, double baseline_percent, double burst_time_percent);

    // Accounts `wall_seconds` of time during which the vCPUs ran `cpu_seconds` in all, and
    // decides the cap for what follows.
    void advance(double wall_seconds, double cpu_seconds);

    // The cap in percent of one host CPU (baseline x vCPUs), or 0 for none.
    [[nodiscard]] double cap_percent() const;
    [[nodiscard]] PolicyKind kind() const { return kind_; }
    [[nodiscard]] std::string name() const;
    [[nodiscard]] double baseline_percent() const { return baseline_percent_; }
    [[nodiscard]] const PolicyState& state() const { return st_; }
    // Restores totals (after a host agent restart).
    void restore(const PolicyState& st) { st_ = st; }

private:
    CpuPolicy(PolicyKind k, std::uint32_t vcpus, double baseline_pct) : kind_(k), vcpus_(vcpus), baseline_percent_(baseline_pct) {}
    PolicyKind kind_;
    std::uint32_t vcpus_;
    double baseline_percent_;
    double rate_per_hour_ = 0;  // credits, or allowance seconds per wall hour
    double max_balance_ = 0;
    PolicyState st_;
};

}  // namespace hostd::cpu
