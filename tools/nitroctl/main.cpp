// nitroctl: the common hostd calls from a shell. `nitroctl [--socket PATH] COMMAND ...`
// Exit status: 0, or 1 with "nitroctl: CODE: message" when hostd refuses, 2 for bad usage.
#include <grpcpp/grpcpp.h>

#include <CLI/CLI.hpp>

#include <cstdio>
#include <cstdlib>
#include <fmt/format.h>
#include <iostream>

#include "nitrohost/v1/host.grpc.pb.h"

namespace {

namespace v1 = nitrohost::v1;

const char* code_name(grpc::StatusCode c) {
    switch (c) {
        case grpc::StatusCode::INVALID_ARGUMENT: return "INVALID_ARGUMENT";
        case grpc::StatusCode::NOT_FOUND: return "NOT_FOUND";
        case grpc::StatusCode::RESOURCE_EXHAUSTED: return "RESOURCE_EXHAUSTED";
        case grpc::StatusCode::FAILED_PRECONDITION: return "FAILED_PRECONDITION";
        case grpc::StatusCode::UNAVAILABLE: return "UNAVAILABLE";
        default: return "ERROR";
    }
}

int fail(const grpc::Status& s) {
    std::fprintf(stderr, "nitroctl: %s: %s\n", code_name(s.error_code()), s.error_message().c_str());
    return 1;
}

std::string state_name(v1::InstanceState s) {
    auto n = v1::InstanceState_Name(s);
    return n.starts_with("INSTANCE_STATE_") ? n.substr(15) : n;
}

std::string io_name(v1::IoModel m) {
    auto n = v1::IoModel_Name(m);
    return n.starts_with("IO_MODEL_") ? n.substr(9) : n;
}

void print_instances(const google::protobuf::RepeatedPtrField<v1::Instance>& list) {
    fmt::print("{:<20} {:<16} {:<11} {:<6} {:>5} {:>7} {:>5}  {}\n", "INSTANCE", "TYPE", "STATE", "IO", "VCPU",
               "MEM_MIB", "EXIT", "REASON");
    for (const auto& i : list)
        fmt::print("{:<20} {:<16} {:<11} {:<6} {:>5} {:>7} {:>5}  {}\n", i.instance_id(), i.instance_type(),
                   state_name(i.state()), io_name(i.io_model()), i.vcpus(), i.memory_mib(),
                   i.has_exit_status() ? std::to_string(i.exit_status()) : "-", i.state_reason());
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"nitroctl: drive hostd"};
    app.require_subcommand(1);
    const char* env = std::getenv("NITROHOST_SOCKET");
    std::string socket = env ? env : "/run/nitro-host/hostd.sock";
    app.add_option("--socket", socket, "hostd's unix socket (or $NITROHOST_SOCKET)")->capture_default_str();

    auto* types = app.add_subcommand("types", "list instance types");
    std::vector<std::string> families;
    std::uint32_t min_vcpus = 0;
    types->add_option("--family", families, "e.g. t3, m7i-flex (repeatable)");
    types->add_option("--min-vcpus", min_vcpus);

    auto* run = app.add_subcommand("run", "launch instances");
    std::string type, io = "default", credits = "default";
    int count = 1;
    double timeout = 0, initial = -1;
    std::vector<std::uint64_t> volumes;
    std::vector<std::string> args;
    run->add_option("type", type, "instance type")->required();
    run->add_option("--count", count)->capture_default_str();
    run->add_option("--io-model", io, "default, none, nitro or xen")->check(CLI::IsMember({"default", "none", "nitro", "xen"}));
    run->add_option("--volume", volumes, "a new volume of this many MiB (repeatable; deleted with the instance)");
    run->add_option("--credits", credits, "T family: standard or unlimited")->check(CLI::IsMember({"default", "standard", "unlimited"}));
    run->add_option("--initial-credits", initial, "T family: the launch balance");
    run->add_option("--timeout", timeout, "seconds before the guest is stopped");
    run->add_option("args", args, "after --: the probe's workload");

    auto* ls = app.add_subcommand("describe", "list instances");
    std::vector<std::string> ids;
    ls->add_option("ids", ids);
    auto* term = app.add_subcommand("terminate", "terminate instances");
    term->add_option("ids", ids)->required();
    auto* con = app.add_subcommand("console", "print an instance's console");
    std::string id;
    bool follow = false;
    con->add_option("id", id)->required();
    con->add_flag("-f,--follow", follow, "stream until the instance ends");
    auto* met = app.add_subcommand("metrics", "CPU, credits and host figures");
    met->add_option("ids", ids);
    auto* host = app.add_subcommand("host", "the host's limits and capabilities");
    auto* watch = app.add_subcommand("watch", "print instance events as they happen");
    app.positionals_at_end();
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        return app.exit(e) == 0 ? 0 : 2;
    }

    auto channel = grpc::CreateChannel("unix:" + socket, grpc::InsecureChannelCredentials());
    auto stub = v1::HostService::NewStub(channel);
    grpc::ClientContext ctx;

    if (*types) {
        v1::DescribeInstanceTypesRequest req;
        for (const auto& f : families) req.add_families(f);
        req.set_min_vcpus(min_vcpus);
        v1::DescribeInstanceTypesResponse resp;
        if (auto s = stub->DescribeInstanceTypes(&ctx, req, &resp); !s.ok()) return fail(s);
        fmt::print("{:<18} {:>5} {:>9} {:>9} {:<6} {:>14} {:>16}  {}\n", "TYPE", "VCPU", "MEM_GIB", "GUEST_MIB", "IO",
                   "EBS_MBPS", "EBS_IOPS", "CPU");
        for (const auto& t : resp.instance_types()) {
            std::string cpu = t.has_burstable() ? fmt::format("credits {}/h, {} % baseline", t.burstable().credits_per_hour(),
                                                              t.burstable().baseline_percent())
                              : t.has_flex() ? fmt::format("flex {} % baseline", t.flex().baseline_percent())
                                             : "";
            fmt::print("{:<18} {:>5} {:>9} {:>9} {:<6} {:>14} {:>16}  {}\n", t.name(), t.vcpus(), t.memory_gib(),
                       t.guest_memory_mib(), io_name(t.default_io_model()),
                       fmt::format("{}/{}", t.ebs().baseline_mbps(), t.ebs().max_mbps()),
                       fmt::format("{}/{}", t.ebs().baseline_iops(), t.ebs().max_iops()), cpu);
        }
        return 0;
    }
    if (*run) {
        v1::RunInstancesRequest req;
        req.set_instance_type(type);
        req.set_count(count);
        if (io != "default") req.set_io_model(io == "none" ? v1::IO_MODEL_NONE : io == "nitro" ? v1::IO_MODEL_NITRO : v1::IO_MODEL_XEN);
        if (credits != "default") req.set_credit_mode(credits == "standard" ? v1::CREDIT_MODE_STANDARD : v1::CREDIT_MODE_UNLIMITED);
        if (initial >= 0) req.set_initial_credits(initial);
        req.set_timeout_seconds(timeout);
        for (auto mib : volumes) {
            auto* v = req.add_volumes();
            v->set_size_mib(mib);
            v->set_delete_on_termination(true);
        }
        for (const auto& a : args) req.add_guest_args(a);
        v1::RunInstancesResponse resp;
        if (auto s = stub->RunInstances(&ctx, req, &resp); !s.ok()) return fail(s);
        print_instances(resp.instances());
        return 0;
    }
    if (*ls) {
        v1::DescribeInstancesRequest req;
        for (const auto& i : ids) req.add_instance_ids(i);
        v1::DescribeInstancesResponse resp;
        if (auto s = stub->DescribeInstances(&ctx, req, &resp); !s.ok()) return fail(s);
        print_instances(resp.instances());
        return 0;
    }
    if (*term) {
        v1::TerminateInstancesRequest req;
        for (const auto& i : ids) req.add_instance_ids(i);
        v1::TerminateInstancesResponse resp;
        if (auto s = stub->TerminateInstances(&ctx, req, &resp); !s.ok()) return fail(s);
        print_instances(resp.instances());
        return 0;
    }
    if (*con) {
        if (follow) {
            v1::StreamConsoleRequest req;
            req.set_instance_id(id);
            req.set_from_start(true);
            auto reader = stub->StreamConsole(&ctx, req);
            v1::ConsoleChunk c;
            while (reader->Read(&c)) std::cout << c.data() << std::flush;
            if (auto s = reader->Finish(); !s.ok()) return fail(s);
            return 0;
        }
        v1::GetConsoleOutputRequest req;
        req.set_instance_id(id);
        v1::GetConsoleOutputResponse resp;
        if (auto s = stub->GetConsoleOutput(&ctx, req, &resp); !s.ok()) return fail(s);
        std::cout << resp.output();
        return 0;
    }
    if (*met) {
        v1::GetMetricsRequest req;
        for (const auto& i : ids) req.add_instance_ids(i);
        v1::GetMetricsResponse resp;
        if (auto s = stub->GetMetrics(&ctx, req, &resp); !s.ok()) return fail(s);
        fmt::print("{:<20} {:>9} {:>9} {:>10} {:<18} {:>6} {:>9} {:>9}\n", "INSTANCE", "VCPU_S", "VMM_S", "THROTTLED_S",
                   "POLICY", "CAP_%", "BALANCE", "SURPLUS");
        for (const auto& m : resp.instances())
            fmt::print("{:<20} {:>9.2f} {:>9.2f} {:>10.2f} {:<18} {:>6.1f} {:>9.3f} {:>9.3f}\n", m.instance_id(),
                       m.vcpu_seconds(), m.vmm_seconds(), m.throttled_seconds(), m.cpu().policy(),
                       m.cpu().cap_percent(), m.cpu().credit_balance(), m.cpu().surplus_credits());
        fmt::print("host: {} running, {} vCPUs, {} MiB; card CPU {:.2f} s, dom0 CPU {:.2f} s\n",
                   resp.host().running_instances(), resp.host().vcpus_used(), resp.host().memory_mib_used(),
                   resp.host().card_seconds(), resp.host().dom0_seconds());
        return 0;
    }
    if (*host) {
        v1::DescribeHostResponse resp;
        if (auto s = stub->DescribeHost(&ctx, v1::DescribeHostRequest(), &resp); !s.ok()) return fail(s);
        std::string models;
        for (auto m : resp.io_models()) models += (models.empty() ? "" : ", ") + io_name(static_cast<v1::IoModel>(m));
        fmt::print("{}\nvCPUs {}/{} used, guest RAM {}/{} MiB used, memory scale 1/{}\nI/O models: {}\nCPU caps: {}\n"
                   "state: {}\n",
                   resp.version(), resp.vcpus_used(), resp.vcpus(), resp.memory_mib_used(), resp.memory_mib(),
                   resp.memory_scale(), models, resp.cpu_enforcement(), resp.state_dir());
        return 0;
    }
    if (*watch) {
        v1::WatchEventsRequest req;
        req.set_replay(true);
        auto reader = stub->WatchEvents(&ctx, req);
        v1::Event e;
        while (reader->Read(&e))
            fmt::print("{} {} {} {}\n", e.time_ms(), e.instance_id(), state_name(e.state()), e.message());
        if (auto s = reader->Finish(); !s.ok()) return fail(s);
        return 0;
    }
    return 2;
}
