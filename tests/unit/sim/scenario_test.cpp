// Scenario schema: what is accepted, and that every refusal names the offending value.
#include <doctest/doctest.h>

#include <filesystem>

#include "scenario.hpp"

using namespace hostsim;
using nlohmann::json;

namespace {

const std::string kDir = HOSTSIM_SCENARIOS;

json minimal() {
    return json::parse(R"({
      "name": "t", "io_model": "nitro", "host": {"threads": 8, "dom0_vcpus": 2, "card_cores": 1},
      "duration_s": 0.1,
      "instances": [{"group": "a", "type": "m5.large", "count": 2, "workload": {"rw": "randread", "bs": 4096, "qd": 4}}]
    })");
}

std::string error_of(const json& doc) {
    auto r = plan_scenario(doc, kDir, "t.json");
    if (r) return "";
    return r.error().message;
}

}  // namespace

TEST_CASE("a minimal scenario plans one run with two instances") {
    auto r = plan_scenario(minimal(), kDir, "t.json");
    REQUIRE(r.has_value());
    REQUIRE(r->size() == 1);
    CHECK(r->front().config.instances.size() == 2);
    CHECK(r->front().config.instances[0].type.ebs_iops_max == 18750);
}

TEST_CASE("a sweep over both models expands to values x models") {
    json d = minimal();
    d["io_model"] = {"nitro", "xen"};
    d["sweep"] = {{"label", "tenants"}, {"path", "/instances/0/count"}, {"values", {1, 2, 3}}};
    auto r = plan_scenario(d, kDir, "t.json");
    REQUIRE(r.has_value());
    REQUIRE(r->size() == 6);
    CHECK(r->at(5).config.instances.size() == 3);
    CHECK(r->at(5).config.io_model == IoModel::Xen);
    CHECK(r->at(5).sweep_value == 3);
}

TEST_CASE("schema errors name the file and the pointer") {
    struct Case {
        const char* what;
        std::function<void(json&)> edit;
        const char* expect;
    };
    const std::vector<Case> cases = {
        {"unknown top-level key", [](json& d) { d["colour"] = 1; }, "t.json: /colour: unknown key"},
        {"missing name", [](json& d) { d.erase("name"); }, "/name: required"},
        {"bad io model", [](json& d) { d["io_model"] = "kvm"; }, "/io_model: 'kvm' is not one of nitro, xen"},
        {"qd zero", [](json& d) { d["instances"][0]["workload"]["qd"] = 0; }, "/instances/0/workload/qd: must be in [1, 4096], got 0"},
        {"qd not an integer", [](json& d) { d["instances"][0]["workload"]["qd"] = 1.5; }, "/instances/0/workload/qd: must be an integer"},
        {"odd block size", [](json& d) { d["instances"][0]["workload"]["bs"] = 1000; }, "/instances/0/workload/bs: must be a multiple of 512"},
        {"unknown rw", [](json& d) { d["instances"][0]["workload"]["rw"] = "trim"; }, "/instances/0/workload/rw: 'trim' is not one of"},
        {"unknown type", [](json& d) { d["instances"][0]["type"] = "m99.huge"; }, "/instances/0/type: unknown instance type 'm99.huge'"},
        {"no workload", [](json& d) { d["instances"][0].erase("workload"); }, "/instances/0/workload: required"},
        {"no instances", [](json& d) { d["instances"] = json::array(); }, "/instances: required, a non-empty list"},
        {"does not fit", [](json& d) { d["instances"][0]["count"] = 5; }, "10 guest vCPUs do not fit on 8 host threads"},
        {"dom0 counts on Xen", [](json& d) { d["io_model"] = "xen"; d["instances"][0]["count"] = 4; },
         "8 guest vCPUs and 2 dom0 vCPUs do not fit on 8 host threads"},
        {"warm-up too long", [](json& d) { d["warmup_s"] = 0.2; }, "/warmup_s: must be shorter than duration_s"},
        {"on without off", [](json& d) { d["instances"][0]["workload"]["on_ms"] = 5; }, "on_ms and off_ms go together"},
        {"p99 below median", [](json& d) { d["storage"] = {{"ebs", {{"median_us", 100}, {"p99_us", 50}}}}; },
         "/storage/ebs/p99_us: must be in [100,"},
        {"unknown calibration parameter", [](json& d) { d["calibration_overrides"] = {{"warp_factor", 9}}; },
         "/calibration_overrides/warp_factor: unknown calibration parameter"},
        {"sweep path missing", [](json& d) { d["sweep"] = {{"path", "/instances/3/count"}, {"values", {1}}}; },
         "/sweep/path: '/instances/3/count' is not in the scenario"},
        {"duplicate group", [](json& d) { d["instances"].push_back(d["instances"][0]); d["instances"][0]["count"] = 1; d["instances"][1]["count"] = 1; },
         "/instances/1/group: 'a' is used twice"},
        {"missing calibration file", [](json& d) { d["calibration"] = "nope.json"; }, "open "},
        {"pinning without the emulator's host", [](json& d) { d["host"]["pin_instances"] = true; },
         "/host/pin_instances: only with card_on_host"},
    };
    for (const Case& c : cases) {
        json d = minimal();
        c.edit(d);
        const std::string err = error_of(d);
        INFO(c.what << ": " << err);
        CHECK(err.find(c.expect) != std::string::npos);
    }
}

TEST_CASE("every shipped scenario is valid") {
    int n = 0;
    for (const auto& e : std::filesystem::directory_iterator(kDir)) {
        if (e.path().extension() != ".json" || e.path().filename() == "instance-types.json") continue;
        auto r = load_scenario(e.path().string());
        INFO(e.path().string() << ": " << (r ? std::string("ok") : r.error().message));
        CHECK(r.has_value());
        ++n;
    }
    CHECK(n >= 1);
}
