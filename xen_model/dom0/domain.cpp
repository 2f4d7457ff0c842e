#include "xen_model/dom0/domain.hpp"

#include <poll.h>
#include <unistd.h>

#include <cerrno>
#include <optional>
#include <vector>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "storage/file_backend.hpp"
#include "storage/ram_backend.hpp"
#include "storage/volume_spec.hpp"
#include "xen_model/grant/grant_table.hpp"
#include "xen_model/link/dom0_link_codec.hpp"
#include "xen_model/xenstore/connection.hpp"

namespace xen_model::dom0 {

using common::Error;
using common::fail;
using common::Result;
using common::Status;

namespace {

// Why an Attach failed, as the vmm is told.
struct AttachError {
    int err;
    std::string message;
};

void signal_fd(int fd) {
    const std::uint64_t one = 1;
    (void)!::write(fd, &one, sizeof(one));
}

void drain_fd(int fd) {
    std::uint64_t v = 0;
    (void)!::read(fd, &v, sizeof(v));
}

Result<std::unique_ptr<nitro_card::storage::BlockBackend>> open_volume(const nitro_card::storage::VolumeSpec& spec) {
    if (spec.ram) {
        auto r = nitro_card::storage::RamBackend::create(*spec.size_bytes);
        if (!r) return fail(std::move(r.error()));
        return std::unique_ptr<nitro_card::storage::BlockBackend>(std::move(*r));
    }
    nitro_card::storage::FileBackendOptions o;
    o.create_size = spec.size_bytes;
    auto f = nitro_card::storage::FileBackend::open(spec.path, o);
    if (!f) return fail(std::move(f.error()));
    return std::unique_ptr<nitro_card::storage::BlockBackend>(std::move(*f));
}

}  // namespace

// Everything one attached domain owns, in construction order (destroyed in reverse: the Vbds
// before the xenstore connection, both before the grant table and the memory they use).
struct Domain::State {
    std::uint32_t domid = 0;
    std::string name;
    std::optional<common::GuestMemory> mem;
    std::unique_ptr<grant::GrantTable> grants;
    common::UniqueFd store_kick, store_notify;
    std::shared_ptr<xenstore::Connection> conn;
    std::vector<std::string> volume_names;
    std::vector<std::unique_ptr<blkback::Vbd>> vbds;
    std::chrono::steady_clock::time_point attached_at;
};

Result<std::unique_ptr<Domain>> Domain::start(xenstore::Store& store, common::card::UnixSocket sock,
                                              std::function<std::uint32_t()> allocate_domid, DomainOptions options) {
    auto stop = common::EventFd::create();
    if (!stop) return fail(std::move(stop.error()));
    std::unique_ptr<Domain> d(new Domain(store, std::move(sock), std::move(allocate_domid), options, std::move(*stop)));
    d->thread_ = std::thread([p = d.get()] { p->run(); });
    return d;
}

Domain::Domain(xenstore::Store& store, common::card::UnixSocket sock, std::function<std::uint32_t()> allocate_domid,
               DomainOptions options, common::EventFd stop)
    : store_(store),
      sock_(std::move(sock)),
      allocate_domid_(std::move(allocate_domid)),
      options_(options),
      stop_(std::move(stop)) {}

Domain::~Domain() {
    (void)stop_.signal();
    if (thread_.joinable()) thread_.join();
}

Status Domain::bind(std::uint32_t request_id, std::uint32_t port, int kick_fd, int notify_fd) {
    const int fds[] = {kick_fd, notify_fd};
    std::lock_guard lk(send_mu_);
    return link::send_message(sock_, link::BindMsg{request_id, port}, fds);
}

void Domain::unbind(std::uint32_t port) {
    std::lock_guard lk(send_mu_);
    if (auto s = link::send_message(sock_, link::UnbindMsg{port}); !s) {
        spdlog::debug("dom0: Unbind of port {}: {}", port, s.error().message);
    }
}


void Domain::run() {
    // ---- Attach ----
    std::optional<link::ReceivedLinkMessage> first;
    {
        const auto deadline = std::chrono::steady_clock::now() + options_.attach_timeout;
        while (!first) {
            const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
            if (left.count() <= 0) {
                spdlog::warn("dom0: a vmm connected but sent no Attach within {} ms", options_.attach_timeout.count());
                finished_.store(true, std::memory_order_release);
                return;
            }
            pollfd p[2] = {{sock_.fd(), POLLIN, 0}, {stop_.fd(), POLLIN, 0}};
            if (::poll(p, 2, static_cast<int>(left.count())) < 0 && errno != EINTR) break;
            if (p[1].revents) {
                finished_.store(true, std::memory_order_release);
                return;
            }
            if (!p[0].revents) continue;
            auto m = link::recv_message(sock_, 0);
            if (!m) {
                if (!common::card::is_peer_closed(m.error())) {
                    spdlog::warn("dom0: bad first message from a vmm: {}", m.error().message);
                    std::lock_guard lk(send_mu_);
                    (void)link::send_message(sock_, link::AttachReplyMsg{-EPROTO, 0, m.error().message});
                }
                finished_.store(true, std::memory_order_release);
                return;
            }
            first = std::move(*m);
        }
    }
    if (!first || !std::holds_alternative<link::AttachMsg>(first->msg)) {
        if (first) {
            spdlog::warn("dom0: a vmm began with {} instead of Attach", link::type_name(first->msg));
            std::lock_guard lk(send_mu_);
            (void)link::send_message(sock_, link::AttachReplyMsg{-EPROTO, 0, "the first message must be Attach"});
        }
        finished_.store(true, std::memory_order_release);
        return;
    }
    const auto& a = std::get<link::AttachMsg>(first->msg);
    auto& fds = first->fds;

    State st;
    st.domid = allocate_domid_();
    st.name = a.name;
    std::optional<AttachError> error;
    const std::string dpath = fmt::format("/local/domain/{}", st.domid);
    const std::string backend_root = fmt::format("/local/domain/0/backend/vbd/{}", st.domid);
    auto teardown = [&] {
        st.vbds.clear();
        st.conn.reset();
        store_.remove_domain(st.domid);
        (void)store_.rm(0, 0, backend_root);
        st.grants.reset();
        st.mem.reset();
    };

    do {
        // Guest memory.
        auto memfd = common::MemFd::adopt(std::move(fds[0]));
        if (!memfd) { error = AttachError{EBADF, memfd.error().message}; break; }
        if (memfd->size() != a.memfd_size) {
            error = AttachError{EINVAL, fmt::format("memfd is {} bytes, Attach says {}", memfd->size(), a.memfd_size)};
            break;
        }
        auto mem = common::GuestMemory::attach(std::move(*memfd), a.memory_regions());
        if (!mem) { error = AttachError{EINVAL, "guest memory: " + mem.error().message}; break; }
        st.mem.emplace(std::move(*mem));
        st.store_kick = std::move(fds[1]);
        st.store_notify = std::move(fds[2]);

        // Grants may name only Ram pages.
        std::vector<common::MemoryRegion> ram;
        for (const auto& r : a.regions) {
            if (r.kind == link::RegionKind::Ram) ram.push_back(r.region);
        }
        auto g = grant::GrantTable::create(*st.mem, common::GuestAddr(a.grant_table_gpa), a.grant_frames, std::move(ram));
        if (!g) { error = AttachError{EINVAL, "grant table: " + g.error().message}; break; }
        st.grants = std::move(*g);

        // Volumes: opened before anything is visible in xenstore.
        std::vector<std::pair<nitro_card::storage::VolumeSpec, std::unique_ptr<nitro_card::storage::BlockBackend>>> vols;
        for (const auto& text : a.volumes) {
            auto spec = nitro_card::storage::parse_volume_spec(text);
            if (!spec) { error = AttachError{EINVAL, spec.error().message}; break; }
            auto b = open_volume(*spec);
            if (!b) { error = AttachError{b.error().errno_value ? b.error().errno_value : EIO, b.error().message}; break; }
            vols.emplace_back(std::move(*spec), std::move(*b));
        }
        if (error) break;

        // Base nodes (Xen §3.9); no memory/target, or the guest's balloon driver starts.
        const std::string store_pfn = std::to_string(a.store_gpa / abi::kPageSize);
        const std::pair<std::string, std::string> nodes[] = {
            {dpath + "/domid", std::to_string(st.domid)},
            {dpath + "/name", a.name},
            {dpath + "/control/shutdown", ""},
            {dpath + "/control/feature-poweroff", "1"},
            {dpath + "/control/feature-reboot", "1"},
            {dpath + "/control/platform-feature-xs_reset_watches", "1"},
            {dpath + "/store/port", std::to_string(a.store_port)},
            {dpath + "/store/ring-ref", store_pfn},
        };
        for (const auto& [path, value] : nodes) {
            if (auto r = store_.write(0, 0, path, value); !r) {
                error = AttachError{EIO, fmt::format("xenstore write {}: {}", path, xenstore::to_wire(r.error()))};
                break;
            }
        }
        if (error) break;
        // dom0's own facts about the domain: readable, not writable, by the guest.
        for (const char* key : {"domid", "name", "store/port", "store/ring-ref",
                                "control/platform-feature-xs_reset_watches"}) {
            if (auto r = store_.set_perms(0, 0, dpath + "/" + key, 0, {st.domid}); !r) {
                error = AttachError{EIO, fmt::format("xenstore set_perms {}/{}: {}", dpath, key, xenstore::to_wire(r.error()))};
                break;
            }
        }
        if (error) break;
        for (const char* dir : {"data", "device", "drivers", "error", "feature", "attr"}) {
            if (auto r = store_.mkdir(0, 0, dpath + "/" + dir); !r) {
                error = AttachError{EIO, fmt::format("xenstore mkdir {}/{}: {}", dpath, dir, xenstore::to_wire(r.error()))};
                break;
            }
        }
        if (error) break;

        // The store ring.
        const int notify_fd = st.store_notify.get();
        st.conn = xenstore::Connection::create(store_, st.domid, *st.mem, common::GuestAddr(a.store_gpa),
                                               [notify_fd] { signal_fd(notify_fd); });
        if (!st.conn) { error = AttachError{EINVAL, "the xenstore ring page is not usable"}; break; }

        // One Vbd per volume.
        for (std::size_t i = 0; i < vols.size(); ++i) {
            blkback::VbdConfig vc;
            vc.domid = st.domid;
            vc.disk = static_cast<std::uint32_t>(i);
            vc.backend = std::move(vols[i].second);
            vc.limits = vols[i].first.instance_store ? nitro_card::storage::Limits::unlimited() : vols[i].first.limits;
            vc.description = vols[i].first.ram ? "ram:" + vols[i].first.path : vols[i].first.path;
            auto v = blkback::Vbd::create(store_, *st.grants, *this, std::move(vc));
            if (!v) { error = AttachError{EIO, fmt::format("vbd {}: {}", i, v.error().message)}; break; }
            st.volume_names.push_back(vols[i].first.path);
            st.vbds.push_back(std::move(*v));
        }
    } while (false);

    if (error) {
        spdlog::warn("dom0: Attach of '{}' refused: {}", a.name, error->message);
        teardown();
        std::lock_guard lk(send_mu_);
        (void)link::send_message(sock_, link::AttachReplyMsg{-error->err, 0, error->message});
        finished_.store(true, std::memory_order_release);
        return;
    }
    {
        std::lock_guard lk(send_mu_);
        if (auto s = link::send_message(sock_, link::AttachReplyMsg{0, st.domid, ""}); !s) {
            spdlog::warn("dom0: domain {}: AttachReply: {}", st.domid, s.error().message);
            teardown();
            finished_.store(true, std::memory_order_release);
            return;
        }
    }
    st.attached_at = std::chrono::steady_clock::now();
    attached_.store(true, std::memory_order_release);
    spdlog::info("dom0: domain {} ('{}') attached: {} vcpus, {} MiB, {} volume(s), store port {}", st.domid, st.name,
                 a.vcpus, st.mem->table().total_size() >> 20, st.vbds.size(), a.store_port);
    first.reset();

    // ---- Serve ----
    std::string why = "dom0 stopping";
    for (;;) {
        pollfd p[3] = {{sock_.fd(), POLLIN, 0}, {st.store_kick.get(), POLLIN, 0}, {stop_.fd(), POLLIN, 0}};
        if (::poll(p, 3, -1) < 0) {
            if (errno == EINTR) continue;
            why = fmt::format("poll: {}", std::strerror(errno));
            break;
        }
        if (p[2].revents) break;
        if (p[1].revents & POLLIN) {
            drain_fd(st.store_kick.get());
            st.conn->on_kick();
        }
        if (p[0].revents) {
            auto m = link::recv_message(sock_, 0);
            if (!m) {
                if (common::card::is_timeout(m.error())) continue;
                why = common::card::is_peer_closed(m.error()) ? "the vmm closed the link"
                                                               : "link error: " + m.error().message;
                break;
            }
            if (auto* br = std::get_if<link::BindReplyMsg>(&m->msg)) {
                for (auto& v : st.vbds) v->on_bind_reply(br->request_id, br->status);
            } else if (auto* pc = std::get_if<link::PortClosedMsg>(&m->msg)) {
                for (auto& v : st.vbds) v->on_port_closed(pc->guest_port);
            } else {
                why = fmt::format("the vmm sent {} after Attach", link::type_name(m->msg));
                break;
            }
        }
        if ((p[1].revents & (POLLERR | POLLHUP | POLLNVAL)) != 0) {
            why = "the store kick eventfd failed";
            break;
        }
    }

    // ---- Detach ----
    std::vector<blkback::VbdStats> stats;
    for (auto& v : st.vbds) stats.push_back(v->stats());
    st.vbds.clear();  // stops their threads first, so the numbers below are final
    const auto secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - st.attached_at).count();
    spdlog::info("dom0: domain {} ('{}') detached after {:.1f} s: {}; xenstore {} requests, {} errors", st.domid,
                 st.name, secs, why, st.conn->requests(), st.conn->errors());
    for (std::size_t i = 0; i < stats.size(); ++i) {
        const auto& s = stats[i];
        spdlog::info("dom0: domain {} xvd{} ({}): {} requests ({} reads, {} writes, {} flushes), {} bytes read, "
                     "{} bytes written, {} errors, {} unsupported, {} notifications, throttled {} requests for {:.1f} ms{}",
                     st.domid, static_cast<char>('a' + i), st.volume_names[i], s.requests, s.reads, s.writes, s.flushes,
                     s.bytes_read, s.bytes_written, s.errors, s.unsupported, s.notifications, s.throttled_requests,
                     static_cast<double>(s.throttled_ns) / 1e6, s.ring_broken ? ", ring stopped (bogus indices)" : "");
    }
    teardown();
    finished_.store(true, std::memory_order_release);
}

}  // namespace xen_model::dom0
