#include "instances/proc.hpp"

#include <unistd.h>

#include <filesystem>
#include <fmt/format.h>
#include <fstream>
#include <sstream>

namespace hostd::instances {

namespace {

std::string slurp(const std::string& path) {
    std::ifstream in(path);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

// Fields of /proc/<pid>/stat after the command name (which may hold spaces), 1-based from field 3.
std::vector<std::string> stat_fields(const std::string& path) {
    auto s = slurp(path);
    auto close = s.rfind(')');
    std::vector<std::string> out;
    if (close == std::string::npos) return out;
    std::istringstream in(s.substr(close + 2));
    std::string f;
    while (in >> f) out.push_back(f);
    return out;
}

}  // namespace

std::vector<ThreadCpu> threads_named(pid_t pid, const std::string& prefix) {
    std::vector<ThreadCpu> out;
    std::error_code ec;
    for (const auto& de : std::filesystem::directory_iterator(fmt::format("/proc/{}/task", pid), ec)) {
        auto comm = slurp(de.path() / "comm");
        if (!comm.empty() && comm.back() == '\n') comm.pop_back();
        if (!comm.starts_with(prefix)) continue;
        ThreadCpu t;
        t.tid = static_cast<pid_t>(std::stol(de.path().filename().string()));
        t.name = comm;
        std::istringstream in(slurp(de.path() / "schedstat"));
        std::uint64_t ns = 0;
        in >> ns;
        t.cpu_seconds = static_cast<double>(ns) / 1e9;
        out.push_back(std::move(t));
    }
    return out;
}

double process_cpu_seconds(pid_t pid) {
    auto f = stat_fields(fmt::format("/proc/{}/stat", pid));
    if (f.size() < 13) return 0;
    // Fields 14 and 15 (utime, stime) are at 11 and 12 here.
    double ticks = std::stod(f[11]) + std::stod(f[12]);
    return ticks / static_cast<double>(::sysconf(_SC_CLK_TCK));
}

std::uint64_t process_start_ticks(pid_t pid) {
    auto f = stat_fields(fmt::format("/proc/{}/stat", pid));
    if (f.size() < 20) return 0;
    return std::stoull(f[19]);  // field 22
}

std::string process_env(pid_t pid, const std::string& name) {
    auto env = slurp(fmt::format("/proc/{}/environ", pid));
    std::string key = name + "=";
    std::size_t i = 0;
    while (i < env.size()) {
        auto end = env.find('\0', i);
        if (end == std::string::npos) end = env.size();
        if (env.compare(i, key.size(), key) == 0) return env.substr(i + key.size(), end - i - key.size());
        i = end + 1;
    }
    return {};
}

std::vector<std::pair<pid_t, std::string>> process_children(pid_t pid) {
    std::vector<std::pair<pid_t, std::string>> out;
    std::error_code ec;
    for (const auto& de : std::filesystem::directory_iterator(fmt::format("/proc/{}/task", pid), ec)) {
        std::istringstream in(slurp(de.path() / "children"));
        long c;
        while (in >> c) {
            auto comm = slurp(fmt::format("/proc/{}/comm", c));
            if (!comm.empty() && comm.back() == '\n') comm.pop_back();
            out.emplace_back(static_cast<pid_t>(c), comm);
        }
    }
    return out;
}

}  // namespace hostd::instances
