// The instance manager's supervision: signals to the vmm's process group, reaping exited vmms
// and recording why they ended, the once-a-second tick (CPU credits and caps), stopping all.
#include <signal.h>
#include <sys/wait.h>

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <fmt/format.h>
#include <thread>

#include "instances/files.hpp"
#include "instances/manager.hpp"
#include "instances/proc.hpp"
#include "instances/record.hpp"

namespace hostd::instances {

namespace v1 = nitrohost::v1;
namespace fs = std::filesystem;
using detail::now_ms;
using detail::slurp;
using detail::write_atomic;

namespace {

std::string last_line(const fs::path& p) {
    auto s = slurp(p);
    while (!s.empty() && s.back() == '\n') s.pop_back();
    auto nl = s.rfind('\n');
    return nl == std::string::npos ? s : s.substr(nl + 1);
}

std::string signal_name(int sig) {
    const char* d = ::sigabbrev_np(sig);
    return d ? fmt::format("SIG{}", d) : fmt::format("signal {}", sig);
}

}  // namespace

// ---- supervision ----

void InstanceManager::signal_locked(Record& r, int sig) {
    if (r.pid <= 0) return;
    if (::kill(-r.pid, sig) != 0) ::kill(r.pid, sig);  // the group: the vmm and its card
}

void InstanceManager::finish_locked(Record& r, std::optional<int> status, const std::string& reason) {
    if (status) r.info.set_exit_status(*status);
    r.info.set_state_reason(reason);
    r.info.set_end_time_ms(now_ms());
    r.info.set_pid(0);
    r.pid = -1;
    std::error_code ec;
    fs::remove(r.dir / "vmm.pid", ec);
    r.cgroup.reset();
    for (const auto& vid : r.info.volume_ids()) {
        auto it = volumes_.find(vid);
        if (it == volumes_.end()) continue;
        if (it->second.delete_on_termination()) {
            fs::remove(it->second.path(), ec);
            fs::remove(cfg_.state_dir / "volumes" / (vid + ".json"), ec);
            volumes_.erase(it);
        } else {
            it->second.clear_attached_to();
            persist_volume_locked(it->second);
        }
    }
    set_state_locked(r, v1::INSTANCE_STATE_TERMINATED, reason);
}

void InstanceManager::reap_locked() {
    for (auto& [id, rp] : records_) {
        auto& r = *rp;
        if (!r.live() || r.pid <= 0) continue;
        std::optional<int> status;
        std::string reason;
        bool gone = false;
        if (r.child) {
            int st = 0;
            if (::waitpid(r.pid, &st, WNOHANG) != r.pid) continue;
            gone = true;
            if (WIFEXITED(st)) {
                int c = WEXITSTATUS(st);
                status = c;
                if (c == 124) reason = "the guest ran past its timeout (status 124)";
                else if (c == 125) reason = "the guest crashed (status 125; registers in the vmm log)";
                else if (c == 126) reason = "the vmm failed on the host side (status 126): " + last_line(r.dir / "vmm.log");
                else if (c == 2) reason = "the vmm refused the configuration (status 2): " + last_line(r.dir / "vmm.log");
                else reason = fmt::format("the guest exited with status {}", c);
            } else if (WIFSIGNALED(st)) {
                status = 128 + WTERMSIG(st);
                reason = fmt::format("the vmm was killed by {}", signal_name(WTERMSIG(st)));
            }
        } else if (::kill(r.pid, 0) != 0 || process_start_ticks(r.pid) != r.start_ticks) {
            gone = true;
            reason = "the vmm ended (adopted after a hostd restart: exit status unknown)";
        }
        if (!gone) continue;
        if (r.stop_requested) reason = r.stop_reason + (reason.empty() ? "" : " (" + reason + ")");
        if (r.info.state() == v1::INSTANCE_STATE_PENDING && status && *status != 2 && *status != 126)
            set_state_locked(r, v1::INSTANCE_STATE_RUNNING, "the guest ran");
        finish_locked(r, status, reason);
    }
}

void InstanceManager::tick_locked(double wall) {
    auto now = std::chrono::steady_clock::now();
    for (auto& [id, rp] : records_) {
        auto& r = *rp;
        if (!r.live() || r.pid <= 0) continue;
        auto threads = threads_named(r.pid, "vcpu");
        for (const auto& t : threads) {
            r.thread_cpu[t.tid] = t.cpu_seconds;
            if (r.cgroup && !r.capped_tids.contains(t.tid)) {
                if (auto s = r.cgroup->add_thread(t.tid); !s)
                    spdlog::warn("{}: vCPU thread {} not capped: {}", id, t.tid, s.error().message);
                r.capped_tids.insert(t.tid);
            }
        }
        r.vmm_seconds = std::max(r.vmm_seconds, process_cpu_seconds(r.pid));
        if (r.cgroup) r.cg_stats = r.cgroup->stats();
        if (r.info.state() == v1::INSTANCE_STATE_PENDING && !threads.empty())
            set_state_locked(r, v1::INSTANCE_STATE_RUNNING, fmt::format("{} vCPU threads run", threads.size()));
        if (r.policy) {
            double cpu = r.vcpu_seconds();
            r.policy->advance(wall, cpu - r.policy_cpu);
            r.policy_cpu = cpu;
            if (++r.ticks_since_save >= 10) {  // once a second: what a restarted hostd goes on from
                const auto& st = r.policy->state();
                write_atomic(r.dir / "cpu.state", fmt::format("{} {} {} {} {} {}\n", st.balance, st.launch_credits,
                                                              st.surplus, st.earned, st.spent, st.capped ? 1 : 0));
                r.ticks_since_save = 0;
            }
            if (r.cgroup)
                if (auto s = r.cgroup->set_cap(r.policy->cap_percent()); !s)
                    spdlog::warn("{}: setting the CPU cap: {}", id, s.error().message);
        }
        if (r.stop_requested && !r.killed &&
            now - r.stop_sent > std::chrono::duration<double>(cfg_.stop_grace_seconds)) {
            spdlog::warn("{}: the vmm (pid {}) did not stop in {} s; killing it", id, r.pid, cfg_.stop_grace_seconds);
            signal_locked(r, SIGKILL);
            r.killed = true;
        }
    }
}

void InstanceManager::supervise() {
    auto last = std::chrono::steady_clock::now();
    while (!quit_) {
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
        auto now = std::chrono::steady_clock::now();
        std::lock_guard lk(mu_);
        reap_locked();
        tick_locked(std::chrono::duration<double>(now - last).count());
        last = now;
    }
}

void InstanceManager::stop_all(const std::string& reason) {
    {
        std::lock_guard lk(mu_);
        for (auto& [id, r] : records_) {
            if (!r->live() || r->pid <= 0 || r->stop_requested) continue;
            r->stop_requested = true;
            r->stop_reason = reason;
            r->stop_sent = std::chrono::steady_clock::now();
            set_state_locked(*r, v1::INSTANCE_STATE_STOPPING, reason);
            signal_locked(*r, SIGTERM);
        }
    }
    auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(cfg_.stop_grace_seconds + 2);
    while (std::chrono::steady_clock::now() < deadline) {
        {
            std::lock_guard lk(mu_);
            if (std::ranges::none_of(records_, [](const auto& kv) { return kv.second->live(); })) return;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
}

}  // namespace hostd::instances
