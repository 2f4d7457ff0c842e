// hostsim: the SystemC model of a full EC2 host. Reads a scenario, simulates it (each sweep point
// and I/O model in its own child process), prints a table and writes CSV and PNG plots.
#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <systemc>

#include "results.hpp"
#include "runner.hpp"
#include "scenario.hpp"
#include "validate.hpp"

#ifndef HOSTSIM_DEFAULT_TYPES
#define HOSTSIM_DEFAULT_TYPES ""
#endif
#ifndef HOSTSIM_PLOT_SCRIPT
#define HOSTSIM_PLOT_SCRIPT "sim/plot/plot.py"
#endif

namespace {

int run_plot(const std::string& python, const std::string& script, const std::string& dir) {
    std::fflush(stdout);
    const pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        execl(python.c_str(), python.c_str(), script.c_str(), dir.c_str(), static_cast<char*>(nullptr));
        _exit(127);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

}  // namespace

// libsystemc brings a main() that prints a banner and calls sc_main; hostsim has its own main
// (simulations run in child processes, see runner.hpp), so sc_main is only there to link.
extern "C" int sc_main(int, char**) { return 0; }

int main(int argc, char** argv) {
    setenv("SYSTEMC_DISABLE_COPYRIGHT_MESSAGE", "1", 0);
    CLI::App app{"hostsim: SystemC model of an EC2 host, Nitro card against Xen dom0 I/O"};
    std::string scenario, out_dir, validate_path, python = "/usr/bin/python3", plot_script = HOSTSIM_PLOT_SCRIPT;
    hostsim::Overrides ov;
    ov.default_types = HOSTSIM_DEFAULT_TYPES;
    long long seed = -1;
    int jobs = 2;
    bool no_plot = false;
    app.add_option("scenario", scenario, "scenario file (configs/scenarios/*.json)");
    app.add_option("--out", out_dir, "directory for CSV and PNG output");
    app.add_option("--duration", ov.duration_s, "simulated seconds (overrides the scenario)");
    app.add_option("--seed", seed, "random seed (overrides the scenario)");
    app.add_option("--calibration", ov.calibration, "calibration file (overrides the scenario's)");
    app.add_option("--jobs", jobs, "simulations run in parallel (child processes)")->check(CLI::Range(1, 64));
    app.add_option("--validate", validate_path, "held-out emulator points to compare against (bench/compare)");
    app.add_flag("--no-plot", no_plot, "write CSV only");
    app.add_option("--python", python, "Python with matplotlib for the plots");
    app.add_option("--plot-script", plot_script, "plot script");
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        return app.exit(e) == 0 ? 0 : 2;
    }
    if (seed >= 0) {
        ov.seed_set = true;
        ov.seed = static_cast<std::uint64_t>(seed);
    }
    if (!out_dir.empty()) {
        std::error_code ec;
        std::filesystem::create_directories(out_dir, ec);
        if (ec) {
            std::cerr << fmt::format("hostsim: --out {}: {}\n", out_dir, ec.message());
            return 2;
        }
    }
    if (!validate_path.empty()) {
        auto report = hostsim::validate(validate_path, ov, out_dir, jobs);
        if (!report) {
            std::cerr << "hostsim: " << report.error().message << "\n";
            return report.error().kind == common::ErrorKind::InvalidArgument ? 2 : 1;
        }
        std::cout << *report;
        if (!out_dir.empty()) std::ofstream(out_dir + "/validation.txt") << *report;
        return 0;
    }
    if (scenario.empty()) {
        std::cerr << "hostsim: a scenario file is required (or --validate FILE)\n";
        return 2;
    }
    auto runs = hostsim::load_scenario(scenario, ov);
    if (!runs) {
        std::cerr << "hostsim: " << runs.error().message << "\n";
        return 2;
    }
    auto results = hostsim::run_all(*runs, jobs);
    if (!results) {
        std::cerr << "hostsim: " << results.error().message << "\n";
        return 1;
    }
    const bool sweep = !runs->front().sweep_label.empty();
    if (sweep) {
        std::cout << "scenario " << results->front().scenario << "\n" << hostsim::format_sweep(*results);
        double wall = 0;
        std::uint64_t ios = 0;
        for (const auto& r : *results) {
            wall += r.host.wall_s;
            ios += r.host.simulated_ios;
        }
        std::cout << fmt::format("{} simulations, {} I/Os in {:.1f} s of simulation wall time ({:.0f} I/Os per wall second)\n",
                                 results->size(), ios, wall, wall > 0 ? static_cast<double>(ios) / wall : 0.0);
    } else {
        for (const auto& r : *results) std::cout << hostsim::format_table(r) << "\n";
    }
    if (!out_dir.empty()) {
        try {
            hostsim::write_csv(out_dir, *results);
        } catch (const std::exception& e) {
            std::cerr << "hostsim: " << e.what() << "\n";
            return 1;
        }
        if (!no_plot) {
            const int rc = run_plot(python, plot_script, out_dir);
            if (rc != 0) std::cerr << fmt::format("hostsim: plotting failed ({}); the CSV files are in {}\n", rc, out_dir);
        }
        std::cout << "wrote " << out_dir << "/{instances,groups,host}.csv" << (no_plot ? "" : " and PNG plots") << "\n";
    }
    return 0;
}
