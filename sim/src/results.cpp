#include "results.hpp"

#include <fmt/format.h>

#include <fstream>
#include <stdexcept>

namespace hostsim {

namespace {

// Field lists written once and used for JSON both ways and for the CSV headers.
#define HS_INSTANCE_FIELDS(X) \
    X(name) X(group) X(type) X(volume) X(iops) X(mbps) X(p50_us) X(p99_us) X(p999_us) X(mean_us) \
    X(throttled_s) X(ios) X(max_ring) X(max_outstanding)
#define HS_GROUP_FIELDS(X) \
    X(group) X(count) X(iops_total) X(iops_mean) X(mbps_total) X(p50_us) X(p99_us) X(p999_us) X(throttled_s)
#define HS_HOST_FIELDS(X) \
    X(io_model) X(threads) X(dom0_vcpus) X(card_cores) X(guest_vcpus) X(measured_s) X(cpu_guest_s) \
    X(cpu_hypervisor_s) X(cpu_dom0_s) X(cpu_card_s) X(dom0_util) X(card_util) X(cores_for_io) \
    X(guest_core_share) X(total_iops) X(total_mbps) X(wall_s) X(ios_per_wall_s) X(simulated_ios)

#define HS_TO(f) j[#f] = v.f;
#define HS_FROM(f) j.at(#f).get_to(v.f);

template <typename T>
std::string cell(const T& v) {
    if constexpr (std::is_floating_point_v<T>) {
        return fmt::format("{:.6g}", v);
    } else if constexpr (std::is_same_v<T, std::string>) {
        return v;
    } else {
        return fmt::format("{}", v);
    }
}

}  // namespace

nlohmann::json to_json(const PointResult& r) {
    nlohmann::json out;
    out["scenario"] = r.scenario;
    out["sweep_label"] = r.sweep_label;
    out["sweep_value"] = r.sweep_value;
    {
        nlohmann::json j;
        const HostResult& v = r.host;
        HS_HOST_FIELDS(HS_TO)
        out["host"] = j;
    }
    for (const GroupResult& v : r.groups) {
        nlohmann::json j;
        HS_GROUP_FIELDS(HS_TO)
        out["groups"].push_back(j);
    }
    for (const InstanceResult& v : r.instances) {
        nlohmann::json j;
        HS_INSTANCE_FIELDS(HS_TO)
        out["instances"].push_back(j);
    }
    return out;
}

PointResult point_from_json(const nlohmann::json& in) {
    PointResult r;
    in.at("scenario").get_to(r.scenario);
    in.at("sweep_label").get_to(r.sweep_label);
    in.at("sweep_value").get_to(r.sweep_value);
    {
        const nlohmann::json& j = in.at("host");
        HostResult& v = r.host;
        HS_HOST_FIELDS(HS_FROM)
    }
    if (in.contains("groups")) {
        for (const auto& j : in.at("groups")) {
            GroupResult v;
            HS_GROUP_FIELDS(HS_FROM)
            r.groups.push_back(v);
        }
    }
    if (in.contains("instances")) {
        for (const auto& j : in.at("instances")) {
            InstanceResult v;
            HS_INSTANCE_FIELDS(HS_FROM)
            r.instances.push_back(v);
        }
    }
    return r;
}

std::string format_table(const PointResult& r, std::size_t max_rows) {
    std::string s;
    const HostResult& h = r.host;
    s += fmt::format("scenario {}  io_model {}{}\n", r.scenario, h.io_model,
                     r.sweep_label.empty() ? "" : fmt::format("  {}={}", r.sweep_label, r.sweep_value));
    s += fmt::format("{:<22} {:<13} {:>10} {:>9} {:>9} {:>9} {:>10} {:>10}\n", "instance", "type", "IOPS", "MB/s",
                     "p50 us", "p99 us", "p99.9 us", "throttled");
    auto row = [&](const std::string& name, const std::string& type, double iops, double mbps, double p50, double p99,
                   double p999, double thr) {
        s += fmt::format("{:<22} {:<13} {:>10.0f} {:>9.1f} {:>9.1f} {:>9.1f} {:>10.1f} {:>9.3f}s\n", name, type, iops,
                         mbps, p50, p99, p999, thr);
    };
    if (r.instances.size() <= max_rows) {
        for (const auto& i : r.instances) row(i.name, i.type, i.iops, i.mbps, i.p50_us, i.p99_us, i.p999_us, i.throttled_s);
    } else {
        for (const auto& g : r.groups)
            row(fmt::format("{} (x{}, per inst.)", g.group, g.count), "", g.iops_mean, g.mbps_total / g.count, g.p50_us,
                g.p99_us, g.p999_us, g.throttled_s / g.count);
    }
    s += fmt::format("host: {} threads, {} guest vCPUs, total {:.0f} IOPS {:.1f} MB/s over {:.2f} s\n", h.threads,
                     h.guest_vcpus, h.total_iops, h.total_mbps, h.measured_s);
    s += fmt::format("cpu (cores busy): guest {:.3f}  hypervisor/vmm {:.3f}  dom0 {:.3f} (of {} vCPUs, {:.0f}% busy)"
                     "  card {:.3f} (of {} cores, {:.0f}% busy)\n",
                     h.cpu_guest_s / h.measured_s, h.cpu_hypervisor_s / h.measured_s, h.cpu_dom0_s / h.measured_s,
                     h.dom0_vcpus, h.dom0_util * 100, h.cpu_card_s / h.measured_s, h.card_cores, h.card_util * 100);
    s += fmt::format("host threads taken by I/O handling {:.2f} of {}; left to guests {:.1f}%\n", h.cores_for_io,
                     h.threads, h.guest_core_share * 100);
    s += fmt::format("simulated {} I/Os in {:.2f} s wall: {:.0f} I/Os per wall second\n", h.simulated_ios, h.wall_s,
                     h.ios_per_wall_s);
    return s;
}

std::string format_sweep(const std::vector<PointResult>& points) {
    std::string s;
    if (points.empty()) return s;
    s += fmt::format("{:<10} {:>8} {:>11} {:>9} {:>9} {:>10} {:>8} {:>8} {:>11}\n", points.front().sweep_label, "model",
                     "total IOPS", "p50 us", "p99 us", "p99.9 us", "dom0 %", "card %", "guest cores");
    for (const auto& p : points) {
        // The first group stands for the tenants being measured (the studies put them first).
        const GroupResult g = p.groups.empty() ? GroupResult{} : p.groups.front();
        s += fmt::format("{:<10} {:>8} {:>11.0f} {:>9.1f} {:>9.1f} {:>10.1f} {:>8.0f} {:>8.0f} {:>10.1f}%\n",
                         p.sweep_value, p.host.io_model, p.host.total_iops, g.p50_us, g.p99_us, g.p999_us,
                         p.host.dom0_util * 100, p.host.card_util * 100, p.host.guest_core_share * 100);
    }
    return s;
}

void write_csv(const std::string& dir, const std::vector<PointResult>& points) {
    auto open = [&](const std::string& name) {
        std::ofstream f(dir + "/" + name);
        if (!f) throw std::runtime_error("cannot write " + dir + "/" + name);
        return f;
    };
#define HS_HEAD(f) << "," #f
#define HS_CELL(f) << "," << cell(v.f)
    std::ofstream inst = open("instances.csv");
    inst << "scenario,sweep_label,sweep_value" HS_INSTANCE_FIELDS(HS_HEAD) << ",io_model\n";
    std::ofstream grp = open("groups.csv");
    grp << "scenario,sweep_label,sweep_value" HS_GROUP_FIELDS(HS_HEAD) << ",io_model\n";
    std::ofstream host = open("host.csv");
    host << "scenario,sweep_label,sweep_value" HS_HOST_FIELDS(HS_HEAD) << "\n";
    for (const PointResult& p : points) {
        const std::string lead = fmt::format("{},{},{}", p.scenario, p.sweep_label, cell(p.sweep_value));
        for (const InstanceResult& v : p.instances) inst << lead HS_INSTANCE_FIELDS(HS_CELL) << "," << p.host.io_model << "\n";
        for (const GroupResult& v : p.groups) grp << lead HS_GROUP_FIELDS(HS_CELL) << "," << p.host.io_model << "\n";
        const HostResult& v = p.host;
        host << lead HS_HOST_FIELDS(HS_CELL) << "\n";
    }
#undef HS_HEAD
#undef HS_CELL
}

}  // namespace hostsim
