// The host's instances and volumes: launch (one nitrovm process per instance), supervision,
// CPU policies, persistence in the state directory, and the events they produce.
//
// Lock order: mu_ (records, volumes) before events_.mu. Launching happens under mu_, so
// admission control and the client-token check see every earlier launch.
//
// State directory layout:
//   instances/<id>/instance.json  the nitrohost.v1.Instance record (JSON), rewritten on change
//   instances/<id>/vmm.pid        "<pid> <start ticks>" while the vmm may run
//   instances/<id>/console.log    the guest's serial console (the vmm's stdout)
//   instances/<id>/vmm.log        the vmm's own log (its stderr)
//   volumes/<id>.json, <id>.img   volume records and their backing files
#pragma once

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <condition_variable>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "catalog/catalog.hpp"
#include "cpu/cgroup.hpp"
#include "cpu/credits.hpp"
#include "nitrohost/v1/host.pb.h"

namespace hostd::instances {

struct HostConfig {
    std::filesystem::path state_dir;
    std::filesystem::path nitrovm;       // the vmm binary
    std::filesystem::path probe_kernel;  // build/guest/probe.elf
    std::filesystem::path linux_kernel;
    std::filesystem::path linux_initrd;
    std::uint32_t vcpus = 16;            // admission limits
    std::uint64_t memory_mib = 4096;     // guest RAM, after the scale factor
    std::vector<nitrohost::v1::IoModel> io_models;  // what the vmm supports
    double stop_grace_seconds = 5;
};

// Events, kept in order; watchers wait for the next ones.
class EventLog final {
public:
    void add(nitrohost::v1::Event e);
    // Events after index `from`; waits up to `wait` for one; returns the next index.
    std::size_t read(std::size_t from, std::vector<nitrohost::v1::Event>& out, std::chrono::milliseconds wait);
    std::size_t size();

private:
    std::mutex mu;
    std::condition_variable cv;
    std::vector<nitrohost::v1::Event> events;
};

class InstanceManager final {
public:
    // Opens the state directory, reloads its records (adopting vmms that still run) and starts
    // the supervisor thread.
    [[nodiscard]] static common::Result<std::unique_ptr<InstanceManager>> open(HostConfig cfg,
                                                                               const catalog::Catalog& catalog);
    ~InstanceManager();  // stops the supervisor; instances keep running (stop_all() stops them)
    InstanceManager(const InstanceManager&) = delete;
    InstanceManager& operator=(const InstanceManager&) = delete;

    grpc::Status run(const nitrohost::v1::RunInstancesRequest& req, nitrohost::v1::RunInstancesResponse* resp);
    grpc::Status terminate(const nitrohost::v1::TerminateInstancesRequest& req,
                           nitrohost::v1::TerminateInstancesResponse* resp);
    grpc::Status describe(const nitrohost::v1::DescribeInstancesRequest& req,
                          nitrohost::v1::DescribeInstancesResponse* resp);
    grpc::Status console(const nitrohost::v1::GetConsoleOutputRequest& req,
                         nitrohost::v1::GetConsoleOutputResponse* resp);
    grpc::Status metrics(const nitrohost::v1::GetMetricsRequest& req, nitrohost::v1::GetMetricsResponse* resp);
    grpc::Status create_volume(const nitrohost::v1::CreateVolumeRequest& req, nitrohost::v1::Volume* resp);
    grpc::Status describe_volumes(const nitrohost::v1::DescribeVolumesRequest& req,
                                  nitrohost::v1::DescribeVolumesResponse* resp);
    grpc::Status delete_volume(const nitrohost::v1::DeleteVolumeRequest& req);
    void describe_host(nitrohost::v1::DescribeHostResponse* resp);

    // For StreamConsole: the console file and whether the instance has ended.
    grpc::Status console_path(const std::string& id, std::filesystem::path* path, bool* ended);

    // Stops every live instance (SIGTERM, SIGKILL after the grace time) and records why.
    void stop_all(const std::string& reason);

    EventLog& events() { return events_; }
    [[nodiscard]] std::string cpu_enforcement() const { return cgroups_.describe(); }

private:
    struct Record;
    InstanceManager(HostConfig cfg, const catalog::Catalog& catalog);
    void supervise();
    void tick_locked(double wall);
    void reap_locked();
    void finish_locked(Record& r, std::optional<int> status, const std::string& reason);
    void set_state_locked(Record& r, nitrohost::v1::InstanceState s, const std::string& msg);
    void persist_locked(const Record& r);
    void persist_volume_locked(const nitrohost::v1::Volume& v);
    void load();
    grpc::Status validate_volume_spec(const nitrohost::v1::VolumeSpec& v, const std::string& field) const;
    nitrohost::v1::Volume make_volume_locked(const nitrohost::v1::VolumeSpec& spec);
    grpc::Status launch_locked(Record& r, const nitrohost::v1::InstanceType& type);
    void signal_locked(Record& r, int sig);
    std::string new_id(const char* prefix);

    HostConfig cfg_;
    const catalog::Catalog& catalog_;
    cpu::CgroupRoot cgroups_;
    std::mutex mu_;
    std::map<std::string, std::unique_ptr<Record>> records_;
    std::map<std::string, nitrohost::v1::Volume> volumes_;
    EventLog events_;
    std::atomic<bool> quit_{false};
    std::thread supervisor_;
};

}  // namespace hostd::instances
