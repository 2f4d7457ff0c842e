// xen-dom0: the dom0 of the Xen I/O model. Serves xenstore and blkback to every guest whose vmm
// attaches on its socket. See xen_model/README.md.
#include <signal.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include <cstdio>
#include <filesystem>
#include <system_error>

#include "common/cpu_time.hpp"
#include "common/log.hpp"
#include "common/service.hpp"
#include "xen_model/dom0/server.hpp"

namespace {

int usage_error(const std::string& msg) {
    std::fprintf(stderr, "xen-dom0: error: %s\n", msg.c_str());
    return 2;
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"xen-dom0: xenstore and block backends for the host's Xen-mode instances"};
    std::string socket_path = "/run/nitro-host/xen-dom0.sock";
    std::string log_level = "info";
    int ready_fd = -1;
    bool exit_when_idle = false;
    app.add_option("--socket", socket_path, "listening socket for the vmms")->capture_default_str();
    app.add_option("--ready-fd", ready_fd, "write one byte here once the socket listens");
    app.add_flag("--exit-when-idle", exit_when_idle, "exit when the last attached domain detaches");
    app.add_option("--log-level", log_level)->capture_default_str();
    try {
        app.parse(argc, argv);
    } catch (const CLI::CallForHelp& e) {
        return app.exit(e);
    } catch (const CLI::ParseError& e) {
        return usage_error(e.what());
    }
    if (auto s = common::setup_logging("xen-dom0", log_level); !s) return usage_error(s.error().message);

    const common::StopSignals stop_signals;  // before any thread starts

    const auto dir = std::filesystem::path(socket_path).parent_path();
    if (!dir.empty()) {
        std::error_code ec;
        std::filesystem::create_directories(dir, ec);
        if (ec) return usage_error(fmt::format("creating {}: {}", dir.string(), ec.message()));
    }
    auto server = xen_model::dom0::Server::start(socket_path);
    if (!server) return usage_error(server.error().message);
    spdlog::info("listening at {}", socket_path);
    common::signal_ready(ready_fd);

    for (;;) {
        const int sig = stop_signals.wait_for(std::chrono::milliseconds(100));
        if (sig > 0) {
            spdlog::info("signal {}: stopping", sig);
            break;
        }
        if (exit_when_idle && (*server)->attached_total() > 0 && (*server)->active_domains() == 0) {
            spdlog::info("the last domain has detached: stopping");
            break;
        }
    }
    server->reset();
    const auto cpu = common::process_cpu_time();
    spdlog::info("dom0 cpu time: {:.1f} ms user, {:.1f} ms system", cpu.user_ms, cpu.system_ms);
    return 0;
}
