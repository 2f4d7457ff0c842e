#include "host.hpp"

#include <fmt/format.h>

#include <chrono>
#include <cmath>
#include <map>
#include <memory>

#include "host_cpus.hpp"
#include "instance.hpp"
#include "io_path.hpp"

namespace hostsim {

const char* to_string(IoModel m) { return m == IoModel::Xen ? "xen" : "nitro"; }

namespace {

const char* volume_name(Volume v) {
    switch (v) {
        case Volume::Ebs: return "ebs";
        case Volume::InstanceStore: return "instance-store";
        case Volume::Ram: return "ram";
    }
    return "?";
}

std::uint64_t mix(std::uint64_t seed, std::uint64_t stream) {
    return seed * 0x9e3779b97f4a7c15ULL + stream * 0xd1b54a32d192ed03ULL + 1;
}

}  // namespace

PointResult simulate(const RunConfig& run) {
    const auto wall_start = std::chrono::steady_clock::now();
    // The emulator's host: its CPUs shared by the guests' vCPU threads and the I/O threads.
    std::unique_ptr<Timeline> host_timeline;
    std::unique_ptr<HostCpus> host;
    if (run.host.card_on_host) {
        host_timeline = std::make_unique<Timeline>("host_cpus");
        const HostCpus::Timing timing{run.cal.host_wake_us, run.cal.host_preempt_us, run.cal.host_switch_us,
                                      run.cal.host_slice_us, static_cast<int>(std::lround(run.cal.host_wake_shape)),
                                      static_cast<int>(std::lround(run.cal.host_preempt_shape))};
        host = std::make_unique<HostCpus>(*host_timeline, static_cast<unsigned>(run.host.threads), timing,
                                          run.host.pin_instances ? static_cast<int>(run.instances.size()) : 0,
                                          mix(run.seed, 0x4057));
    }
    std::vector<std::unique_ptr<Instance>> instances;
    for (std::size_t i = 0; i < run.instances.size(); ++i) {
        const InstanceConfig& c = run.instances[i];
        const std::string name = fmt::format("{}_{}", c.group, c.index);
        instances.push_back(
            std::make_unique<Instance>(name.c_str(), static_cast<int>(i), c, run, mix(run.seed, i + 1), host.get()));
    }
    std::unique_ptr<IoPath> path;
    if (run.io_model == IoModel::Nitro) {
        path = std::make_unique<NitroCard>("card", run, mix(run.seed, 0), host.get());
    } else {
        path = std::make_unique<XenDom0>("dom0", run, mix(run.seed, 0), host.get());
    }
    std::vector<Instance*> raw;
    for (auto& i : instances) {
        i->socket.bind(path->socket);
        raw.push_back(i.get());
    }
    path->attach(raw);

    sc_core::sc_start(sc_core::sc_time::from_value(static_cast<sc_dt::uint64>(run.duration_s * 1e12)));

    PointResult r;
    r.scenario = run.name;
    HostResult& h = r.host;
    h.io_model = to_string(run.io_model);
    h.threads = run.host.threads;
    h.dom0_vcpus = run.io_model == IoModel::Xen ? run.host.dom0_vcpus : 0;
    h.card_cores = run.io_model == IoModel::Nitro ? run.host.card_cores : 0;
    h.measured_s = run.duration_s - run.warmup_s;

    std::array<Ps, kOwners> busy{};
    auto add = [&](const std::array<Ps, kOwners>& b) {
        for (std::size_t k = 0; k < kOwners; ++k) busy[k] += b[k];
    };
    std::map<std::string, std::pair<GroupResult, Histogram>> groups;
    std::vector<std::string> group_order;
    for (auto& inst : instances) {
        add(inst->vcpus().busy());
        const InstanceConfig& c = inst->config();
        const InstanceStats& st = inst->stats();
        h.guest_vcpus += c.type.vcpus;
        InstanceResult ir;
        ir.name = fmt::format("{}-{}", c.group, c.index);
        ir.group = c.group;
        ir.type = c.type.name;
        ir.volume = volume_name(c.volume);
        ir.ios = st.ios;
        ir.iops = static_cast<double>(st.ios) / h.measured_s;
        ir.mbps = static_cast<double>(st.bytes) / h.measured_s / 1e6;
        ir.p50_us = st.latency.quantile_ns(0.5) / 1e3;
        ir.p99_us = st.latency.quantile_ns(0.99) / 1e3;
        ir.p999_us = st.latency.quantile_ns(0.999) / 1e3;
        ir.mean_us = st.latency.mean_ns() / 1e3;
        ir.throttled_s = ps_to_s(st.throttled);
        ir.max_ring = st.max_ring_inflight;
        ir.max_outstanding = st.max_outstanding;
        r.instances.push_back(ir);
        h.total_iops += ir.iops;
        h.total_mbps += ir.mbps;
        h.simulated_ios += st.ios;
        auto [it, fresh] = groups.try_emplace(c.group);
        if (fresh) group_order.push_back(c.group);
        GroupResult& g = it->second.first;
        g.group = c.group;
        ++g.count;
        g.iops_total += ir.iops;
        g.mbps_total += ir.mbps;
        g.throttled_s += ir.throttled_s;
        it->second.second.merge(st.latency);
    }
    for (const std::string& name : group_order) {
        auto& [g, hist] = groups[name];
        g.iops_mean = g.iops_total / g.count;
        g.p50_us = hist.quantile_ns(0.5) / 1e3;
        g.p99_us = hist.quantile_ns(0.99) / 1e3;
        g.p999_us = hist.quantile_ns(0.999) / 1e3;
        r.groups.push_back(g);
    }
    double pool_capacity = 1.0;
    add(path->thread_busy());
    if (host) {
        // The I/O threads' share of the emulator's CPUs.
        pool_capacity = host->cpus() * h.measured_s;
    } else if (auto* card = dynamic_cast<NitroCard*>(path.get())) {
        add(card->cores().busy());
        pool_capacity = card->cores().processors() * h.measured_s;
    } else if (auto* dom0 = dynamic_cast<XenDom0*>(path.get())) {
        add(dom0->vcpus().busy());
        pool_capacity = dom0->vcpus().processors() * h.measured_s;
    }
    h.cpu_guest_s = ps_to_s(busy[static_cast<std::size_t>(Owner::Guest)]);
    h.cpu_hypervisor_s = ps_to_s(busy[static_cast<std::size_t>(Owner::Hypervisor)]);
    h.cpu_dom0_s = ps_to_s(busy[static_cast<std::size_t>(Owner::Dom0)]);
    h.cpu_card_s = ps_to_s(busy[static_cast<std::size_t>(Owner::Card)]);
    h.dom0_util = h.cpu_dom0_s / pool_capacity;
    h.card_util = h.cpu_card_s / pool_capacity;
    // dom0's vCPUs are pinned to host threads whether busy or not; hypervisor time (exits,
    // hypercalls) is taken from the guests' threads; the card's cores are not host threads.
    h.cores_for_io = h.dom0_vcpus + h.cpu_hypervisor_s / h.measured_s +
                     (run.host.card_on_host ? h.cpu_card_s / h.measured_s : 0.0);
    h.guest_core_share = (h.threads - h.cores_for_io) / h.threads;
    h.wall_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - wall_start).count();
    h.ios_per_wall_s = static_cast<double>(h.simulated_ios) / h.wall_s;
    return r;
}

}  // namespace hostsim
