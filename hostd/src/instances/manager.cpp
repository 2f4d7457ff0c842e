#include "instances/manager.hpp"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <google/protobuf/util/json_util.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <fstream>
#include <random>
#include <regex>
#include <set>
#include <sstream>

#include "card/volume_id.hpp"
#include "common/console.hpp"
#include "instances/files.hpp"
#include "instances/record.hpp"
#include "instances/proc.hpp"

extern char** environ;

namespace hostd::instances {

namespace v1 = nitrohost::v1;
namespace fs = std::filesystem;
using grpc::Status;
using grpc::StatusCode;
using detail::now_ms;
using detail::slurp;
using detail::write_atomic;

namespace {

constexpr std::uint64_t kMaxVolumeMib = 16ull << 20;  // gp3: 16 TiB
constexpr std::uint32_t kMaxVolumeIops = 16000;       // gp3
constexpr std::uint32_t kMaxVolumeMbps = 1000;        // gp3, MiB/s
constexpr int kMaxCount = 32;
constexpr const char* kEnvInstanceId = "NITROHOST_INSTANCE_ID";




std::string to_json(const google::protobuf::Message& m) {
    std::string s;
    google::protobuf::util::JsonPrintOptions o;
    o.add_whitespace = true;
    o.preserve_proto_field_names = true;
    (void)google::protobuf::util::MessageToJsonString(m, &s, o);
    return s;
}


// The vmm's "N vCPU exits" and the card's or dom0's per-volume lines from the instance's vmm.log.
v1::InstanceMetrics exit_reports(const fs::path& log) {
    v1::InstanceMetrics m;
    static const std::regex exits(R"(VM ended after \d+ ms \(.*\), (\d+) vCPU exits)");
    static const std::regex io(
        R"(nvme\d+ \S+: \d+ I/O commands \((\d+) reads, (\d+) writes\), (\d+) MiB read, (\d+) MiB written, \d+ errors; )"
        R"(throttled (\d+) commands for ([\d.]+) ms)");
    // dom0's per-disk line (the xen model).
    static const std::regex xvd(
        R"(xvd[a-z]+ \(.*\): \d+ requests \((\d+) reads, (\d+) writes, \d+ flushes\), (\d+) bytes read, (\d+) bytes )"
        R"(written, .* throttled (\d+) requests for ([\d.]+) ms)");
    std::istringstream in(slurp(log));
    std::string line;
    std::smatch g;
    while (std::getline(in, line)) {
        if (std::regex_search(line, g, exits)) m.set_vcpu_exits(std::stoull(g[1]));
        if (std::regex_search(line, g, io)) {
            m.set_io_reads(m.io_reads() + std::stoull(g[1]));
            m.set_io_writes(m.io_writes() + std::stoull(g[2]));
            m.set_io_read_mib(m.io_read_mib() + std::stoull(g[3]));
            m.set_io_write_mib(m.io_write_mib() + std::stoull(g[4]));
            m.set_io_throttled_commands(m.io_throttled_commands() + std::stoull(g[5]));
            m.set_io_throttled_ms(m.io_throttled_ms() + std::stod(g[6]));
        }
        if (std::regex_search(line, g, xvd)) {
            m.set_io_reads(m.io_reads() + std::stoull(g[1]));
            m.set_io_writes(m.io_writes() + std::stoull(g[2]));
            m.set_io_read_mib(m.io_read_mib() + (std::stoull(g[3]) >> 20));
            m.set_io_write_mib(m.io_write_mib() + (std::stoull(g[4]) >> 20));
            m.set_io_throttled_commands(m.io_throttled_commands() + std::stoull(g[5]));
            m.set_io_throttled_ms(m.io_throttled_ms() + std::stod(g[6]));
        }
    }
    return m;
}

Status invalid(std::string msg) { return Status(StatusCode::INVALID_ARGUMENT, std::move(msg)); }

const char* io_model_flag(v1::IoModel m) {
    switch (m) {
        case v1::IO_MODEL_NITRO: return "nitro";
        case v1::IO_MODEL_XEN: return "xen";
        default: return "none";
    }
}


}  // namespace

namespace detail {

std::int64_t now_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
        .count();
}

std::string slurp(const fs::path& p) {
    std::ifstream in(p);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

bool write_atomic(const fs::path& p, const std::string& text) {
    auto tmp = p;
    tmp += ".tmp";
    {
        std::ofstream out(tmp, std::ios::trunc);
        out << text;
        out.flush();
        if (!out) return false;
    }
    std::error_code ec;
    fs::rename(tmp, p, ec);
    return !ec;
}

}  // namespace detail

// ---- events ----

void EventLog::add(v1::Event e) {
    {
        std::lock_guard lk(mu);
        events.push_back(std::move(e));
    }
    cv.notify_all();
}

std::size_t EventLog::read(std::size_t from, std::vector<v1::Event>& out, std::chrono::milliseconds wait) {
    std::unique_lock lk(mu);
    cv.wait_for(lk, wait, [&] { return events.size() > from; });
    for (std::size_t i = from; i < events.size(); ++i) out.push_back(events[i]);
    return events.size();
}

std::size_t EventLog::size() {
    std::lock_guard lk(mu);
    return events.size();
}

// ---- records ----


InstanceManager::InstanceManager(HostConfig cfg, const catalog::Catalog& catalog)
    : cfg_(std::move(cfg)), catalog_(catalog), cgroups_(cpu::CgroupRoot::detect()) {}

common::Result<std::unique_ptr<InstanceManager>> InstanceManager::open(HostConfig cfg, const catalog::Catalog& catalog) {
    std::error_code ec;
    fs::create_directories(cfg.state_dir / "instances", ec);
    if (!ec) fs::create_directories(cfg.state_dir / "volumes", ec);
    if (ec)
        return common::fail(common::Error::invalid(
            fmt::format("state directory {}: {}", cfg.state_dir.string(), ec.message())));
    std::unique_ptr<InstanceManager> m(new InstanceManager(std::move(cfg), catalog));
    spdlog::info("CPU caps: {}", m->cgroups_.describe());
    m->load();
    m->supervisor_ = std::thread([p = m.get()] { p->supervise(); });
    return m;
}

InstanceManager::~InstanceManager() {
    quit_ = true;
    if (supervisor_.joinable()) supervisor_.join();
}

std::string InstanceManager::new_id(const char* prefix) {
    std::random_device rd;
    std::uint64_t v = (static_cast<std::uint64_t>(rd()) << 32) | rd();
    return fmt::format("{}-{:01x}{:016x}", prefix, rd() & 0xfu, v);  // 17 hex digits, as EC2's
}

void InstanceManager::persist_locked(const Record& r) {
    if (!write_atomic(r.dir / "instance.json", to_json(r.info)))
        spdlog::error("{}: cannot write {}", r.info.instance_id(), (r.dir / "instance.json").string());
}

void InstanceManager::persist_volume_locked(const v1::Volume& v) {
    if (!write_atomic(cfg_.state_dir / "volumes" / (v.volume_id() + ".json"), to_json(v)))
        spdlog::error("{}: cannot write its record", v.volume_id());
}

void InstanceManager::set_state_locked(Record& r, v1::InstanceState s, const std::string& msg) {
    r.info.set_state(s);
    persist_locked(r);
    v1::Event e;
    e.set_time_ms(now_ms());
    e.set_instance_id(r.info.instance_id());
    e.set_state(s);
    e.set_message(msg);
    spdlog::info("{}: {} ({})", r.info.instance_id(), v1::InstanceState_Name(s), msg);
    events_.add(std::move(e));
}

void InstanceManager::load() {
    std::error_code ec;
    google::protobuf::util::JsonParseOptions po;
    po.ignore_unknown_fields = true;
    for (const auto& de : fs::directory_iterator(cfg_.state_dir / "volumes", ec)) {
        if (de.path().extension() != ".json") continue;
        v1::Volume v;
        if (google::protobuf::util::JsonStringToMessage(slurp(de.path()), &v, po).ok()) volumes_[v.volume_id()] = v;
        else spdlog::warn("{}: unreadable volume record, skipped", de.path().string());
    }
    for (const auto& de : fs::directory_iterator(cfg_.state_dir / "instances", ec)) {
        auto rec = std::make_unique<Record>();
        rec->dir = de.path();
        if (!google::protobuf::util::JsonStringToMessage(slurp(de.path() / "instance.json"), &rec->info, po).ok()) {
            spdlog::warn("{}: unreadable instance record, skipped", de.path().string());
            continue;
        }
        auto& r = *rec;
        const auto id = r.info.instance_id();
        records_[id] = std::move(rec);
        if (!r.live()) continue;
        std::istringstream pidf(slurp(r.dir / "vmm.pid"));
        long pid = -1;
        std::uint64_t ticks = 0;
        pidf >> pid >> ticks;
        bool alive = pid > 0 && ::kill(static_cast<pid_t>(pid), 0) == 0 &&
                     process_start_ticks(static_cast<pid_t>(pid)) == ticks &&
                     process_env(static_cast<pid_t>(pid), kEnvInstanceId) == id;
        if (!alive) {
            r.info.set_end_time_ms(now_ms());
            r.info.set_pid(0);
            r.info.set_state_reason("the vmm ended while hostd was not running (exit status unknown)");
            set_state_locked(r, v1::INSTANCE_STATE_TERMINATED, r.info.state_reason());
            for (const auto& vid : r.info.volume_ids())
                if (auto it = volumes_.find(vid); it != volumes_.end() && it->second.attached_to() == id) {
                    it->second.clear_attached_to();
                    persist_volume_locked(it->second);
                }
            continue;
        }
        r.pid = static_cast<pid_t>(pid);
        r.start_ticks = ticks;
        r.child = false;
        if (auto cg = cpu::CpuCgroup::create(cgroups_, id); cg) r.cgroup.emplace(std::move(*cg));
        if (auto t = catalog_.lookup(r.info.instance_type()); t) {
            const auto& type = **t;
            if (type.has_burstable())
                r.policy = cpu::CpuPolicy::credits(r.info.credit_mode() == v1::CREDIT_MODE_UNLIMITED, type.vcpus(),
                                                   type.burstable().credits_per_hour(), type.burstable().max_credits(),
                                                   r.info.initial_credits(), 0);
            else if (type.has_flex())
                r.policy = cpu::CpuPolicy::flex(type.vcpus(), type.flex().baseline_percent(),
                                                type.flex().burst_time_percent());
        }
        // Go on from the saved credit state, and charge only CPU time from now on.
        if (r.policy) {
            std::istringstream cs(slurp(r.dir / "cpu.state"));
            cpu::PolicyState st;
            if (cs >> st.balance >> st.launch_credits >> st.surplus >> st.earned >> st.spent >> st.capped)
                r.policy->restore(st);
        }
        for (const auto& t : threads_named(r.pid, "vcpu")) r.thread_cpu[t.tid] = t.cpu_seconds;
        r.policy_cpu = r.vcpu_seconds();
        if (r.info.state() == v1::INSTANCE_STATE_STOPPING) {
            r.stop_requested = true;
            r.stop_reason = "terminated on request";
            r.stop_sent = std::chrono::steady_clock::now();
            signal_locked(r, SIGTERM);
        }
        spdlog::info("{}: vmm pid {} still runs; adopted", id, pid);
        v1::Event e;
        e.set_time_ms(now_ms());
        e.set_instance_id(id);
        e.set_state(r.info.state());
        e.set_message("adopted after a hostd restart");
        events_.add(std::move(e));
    }
}

// ---- validation and launch ----

Status InstanceManager::validate_volume_spec(const v1::VolumeSpec& v, const std::string& field) const {
    if (v.size_mib() == 0) return invalid(field + ".size_mib: must be at least 1");
    if (v.size_mib() > kMaxVolumeMib)
        return invalid(fmt::format("{}.size_mib: {} MiB is larger than a volume can be (16 TiB = {} MiB)", field,
                                   v.size_mib(), kMaxVolumeMib));
    if (v.ram() && v.size_mib() > cfg_.memory_mib)
        return Status(StatusCode::RESOURCE_EXHAUSTED,
                      fmt::format("{}.size_mib: a RAM volume of {} MiB does not fit the host's {} MiB", field,
                                  v.size_mib(), cfg_.memory_mib));
    if (v.iops() > kMaxVolumeIops)
        return invalid(fmt::format("{}.iops: {} is above gp3's {}", field, v.iops(), kMaxVolumeIops));
    if (v.mbps() > kMaxVolumeMbps)
        return invalid(fmt::format("{}.mbps: {} MiB/s is above gp3's {}", field, v.mbps(), kMaxVolumeMbps));
    return Status::OK;
}

v1::Volume InstanceManager::make_volume_locked(const v1::VolumeSpec& spec) {
    v1::Volume v;
    // The id is the NVMe serial the card gives this backing path, with EC2's dash: the guest sees
    // "vol0123..." as its controller's serial, the API "vol-0123...", as on EC2.
    auto path = fs::absolute(cfg_.state_dir / "volumes" / (new_id("backing") + ".img")).string();
    auto serial = nitro_card::volume_id_for(spec.ram() ? "ram:" + path : path);
    v.set_volume_id("vol-" + serial.substr(3));
    v.set_size_mib(spec.size_mib());
    v.set_iops(spec.iops() ? spec.iops() : 3000);
    v.set_mbps(spec.mbps() ? spec.mbps() : 125);
    v.set_ram(spec.ram());
    v.set_delete_on_termination(spec.delete_on_termination());
    v.set_path(path);
    volumes_[v.volume_id()] = v;
    persist_volume_locked(v);
    return v;
}

Status InstanceManager::run(const v1::RunInstancesRequest& req, v1::RunInstancesResponse* resp) {
    if (req.count() < 0) return invalid(fmt::format("count: must not be negative (got {})", req.count()));
    if (req.count() > kMaxCount) return invalid(fmt::format("count: at most {} per call (got {})", kMaxCount, req.count()));
    int count = req.count() == 0 ? 1 : req.count();
    if (req.client_token().size() > 64) return invalid("client_token: at most 64 characters");
    auto type_r = catalog_.lookup(req.instance_type());
    if (!type_r) return invalid("instance_type: " + type_r.error().message);
    const v1::InstanceType& type = **type_r;

    v1::IoModel io = req.io_model() == v1::IO_MODEL_UNSPECIFIED ? type.default_io_model() : req.io_model();
    if (!v1::IoModel_IsValid(io)) return invalid(fmt::format("io_model: {} is not an I/O model", static_cast<int>(io)));
    if (io != v1::IO_MODEL_NONE && std::ranges::find(cfg_.io_models, io) == cfg_.io_models.end())
        return Status(StatusCode::FAILED_PRECONDITION,
                      fmt::format("io_model: {} is not supported by this host's vmm ({}){}", v1::IoModel_Name(io),
                                  cfg_.nitrovm.string(),
                                  req.io_model() == v1::IO_MODEL_UNSPECIFIED
                                      ? fmt::format(" (the default of {}); ask for another", type.name())
                                      : ""));
    bool has_volumes = req.volumes_size() > 0 || req.volume_ids_size() > 0;
    if (has_volumes && io == v1::IO_MODEL_NONE) return invalid("io_model: volumes need IO_MODEL_NITRO or IO_MODEL_XEN");

    v1::Image image = req.image();
    if (image.kind() == v1::IMAGE_KIND_UNSPECIFIED) image.set_kind(v1::IMAGE_KIND_PROBE);
    if (!v1::ImageKind_IsValid(image.kind())) return invalid("image.kind: not an image kind");
    if (image.kind() == v1::IMAGE_KIND_CUSTOM) {
        if (image.kernel().empty()) return invalid("image.kernel: a custom image needs a kernel path");
        if (!fs::is_regular_file(image.kernel()))
            return Status(StatusCode::NOT_FOUND, fmt::format("image.kernel: {} does not exist or is not a file", image.kernel()));
        if (!image.initrd().empty() && !fs::is_regular_file(image.initrd()))
            return Status(StatusCode::NOT_FOUND, fmt::format("image.initrd: {} does not exist or is not a file", image.initrd()));
    } else if (!image.kernel().empty() || !image.initrd().empty()) {
        return invalid("image.kernel: only a custom image takes a kernel or initrd");
    }
    if (image.kind() == v1::IMAGE_KIND_LINUX && !fs::is_regular_file(cfg_.linux_kernel))
        return Status(StatusCode::FAILED_PRECONDITION,
                      fmt::format("image.kind: the Linux image {} is not built on this host", cfg_.linux_kernel.string()));
    for (int i = 0; i < req.guest_args_size(); ++i)
        if (req.guest_args(i).find_first_of("\"\n") != std::string::npos)
            return invalid(fmt::format("guest_args[{}]: holds a double quote or newline", i));
    for (int i = 0; i < req.volumes_size(); ++i)
        if (auto s = validate_volume_spec(req.volumes(i), fmt::format("volumes[{}]", i)); !s.ok()) return s;
    if (req.volume_ids_size() > 0 && count != 1) return invalid("volume_ids: existing volumes attach to one instance (count 1)");
    if (!(req.timeout_seconds() >= 0) || req.timeout_seconds() > 86400 * 7)
        return invalid(fmt::format("timeout_seconds: {} is not in 0..604800", req.timeout_seconds()));
    if (!v1::CreditMode_IsValid(req.credit_mode())) return invalid("credit_mode: not a credit mode");
    if (req.credit_mode() != v1::CREDIT_MODE_UNSPECIFIED && !type.has_burstable())
        return invalid(fmt::format("credit_mode: {} is not a burstable (T-family) type", type.name()));
    if (req.has_initial_credits()) {
        if (!type.has_burstable())
            return invalid(fmt::format("initial_credits: {} is not a burstable (T-family) type", type.name()));
        if (!(req.initial_credits() >= 0) || req.initial_credits() > type.burstable().max_credits())
            return invalid(fmt::format("initial_credits: {} is not in 0..{} (the type's cap)", req.initial_credits(),
                                       type.burstable().max_credits()));
    }

    std::lock_guard lk(mu_);
    if (!req.client_token().empty()) {
        bool found = false;
        for (const auto& [id, r] : records_)
            if (r->info.client_token() == req.client_token()) {
                *resp->add_instances() = r->info;
                found = true;
            }
        if (found) return Status::OK;
    }
    for (int i = 0; i < req.volume_ids_size(); ++i) {
        auto it = volumes_.find(req.volume_ids(i));
        if (it == volumes_.end())
            return Status(StatusCode::NOT_FOUND, fmt::format("volume_ids[{}]: no volume '{}'", i, req.volume_ids(i)));
        if (!it->second.attached_to().empty())
            return Status(StatusCode::FAILED_PRECONDITION, fmt::format("volume_ids[{}]: {} is attached to {}", i,
                                                                       req.volume_ids(i), it->second.attached_to()));
    }
    std::uint32_t used_vcpus = 0;
    std::uint64_t used_mib = 0;
    for (const auto& [id, r] : records_)
        if (r->live()) {
            used_vcpus += r->info.vcpus();
            used_mib += r->info.memory_mib();
        }
    std::uint64_t want_vcpus = static_cast<std::uint64_t>(count) * type.vcpus();
    std::uint64_t want_mib = static_cast<std::uint64_t>(count) * type.guest_memory_mib();
    if (used_vcpus + want_vcpus > cfg_.vcpus)
        return Status(StatusCode::RESOURCE_EXHAUSTED,
                      fmt::format("instance_type: {} x {} need {} vCPUs; the host has {} of {} free", count,
                                  type.name(), want_vcpus, cfg_.vcpus - std::min(cfg_.vcpus, used_vcpus), cfg_.vcpus));
    if (used_mib + want_mib > cfg_.memory_mib)
        return Status(StatusCode::RESOURCE_EXHAUSTED,
                      fmt::format("instance_type: {} x {} need {} MiB of guest RAM (after the 1/{} scale); the host has "
                                  "{} of {} MiB free",
                                  count, type.name(), want_mib, catalog_.memory_scale(),
                                  cfg_.memory_mib - std::min(cfg_.memory_mib, used_mib), cfg_.memory_mib));

    for (int n = 0; n < count; ++n) {
        auto rec = std::make_unique<Record>();
        auto& r = *rec;
        auto& info = r.info;
        info.set_instance_id(new_id("i"));
        info.set_instance_type(type.name());
        info.set_io_model(io);
        info.set_vcpus(type.vcpus());
        info.set_memory_mib(type.guest_memory_mib());
        *info.mutable_image() = image;
        *info.mutable_guest_args() = req.guest_args();
        info.set_launch_time_ms(now_ms());
        info.set_client_token(req.client_token());
        info.set_timeout_seconds(req.timeout_seconds());
        if (type.has_burstable()) {
            auto mode = req.credit_mode() != v1::CREDIT_MODE_UNSPECIFIED ? req.credit_mode() : type.burstable().default_mode();
            info.set_credit_mode(mode);
            double launch = mode == v1::CREDIT_MODE_STANDARD && !req.has_initial_credits()
                                ? type.burstable().launch_credits_per_vcpu() * type.vcpus()
                                : 0;
            info.set_initial_credits(req.has_initial_credits() ? req.initial_credits() : 0);
            r.policy = cpu::CpuPolicy::credits(mode == v1::CREDIT_MODE_UNLIMITED, type.vcpus(),
                                               type.burstable().credits_per_hour(), type.burstable().max_credits(),
                                               info.initial_credits(), launch);
        } else if (type.has_flex()) {
            r.policy = cpu::CpuPolicy::flex(type.vcpus(), type.flex().baseline_percent(), type.flex().burst_time_percent());
        }
        for (const auto& vid : req.volume_ids()) info.add_volume_ids(vid);
        for (const auto& spec : req.volumes()) info.add_volume_ids(make_volume_locked(spec).volume_id());
        for (const auto& vid : info.volume_ids()) {
            volumes_[vid].set_attached_to(info.instance_id());
            persist_volume_locked(volumes_[vid]);
        }
        r.dir = cfg_.state_dir / "instances" / info.instance_id();
        std::error_code ec;
        fs::create_directories(r.dir, ec);
        info.set_console_path((r.dir / "console.log").string());
        const std::string id = info.instance_id();
        records_[id] = std::move(rec);
        set_state_locked(r, v1::INSTANCE_STATE_PENDING, fmt::format("launching {} ({} I/O model)", type.name(),
                                                                     io_model_flag(io)));
        if (auto s = launch_locked(r, type); !s.ok()) {
            finish_locked(r, std::nullopt, "the vmm could not be started: " + s.error_message());
            *resp->add_instances() = r.info;
            return s;
        }
        *resp->add_instances() = r.info;
    }
    return Status::OK;
}

Status InstanceManager::launch_locked(Record& r, const v1::InstanceType& type) {
    const auto& info = r.info;
    std::vector<std::string> args = {cfg_.nitrovm.string(), "--log-level", "info", "run"};
    const auto& img = info.image();
    if (img.kind() == v1::IMAGE_KIND_LINUX) {
        args.insert(args.end(), {"--guest", "linux"});
    } else {
        args.insert(args.end(), {"--guest", "probe"});
        if (img.kind() == v1::IMAGE_KIND_CUSTOM) {
            args.insert(args.end(), {"--kernel", img.kernel()});
            if (!img.initrd().empty()) args.insert(args.end(), {"--initrd", img.initrd()});
        }
    }
    if (!img.cmdline().empty()) args.insert(args.end(), {"--cmdline", img.cmdline()});
    args.insert(args.end(), {"--vcpus", std::to_string(info.vcpus()), "--memory", fmt::format("{}M", info.memory_mib()),
                             "--io-model", io_model_flag(info.io_model()), "--interactive", "no"});
    if (info.timeout_seconds() > 0) args.insert(args.end(), {"--timeout", fmt::format("{}", info.timeout_seconds())});
    for (const auto& vid : info.volume_ids()) {
        const auto& v = volumes_.at(vid);
        auto spec = fmt::format("{},size={}M,iops={},mbps={}", v.path(), v.size_mib(), v.iops(), v.mbps());
        if (v.ram()) spec += ",ram";
        args.insert(args.end(), {"--volume", spec});
    }
    if (info.volume_ids_size() > 0 && info.io_model() == v1::IO_MODEL_NITRO && type.has_ebs() && !type.ebs().ebs_only()) {
        // The card has one bucket per instance: it enforces the burst ("max") figures, which an
        // instance may hold 30 minutes a day. Mbps (megabits) to MiB/s.
        auto mibs = static_cast<std::uint64_t>(std::max(1.0, type.ebs().max_mbps() * 1e6 / 8 / 1048576));
        args.insert(args.end(), {"--instance-iops", std::to_string(type.ebs().max_iops()), "--instance-mbps",
                                 std::to_string(mibs)});
    }
    if (info.guest_args_size() > 0) {
        args.emplace_back("--");
        for (const auto& a : info.guest_args()) args.push_back(a);
    }
    spdlog::info("{}: {}", info.instance_id(), fmt::join(args, " "));

    std::vector<std::string> env;
    for (char** e = environ; *e; ++e)
        if (!std::string_view(*e).starts_with(kEnvInstanceId)) env.emplace_back(*e);
    env.push_back(fmt::format("{}={}", kEnvInstanceId, info.instance_id()));
    std::vector<char*> argv, envp;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    for (auto& e : env) envp.push_back(e.data());
    envp.push_back(nullptr);

    auto console = (r.dir / "console.log").string(), log = (r.dir / "vmm.log").string();
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 1, console.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0640);
    posix_spawn_file_actions_addopen(&fa, 2, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0640);
    posix_spawnattr_t at;
    posix_spawnattr_init(&at);
    // Its own process group (so a terminate reaches its card too), and none of hostd's blocked
    // signals: hostd blocks SIGTERM for its signal thread.
    sigset_t none, defaults;
    sigemptyset(&none);
    sigemptyset(&defaults);
    sigaddset(&defaults, SIGTERM);
    sigaddset(&defaults, SIGINT);
    sigaddset(&defaults, SIGPIPE);
    posix_spawnattr_setsigmask(&at, &none);
    posix_spawnattr_setsigdefault(&at, &defaults);
    posix_spawnattr_setpgroup(&at, 0);
    posix_spawnattr_setflags(&at, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    pid_t pid = -1;
    int rc = ::posix_spawn(&pid, argv[0], &fa, &at, argv.data(), envp.data());
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&at);
    if (rc != 0)
        return Status(StatusCode::INTERNAL, fmt::format("starting {}: {}", cfg_.nitrovm.string(), std::strerror(rc)));
    r.pid = pid;
    r.child = true;
    r.start_ticks = process_start_ticks(pid);
    r.info.set_pid(pid);
    write_atomic(r.dir / "vmm.pid", fmt::format("{} {}\n", pid, r.start_ticks));
    if (r.policy) {
        if (auto cg = cpu::CpuCgroup::create(cgroups_, r.info.instance_id()); cg) r.cgroup.emplace(std::move(*cg));
        else spdlog::warn("{}: CPU policy {} not enforced: {}", r.info.instance_id(), r.policy->name(), cg.error().message);
    }
    persist_locked(r);
    return Status::OK;
}

// ---- API operations ----

Status InstanceManager::terminate(const v1::TerminateInstancesRequest& req, v1::TerminateInstancesResponse* resp) {
    if (req.instance_ids_size() == 0) return invalid("instance_ids: name at least one instance");
    std::lock_guard lk(mu_);
    for (int i = 0; i < req.instance_ids_size(); ++i)
        if (!records_.contains(req.instance_ids(i)))
            return Status(StatusCode::NOT_FOUND, fmt::format("instance_ids[{}]: no instance '{}'", i, req.instance_ids(i)));
    for (const auto& id : req.instance_ids()) {
        auto& r = *records_.at(id);
        if (r.live() && !r.stop_requested) {
            r.stop_requested = true;
            r.stop_reason = "terminated on request";
            r.stop_sent = std::chrono::steady_clock::now();
            if (r.pid > 0) {
                set_state_locked(r, v1::INSTANCE_STATE_STOPPING, "terminate requested");
                signal_locked(r, SIGTERM);
            } else {
                finish_locked(r, std::nullopt, r.stop_reason);
            }
        }
        *resp->add_instances() = r.info;
    }
    return Status::OK;
}

Status InstanceManager::describe(const v1::DescribeInstancesRequest& req, v1::DescribeInstancesResponse* resp) {
    std::lock_guard lk(mu_);
    std::set<int> states(req.states().begin(), req.states().end());
    auto want = [&](const Record& r) { return states.empty() || states.contains(r.info.state()); };
    if (req.instance_ids_size() == 0) {
        std::vector<const Record*> all;
        for (const auto& [id, r] : records_)
            if (want(*r)) all.push_back(r.get());
        std::ranges::sort(all, [](auto* a, auto* b) { return a->info.launch_time_ms() < b->info.launch_time_ms(); });
        for (auto* r : all) *resp->add_instances() = r->info;
        return Status::OK;
    }
    for (int i = 0; i < req.instance_ids_size(); ++i) {
        auto it = records_.find(req.instance_ids(i));
        if (it == records_.end())
            return Status(StatusCode::NOT_FOUND, fmt::format("instance_ids[{}]: no instance '{}'", i, req.instance_ids(i)));
        if (want(*it->second)) *resp->add_instances() = it->second->info;
    }
    return Status::OK;
}

Status InstanceManager::console_path(const std::string& id, fs::path* path, bool* ended) {
    std::lock_guard lk(mu_);
    auto it = records_.find(id);
    if (it == records_.end()) return Status(StatusCode::NOT_FOUND, fmt::format("instance_id: no instance '{}'", id));
    *path = it->second->dir / "console.log";
    *ended = !it->second->live();
    return Status::OK;
}

Status InstanceManager::console(const v1::GetConsoleOutputRequest& req, v1::GetConsoleOutputResponse* resp) {
    fs::path p;
    bool ended;
    if (auto s = console_path(req.instance_id(), &p, &ended); !s.ok()) return s;
    std::uint64_t max = req.max_bytes() ? req.max_bytes() : (1u << 20);
    std::ifstream in(p, std::ios::binary);
    in.seekg(0, std::ios::end);
    auto size = static_cast<std::uint64_t>(std::max<std::streamoff>(0, in.tellg()));
    std::uint64_t from = size > max ? size - max : 0;
    std::string out(size - from, '\0');
    in.seekg(static_cast<std::streamoff>(from));
    in.read(out.data(), static_cast<std::streamsize>(out.size()));
    out.resize(static_cast<std::size_t>(std::max<std::streamsize>(0, in.gcount())));  // trimmed meanwhile
    // nitrovm keeps the file under its --console-limit by dropping the oldest output, and says so
    // in the file's first line.
    const bool trimmed = from == 0 && out.starts_with(common::kConsoleTrimmedPrefix);
    resp->set_instance_id(req.instance_id());
    resp->set_output(std::move(out));
    resp->set_truncated(from > 0 || trimmed);
    return Status::OK;
}

Status InstanceManager::metrics(const v1::GetMetricsRequest& req, v1::GetMetricsResponse* resp) {
    std::lock_guard lk(mu_);
    for (int i = 0; i < req.instance_ids_size(); ++i)
        if (!records_.contains(req.instance_ids(i)))
            return Status(StatusCode::NOT_FOUND, fmt::format("instance_ids[{}]: no instance '{}'", i, req.instance_ids(i)));
    std::set<std::string> ids(req.instance_ids().begin(), req.instance_ids().end());
    auto* host = resp->mutable_host();
    for (const auto& [id, rp] : records_) {
        const auto& r = *rp;
        if (r.live()) {
            host->set_running_instances(host->running_instances() + 1);
            host->set_vcpus_used(host->vcpus_used() + r.info.vcpus());
            host->set_memory_mib_used(host->memory_mib_used() + r.info.memory_mib());
            if (r.pid > 0)
                for (const auto& [cpid, comm] : process_children(r.pid)) {
                    if (comm.starts_with("nitro-card")) host->set_card_seconds(host->card_seconds() + process_cpu_seconds(cpid));
                    else if (comm.starts_with("xen-dom0")) host->set_dom0_seconds(host->dom0_seconds() + process_cpu_seconds(cpid));
                }
        }
        if (!ids.empty() && !ids.contains(id)) continue;
        auto* m = resp->add_instances();
        if (!r.live()) *m = exit_reports(r.dir / "vmm.log");  // the card may report after the vmm ends
        m->set_instance_id(id);
        m->set_vcpu_seconds(r.vcpu_seconds());
        m->set_vmm_seconds(r.vmm_seconds);
        m->set_throttled_seconds(r.cg_stats.throttled_seconds);
        m->set_throttled_periods(r.cg_stats.throttled_periods);
        m->set_vcpu_threads(static_cast<std::uint32_t>(r.thread_cpu.size()));
        std::error_code ec;
        auto sz = fs::file_size(r.dir / "console.log", ec);
        m->set_console_bytes(ec ? 0 : sz);
        auto end = r.info.end_time_ms() ? r.info.end_time_ms() : now_ms();
        m->set_uptime_seconds(static_cast<double>(end - r.info.launch_time_ms()) / 1000.0);
        auto* c = m->mutable_cpu();
        if (r.policy) {
            const auto& st = r.policy->state();
            c->set_policy(r.policy->name());
            c->set_cap_percent(r.policy->cap_percent());
            c->set_baseline_percent(r.policy->baseline_percent());
            c->set_credit_balance(st.balance + st.launch_credits);
            c->set_surplus_credits(st.surplus);
            c->set_credits_earned(st.earned);
            c->set_credits_spent(st.spent);
            c->set_enforcement(cgroups_.describe());
        } else {
            c->set_policy("none");
            c->set_baseline_percent(100);
        }
    }
    return Status::OK;
}

Status InstanceManager::create_volume(const v1::CreateVolumeRequest& req, v1::Volume* resp) {
    if (auto s = validate_volume_spec(req.spec(), "spec"); !s.ok()) return s;
    std::lock_guard lk(mu_);
    *resp = make_volume_locked(req.spec());
    return Status::OK;
}

Status InstanceManager::describe_volumes(const v1::DescribeVolumesRequest& req, v1::DescribeVolumesResponse* resp) {
    std::lock_guard lk(mu_);
    for (int i = 0; i < req.volume_ids_size(); ++i)
        if (!volumes_.contains(req.volume_ids(i)))
            return Status(StatusCode::NOT_FOUND, fmt::format("volume_ids[{}]: no volume '{}'", i, req.volume_ids(i)));
    std::set<std::string> ids(req.volume_ids().begin(), req.volume_ids().end());
    for (const auto& [id, v] : volumes_)
        if (ids.empty() || ids.contains(id)) *resp->add_volumes() = v;
    return Status::OK;
}

Status InstanceManager::delete_volume(const v1::DeleteVolumeRequest& req) {
    std::lock_guard lk(mu_);
    auto it = volumes_.find(req.volume_id());
    if (it == volumes_.end()) return Status(StatusCode::NOT_FOUND, fmt::format("volume_id: no volume '{}'", req.volume_id()));
    if (!it->second.attached_to().empty())
        return Status(StatusCode::FAILED_PRECONDITION,
                      fmt::format("volume_id: {} is attached to {}", req.volume_id(), it->second.attached_to()));
    std::error_code ec;
    fs::remove(it->second.path(), ec);
    fs::remove(cfg_.state_dir / "volumes" / (req.volume_id() + ".json"), ec);
    volumes_.erase(it);
    return Status::OK;
}

void InstanceManager::describe_host(v1::DescribeHostResponse* resp) {
    std::lock_guard lk(mu_);
    resp->set_vcpus(cfg_.vcpus);
    resp->set_memory_mib(cfg_.memory_mib);
    for (const auto& [id, r] : records_)
        if (r->live()) {
            resp->set_vcpus_used(resp->vcpus_used() + r->info.vcpus());
            resp->set_memory_mib_used(resp->memory_mib_used() + r->info.memory_mib());
        }
    resp->set_memory_scale(catalog_.memory_scale());
    resp->add_io_models(v1::IO_MODEL_NONE);
    for (auto m : cfg_.io_models) resp->add_io_models(m);
    resp->set_cpu_enforcement(cgroups_.describe());
    resp->set_state_dir(cfg_.state_dir.string());
}

}  // namespace hostd::instances
