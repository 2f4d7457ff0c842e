#include "xen/dom0_link.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include <cstring>
#include <filesystem>
#include <fmt/format.h>

#include "xen_model/abi/xen_abi.hpp"
#include "xen_model/link/dom0_link_codec.hpp"

extern char** environ;

namespace hypervisor::xen {

using common::Error;
using common::fail;
namespace link = xen_model::link;

namespace {

void stop_child(pid_t pid) {
    if (pid <= 0) return;
    int st;
    // With --exit-when-idle dom0 leaves by itself once our link is closed.
    for (int i = 0; i < 50; ++i) {
        if (::waitpid(pid, &st, WNOHANG) == pid) return;
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    ::kill(pid, SIGTERM);
    for (int i = 0; i < 100; ++i) {  // up to 2 s for a clean exit
        if (::waitpid(pid, &st, WNOHANG) == pid) return;
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    spdlog::warn("dom0 (pid {}) did not stop; killing it", pid);
    ::kill(pid, SIGKILL);
    ::waitpid(pid, &st, 0);
}

}  // namespace

common::Result<std::unique_ptr<Dom0Link>> Dom0Link::start(const Dom0Config& cfg, const common::GuestMemory& mem,
                                                          EventChannels& events) {
    if (cfg.volumes.size() > link::kMaxVolumes)
        return fail(Error::invalid(fmt::format("{} volumes: Xen mode serves at most {}", cfg.volumes.size(),
                                               link::kMaxVolumes)));
    for (const auto& v : cfg.volumes)
        if (v.size() >= link::kVolumeSpecMax)
            return fail(Error::invalid(fmt::format("volume spec '{}' is too long for dom0", v)));
    if (cfg.regions.size() > link::kMaxRegions) return fail(Error::invalid("too many guest memory regions for dom0"));
    if (::access(cfg.binary.c_str(), X_OK) != 0)
        return fail(Error::from_errno(fmt::format("the dom0 binary {}", cfg.binary)));

    std::unique_ptr<Dom0Link> l(new Dom0Link(events));
    char tmpl[] = "/tmp/nitrovm-dom0-XXXXXX";
    if (!::mkdtemp(tmpl)) return fail(Error::from_errno("creating dom0's socket directory"));
    l->dir_ = tmpl;
    std::string sock_path = l->dir_ + "/dom0.sock";
    int p[2];
    if (::pipe2(p, O_CLOEXEC) != 0) return fail(Error::from_errno("pipe"));
    common::UniqueFd rd(p[0]), wr(p[1]);
    std::vector<std::string> args = {cfg.binary, "--socket", sock_path, "--ready-fd", "3", "--exit-when-idle",
                                     "--log-level", cfg.log_level};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, wr.get(), 3);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&fa, 2, 1);  // dom0's output joins our log
    int rc = ::posix_spawn(&l->pid_, cfg.binary.c_str(), &fa, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    wr.reset();
    if (rc != 0) {
        l->pid_ = -1;
        errno = rc;
        return fail(Error::from_errno(fmt::format("starting dom0 {}", cfg.binary)));
    }
    pollfd pf{rd.get(), POLLIN, 0};
    int n = ::poll(&pf, 1, static_cast<int>(cfg.timeout.count()));
    char b = 0;
    if (n <= 0 || ::read(rd.get(), &b, 1) != 1) {
        int st = 0;
        std::string why = n <= 0 ? fmt::format("not ready after {} ms", cfg.timeout.count()) : "it exited at start-up";
        if (::waitpid(l->pid_, &st, WNOHANG) == l->pid_) {
            l->pid_ = -1;
            if (WIFEXITED(st)) why = fmt::format("it exited with status {} (its log is above)", WEXITSTATUS(st));
        }
        return fail(Error::invalid(fmt::format("dom0 {} did not start: {}", cfg.binary, why)));
    }
    spdlog::debug("dom0 started (pid {}), socket {}", l->pid_, sock_path);

    auto sock = common::card::UnixSocket::connect(sock_path);
    if (!sock) return fail(std::move(sock.error()).context("connecting to dom0"));
    l->sock_ = std::move(*sock);

    // Attach: the guest memory, the xenstore ring and its port, the volumes.
    auto kick = common::EventFd::create(true);
    auto notify = common::EventFd::create(true);
    if (!kick || !notify) return fail(Error::from_errno("eventfd for the xenstore port"));
    link::AttachMsg att;
    att.vcpus = cfg.vcpus;
    att.name = cfg.name;
    att.memfd_size = mem.memfd().size();
    for (const auto& r : cfg.regions)
        att.regions.push_back({r.r, r.special ? link::RegionKind::Special : link::RegionKind::Ram});
    att.volumes = cfg.volumes;
    att.store_gpa = cfg.store_gpa;
    att.store_port = cfg.store_port;
    att.grant_frames = cfg.grant_frames;
    att.grant_table_gpa = cfg.grant_table_gpa;
    int fds[3] = {mem.memfd().fd(), kick->fd(), notify->fd()};
    if (auto s = link::send_message(l->sock_, att, fds); !s) return fail(std::move(s.error()).context("Attach to dom0"));

    auto got = link::recv_message(l->sock_, static_cast<int>(cfg.timeout.count()));
    if (!got) {
        auto e = std::move(got.error());
        if (common::card::is_timeout(e))
            return fail(Error::invalid(fmt::format("dom0 did not answer Attach within {} ms", cfg.timeout.count())));
        return fail(std::move(e).context("waiting for dom0's AttachReply"));
    }
    auto* reply = std::get_if<link::AttachReplyMsg>(&got->msg);
    if (!reply)
        return fail(Error{common::ErrorKind::Protocol,
                          fmt::format("dom0 answered Attach with {}", link::type_name(got->msg)), 0});
    if (reply->status != 0)
        return fail(Error::invalid(fmt::format("dom0 refused the VM ({}): {}", reply->status, reply->message)));
    l->domid_ = static_cast<std::uint16_t>(reply->domid);

    int ep = ::epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) return fail(Error::from_errno("epoll_create1"));
    l->epoll_.reset(ep);
    int st = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (st < 0) return fail(Error::from_errno("eventfd"));
    l->stop_.reset(st);
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = ~0ull;
    if (::epoll_ctl(ep, EPOLL_CTL_ADD, st, &ev) != 0) return fail(Error::from_errno("epoll_ctl"));
    // The store port's eventfds: ours are the same open files dom0 received.
    l->add_port(cfg.store_port, PortFds{common::UniqueFd(::dup(kick->fd())), common::UniqueFd(::dup(notify->fd()))});

    spdlog::info("dom0 attached: domain {}, {} volume(s), xenstore port {}", l->domid_, cfg.volumes.size(),
                 cfg.store_port);
    auto* self = l.get();
    l->link_thread_ = std::thread([self] { self->link_loop(); });
    l->event_thread_ = std::thread([self] { self->event_loop(); });
    return l;
}

Dom0Link::~Dom0Link() {
    stopping_.store(true);
    if (stop_) {
        std::uint64_t one = 1;
        [[maybe_unused]] auto r = ::write(stop_.get(), &one, sizeof one);
    }
    if (event_thread_.joinable()) event_thread_.join();
    if (link_thread_.joinable()) link_thread_.join();
    sock_ = common::card::UnixSocket();  // dom0 drops the domain, and exits when idle
    stop_child(pid_);
    if (!dir_.empty()) {
        std::error_code ec;
        std::filesystem::remove_all(dir_, ec);
    }
}

void Dom0Link::add_port(std::uint32_t port, PortFds fds) {
    std::lock_guard l(mu_);
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = (std::uint64_t{port} << 32) | static_cast<std::uint32_t>(fds.notify.get());
    if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fds.notify.get(), &ev) != 0)
        spdlog::warn("dom0 link: port {}: epoll_ctl: {}", port, std::strerror(errno));
    ports_[port] = std::move(fds);
}

void Dom0Link::drop_port(std::uint32_t port) {
    std::lock_guard l(mu_);
    auto it = ports_.find(port);
    if (it == ports_.end()) return;
    ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, it->second.notify.get(), nullptr);
    ports_.erase(it);
}

void Dom0Link::send(const link::Message& msg) {
    if (dead_.load()) return;
    std::lock_guard l(send_mu_);
    if (auto s = link::send_message(sock_, msg); !s) spdlog::warn("dom0 link: {}", s.error().message);
}

void Dom0Link::kick(std::uint32_t port) {
    std::lock_guard l(mu_);
    auto it = ports_.find(port);
    if (it == ports_.end()) return;
    std::uint64_t one = 1;
    if (::write(it->second.kick.get(), &one, sizeof one) == sizeof one) kicks_.fetch_add(1, std::memory_order_relaxed);
}

void Dom0Link::port_closed(std::uint32_t port) {
    drop_port(port);
    send(link::PortClosedMsg{port});
}

void Dom0Link::link_loop() {
    while (!stopping_.load()) {
        auto got = link::recv_message(sock_, 200);
        if (!got) {
            const auto& e = got.error();
            if (common::card::is_timeout(e)) continue;
            if (e.kind == common::ErrorKind::Protocol) {
                spdlog::warn("dom0 link: {} (message ignored)", e.message);
                continue;
            }
            if (!stopping_.load())
                spdlog::error("dom0 link lost ({}): the guest keeps running, its Xen disks stop answering",
                              e.message);
            dead_.store(true);
            return;
        }
        if (auto* b = std::get_if<link::BindMsg>(&got->msg)) {
            // Register the fds before the port turns bound, so a guest send finds them.
            bool fresh = b->guest_port >= 1 && b->guest_port < kMaxPorts && !events_.bound_to_dom0(b->guest_port);
            if (fresh) add_port(b->guest_port, PortFds{std::move(got->fds[0]), std::move(got->fds[1])});
            auto rc = events_.bind_dom0(b->guest_port);
            if (rc != 0 && fresh) drop_port(b->guest_port);
            spdlog::debug("dom0 binds guest port {}: {}", b->guest_port, rc);
            // A send the guest made before the bind is not replayed: dom0 checks its ring after
            // binding, as a Xen backend does.
            send(link::BindReplyMsg{b->request_id, b->guest_port, static_cast<std::int32_t>(rc)});
        } else if (auto* u = std::get_if<link::UnbindMsg>(&got->msg)) {
            if (events_.unbind_dom0(u->guest_port)) drop_port(u->guest_port);
            spdlog::debug("dom0 unbinds guest port {}", u->guest_port);
        } else {
            spdlog::warn("dom0 link: unexpected {} from dom0", link::type_name(got->msg));
        }
    }
}

void Dom0Link::event_loop() {
    epoll_event evs[16];
    while (!stopping_.load()) {
        int n = ::epoll_wait(epoll_.get(), evs, 16, 500);
        if (n < 0 && errno != EINTR) {
            spdlog::error("dom0 event thread: epoll_wait: {}", std::strerror(errno));
            return;
        }
        for (int i = 0; i < n; ++i) {
            if (evs[i].data.u64 == ~0ull) continue;  // stop
            auto port = static_cast<std::uint32_t>(evs[i].data.u64 >> 32);
            auto fd = static_cast<int>(evs[i].data.u64 & 0xffffffffu);
            {
                std::lock_guard l(mu_);
                auto it = ports_.find(port);
                if (it == ports_.end() || it->second.notify.get() != fd) continue;  // closed meanwhile
                std::uint64_t v;
                if (::read(fd, &v, sizeof v) != sizeof v) continue;
            }
            notifies_.fetch_add(1, std::memory_order_relaxed);
            events_.raise(port);
        }
    }
}

}  // namespace hypervisor::xen
