#include "scenario.hpp"

#include <fmt/format.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <set>

namespace hostsim {

using common::Error;
using common::Result;
using common::Status;
using common::fail;
using nlohmann::json;

namespace {

#define HS_CAL_NUMBERS(X)                                                                                      \
    X(guest_submit_us) X(guest_complete_us) X(guest_irq_us) X(nitro_notify_us) X(nitro_notify_p99_us) X(card_poll_us) X(host_wake_us) X(host_preempt_us) X(host_wake_shape) X(host_preempt_shape) X(host_switch_us) X(host_slice_us) X(card_poll_backoff_us) X(card_lost_cpu_per_s) X(backend_thread) X(xen_exit_us) X(card_us_per_io)             \
    X(card_us_per_kib) X(pcie_us) X(dma_gbps) X(irq_us) X(exits_per_io) X(exit_us) X(evtchn_hop_us)           \
    X(hypercall_us) X(grant_setup_us) X(blkback_req_us) X(blkback_complete_us) X(grant_map_us)               \
    X(grant_unmap_us) X(grant_lock_us) X(tlb_ipi_us) X(tlb_window_us) X(copy_us_per_kib) X(dom0_wake_us)    \
    X(xen_upcall_us) X(ram_latency_us)

// Reads typed values out of one JSON object, remembering the pointer for errors and refusing keys
// the schema does not know.
class Reader {
public:
    Reader(const json& obj, std::string where, std::set<std::string> allowed)
        : obj_(obj), where_(std::move(where)), allowed_(std::move(allowed)) {}

    Status check_object() const {
        if (!obj_.is_object()) return fail(Error::invalid(fmt::format("{}: must be an object", here())));
        for (const auto& [key, value] : obj_.items()) {
            if (!allowed_.contains(key))
                return fail(Error::invalid(fmt::format("{}/{}: unknown key", where_, key)));
        }
        return {};
    }
    bool has(const std::string& key) const { return obj_.contains(key); }
    std::string at(const std::string& key) const { return where_ + "/" + key; }

    Status number(const std::string& key, double& out, double lo, double hi, bool required = false) const {
        if (!obj_.contains(key)) return missing(key, required);
        const json& v = obj_.at(key);
        if (!v.is_number()) return fail(Error::invalid(fmt::format("{}: must be a number", at(key))));
        const double d = v.get<double>();
        if (!(d >= lo && d <= hi))
            return fail(Error::invalid(fmt::format("{}: must be in [{}, {}], got {}", at(key), lo, hi, d)));
        out = d;
        return {};
    }
    template <typename Int>
    Status integer(const std::string& key, Int& out, long long lo, long long hi, bool required = false) const {
        if (!obj_.contains(key)) return missing(key, required);
        const json& v = obj_.at(key);
        if (!v.is_number_integer()) return fail(Error::invalid(fmt::format("{}: must be an integer", at(key))));
        const long long d = v.get<long long>();
        if (d < lo || d > hi)
            return fail(Error::invalid(fmt::format("{}: must be in [{}, {}], got {}", at(key), lo, hi, d)));
        out = static_cast<Int>(d);
        return {};
    }
    Status boolean(const std::string& key, bool& out) const {
        if (!obj_.contains(key)) return {};
        if (!obj_.at(key).is_boolean()) return fail(Error::invalid(fmt::format("{}: must be true or false", at(key))));
        out = obj_.at(key).get<bool>();
        return {};
    }
    Status string(const std::string& key, std::string& out, bool required = false) const {
        if (!obj_.contains(key)) return missing(key, required);
        if (!obj_.at(key).is_string()) return fail(Error::invalid(fmt::format("{}: must be a string", at(key))));
        out = obj_.at(key).get<std::string>();
        return {};
    }
    template <typename E>
    Status choice(const std::string& key, E& out, const std::map<std::string, E>& names) const {
        if (!obj_.contains(key)) return {};
        std::string s;
        if (auto st = string(key, s); !st) return st;
        auto it = names.find(s);
        if (it == names.end()) {
            std::string list;
            for (const auto& [n, e] : names) list += (list.empty() ? "" : ", ") + n;
            return fail(Error::invalid(fmt::format("{}: '{}' is not one of {}", at(key), s, list)));
        }
        out = it->second;
        return {};
    }

private:
    Status missing(const std::string& key, bool required) const {
        if (required) return fail(Error::invalid(fmt::format("{}: required", at(key))));
        return {};
    }
    std::string here() const { return where_.empty() ? "/" : where_; }
    const json& obj_;
    std::string where_;
    std::set<std::string> allowed_;
};

#define HS_TRY(expr)                        \
    do {                                    \
        if (auto st_ = (expr); !st_) return fail(std::move(st_.error())); \
    } while (0)

Status parse_storage(const json& doc, const std::string& where, StorageLatency& out) {
    Reader r(doc, where, {"median_us", "p99_us"});
    HS_TRY(r.check_object());
    HS_TRY(r.number("median_us", out.median_us, 0.0, 1e7, true));
    HS_TRY(r.number("p99_us", out.p99_us, out.median_us, 1e8, true));
    return {};
}

Status parse_workload(const json& doc, const std::string& where, Workload& w) {
    Reader r(doc, where,
             {"rw", "read_pct", "bs", "qd", "think_us", "rate_iops", "on_ms", "off_ms", "start_ms", "poll"});
    HS_TRY(r.check_object());
    HS_TRY(r.choice<Rw>("rw", w.rw,
                        {{"randread", Rw::RandRead}, {"randwrite", Rw::RandWrite}, {"read", Rw::Read},
                         {"write", Rw::Write}, {"randrw", Rw::RandRw}}));
    HS_TRY(r.integer("read_pct", w.read_pct, 0, 100));
    HS_TRY(r.integer("bs", w.bs, 512, 1 << 20));
    if (w.bs % 512 != 0) return fail(Error::invalid(fmt::format("{}: must be a multiple of 512", r.at("bs"))));
    HS_TRY(r.integer("qd", w.qd, 1, 4096));
    HS_TRY(r.number("think_us", w.think_us, 0.0, 1e9));
    HS_TRY(r.number("rate_iops", w.rate_iops, 0.0, 1e8));
    HS_TRY(r.number("on_ms", w.on_ms, 0.0, 1e7));
    HS_TRY(r.number("off_ms", w.off_ms, 0.0, 1e7));
    HS_TRY(r.number("start_ms", w.start_ms, 0.0, 1e7));
    HS_TRY(r.boolean("poll", w.poll));
    if ((w.on_ms > 0) != (w.off_ms > 0))
        return fail(Error::invalid(fmt::format("{}: on_ms and off_ms go together", where)));
    return {};
}

Result<std::map<std::string, InstanceType>> load_types(const std::string& path) {
    auto doc = read_json(path);
    if (!doc) return fail(std::move(doc.error()));
    std::map<std::string, InstanceType> types;
    Reader top(*doc, "", {"description", "types"});
    HS_TRY(top.check_object());
    if (!doc->contains("types") || !doc->at("types").is_object())
        return fail(Error::invalid(fmt::format("{}: /types: must be an object", path)));
    for (const auto& [name, v] : doc->at("types").items()) {
        const std::string where = "/types/" + name;
        Reader r(v, where, {"vcpus", "ebs_iops", "ebs_mbps", "instance_store_iops", "note"});
        InstanceType t;
        t.name = name;
        auto st = r.check_object();
        if (st) st = r.integer("vcpus", t.vcpus, 1, 1024, true);
        auto pair = [&](const char* key, auto& base, auto& max) -> Status {
            if (!v.contains(key)) return {};
            const json& a = v.at(key);
            if (!a.is_array() || a.size() != 2 || !a[0].is_number() || !a[1].is_number() || a[0].get<double>() < 0 ||
                a[1].get<double>() < a[0].get<double>())
                return fail(Error::invalid(fmt::format("{}/{}: must be [baseline, maximum] with 0 <= baseline <= maximum",
                                                       where, key)));
            base = a[0].get<std::remove_reference_t<decltype(base)>>();
            max = a[1].get<std::remove_reference_t<decltype(max)>>();
            return {};
        };
        if (st) st = pair("ebs_iops", t.ebs_iops_base, t.ebs_iops_max);
        if (st) st = pair("ebs_mbps", t.ebs_mbps_base, t.ebs_mbps_max);
        if (st && v.contains("instance_store_iops")) {
            const json& a = v.at("instance_store_iops");
            if (!a.is_array() || a.size() != 2 || !a[0].is_number_unsigned() || !a[1].is_number_unsigned())
                st = fail(Error::invalid(fmt::format("{}/instance_store_iops: must be [read, write]", where)));
            else {
                t.store_read_iops = a[0].get<std::uint64_t>();
                t.store_write_iops = a[1].get<std::uint64_t>();
            }
        }
        if (!st) return fail(std::move(st.error()).context(path));
        types.emplace(name, t);
    }
    return types;
}

Result<RunConfig> build_run(const json& doc, const std::string& base_dir, const Overrides& ov) {
    RunConfig run;
    Reader top(doc, "",
               {"name", "description", "io_model", "host", "duration_s", "warmup_s", "seed", "calibration",
                "calibration_overrides", "types", "storage", "instances", "sweep"});
    HS_TRY(top.check_object());
    HS_TRY(top.string("name", run.name, true));
    HS_TRY(top.choice<IoModel>("io_model", run.io_model, {{"nitro", IoModel::Nitro}, {"xen", IoModel::Xen}}));
    if (doc.contains("host")) {
        Reader h(doc.at("host"), "/host", {"threads", "dom0_vcpus", "card_cores", "card_on_host", "pin_instances"});
        HS_TRY(h.check_object());
        HS_TRY(h.integer("threads", run.host.threads, 1, 4096));
        HS_TRY(h.integer("dom0_vcpus", run.host.dom0_vcpus, 1, 512));
        HS_TRY(h.integer("card_cores", run.host.card_cores, 1, 512));
        HS_TRY(h.boolean("card_on_host", run.host.card_on_host));
        HS_TRY(h.boolean("pin_instances", run.host.pin_instances));
        if (run.host.pin_instances && !run.host.card_on_host)
            return fail(Error::invalid("/host/pin_instances: only with card_on_host (the emulator's host)"));
    }
    HS_TRY(top.number("duration_s", run.duration_s, 1e-6, 3600.0));
    if (ov.duration_s > 0) run.duration_s = ov.duration_s;
    run.warmup_s = std::min(0.1, run.duration_s / 10);
    HS_TRY(top.number("warmup_s", run.warmup_s, 0.0, 3600.0));
    if (run.warmup_s >= run.duration_s)
        return fail(Error::invalid(fmt::format("/warmup_s: must be shorter than duration_s ({} s)", run.duration_s)));
    HS_TRY(top.integer("seed", run.seed, 0, std::numeric_limits<long long>::max()));
    if (ov.seed_set) run.seed = ov.seed;

    std::string cal_path;
    HS_TRY(top.string("calibration", cal_path));
    if (!ov.calibration.empty()) cal_path = ov.calibration;
    else if (!cal_path.empty()) cal_path = (std::filesystem::path(base_dir) / cal_path).string();
    if (!cal_path.empty()) {
        auto cal = load_calibration(cal_path);
        if (!cal) return fail(std::move(cal.error()));
        run.cal = *cal;
    }
    if (doc.contains("calibration_overrides"))
        HS_TRY(apply_calibration(doc.at("calibration_overrides"), run.cal, "/calibration_overrides"));

    if (doc.contains("storage")) {
        Reader s(doc.at("storage"), "/storage", {"ebs", "instance_store"});
        HS_TRY(s.check_object());
        if (s.has("ebs")) HS_TRY(parse_storage(doc.at("storage").at("ebs"), "/storage/ebs", run.ebs));
        if (s.has("instance_store"))
            HS_TRY(parse_storage(doc.at("storage").at("instance_store"), "/storage/instance_store", run.instance_store));
    }

    std::string types_path = "instance-types.json";
    HS_TRY(top.string("types", types_path));
    std::string types_file = (std::filesystem::path(base_dir) / types_path).string();
    if (!doc.contains("types") && !std::filesystem::exists(types_file) && !ov.default_types.empty())
        types_file = ov.default_types;
    auto types = load_types(types_file);
    if (!types) return fail(std::move(types.error()));

    if (!doc.contains("instances") || !doc.at("instances").is_array() || doc.at("instances").empty())
        return fail(Error::invalid("/instances: required, a non-empty list"));
    std::set<std::string> group_names;
    int vcpus = 0;
    const auto& list = doc.at("instances");
    for (std::size_t i = 0; i < list.size(); ++i) {
        const std::string where = fmt::format("/instances/{}", i);
        Reader r(list[i], where, {"group", "type", "count", "volume", "burst_credits", "limits", "workload"});
        HS_TRY(r.check_object());
        InstanceConfig c;
        c.group = fmt::format("g{}", i);
        HS_TRY(r.string("group", c.group));
        if (!group_names.insert(c.group).second)
            return fail(Error::invalid(fmt::format("{}/group: '{}' is used twice", where, c.group)));
        std::string type;
        HS_TRY(r.string("type", type, true));
        auto it = types->find(type);
        if (it == types->end())
            return fail(Error::invalid(fmt::format("{}/type: unknown instance type '{}' (not in {})", where, type, types_path)));
        c.type = it->second;
        int count = 1;
        HS_TRY(r.integer("count", count, 0, 4096));
        HS_TRY(r.choice<Volume>("volume", c.volume,
                                {{"ebs", Volume::Ebs}, {"instance-store", Volume::InstanceStore}, {"ram", Volume::Ram}}));
        HS_TRY(r.boolean("burst_credits", c.burst_credits));
        HS_TRY(r.boolean("limits", c.limits));
        if (!r.has("workload")) return fail(Error::invalid(fmt::format("{}/workload: required", where)));
        HS_TRY(parse_workload(list[i].at("workload"), where + "/workload", c.workload));
        for (int k = 0; k < count; ++k) {
            c.index = k;
            run.instances.push_back(c);
            vcpus += c.type.vcpus;
        }
    }
    if (run.instances.empty()) return fail(Error::invalid("/instances: every group has count 0"));
    // On the emulator's host (card_on_host) the scheduler shares the CPUs, but a busy-polling
    // vCPU thread holds one: more of them than CPUs would starve the I/O threads forever.
    const int dom0 = run.io_model == IoModel::Xen && !run.host.card_on_host ? run.host.dom0_vcpus : 0;
    if (vcpus + dom0 > run.host.threads)
        return fail(Error::invalid(fmt::format(
            "/instances: {} guest vCPUs{} do not fit on {} host threads (vCPUs are pinned, one thread each)", vcpus,
            dom0 ? fmt::format(" and {} dom0 vCPUs", dom0) : std::string(), run.host.threads)));
    return run;
}

}  // namespace

Result<json> read_json(const std::string& path) {
    std::ifstream f(path);
    if (!f) return fail(Error::from_errno(fmt::format("open {}", path)));
    json doc = json::parse(f, nullptr, false, true);  // comments allowed
    if (doc.is_discarded()) return fail(Error::invalid(fmt::format("{}: not valid JSON", path)));
    return doc;
}

Status apply_calibration(const json& params, Calibration& cal, const std::string& where) {
    if (!params.is_object()) return fail(Error::invalid(fmt::format("{}: must be an object", where)));
    for (const auto& [key, v] : params.items()) {
        const std::string at = where + "/" + key;
        bool known = false;
#define HS_CAL_SET(f)                                                                                   \
    if (key == #f) {                                                                                    \
        if (!v.is_number() || v.get<double>() < 0)                                                      \
            return fail(Error::invalid(fmt::format("{}: must be a number >= 0", at)));                  \
        cal.f = v.get<double>();                                                                        \
        known = true;                                                                                   \
    }
        HS_CAL_NUMBERS(HS_CAL_SET)
#undef HS_CAL_SET
        if (key == "ring_slots") {
            if (!v.is_number_integer() || v.get<long long>() < 1 || v.get<long long>() > 4096)
                return fail(Error::invalid(fmt::format("{}: must be an integer in [1, 4096]", at)));
            cal.ring_slots = v.get<int>();
            known = true;
        }
        if (key == "xen_batch") {
            if (!v.is_number_integer() || v.get<long long>() < 1 || v.get<long long>() > 4096)
                return fail(Error::invalid(fmt::format("{}: must be an integer in [1, 4096]", at)));
            cal.xen_batch = v.get<int>();
            known = true;
        }
        if (key == "xen_max_rings") {
            if (!v.is_number_integer() || v.get<long long>() < 1 || v.get<long long>() > 256)
                return fail(Error::invalid(fmt::format("{}: must be an integer in [1, 256]", at)));
            cal.xen_max_rings = v.get<int>();
            known = true;
        }
        if (key == "persistent_grants") {
            if (!v.is_boolean()) return fail(Error::invalid(fmt::format("{}: must be true or false", at)));
            cal.persistent_grants = v.get<bool>();
            known = true;
        }
        if (!known) return fail(Error::invalid(fmt::format("{}: unknown calibration parameter", at)));
    }
    return {};
}

Result<Calibration> load_calibration(const std::string& path) {
    auto doc = read_json(path);
    if (!doc) return fail(std::move(doc.error()));
    Calibration cal;
    if (!doc->is_object() || !doc->contains("params"))
        return fail(Error::invalid(fmt::format("{}: /params: required", path)));
    if (doc->contains("source") && doc->at("source").is_string()) cal.source = doc->at("source").get<std::string>();
    else cal.source = path;
    if (auto st = apply_calibration(doc->at("params"), cal, "/params"); !st)
        return fail(std::move(st.error()).context(path));
    return cal;
}

Result<std::vector<PlannedRun>> plan_scenario(const json& doc, const std::string& base_dir, const std::string& origin,
                                              const Overrides& ov) {
    auto wrap = [&](Error e) { return fail(std::move(e).context(origin)); };
    if (!doc.is_object()) return wrap(Error::invalid("/: must be an object"));
    std::vector<std::string> models{"nitro"};
    if (doc.contains("io_model") && doc.at("io_model").is_array()) {
        models.clear();
        for (const auto& m : doc.at("io_model")) {
            if (!m.is_string()) return wrap(Error::invalid("/io_model: a list of \"nitro\" / \"xen\""));
            models.push_back(m.get<std::string>());
        }
        if (models.empty()) return wrap(Error::invalid("/io_model: empty list"));
    } else if (doc.contains("io_model") && doc.at("io_model").is_string()) {
        models = {doc.at("io_model").get<std::string>()};
    }
    struct Point {
        json doc;
        double value = 0;
    };
    std::vector<Point> points;
    std::string label;
    if (doc.contains("sweep")) {
        const json& sw = doc.at("sweep");
        Reader r(sw, "/sweep", {"label", "path", "values"});
        if (auto st = r.check_object(); !st) return wrap(std::move(st.error()));
        std::string path;
        if (auto st = r.string("path", path, true); !st) return wrap(std::move(st.error()));
        label = path;
        if (auto st = r.string("label", label); !st) return wrap(std::move(st.error()));
        if (!sw.contains("values") || !sw.at("values").is_array() || sw.at("values").empty())
            return wrap(Error::invalid("/sweep/values: required, a non-empty list of numbers"));
        json::json_pointer ptr;
        try {
            ptr = json::json_pointer(path);
        } catch (const json::exception&) {
            return wrap(Error::invalid(fmt::format("/sweep/path: '{}' is not a JSON pointer", path)));
        }
        if (!doc.contains(ptr)) return wrap(Error::invalid(fmt::format("/sweep/path: '{}' is not in the scenario", path)));
        for (const auto& v : sw.at("values")) {
            if (!v.is_number()) return wrap(Error::invalid("/sweep/values: must be numbers"));
            Point p{doc, v.get<double>()};
            p.doc.erase("sweep");
            p.doc[ptr] = v;
            points.push_back(std::move(p));
        }
    } else {
        points.push_back(Point{doc, 0});
    }
    std::vector<PlannedRun> runs;
    for (const Point& p : points) {
        for (const std::string& m : models) {
            json variant = p.doc;
            variant["io_model"] = m;
            auto run = build_run(variant, base_dir, ov);
            if (!run) {
                Error e = std::move(run.error());
                if (!label.empty()) e = std::move(e).context(fmt::format("{}={}", label, p.value));
                return wrap(std::move(e));
            }
            runs.push_back(PlannedRun{std::move(*run), label, p.value});
        }
    }
    return runs;
}

Result<std::vector<PlannedRun>> load_scenario(const std::string& path, const Overrides& ov) {
    auto doc = read_json(path);
    if (!doc) return fail(std::move(doc.error()));
    const std::string base = std::filesystem::path(path).parent_path().string();
    return plan_scenario(*doc, base.empty() ? "." : base, path, ov);
}

}  // namespace hostsim
