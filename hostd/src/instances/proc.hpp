// What hostd reads about its vmm processes from /proc. Every function tolerates a process
// that has just gone (it returns empty or zero).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

namespace hostd::instances {

struct ThreadCpu {
    pid_t tid = 0;
    std::string name;
    double cpu_seconds = 0;  // from schedstat (ns resolution)
};

// Threads of `pid` whose name starts with `prefix` ("vcpu"), with their CPU time.
[[nodiscard]] std::vector<ThreadCpu> threads_named(pid_t pid, const std::string& prefix);
// utime + stime of a process (all its threads, live and gone).
[[nodiscard]] double process_cpu_seconds(pid_t pid);
// Start time in clock ticks since boot (field 22 of stat): with the pid, a process identity.
[[nodiscard]] std::uint64_t process_start_ticks(pid_t pid);
// The value of an environment variable of another process ("" if absent or unreadable).
[[nodiscard]] std::string process_env(pid_t pid, const std::string& name);
// Direct children of a process, with their command names.
[[nodiscard]] std::vector<std::pair<pid_t, std::string>> process_children(pid_t pid);

}  // namespace hostd::instances
