#include "cpu/cgroup.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fmt/format.h>
#include <fstream>
#include <sstream>

namespace hostd::cpu {

namespace {

using common::Error;
using common::fail;
namespace fs = std::filesystem;

constexpr long kPeriodUs = 100000;

std::string read_file(const fs::path& p) {
    std::ifstream in(p);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

common::Status write_file(const fs::path& p, const std::string& v) {
    std::ofstream out(p);
    out << v;
    out.flush();
    if (!out) return fail(Error::from_errno(fmt::format("writing '{}' to {}", v, p.string())));
    return {};
}

bool make_dir(const fs::path& p) { return ::mkdir(p.c_str(), 0755) == 0 || errno == EEXIST; }

}  // namespace

CgroupRoot CgroupRoot::detect() {
    CgroupRoot r;
    for (fs::path mount : {fs::path("/sys/fs/cgroup"), fs::path("/sys/fs/cgroup/unified")}) {
        auto ctl = read_file(mount / "cgroup.controllers");
        if (ctl.find("cpu") == std::string::npos) continue;
        // Delegate cpu to children of the mount, then of nitro-host.
        (void)write_file(mount / "cgroup.subtree_control", "+cpu");
        if (!make_dir(mount / "nitro-host")) continue;
        if (!write_file(mount / "nitro-host" / "cgroup.subtree_control", "+cpu")) continue;
        r.version = CgroupVersion::V2;
        r.dir = mount / "nitro-host";
        return r;
    }
    fs::path v1 = "/sys/fs/cgroup/cpu";
    if (fs::exists(v1 / "cpu.cfs_quota_us")) {
        if (make_dir(v1 / "nitro-host") && ::access((v1 / "nitro-host" / "tasks").c_str(), W_OK) == 0) {
            r.version = CgroupVersion::V1;
            r.dir = v1 / "nitro-host";
            return r;
        }
        r.why_none = fmt::format("cannot create {}: {}", (v1 / "nitro-host").string(), std::strerror(errno));
        return r;
    }
    r.why_none = "no cgroup cpu controller (neither v2 with cpu nor v1 cpu is mounted)";
    return r;
}

std::string CgroupRoot::describe() const {
    switch (version) {
        case CgroupVersion::V2: return fmt::format("cgroup-v2 cpu.max ({})", dir.string());
        case CgroupVersion::V1: return fmt::format("cgroup-v1 cpu.cfs_quota_us on vCPU threads ({})", dir.string());
        case CgroupVersion::None: return "none: " + why_none;
    }
    return "none";
}

common::Result<CpuCgroup> CpuCgroup::create(const CgroupRoot& root, const std::string& name) {
    if (root.version == CgroupVersion::None) return fail(Error::unsupported("no CPU cgroup: " + root.why_none));
    fs::path d = root.dir / name;
    if (!make_dir(d)) return fail(Error::from_errno(fmt::format("creating cgroup {}", d.string())));
    return CpuCgroup(root.version, d);
}

CpuCgroup::CpuCgroup(CpuCgroup&& o) noexcept : version_(o.version_), dir_(std::move(o.dir_)), cap_(o.cap_) {
    o.dir_.clear();
}

CpuCgroup::~CpuCgroup() {
    if (!dir_.empty()) ::rmdir(dir_.c_str());
}

common::Status CpuCgroup::add_thread(pid_t tid) {
    if (version_ == CgroupVersion::V1) return write_file(dir_ / "tasks", std::to_string(tid));
    return write_file(dir_ / "cgroup.procs", std::to_string(tid));
}

common::Status CpuCgroup::set_cap(double percent) {
    if (percent == cap_) return {};
    long quota = percent > 0 ? std::max(1000L, static_cast<long>(percent / 100.0 * kPeriodUs)) : -1;
    common::Status s;
    if (version_ == CgroupVersion::V1) {
        s = write_file(dir_ / "cpu.cfs_period_us", std::to_string(kPeriodUs));
        if (s) s = write_file(dir_ / "cpu.cfs_quota_us", std::to_string(quota));
    } else {
        s = write_file(dir_ / "cpu.max", quota < 0 ? fmt::format("max {}", kPeriodUs) : fmt::format("{} {}", quota, kPeriodUs));
    }
    if (s) cap_ = percent;
    return s;
}

CgroupStats CpuCgroup::stats() const {
    CgroupStats st;
    std::istringstream in(read_file(dir_ / "cpu.stat"));
    std::string key;
    std::uint64_t v;
    while (in >> key >> v) {
        if (key == "nr_throttled") st.throttled_periods = v;
        else if (key == "throttled_time") st.throttled_seconds = static_cast<double>(v) / 1e9;  // v1: ns
        else if (key == "throttled_usec") st.throttled_seconds = static_cast<double>(v) / 1e6;  // v2
    }
    return st;
}

}  // namespace hostd::cpu
