// The model in simulated time. Each simulation runs in a child process (SystemC elaborates once
// per process), its result returned as JSON.
#include <doctest/doctest.h>

#include <cmath>

#include "model/cpu_pool.hpp"
#include "model/host.hpp"
#include "model/host_cpus.hpp"
#include "rng.hpp"
#include "runner.hpp"

using namespace hostsim;
using nlohmann::json;

namespace {

// Poisson arrivals to one FIFO server with exponential service times.
class MM1 final : public sc_core::sc_module {
public:
    MM1(const sc_core::sc_module_name& n, double lambda_per_us, double mean_service_us, std::uint64_t samples)
        : sc_core::sc_module(n), timeline_("timeline"), pool_(timeline_, 1, 0), rng_(42), lambda_(lambda_per_us),
          service_(mean_service_us), samples_(samples) {
        timeline_.at(0, [this] { arrive(); });
    }
    double mean_us() const { return sum_us_ / static_cast<double>(done_); }
    std::uint64_t done() const { return done_; }

private:
    void arrive() {
        if (issued_++ >= samples_) return;
        const Ps at = Timeline::now();
        pool_.submit(Job{us_to_ps(rng_.exponential(service_)), Owner::Guest, {}, [this, at] {
                             sum_us_ += ps_to_us(Timeline::now() - at);
                             ++done_;
                         }});
        timeline_.after(us_to_ps(rng_.exponential(1.0 / lambda_)), [this] { arrive(); });
    }
    Timeline timeline_;
    CpuPool pool_;
    Rng rng_;
    double lambda_, service_;
    std::uint64_t samples_, issued_ = 0, done_ = 0;
    double sum_us_ = 0;
};

RunConfig one_instance(IoModel model, int qd) {
    RunConfig run;
    run.name = "test";
    run.io_model = model;
    run.duration_s = 0.05;
    run.warmup_s = 0.005;
    InstanceConfig c;
    c.group = "t";
    c.type = InstanceType{"emu", 1, 0, 0, 0, 0};
    c.volume = Volume::InstanceStore;
    c.workload.qd = qd;
    run.instances.push_back(c);
    return run;
}

json simulate_json(const RunConfig& run) {
    auto r = run_isolated([&] {
        json j = to_json(simulate(run));
        j["host"].erase("wall_s");
        j["host"].erase("ios_per_wall_s");
        return j;
    });
    REQUIRE(r.has_value());
    return *r;
}

}  // namespace

TEST_CASE("a single FIFO server matches the M/M/1 mean sojourn time within 5 %") {
    const double lambda = 0.7, service = 1.0;  // rho = 0.7
    auto r = run_isolated([&] {
        MM1 q("mm1", lambda, service, 400'000);
        sc_core::sc_start();
        return json{{"mean_us", q.mean_us()}, {"done", q.done()}};
    });
    REQUIRE(r.has_value());
    const double expected = 1.0 / (1.0 / service - lambda);  // 1 / (mu - lambda)
    const double got = r->at("mean_us").get<double>();
    MESSAGE("M/M/1 mean sojourn: model " << got << " us, closed form " << expected << " us");
    CHECK(r->at("done").get<std::uint64_t>() == 400'000);
    CHECK(std::abs(got - expected) / expected < 0.05);
}

TEST_CASE("the Xen ring never holds more than 32 requests; the rest wait in blkfront") {
    const json r = simulate_json(one_instance(IoModel::Xen, 64));
    const json& inst = r.at("instances").at(0);
    CHECK(inst.at("max_ring").get<int>() == 32);
    CHECK(inst.at("max_outstanding").get<int>() == 64);
    CHECK(inst.at("ios").get<std::uint64_t>() > 0);
}

TEST_CASE("a ring of 8 slots (calibration) caps at 8; Nitro has no such ring") {
    RunConfig run = one_instance(IoModel::Xen, 16);
    run.cal.ring_slots = 8;
    CHECK(simulate_json(run).at("instances").at(0).at("max_ring").get<int>() == 8);
    const json nitro = simulate_json(one_instance(IoModel::Nitro, 64));
    CHECK(nitro.at("instances").at(0).at("max_ring").get<int>() == 0);
    CHECK(nitro.at("instances").at(0).at("max_outstanding").get<int>() == 64);
}

TEST_CASE("same seed, same output; another seed, another output") {
    for (IoModel m : {IoModel::Nitro, IoModel::Xen}) {
        RunConfig run = one_instance(m, 8);
        run.instances.push_back(run.instances.front());
        run.instances.back().index = 1;
        run.instances.back().volume = Volume::Ebs;
        run.instances.back().type = InstanceType{"m5.large", 2, 3600, 18750, 650, 4750};
        run.seed = 11;
        const std::string a = simulate_json(run).dump();
        const std::string b = simulate_json(run).dump();
        CHECK(a == b);
        run.seed = 12;
        CHECK(simulate_json(run).dump() != a);
    }
}

TEST_CASE("a closed loop at QD1 on an idle path: IOPS = 1 / latency") {
    const json r = simulate_json(one_instance(IoModel::Nitro, 1));
    const json& inst = r.at("instances").at(0);
    const double iops = inst.at("iops").get<double>();
    const double mean_us = inst.at("mean_us").get<double>();
    CHECK(std::abs(iops * mean_us / 1e6 - 1.0) < 0.02);  // Little's law with one outstanding I/O
}

TEST_CASE("pinned instances share the emulator's CPUs evenly, or take one each in turn") {
    using R = HostCpus::CpuRange;
    auto same = [](R a, R b) { return a.first == b.first && a.last == b.last; };
    CHECK(same(HostCpus::instance_cpus(0, 1, 2), R{0, 2}));
    CHECK(same(HostCpus::instance_cpus(0, 2, 2), R{0, 1}));
    CHECK(same(HostCpus::instance_cpus(1, 2, 2), R{1, 2}));
    CHECK(same(HostCpus::instance_cpus(2, 3, 8), R{5, 8}));
    CHECK(same(HostCpus::instance_cpus(4, 5, 2), R{0, 1}));
}

TEST_CASE("Erlang draws keep their mean and narrow as the shape grows") {
    for (int shape : {1, 4, 16}) {
        Rng rng(3);
        double sum = 0, sq = 0;
        const int n = 200000;
        for (int i = 0; i < n; ++i) {
            const double x = rng.erlang(10.0, shape);
            sum += x;
            sq += x * x;
        }
        const double mean = sum / n;
        const double cv = std::sqrt(sq / n - mean * mean) / mean;
        CHECK(mean == doctest::Approx(10.0).epsilon(0.01));
        CHECK(cv == doctest::Approx(1.0 / std::sqrt(shape)).epsilon(0.02));
    }
}

TEST_CASE("emulator host: a pinned guest pays its vCPU thread's way back into the guest on every I/O") {
    // Two guests pinned one to each CPU, each sharing its CPU with its own card worker, which
    // sleeps after every pass: every I/O takes the CPU from the vCPU thread and gives it back.
    auto run_with = [](double switch_us) {
        RunConfig run = one_instance(IoModel::Nitro, 1);
        run.host.threads = 2;
        run.host.card_on_host = true;
        run.host.pin_instances = true;
        run.instances.front().volume = Volume::Ram;
        run.instances.front().limits = false;
        run.instances.front().workload.poll = true;
        run.instances.push_back(run.instances.front());
        run.instances.back().index = 1;
        run.cal.card_poll_us = 0;
        run.cal.host_wake_shape = 16;
        run.cal.host_switch_us = switch_us;
        const json r = simulate_json(run);
        return (r.at("instances").at(0).at("mean_us").get<double>() + r.at("instances").at(1).at("mean_us").get<double>()) / 2;
    };
    const double base = run_with(0), slow = run_with(50);
    MESSAGE("mean latency without the switch " << base << " us, with 50 us " << slow << " us");
    CHECK(slow - base == doctest::Approx(50).epsilon(0.1));
}
