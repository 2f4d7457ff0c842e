// A CPU cap on a set of threads through the kernel's CFS bandwidth control: a cgroup per
// instance under <root>/nitro-host/. cgroup v2 (`cpu.max`) when the unified hierarchy has the
// cpu controller, else cgroup v1's cpu controller (`cpu.cfs_quota_us`, per-thread `tasks`).
// On v2 the whole vmm process is moved (threads of one process share a domain cgroup there);
// on v1 only the vCPU threads are, so the vmm's other threads and its card stay uncapped.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <filesystem>
#include <string>

#include "common/error.hpp"

namespace hostd::cpu {

enum class CgroupVersion { None, V1, V2 };

struct CgroupRoot {
    CgroupVersion version = CgroupVersion::None;
    std::filesystem::path dir;  // <mount>/nitro-host
    std::string why_none;       // when version is None

    // Finds a usable cpu controller and creates nitro-host/ in it.
    static CgroupRoot detect();
    [[nodiscard]] std::string describe() const;
};

struct CgroupStats {
    std::uint64_t throttled_periods = 0;
    double throttled_seconds = 0;
};

class CpuCgroup final {
public:
    [[nodiscard]] static common::Result<CpuCgroup> create(const CgroupRoot& root, const std::string& name);
    CpuCgroup(CpuCgroup&& o) noexcept;
    CpuCgroup& operator=(CpuCgroup&&) = delete;
    CpuCgroup(const CpuCgroup&) = delete;
    ~CpuCgroup();  // removes the directory (the kernel refuses while threads are still in it)

    // v1: moves one thread; v2: moves the thread's whole process.
    [[nodiscard]] common::Status add_thread(pid_t tid);
    // Cap in percent of one host CPU; 0 removes the cap.
    [[nodiscard]] common::Status set_cap(double percent);
    [[nodiscard]] CgroupStats stats() const;
    [[nodiscard]] const std::filesystem::path& dir() const { return dir_; }

private:
    CpuCgroup(CgroupVersion v, std::filesystem::path dir) : version_(v), dir_(std::move(dir)) {}
    CgroupVersion version_;
    std::filesystem::path dir_;
    double cap_ = -1;
};

}  // namespace hostd::cpu
