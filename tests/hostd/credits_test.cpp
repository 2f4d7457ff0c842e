#include <doctest/doctest.h>

#include "catalog/catalog.hpp"
#include "cpu/credits.hpp"

using namespace hostd::cpu;

TEST_CASE("credit arithmetic matches the published T-family table") {
    // (vCPUs, baseline %, credits per hour, max accrued) from the burstable-credits table.
    struct Row { unsigned vcpus; double baseline, per_hour, max; };
    const Row rows[] = {
        {1, 5, 3, 72},   {1, 10, 6, 144},  {1, 20, 12, 288},  // t2.nano/micro/small
        {2, 20, 24, 576}, {2, 30, 36, 864}, {4, 22.5, 54, 1296}, {8, 17, 81.6, 1958.4},  // t2.medium..2xlarge
        {2, 5, 6, 144},  {2, 10, 12, 288}, {2, 20, 24, 576}, {2, 30, 36, 864},  // t3 nano..large
        {4, 40, 96, 2304}, {8, 40, 192, 4608},  // t3 xlarge, 2xlarge
    };
    for (const auto& r : rows) {
        CAPTURE(r.vcpus);
        CAPTURE(r.baseline);
        CHECK(credits_per_hour(r.baseline, r.vcpus) == doctest::Approx(r.per_hour));
        CHECK(baseline_percent(r.per_hour, r.vcpus) == doctest::Approx(r.baseline));
        CHECK(24 * r.per_hour == doctest::Approx(r.max));
    }
    // One credit: one vCPU at 100 % for a minute, or at 50 % for two.
    CHECK(credits_for_cpu_seconds(60) == doctest::Approx(1));
    CHECK(credits_for_cpu_seconds(0.5 * 120) == doctest::Approx(1));
}

TEST_CASE("the shipped catalog's burstable entries obey the rules") {
    auto c = hostd::catalog::Catalog::load_dir(NH_CATALOG_DIR, 32);
    REQUIRE(c);
    int n = 0;
    for (const auto& t : c->types()) {
        if (!t.has_burstable()) continue;
        ++n;
        CAPTURE(t.name());
        CHECK(credits_per_hour(t.burstable().baseline_percent(), t.vcpus()) == doctest::Approx(t.burstable().credits_per_hour()));
        CHECK(t.burstable().max_credits() == doctest::Approx(24 * t.burstable().credits_per_hour()));
    }
    CHECK(n == 6);
}

TEST_CASE("standard mode: an empty balance caps at the baseline, savings lift it") {
    // t3.micro: 12 credits/h, 2 vCPUs, 10 % each -> cap 20 % of one host CPU.
    auto p = CpuPolicy::credits(false, 2, 12, 288, 0, 0);
    CHECK(p.cap_percent() == doctest::Approx(20));
    // An hour at exactly the baseline: earns 12, spends 12 (0.2 CPU x 3600 s / 60).
    for (int i = 0; i < 3600; ++i) p.advance(1, 0.2);
    CHECK(p.state().balance == doctest::Approx(0).epsilon(1e-6));
    CHECK(p.state().earned == doctest::Approx(12));
    CHECK(p.cap_percent() == doctest::Approx(20));
    // Idle for 10 minutes: 2 credits saved, the cap lifts.
    p.advance(600, 0);
    CHECK(p.state().balance == doctest::Approx(2));
    CHECK(p.cap_percent() == 0);
    // Both vCPUs flat out for 75 s spend 2.5 credits (0.25 earned meanwhile): empty, capped.
    p.advance(75, 150);
    CHECK(p.cap_percent() == doctest::Approx(20));
}

TEST_CASE("the balance is capped at 24 h of earnings") {
    auto p = CpuPolicy::credits(false, 2, 12, 288, 280, 0);
    p.advance(3600, 0);
    CHECK(p.state().balance == doctest::Approx(288));
}

TEST_CASE("t2 launch credits are spent first and sit beside the cap") {
    auto p = CpuPolicy::credits(false, 1, 6, 144, 144, 30);
    p.advance(60, 60);  // one vCPU-minute: 1 credit from the launch credits, 0.1 earned
    CHECK(p.state().launch_credits == doctest::Approx(29));
    CHECK(p.state().balance == doctest::Approx(144));
}

TEST_CASE("unlimited mode counts surplus and repays it from earnings") {
    auto p = CpuPolicy::credits(true, 2, 12, 288, 0, 0);
    p.advance(3600, 7200);  // both vCPUs at 100 % for an hour: spends 120, earns 12
    CHECK(p.cap_percent() == 0);
    CHECK(p.state().surplus == doctest::Approx(108));
    p.advance(3600, 0);  // an idle hour repays 12
    CHECK(p.state().surplus == doctest::Approx(96));
    CHECK(p.state().balance == doctest::Approx(0));
}

TEST_CASE("flex: capped at 40 % only when its allowance is gone") {
    auto p = CpuPolicy::flex(2, 40, 95);
    CHECK(p.cap_percent() == 0);
    p.advance(86400 * 20, 86400 * 20 * 2.0);  // far beyond the allowance
    CHECK(p.cap_percent() == doctest::Approx(80));
    p.advance(3600, 0);  // refills 57 min of allowance
    CHECK(p.cap_percent() == 0);
}
