#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <set>

#include "catalog/catalog.hpp"
#include "catalog/type_name.hpp"

using namespace hostd::catalog;
namespace v1 = nitrohost::v1;

namespace {
const Catalog& shipped() {
    static const Catalog c = [] {
        auto r = Catalog::load_dir(NH_CATALOG_DIR, 32);
        if (!r) FAIL(r.error().message);
        return std::move(*r);
    }();
    return c;
}
}  // namespace

TEST_CASE("names parse into their parts") {
    auto n = parse_type_name("x2idn.16xlarge");
    REQUIRE(n);
    CHECK(n->family == "x");
    CHECK(n->generation == 2);
    CHECK(n->capabilities == std::vector<char>{'i', 'd', 'n'});
    CHECK(n->size == "16xlarge");
    CHECK(n->size_vcpus() == 64);
    auto f = parse_type_name("m7i-flex.large");
    REQUIRE(f);
    CHECK(f->flex);
    CHECK(f->family_name() == "m7i-flex");
    CHECK(parse_type_name("i3.metal")->size == "metal");
    CHECK(parse_type_name("m7i.metal-48xl"));
}

TEST_CASE("bad names are explained") {
    auto bad = [](const char* name) {
        auto r = parse_type_name(name);
        REQUIRE_FALSE(r);
        return r.error().message;
    };
    CHECK(bad("m9q.large").starts_with("m9q.large: unknown family 'm9q': 'q' is not a capability letter"));
    CHECK(bad("q5.large").find("'q' is not an instance series") != std::string::npos);
    CHECK(bad("m.large").find("no generation number") != std::string::npos);
    CHECK(bad("m06.small").find("leading zero") != std::string::npos);
    CHECK(bad("m5large").find("no '.'") != std::string::npos);
    CHECK(bad("m5.huge").find("unknown size 'huge'") != std::string::npos);
    CHECK(bad("m5.1xlarge").find("from 2 to 1024") != std::string::npos);
    CHECK(bad("m5-fast.large").find("only suffix is '-flex'") != std::string::npos);
    CHECK(bad("m5dd.large").find("repeated") != std::string::npos);
    CHECK(bad("").find("empty") != std::string::npos);
}

TEST_CASE("every catalog entry parses and its name round-trips") {
    const auto& c = shipped();
    CHECK(c.types().size() == 40);
    std::set<std::string> names;
    for (const auto& t : c.types()) {
        CAPTURE(t.name());
        auto n = parse_type_name(t.name());
        REQUIRE(n);
        CHECK(n->format() == t.name());
        CHECK(names.insert(t.name()).second);
        CHECK(t.guest_memory_mib() >= kMinGuestMemoryMib);
        CHECK(t.default_io_model() == (t.hypervisor() == v1::HYPERVISOR_XEN ? v1::IO_MODEL_XEN : v1::IO_MODEL_NITRO));
    }
    for (const char* want : {"t2.micro", "t3.micro", "m5.metal", "m7i-flex.8xlarge", "c7g.16xlarge", "x2idn.16xlarge",
                             "i3.large", "i4i.32xlarge", "m6in.32xlarge"})
        CHECK(names.contains(want));
}

TEST_CASE("catalog facts: hypervisor, I/O model default, memory scale") {
    const auto& c = shipped();
    auto get = [&](const char* n) { return *c.lookup(n).value(); };
    CHECK(get("t2.micro").default_io_model() == v1::IO_MODEL_XEN);
    CHECK(get("i3.large").default_io_model() == v1::IO_MODEL_XEN);
    CHECK(get("t3.micro").default_io_model() == v1::IO_MODEL_NITRO);
    CHECK(get("t3.micro").vcpus() == 2);
    CHECK(get("t3.micro").guest_memory_mib() == 32);   // 1 GiB / 32
    CHECK(get("m5.large").guest_memory_mib() == 256);  // 8 GiB / 32
    CHECK(get("i3.large").guest_memory_mib() == 488);  // 15.25 GiB / 32
    CHECK(get("m7i-flex.large").flex().baseline_percent() == 40);
    CHECK(get("t3.micro").burstable().default_mode() == v1::CREDIT_MODE_UNLIMITED);
    CHECK(get("t2.micro").burstable().default_mode() == v1::CREDIT_MODE_STANDARD);
    CHECK(get("m5d.large").instance_store().disk_size_gb() == 75);
}

TEST_CASE("lookups explain unknown families and sizes") {
    const auto& c = shipped();
    auto m9q = c.lookup("m9q.large");
    REQUIRE_FALSE(m9q);
    CHECK(m9q.error().message.starts_with("m9q.large: unknown family 'm9q'"));
    auto m8 = c.lookup("m8.large");
    REQUIRE_FALSE(m8);
    CHECK(m8.error().message.starts_with("m8.large: unknown family 'm8' (the catalog has"));
    auto nano = c.lookup("m5.nano");
    REQUIRE_FALSE(nano);
    CHECK(nano.error().message == "m5.nano: family m5 has no size 'nano' (it has large, xlarge, 24xlarge, metal)");
}

TEST_CASE("filters") {
    const auto& c = shipped();
    v1::DescribeInstanceTypesRequest r;
    r.add_families("t3");
    CHECK(c.filter(r).size() == 4);
    r.set_min_vcpus(4);
    CHECK(c.filter(r).size() == 1);
    v1::DescribeInstanceTypesRequest m;
    m.set_min_memory_gib(1000);
    CHECK(c.filter(m).size() == 2);  // x2idn.16xlarge, i4i.32xlarge
    v1::DescribeInstanceTypesRequest x;
    x.set_hypervisor(v1::HYPERVISOR_XEN);
    CHECK(c.filter(x).size() == 2);  // t2.micro, i3.large
}

TEST_CASE("a bad catalog file fails with file, line and field") {
    auto err = [](std::string text) {
        auto r = Catalog::load_texts({{"x.json", std::move(text)}}, 32);
        REQUIRE_FALSE(r);
        return r.error().message;
    };
    const std::string ok = R"({"name": "m5.large", "hypervisor": "HYPERVISOR_NITRO", "vcpus": 2, "memoryGib": 8})";
    CHECK(Catalog::load_texts({{"x.json", "[\n" + ok + "\n]"}}, 32));
    auto e1 = err("[\n" + ok + ",\n  {\"name\": \"m5.xlarge\", \"vpcus\": 4}\n]");
    CHECK(e1.starts_with("x.json:3: entry 2: "));
    CHECK(e1.find("vpcus") != std::string::npos);
    auto e2 = err("[\n" + ok + ",\n" + R"({"name": "m5.xlarge", "hypervisor": "HYPERVISOR_NITRO", "vcpus": 2, "memoryGib": 16})" + "]");
    CHECK(e2 == "x.json:3: entry 2 (m5.xlarge): vcpus: 2 does not match size 'xlarge' (4 vCPUs)");
    auto e3 = err("[\n" + ok + ",\n" + ok + "]");
    CHECK(e3.find("name: also defined at x.json:2") != std::string::npos);
    auto e4 = err(R"([{"name": "t3.nano", "hypervisor": "HYPERVISOR_NITRO", "vcpus": 2, "memoryGib": 0.5}])");
    CHECK(e4.find("burstable: missing") != std::string::npos);
    auto e5 = err("[\n" + ok + "\n");
    CHECK(e5.find("not closed") != std::string::npos);
    auto e6 = err(R"([{"name": "m9q.large", "hypervisor": "HYPERVISOR_NITRO", "vcpus": 2, "memoryGib": 8}])");
    CHECK(e6.find("x.json:1: entry 1 (m9q.large): name: m9q.large: unknown family 'm9q'") == 0);
}
