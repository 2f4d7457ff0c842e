// One instance as the manager keeps it (manager.cpp, supervision.cpp): its API record, its
// directory, the vmm process and what the CPU policy tracks about its vCPU threads.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <map>
#include <optional>
#include <set>
#include <string>

#include "instances/manager.hpp"

namespace hostd::instances {

struct InstanceManager::Record {
    nitrohost::v1::Instance info;
    std::filesystem::path dir;
    pid_t pid = -1;
    bool child = false;  // ours to waitpid; else adopted after a restart and polled
    std::uint64_t start_ticks = 0;
    std::optional<cpu::CpuCgroup> cgroup;
    std::optional<cpu::CpuPolicy> policy;
    std::set<pid_t> capped_tids;
    std::map<pid_t, double> thread_cpu;  // last CPU time seen per vCPU thread
    double policy_cpu = 0;               // vCPU time already given to the policy
    int ticks_since_save = 0;
    double vmm_seconds = 0;
    cpu::CgroupStats cg_stats;
    bool stop_requested = false;
    std::string stop_reason;
    std::chrono::steady_clock::time_point stop_sent;
    bool killed = false;
    std::chrono::steady_clock::time_point started = std::chrono::steady_clock::now();

    [[nodiscard]] bool live() const { return info.state() != nitrohost::v1::INSTANCE_STATE_TERMINATED; }
    [[nodiscard]] double vcpu_seconds() const {
        double s = 0;
        for (const auto& [tid, v] : thread_cpu) s += v;
        return s;
    }
};

}  // namespace hostd::instances
