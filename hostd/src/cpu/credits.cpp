#include "cpu/credits.hpp"

#include <algorithm>

namespace hostd::cpu {

namespace {
constexpr double kUncapCredits = 1.0;          // standard mode: saved before the cap lifts
constexpr double kUncapAllowanceSeconds = 60;  // flex: allowance before the cap lifts
}  // namespace

CpuPolicy CpuPolicy::none(std::uint32_t vcpus) { return CpuPolicy(PolicyKind::None, vcpus, 100); }

CpuPolicy CpuPolicy::credits(bool unlimited, std::uint32_t vcpus, double rate, double max_credits, double initial,
                             double launch_credits) {
    CpuPolicy p(unlimited ? PolicyKind::CreditsUnlimited : PolicyKind::CreditsStandard, vcpus,
                cpu::baseline_percent(rate, vcpus));
    p.rate_per_hour_ = rate;
    p.max_balance_ = max_credits;
    p.st_.balance = std::clamp(initial, 0.0, max_credits);
    p.st_.launch_credits = launch_credits;
    p.st_.capped = !unlimited && p.st_.balance + launch_credits <= 0;
    return p;
}

CpuPolicy CpuPolicy::flex(std::uint32_t vcpus, double baseline_pct, double burst_time_percent) {
    CpuPolicy p(PolicyKind::Flex, vcpus, baseline_pct);
    p.rate_per_hour_ = 3600.0 * burst_time_percent / 100.0;
    p.max_balance_ = 86400.0 * burst_time_percent / 100.0;
    p.st_.balance = p.max_balance_;
    return p;
}

void CpuPolicy::advance(double wall, double cpu_seconds) {
    if (wall <= 0) return;
    switch (kind_) {
        case PolicyKind::None: return;
        case PolicyKind::Flex: {
            double earned = rate_per_hour_ * wall / 3600.0;
            bool above = cpu_seconds > wall * baseline_percent_ / 100.0 * vcpus_ * 1.02;
            double spent = above ? wall : 0;
            st_.earned += earned;
            st_.spent += spent;
            st_.balance = std::clamp(st_.balance + earned - spent, 0.0, max_balance_);
            if (st_.balance <= 0) st_.capped = true;
            else if (st_.balance >= kUncapAllowanceSeconds) st_.capped = false;
            return;
        }
        case PolicyKind::CreditsStandard:
        case PolicyKind::CreditsUnlimited: {
            double earned = rate_per_hour_ * wall / 3600.0;
            double spent = credits_for_cpu_seconds(cpu_seconds);
            st_.earned += earned;
            st_.spent += spent;
            double repay = std::min(st_.surplus, earned);  // earnings repay surplus first
            st_.surplus -= repay;
            st_.balance = std::min(st_.balance + earned - repay, max_balance_);
            double take = std::min(st_.launch_credits, spent);  // launch credits go first
            st_.launch_credits -= take;
            spent -= take;
            take = std::min(st_.balance, spent);
            st_.balance -= take;
            spent -= take;
            if (spent > 0 && kind_ == PolicyKind::CreditsUnlimited) st_.surplus += spent;
            // Standard mode: what the cap let through beyond an empty balance is forgiven.
            double have = st_.balance + st_.launch_credits;
            if (kind_ == PolicyKind::CreditsUnlimited) st_.capped = false;
            else if (have <= 1e-9) st_.capped = true;
            else if (have >= kUncapCredits) st_.capped = false;
            return;
        }
    }
}

double CpuPolicy::cap_percent() const { return st_.capped ? baseline_percent_ * vcpus_ : 0; }

std::string CpuPolicy::name() const {
    switch (kind_) {
        case PolicyKind::None: return "none";
        case PolicyKind::CreditsStandard: return "credits-standard";
        case PolicyKind::CreditsUnlimited: return "credits-unlimited";
        case PolicyKind::Flex: return "flex";
    }
    return "none";
}

}  // namespace hostd::cpu
