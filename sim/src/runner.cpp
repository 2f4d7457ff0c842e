#include "runner.hpp"

#include <fmt/format.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <string>

#include "model/host.hpp"

namespace hostsim {

using common::Error;
using common::fail;

namespace {

struct Child {
    pid_t pid = -1;
    int fd = -1;
};

common::Result<Child> spawn(const std::function<nlohmann::json()>& fn) {
    int fds[2];
    if (pipe(fds) != 0) return fail(Error::from_errno("pipe"));
    std::fflush(stdout);
    std::fflush(stderr);
    const pid_t pid = fork();
    if (pid < 0) {
        const Error e = Error::from_errno("fork");
        close(fds[0]);
        close(fds[1]);
        return fail(e);
    }
    if (pid == 0) {
        close(fds[0]);
        int status = 0;
        std::string out;
        try {
            out = fn().dump();
        } catch (const std::exception& e) {
            out = nlohmann::json{{"error", e.what()}}.dump();
            status = 1;
        }
        const char* p = out.data();
        std::size_t left = out.size();
        while (left > 0) {
            const ssize_t n = write(fds[1], p, left);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) _exit(3);
            p += n;
            left -= static_cast<std::size_t>(n);
        }
        close(fds[1]);
        _exit(status);
    }
    close(fds[1]);
    return Child{pid, fds[0]};
}

common::Result<nlohmann::json> collect(Child c) {
    std::string text;
    char buf[65536];
    for (;;) {
        const ssize_t n = read(c.fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        text.append(buf, static_cast<std::size_t>(n));
    }
    close(c.fd);
    int status = 0;
    while (waitpid(c.pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (WIFSIGNALED(status))
        return fail(Error{common::ErrorKind::System, fmt::format("simulation died with signal {}", WTERMSIG(status)), 0});
    nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
    if (j.is_discarded()) return fail(Error{common::ErrorKind::Protocol, "simulation returned no result", 0});
    if (j.is_object() && j.contains("error"))
        return fail(Error{common::ErrorKind::System, "simulation failed: " + j.at("error").get<std::string>(), 0});
    return j;
}

}  // namespace

common::Result<nlohmann::json> run_isolated(const std::function<nlohmann::json()>& fn) {
    auto child = spawn(fn);
    if (!child) return fail(std::move(child.error()));
    return collect(*child);
}

common::Result<std::vector<PointResult>> run_all(const std::vector<PlannedRun>& runs, int jobs) {
    std::vector<PointResult> results(runs.size());
    std::size_t next = 0;
    while (next < runs.size()) {
        std::vector<std::pair<std::size_t, Child>> batch;
        for (int k = 0; k < std::max(jobs, 1) && next < runs.size(); ++k, ++next) {
            const PlannedRun& run = runs[next];
            auto child = spawn([&run] {
                PointResult r = simulate(run.config);
                r.sweep_label = run.sweep_label;
                r.sweep_value = run.sweep_value;
                return to_json(r);
            });
            if (!child) return fail(std::move(child.error()));
            batch.emplace_back(next, *child);
        }
        for (auto& [index, child] : batch) {
            auto j = collect(child);
            if (!j) return fail(std::move(j.error()));
            results[index] = point_from_json(*j);
        }
    }
    return results;
}

}  // namespace hostsim
