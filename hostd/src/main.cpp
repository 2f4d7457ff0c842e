// hostd: the host agent. Serves nitrohost.v1.HostService on a unix socket (mode 0600) and
// optionally on a loopback TCP port, with server reflection; launches and supervises one vmm
// per instance. SIGTERM or SIGINT: stops every instance, records why, and exits 0.
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <spdlog/spdlog.h>

#include <cstdio>
#include <filesystem>
#include <fmt/format.h>

#include "api/host_service.hpp"
#include "catalog/catalog.hpp"
#include "common/log.hpp"
#include "common/service.hpp"
#include "instances/manager.hpp"

#ifndef NH_CATALOG_DIR
#define NH_CATALOG_DIR "configs/instance-types"
#endif

namespace {

namespace fs = std::filesystem;
namespace v1 = nitrohost::v1;

constexpr const char* kVersion = "nitrohost.v1 hostd 0.1";

fs::path build_dir() {
    std::error_code ec;
    auto exe = fs::read_symlink("/proc/self/exe", ec);
    return ec ? fs::path(".") : exe.parent_path().parent_path();
}

int usage_error(const std::string& msg) {
    std::fprintf(stderr, "hostd: error: %s\n", msg.c_str());
    return 2;
}

// The I/O models the vmm offers, from its own help text.
std::vector<v1::IoModel> probe_io_models(const fs::path& nitrovm, const fs::path& card, const fs::path& dom0) {
    std::vector<v1::IoModel> out;
    std::string cmd = fmt::format("'{}' run --help 2>&1", nitrovm.string());
    std::string text;
    if (FILE* f = ::popen(cmd.c_str(), "r")) {
        char buf[4096];
        std::size_t n;
        while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) text.append(buf, n);
        ::pclose(f);
    }
    auto line = text.find("--io-model");
    auto io = line == std::string::npos ? std::string() : text.substr(line, text.find('\n', line) - line);
    if (io.find("nitro") != std::string::npos && ::access(card.c_str(), X_OK) == 0) out.push_back(v1::IO_MODEL_NITRO);
    if (io.find("xen") != std::string::npos && ::access(dom0.c_str(), X_OK) == 0) out.push_back(v1::IO_MODEL_XEN);
    return out;
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"hostd: the host agent (nitrohost.v1.HostService over gRPC)"};
    fs::path base = build_dir();
    std::string socket = "/run/nitro-host/hostd.sock", listen, state_dir = "/var/lib/nitro-host";
    std::string catalog_dir = NH_CATALOG_DIR, nitrovm = (base / "bin" / "nitrovm").string(), log_level = "info";
    std::string host_memory = "4096";
    std::uint32_t host_vcpus = 16;
    double memory_scale = 32, grace = 5;
    app.add_option("--socket", socket, "unix socket to serve on (created with mode 0600)")->capture_default_str();
    app.add_option("--listen", listen, "also serve on this loopback TCP address, e.g. 127.0.0.1:50051");
    app.add_option("--state-dir", state_dir, "where instance and volume records live")->capture_default_str();
    app.add_option("--catalog", catalog_dir, "directory of instance-type *.json files")->capture_default_str();
    app.add_option("--nitrovm", nitrovm, "the vmm binary")->capture_default_str();
    app.add_option("--host-vcpus", host_vcpus, "admission limit: vCPUs of all live instances")->capture_default_str();
    app.add_option("--host-memory-mib", host_memory, "admission limit: guest RAM (MiB, after scaling) of all live instances")
        ->capture_default_str();
    app.add_option("--memory-scale", memory_scale, "guest RAM = the type's memory / this factor")->capture_default_str();
    app.add_option("--stop-grace", grace, "seconds a vmm gets to stop after SIGTERM before SIGKILL")->capture_default_str();
    app.add_option("--log-level", log_level, "trace, debug, info, warn, error or off")->capture_default_str();
    try {
        app.parse(argc, argv);
    } catch (const CLI::CallForHelp& e) {
        return app.exit(e);
    } catch (const CLI::ParseError& e) {
        return usage_error(e.what());
    }
    if (auto s = common::setup_logging("hostd", log_level); !s) return usage_error(s.error().message);
    if (!listen.empty() && !listen.starts_with("127.") && !listen.starts_with("[::1]") && !listen.starts_with("localhost:"))
        return usage_error(fmt::format("--listen {}: only loopback addresses (127.x.x.x, [::1], localhost)", listen));
    std::uint64_t mem_mib = 0;
    try {
        mem_mib = std::stoull(host_memory);
    } catch (const std::exception&) {
        return usage_error(fmt::format("--host-memory-mib {}: not a number", host_memory));
    }

    auto catalog = hostd::catalog::Catalog::load_dir(catalog_dir, memory_scale);
    if (!catalog) return usage_error(catalog.error().message);
    spdlog::info("catalog: {} instance types from {} (memory scale 1/{})", catalog->types().size(), catalog_dir,
                 memory_scale);
    if (::access(nitrovm.c_str(), X_OK) != 0) return usage_error(fmt::format("--nitrovm {}: not executable", nitrovm));

    // Signals go to one waiting thread; every other thread (and so gRPC's) has them blocked.
    const common::StopSignals stop_signals;

    hostd::instances::HostConfig cfg;
    cfg.state_dir = state_dir;
    cfg.nitrovm = nitrovm;
    cfg.probe_kernel = base / "guest" / "probe.elf";
    cfg.linux_kernel = base / "images" / "vmlinuz";
    cfg.linux_initrd = base / "images" / "initramfs.cpio.gz";
    cfg.vcpus = host_vcpus;
    cfg.memory_mib = mem_mib;
    cfg.stop_grace_seconds = grace;
    cfg.io_models = probe_io_models(nitrovm, fs::path(nitrovm).parent_path() / "nitro-card",
                                    fs::path(nitrovm).parent_path() / "xen-dom0");
    auto manager = hostd::instances::InstanceManager::open(cfg, *catalog);
    if (!manager) return usage_error(manager.error().message);

    hostd::api::HostService service(*catalog, **manager, kVersion);
    grpc::reflection::InitProtoReflectionServerBuilderPlugin();
    grpc::ServerBuilder builder;
    std::error_code ec;
    fs::create_directories(fs::path(socket).parent_path(), ec);
    fs::remove(socket, ec);
    builder.AddListeningPort("unix:" + socket, grpc::InsecureServerCredentials());
    int tcp_port = 0;
    if (!listen.empty()) builder.AddListeningPort(listen, grpc::InsecureServerCredentials(), &tcp_port);
    builder.RegisterService(&service);
    mode_t old = ::umask(0177);  // the socket is born 0600
    auto server = builder.BuildAndStart();
    ::umask(old);
    if (!server) return usage_error(fmt::format("cannot serve on unix:{}{}", socket, listen.empty() ? "" : " or " + listen));
    ::chmod(socket.c_str(), 0600);
    spdlog::info("serving nitrohost.v1.HostService on unix:{}{} (reflection on); state in {}", socket,
                 listen.empty() ? "" : fmt::format(" and {} (port {})", listen, tcp_port), state_dir);

    const int sig = stop_signals.wait();
    spdlog::info("{}: stopping every instance", sig == SIGTERM ? "SIGTERM" : "SIGINT");
    (*manager)->stop_all(fmt::format("hostd stopped ({})", sig == SIGTERM ? "SIGTERM" : "SIGINT"));
    service.shutdown();
    server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
    server->Wait();
    fs::remove(socket, ec);
    spdlog::info("stopped");
    return 0;
}
