// nitro-card: the card process. Serves one NVMe controller per volume, each on its own socket
// (DIR/nvme<i>.sock), to the vmm(s) of the host. See nitro_card/README.md.
#include <signal.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <optional>

#include "card/volume_id.hpp"
#include "common/cpu_time.hpp"
#include "common/service.hpp"
#include "common/log.hpp"
#include "nvme/controller.hpp"
#include "storage/file_backend.hpp"
#include "storage/ram_backend.hpp"
#include "storage/volume_spec.hpp"
#include "transport/device_server.hpp"

namespace {

int usage_error(const std::string& msg) {
    std::fprintf(stderr, "nitro-card: error: %s\n", msg.c_str());
    return 2;
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"nitro-card: NVMe controllers for the host's instances, over shared guest memory"};
    std::string socket_dir, log_level = "info";
    std::vector<std::string> volumes;
    int ready_fd = -1;
    bool exit_when_idle = false;
    unsigned queues = 4;
    unsigned poll_us = nitro_card::nvme::kDefaultPollUs;
    app.add_option("--socket-dir", socket_dir, "directory for the device sockets")->required();
    app.add_option("--volume", volumes, "PATH[,size=64M][,iops=N][,mbps=N][,ram] (repeatable)");
    app.add_option("--queues", queues, "I/O queue pairs per controller (one per vCPU)")->capture_default_str();
    std::vector<int> cpus;
    std::optional<std::uint64_t> instance_iops, instance_mbps;
    app.add_option("--cpus", cpus, "pin every controller's I/O worker to these host CPUs (e.g. --cpus 1)")
        ->delimiter(',');
    app.add_option("--instance-iops", instance_iops, "the instance's EBS IOPS cap, shared by its volumes");
    app.add_option("--instance-mbps", instance_mbps, "the instance's EBS bandwidth cap in MiB/s, shared");
    app.add_option("--poll-us", poll_us,
                   "after I/O, each controller's worker polls the queues this long (microseconds) "
                   "before it sleeps; while it polls the guest writes no doorbells (no VM exits). "
                   "0: no polling, a doorbell per idle-to-busy transition")
        ->check(CLI::Range(0u, nitro_card::nvme::kMaxPollUs))
        ->capture_default_str();
    app.add_option("--ready-fd", ready_fd, "write one byte here when every socket listens");
    app.add_flag("--exit-when-idle", exit_when_idle, "exit once every device was used and none is");
    app.add_option("--log-level", log_level)->capture_default_str();
    try {
        app.parse(argc, argv);
    } catch (const CLI::CallForHelp& e) {
        return app.exit(e);
    } catch (const CLI::ParseError& e) {
        return usage_error(e.what());
    }
    if (auto s = common::setup_logging("nitro-card", log_level); !s) return usage_error(s.error().message);

    // SIGTERM/SIGINT end the card cleanly; they are taken synchronously below.
    const common::StopSignals stop_signals;

    std::vector<std::unique_ptr<nitro_card::DeviceServer>> servers;
    std::vector<std::shared_ptr<nitro_card::nvme::Controller>> controllers;
    std::shared_ptr<nitro_card::nvme::SharedRateLimiter> instance_limiter;
    if (instance_iops || instance_mbps) {
        nitro_card::storage::Limits l = nitro_card::storage::Limits::unlimited();
        if (instance_iops) l.iops = *instance_iops;
        if (instance_mbps) l.bytes_per_second = *instance_mbps << 20;
        instance_limiter = std::make_shared<nitro_card::nvme::SharedRateLimiter>(l);
    }
    for (std::size_t i = 0; i < volumes.size(); ++i) {
        auto spec = nitro_card::storage::parse_volume_spec(volumes[i]);
        if (!spec) return usage_error(spec.error().message);
        common::Result<std::unique_ptr<nitro_card::storage::BlockBackend>> backend =
            common::fail(common::Error::invalid("no backend"));
        if (spec->ram) {
            auto r = nitro_card::storage::RamBackend::create(*spec->size_bytes);
            if (r) backend = std::unique_ptr<nitro_card::storage::BlockBackend>(std::move(*r));
            else backend = common::fail(std::move(r.error()));
        } else {
            nitro_card::storage::FileBackendOptions o;
            o.create_size = spec->size_bytes;
            o.batch_submissions = true;  // the NVMe worker kicks once per pass
            auto f = nitro_card::storage::FileBackend::open(spec->path, o);
            if (f) backend = std::unique_ptr<nitro_card::storage::BlockBackend>(std::move(*f));
            else backend = common::fail(std::move(f.error()));
        }
        if (!backend) return usage_error(fmt::format("volume {}: {}", spec->path, backend.error().message));
        nitro_card::nvme::ControllerConfig cc;
        cc.backend = std::move(*backend);
        cc.volume_limits = spec->limits;
        if (spec->instance_store) {
            cc.kind = nitro_card::nvme::VolumeKind::InstanceStore;
            cc.volume_limits = nitro_card::storage::Limits::unlimited();  // local disks have no EBS caps
        }
        cc.serial = nitro_card::volume_id_for(spec->ram ? "ram:" + spec->path
                                                        : std::filesystem::absolute(spec->path).string());
        cc.controller_id = static_cast<std::uint16_t>(i + 1);
        cc.max_io_queues = queues;
        cc.io_thread.poll_us = poll_us;
        cc.io_thread.cpus = cpus;
        cc.instance_limiter = instance_limiter;
        auto ctrl = nitro_card::nvme::Controller::create(std::move(cc));
        if (!ctrl) return usage_error(fmt::format("volume {}: {}", spec->path, ctrl.error().message));
        auto path = fmt::format("{}/nvme{}.sock", socket_dir, i);
        auto server = nitro_card::DeviceServer::start(path, *ctrl);
        if (!server) return usage_error(server.error().message);
        spdlog::info("nvme{}: volume {} ({}) serving at {}", i, (*ctrl)->serial(), spec->path, path);
        servers.push_back(std::move(*server));
        controllers.push_back(*ctrl);
    }
    common::signal_ready(ready_fd);

    // Wait for a stop signal, or (one-shot mode) for every device to have had its client leave.
    for (;;) {
        const int sig = stop_signals.wait_for(std::chrono::milliseconds(100));
        if (sig > 0) {
            spdlog::info("signal {}: stopping", sig);
            break;
        }
        if (exit_when_idle && !servers.empty()) {
            bool idle = true;
            for (const auto& s : servers) idle = idle && s->clients_served() > 0 && !s->has_client();
            if (idle) {
                spdlog::info("every client has gone: stopping");
                break;
            }
        }
    }
    servers.clear();
    // What each volume did, for the operator and the benchmarks.
    for (std::size_t i = 0; i < controllers.size(); ++i) {
        auto st = controllers[i]->stats();
        spdlog::info("nvme{} {}: {} I/O commands ({} reads, {} writes), {} MiB read, {} MiB written, {} errors; "
                     "throttled {} commands for {:.1f} ms; {} slow-path register accesses, {} doorbell wake-ups, "
                     "{} polls found work",
                     i, controllers[i]->serial(), st.io_commands, st.read_commands, st.write_commands,
                     st.bytes_read >> 20, st.bytes_written >> 20, st.error_completions, st.throttled_commands,
                     static_cast<double>(st.throttled_ns) / 1e6, st.slow_path_accesses(), st.doorbell_wakeups,
                     st.poll_hits);
    }
    controllers.clear();
    const auto cpu = common::process_cpu_time();
    spdlog::info("card cpu time: {:.1f} ms user, {:.1f} ms system", cpu.user_ms, cpu.system_ms);
    for (std::size_t i = 0; i < volumes.size(); ++i) ::unlink(fmt::format("{}/nvme{}.sock", socket_dir, i).c_str());
    return 0;
}
