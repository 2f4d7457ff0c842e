#include "catalog/catalog.hpp"

#include <google/protobuf/util/json_util.h>

#include <algorithm>
#include <cmath>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "catalog/type_name.hpp"

namespace hostd::catalog {

namespace {

using common::Error;
using common::fail;
namespace v1 = nitrohost::v1;

// Checks what the JSON mapping cannot: ranges and consistency with the name. Returns "field: why".
std::string check_entry(const v1::InstanceType& t, const TypeName& n) {
    if (t.vcpus() < 1 || t.vcpus() > 448) return fmt::format("vcpus: {} is not in 1..448", t.vcpus());
    if (!(t.memory_gib() > 0) || t.memory_gib() > 24576)
        return fmt::format("memory_gib: {} is not in (0, 24576]", t.memory_gib());
    if (t.hypervisor() == v1::HYPERVISOR_UNSPECIFIED) return "hypervisor: missing (HYPERVISOR_XEN, _NITRO or _METAL)";
    if (auto v = n.size_vcpus(); v != 0 && v != t.vcpus())
        return fmt::format("vcpus: {} does not match size '{}' ({} vCPUs)", t.vcpus(), n.size, v);
    bool is_t = n.family == "t";
    if (is_t != t.has_burstable())
        return is_t ? "burstable: missing on a T-family type" : "burstable: only T-family types earn CPU credits";
    if (t.has_burstable()) {
        const auto& b = t.burstable();
        if (!(b.credits_per_hour() > 0)) return "burstable.credits_per_hour: must be positive";
        double want_pct = b.credits_per_hour() / t.vcpus() / 60.0 * 100.0;
        if (std::abs(want_pct - b.baseline_percent()) > 0.05)
            return fmt::format("burstable.baseline_percent: {} disagrees with credits_per_hour / vcpus / 60 = {:.2f} %",
                               b.baseline_percent(), want_pct);
        if (std::abs(b.max_credits() - 24 * b.credits_per_hour()) > 0.01)
            return fmt::format("burstable.max_credits: {} is not 24 h of earnings ({})", b.max_credits(),
                               24 * b.credits_per_hour());
    }
    if (n.flex != t.has_flex()) return n.flex ? "flex: missing on a -flex type" : "flex: only -flex types have it";
    if (t.has_flex() && !(t.flex().baseline_percent() > 0 && t.flex().baseline_percent() <= 100))
        return "flex.baseline_percent: must be in (0, 100]";
    bool has_d = std::ranges::find(n.capabilities, 'd') != n.capabilities.end();
    if (has_d && !t.has_instance_store()) return "instance_store: missing on a 'd' type";
    if (t.has_ebs() && t.ebs().max_mbps() < t.ebs().baseline_mbps())
        return "ebs.max_mbps: below ebs.baseline_mbps";
    if (t.has_ebs() && t.ebs().max_iops() < t.ebs().baseline_iops()) return "ebs.max_iops: below ebs.baseline_iops";
    if (!t.family().empty() || t.generation() != 0 || !t.size().empty() || t.guest_memory_mib() != 0)
        return "family, generation, capabilities, size, default_io_model, guest_memory_mib: derived from the name, "
               "not to be given";
    return {};
}

void fill_derived(v1::InstanceType& t, const TypeName& n, double scale) {
    t.set_family(n.family_name());
    t.set_generation(n.generation);
    for (char c : n.capabilities) t.add_capabilities(std::string(1, c));
    if (n.flex) t.add_capabilities("flex");
    t.set_size(n.size);
    t.set_default_io_model(t.hypervisor() == v1::HYPERVISOR_XEN ? v1::IO_MODEL_XEN : v1::IO_MODEL_NITRO);
    auto mib = static_cast<std::uint32_t>(std::ceil(t.memory_gib() * 1024.0 / scale));
    t.set_guest_memory_mib(std::max(mib, kMinGuestMemoryMib));
}

}  // namespace

common::Result<Catalog> Catalog::load_texts(const std::vector<std::pair<std::string, std::string>>& files,
                                            double memory_scale) {
    if (!(memory_scale >= 1) || memory_scale > 4096)
        return fail(Error::invalid(fmt::format("memory scale {} is not in 1..4096", memory_scale)));
    Catalog cat;
    cat.memory_scale_ = memory_scale;
    std::map<std::string, std::string> seen;  // name -> where
    google::protobuf::util::JsonParseOptions opts;
    opts.ignore_unknown_fields = false;
    for (const auto& [file, text] : files) {
        auto elems = split_json_array(text);
        if (!elems) return fail(std::move(elems.error()).context(file));
        int index = 0;
        for (const auto& e : *elems) {
            ++index;
            v1::InstanceType t;
            auto where = fmt::format("{}:{}: entry {}", file, e.line, index);
            auto st = google::protobuf::util::JsonStringToMessage(e.text, &t, opts);
            if (!st.ok()) return fail(Error::invalid(fmt::format("{}: {}", where, std::string(st.message()))));
            where += fmt::format(" ({})", t.name());
            auto n = parse_type_name(t.name());
            if (!n) return fail(Error::invalid(fmt::format("{}: name: {}", where, n.error().message)));
            if (auto why = check_entry(t, *n); !why.empty()) return fail(Error::invalid(fmt::format("{}: {}", where, why)));
            if (auto [it, fresh] = seen.emplace(t.name(), where); !fresh)
                return fail(Error::invalid(fmt::format("{}: name: also defined at {}", where, it->second)));
            fill_derived(t, *n, memory_scale);
            cat.types_.push_back(std::move(t));
        }
    }
    std::ranges::sort(cat.types_, [](const auto& a, const auto& b) {
        if (a.family() != b.family()) return a.family() < b.family();
        if (a.vcpus() != b.vcpus()) return a.vcpus() < b.vcpus();
        if (a.memory_gib() != b.memory_gib()) return a.memory_gib() < b.memory_gib();
        return a.name() < b.name();
    });
    return cat;
}

common::Result<Catalog> Catalog::load_dir(const std::filesystem::path& dir, double memory_scale) {
    std::error_code ec;
    std::vector<std::filesystem::path> paths;
    for (const auto& de : std::filesystem::directory_iterator(dir, ec))
        if (de.path().extension() == ".json") paths.push_back(de.path());
    if (ec) return fail(Error::invalid(fmt::format("catalog directory {}: {}", dir.string(), ec.message())));
    if (paths.empty()) return fail(Error::invalid(fmt::format("catalog directory {}: no *.json files", dir.string())));
    std::ranges::sort(paths);
    std::vector<std::pair<std::string, std::string>> files;
    for (const auto& p : paths) {
        std::ifstream in(p);
        std::stringstream ss;
        ss << in.rdbuf();
        if (!in) return fail(Error::invalid(fmt::format("{}: cannot read", p.string())));
        files.emplace_back(p.string(), ss.str());
    }
    return load_texts(files, memory_scale);
}

common::Result<const v1::InstanceType*> Catalog::lookup(std::string_view name) const {
    auto n = parse_type_name(name);
    if (!n) return fail(std::move(n.error()));
    for (const auto& t : types_)
        if (t.name() == name) return &t;
    std::string fam = n->family_name();
    std::vector<std::string> sizes, families;
    for (const auto& t : types_) {
        if (t.family() == fam) sizes.push_back(t.size());
        if (families.empty() || families.back() != t.family()) families.push_back(t.family());
    }
    if (sizes.empty())
        return fail(Error::not_found(
            fmt::format("{}: unknown family '{}' (the catalog has {})", name, fam, fmt::join(families, ", "))));
    return fail(Error::not_found(
        fmt::format("{}: family {} has no size '{}' (it has {})", name, fam, n->size, fmt::join(sizes, ", "))));
}

std::vector<v1::InstanceType> Catalog::filter(const v1::DescribeInstanceTypesRequest& req) const {
    std::set<std::string> names(req.names().begin(), req.names().end());
    std::set<std::string> fams(req.families().begin(), req.families().end());
    std::vector<v1::InstanceType> out;
    for (const auto& t : types_) {
        if (!names.empty() && !names.contains(t.name())) continue;
        if (!fams.empty() && !fams.contains(t.family())) continue;
        if (t.vcpus() < req.min_vcpus()) continue;
        if (req.max_vcpus() != 0 && t.vcpus() > req.max_vcpus()) continue;
        if (t.memory_gib() < req.min_memory_gib()) continue;
        if (req.max_memory_gib() != 0 && t.memory_gib() > req.max_memory_gib()) continue;
        if (req.hypervisor() != v1::HYPERVISOR_UNSPECIFIED && t.hypervisor() != req.hypervisor()) continue;
        out.push_back(t);
    }
    return out;
}

}  // namespace hostd::catalog
