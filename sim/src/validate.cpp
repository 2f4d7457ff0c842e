#include "validate.hpp"

#include <fmt/format.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "runner.hpp"

namespace hostsim {

using common::Error;
using common::fail;
using nlohmann::json;

common::Result<std::string> validate(const std::string& heldout_path, const Overrides& overrides,
                                     const std::string& out_dir, int jobs) {
    auto doc = read_json(heldout_path);
    if (!doc) return fail(std::move(doc.error()));
    const std::string base_dir = std::filesystem::path(heldout_path).parent_path().string();
    if (!doc->contains("scenario") || !doc->at("scenario").is_string() || !doc->contains("points") ||
        !doc->at("points").is_array())
        return fail(Error::invalid(fmt::format("{}: needs \"scenario\" (path) and \"points\" (list)", heldout_path)));
    const std::string scen_path = (std::filesystem::path(base_dir) / doc->at("scenario").get<std::string>()).string();
    auto base = read_json(scen_path);
    if (!base) return fail(std::move(base.error()));
    const std::string scen_dir = std::filesystem::path(scen_path).parent_path().string();

    struct Measured {
        std::string label, model;
        double iops = 0, p50 = 0, p99 = 0;
        double noise_iops = -1, noise_p50 = -1;  // the repeats' spread, % (-1: not given)
    };
    std::vector<Measured> measured;
    std::vector<PlannedRun> runs;
    for (std::size_t i = 0; i < doc->at("points").size(); ++i) {
        const json& p = doc->at("points")[i];
        const std::string where = fmt::format("{}: /points/{}", heldout_path, i);
        json variant = *base;
        variant.erase("sweep");
        Measured m;
        try {
            m.label = p.at("label").get<std::string>();
            m.model = p.at("io_model").get<std::string>();
            variant["io_model"] = m.model;
            for (const auto& [ptr, v] : p.at("set").items()) variant[json::json_pointer(ptr)] = v;
            m.iops = p.at("measured").at("iops").get<double>();
            m.p50 = p.at("measured").at("p50_us").get<double>();
            m.p99 = p.at("measured").value("p99_us", 0.0);
            if (p.contains("spread")) {
                m.noise_iops = p.at("spread").value("iops_pct", -1.0);
                m.noise_p50 = p.at("spread").value("p50_pct", -1.0);
            }
        } catch (const json::exception& e) {
            return fail(Error::invalid(fmt::format("{}: {}", where, e.what())));
        }
        auto planned = plan_scenario(variant, scen_dir, where, overrides);
        if (!planned) return fail(std::move(planned.error()));
        runs.push_back(planned->front());
        measured.push_back(m);
    }
    auto results = run_all(runs, jobs);
    if (!results) return fail(std::move(results.error()));

    auto err = [](double model, double meas) { return meas > 0 ? (model - meas) / meas * 100.0 : 0.0; };
    std::string s = fmt::format("validation against {} held-out emulator points ({})\n", measured.size(), heldout_path);
    s += fmt::format("calibration: {}\n", runs.empty() ? "" : runs.front().config.cal.source);
    s += fmt::format("{:<28} {:>6} {:>10} {:>10} {:>7} {:>7} {:>9} {:>9} {:>7} {:>7} {:>9} {:>9} {:>7}\n", "point",
                     "model", "IOPS meas", "IOPS sim", "err %", "noise", "p50 meas", "p50 sim", "err %", "noise",
                     "p99 meas", "p99 sim", "err %");
    double sum_iops = 0, sum_p50 = 0, sum_p99 = 0, max_iops = 0, max_p50 = 0;
    double noise_iops = 0, noise_p50 = 0;
    int n99 = 0, n_noise = 0;
    std::ofstream csv;
    if (!out_dir.empty()) {
        csv.open(out_dir + "/validation.csv");
        csv << "point,io_model,iops_measured,iops_model,iops_err_pct,p50_measured_us,p50_model_us,p50_err_pct,"
               "p99_measured_us,p99_model_us,p99_err_pct,iops_noise_pct,p50_noise_pct\n";
    }
    for (std::size_t i = 0; i < measured.size(); ++i) {
        const Measured& m = measured[i];
        const GroupResult& g = (*results)[i].groups.front();
        const double e_iops = err(g.iops_mean, m.iops), e_p50 = err(g.p50_us, m.p50), e_p99 = err(g.p99_us, m.p99);
        sum_iops += std::abs(e_iops);
        sum_p50 += std::abs(e_p50);
        max_iops = std::max(max_iops, std::abs(e_iops));
        max_p50 = std::max(max_p50, std::abs(e_p50));
        if (m.p99 > 0) {
            sum_p99 += std::abs(e_p99);
            ++n99;
        }
        if (m.noise_iops >= 0 && m.noise_p50 >= 0) {
            noise_iops += m.noise_iops;
            noise_p50 += m.noise_p50;
            ++n_noise;
        }
        auto noise = [](double v) { return v >= 0 ? fmt::format("{:.1f}", v) : std::string("-"); };
        s += fmt::format(
            "{:<28} {:>6} {:>10.0f} {:>10.0f} {:>+7.1f} {:>7} {:>9.1f} {:>9.1f} {:>+7.1f} {:>7} {:>9.1f} {:>9.1f} {:>+7.1f}\n",
            m.label, m.model, m.iops, g.iops_mean, e_iops, noise(m.noise_iops), m.p50, g.p50_us, e_p50,
            noise(m.noise_p50), m.p99, g.p99_us, e_p99);
        if (csv)
            csv << fmt::format("{},{},{:.0f},{:.0f},{:.2f},{:.2f},{:.2f},{:.2f},{:.2f},{:.2f},{:.2f},{:.1f},{:.1f}\n", m.label,
                               m.model, m.iops, g.iops_mean, e_iops, m.p50, g.p50_us, e_p50, m.p99, g.p99_us, e_p99,
                               m.noise_iops, m.noise_p50);
    }
    const double n = static_cast<double>(std::max<std::size_t>(measured.size(), 1));
    s += fmt::format("mean |error|: IOPS {:.1f}% (max {:.1f}%), p50 {:.1f}% (max {:.1f}%), p99 {:.1f}%\n", sum_iops / n,
                     max_iops, sum_p50 / n, max_p50, n99 ? sum_p99 / n99 : 0.0);
    if (n_noise > 0)
        s += fmt::format("noise floor (the emulator's own repeat spread, half the range of its boots, mean): IOPS {:.1f}%, "
                         "p50 {:.1f}%\n",
                         noise_iops / n_noise, noise_p50 / n_noise);
    s += fmt::format("goal (mean |error| <= 15% for IOPS and p50): {}\n",
                     sum_iops / n <= 15.0 && sum_p50 / n <= 15.0 ? "met" : "NOT met");
    return s;
}

}  // namespace hostsim
