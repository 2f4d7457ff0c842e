#include "dom0_fixture.hpp"

#include <poll.h>
#include <stdlib.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <thread>

namespace dom0_it {

using namespace xen_model;
using common::GuestAddr;

namespace {

bool wait_readable(int fd, std::chrono::milliseconds timeout) {
    pollfd p{fd, POLLIN, 0};
    return ::poll(&p, 1, static_cast<int>(timeout.count())) == 1;
}

void drain(int fd) {
    std::uint64_t v;
    (void)!::read(fd, &v, sizeof v);
}

void signal_fd(int fd) {
    const std::uint64_t one = 1;
    (void)!::write(fd, &one, sizeof one);
}

}  // namespace

TempDir::TempDir() {
    char tmpl[] = "/tmp/xen-dom0-it-XXXXXX";
    if (::mkdtemp(tmpl) == nullptr) throw std::runtime_error("mkdtemp failed");
    path_ = tmpl;
}

TempDir::~TempDir() {
    if (::getenv("DOM0_IT_KEEP") != nullptr) return;  // keep dom0.log and the volumes for a look
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
}

Dom0::Dom0(std::vector<std::string> extra_args) : socket_(dir_.file("dom0.sock")) {
    std::vector<std::string> args = {"--socket", socket_, "--log-level", "debug"};
    args.insert(args.end(), extra_args.begin(), extra_args.end());
    auto p = testsupport::CardProcess::start(kXenDom0, args, dir_.file("dom0.log"));
    if (!p) throw std::runtime_error(p.error().message);
    proc_.emplace(std::move(*p));
}

bool Dom0::wait_log(const std::string& text, std::chrono::milliseconds timeout) const {
    const auto end = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < end) {
        if (log().find(text) != std::string::npos) return true;
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return false;
}

Guest::Guest()
    : mem_([] {
          auto m = common::GuestMemory::create({{GuestAddr(0), kRamBytes, 0},
                                                {GuestAddr(abi::kSpecialAreaGpa), abi::kSpecialAreaSize, 0},
                                                {GuestAddr(kGrantGpa), kGrantFrames * 4096ull, 0}});
          if (!m) throw std::runtime_error(m.error().message);
          return std::move(*m);
      }()),
      store_kick_(*common::EventFd::create()),
      store_notify_(*common::EventFd::create()) {}

link::AttachReplyMsg Guest::attach(const std::string& socket, std::vector<std::string> volumes, const std::string& name) {
    auto s = common::card::UnixSocket::connect(socket);
    if (!s) throw std::runtime_error(s.error().message);
    link_ = std::move(*s);
    link::AttachMsg a;
    a.vcpus = 1;
    a.name = name;
    a.memfd_size = mem_.memfd().size();
    for (const auto& r : mem_.table().regions()) {
        a.regions.push_back({r, r.base.value() < kRamBytes ? link::RegionKind::Ram : link::RegionKind::Special});
    }
    a.store_gpa = kStoreGpa;
    a.store_port = kStorePort;
    a.grant_frames = kGrantFrames;
    a.grant_table_gpa = kGrantGpa;
    a.volumes = std::move(volumes);
    const int fds[] = {mem_.memfd().fd(), store_kick_.fd(), store_notify_.fd()};
    if (auto st = link::send_message(link_, a, fds); !st) throw std::runtime_error(st.error().message);
    auto r = link::recv_message(link_, static_cast<int>(kWait.count()));
    if (!r) throw std::runtime_error("AttachReply: " + r.error().message);
    auto* reply = std::get_if<link::AttachReplyMsg>(&r->msg);
    if (!reply) throw std::runtime_error("no AttachReply");
    domid_ = reply->domid;
    return *reply;
}

std::optional<std::string> Guest::xs(abi::XsType type, const std::string& payload, std::string* err) {
    using I = abi::XenstoreInterface;
    const GuestAddr page(kStoreGpa);
    auto idx = [&](std::size_t off) { return *mem_.read_obj<std::uint32_t>(page + off); };
    const std::uint32_t id = next_req_++;
    abi::XsMsgHeader h{static_cast<std::uint32_t>(type), id, 0, static_cast<std::uint32_t>(payload.size())};
    std::string msg(sizeof h, '\0');
    std::memcpy(msg.data(), &h, sizeof h);
    msg += payload;
    // The request (always small here) goes in once there is room.
    const auto end = std::chrono::steady_clock::now() + kWait;
    while (abi::kXsRingSize - (idx(offsetof(I, req_prod)) - idx(offsetof(I, req_cons))) < msg.size()) {
        if (std::chrono::steady_clock::now() > end) return std::nullopt;
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    std::uint32_t prod = idx(offsetof(I, req_prod));
    for (char c : msg) {
        (void)mem_.write_obj(page + offsetof(I, req) + (prod & (abi::kXsRingSize - 1)), c);
        ++prod;
    }
    std::atomic_thread_fence(std::memory_order_seq_cst);
    (void)mem_.write_obj(page + offsetof(I, req_prod), prod);
    signal_fd(store_kick_.fd());
    while (std::chrono::steady_clock::now() < end) {
        std::uint32_t cons = idx(offsetof(I, rsp_cons));
        const std::uint32_t rprod = idx(offsetof(I, rsp_prod));
        std::atomic_thread_fence(std::memory_order_seq_cst);
        while (cons != rprod) {
            rsp_buf_.push_back(*mem_.read_obj<char>(page + offsetof(I, rsp) + (cons & (abi::kXsRingSize - 1))));
            ++cons;
        }
        (void)mem_.write_obj(page + offsetof(I, rsp_cons), cons);
        while (rsp_buf_.size() >= sizeof(abi::XsMsgHeader)) {
            abi::XsMsgHeader rh;
            std::memcpy(&rh, rsp_buf_.data(), sizeof rh);
            if (rsp_buf_.size() < sizeof rh + rh.len) break;
            std::string body = rsp_buf_.substr(sizeof rh, rh.len);
            rsp_buf_.erase(0, sizeof rh + rh.len);
            if (rh.req_id != id || rh.type == static_cast<std::uint32_t>(abi::XsType::WatchEvent)) continue;
            if (rh.type == static_cast<std::uint32_t>(abi::XsType::Error)) {
                if (err) *err = body;
                return std::nullopt;
            }
            return body;
        }
        if (wait_readable(store_notify_.fd(), std::chrono::milliseconds(50))) drain(store_notify_.fd());
    }
    if (err) *err = "timeout";
    return std::nullopt;
}

bool Guest::xs_wait(const std::string& path, const std::string& value, std::chrono::milliseconds timeout) {
    const auto end = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < end) {
        if (xs_read(path) == value) return true;
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return false;
}

void Guest::grant(std::uint32_t ref, std::uint64_t gpa, bool readonly, std::uint16_t domid, std::uint16_t extra_flags) {
    abi::GrantEntryV1 e{};
    e.flags = static_cast<std::uint16_t>(abi::kGtfPermitAccess | (readonly ? abi::kGtfReadonly : 0) | extra_flags);
    e.domid = domid;
    e.frame = static_cast<std::uint32_t>(gpa >> 12);
    // frame and domid first, then flags, as gnttab_grant_foreign_access does.
    (void)mem_.write_obj(GuestAddr(kGrantGpa + ref * 8 + 2), e.domid);
    (void)mem_.write_obj(GuestAddr(kGrantGpa + ref * 8 + 4), e.frame);
    std::atomic_thread_fence(std::memory_order_seq_cst);
    (void)mem_.write_obj(GuestAddr(kGrantGpa + ref * 8), e.flags);
}

std::uint16_t Guest::grant_flags(std::uint32_t ref) {
    return *mem_.read_obj<std::uint16_t>(GuestAddr(kGrantGpa + ref * 8));
}

std::optional<std::uint32_t> Guest::serve_bind(std::int32_t status, std::chrono::milliseconds timeout) {
    auto m = link::recv_message(link_, static_cast<int>(timeout.count()));
    if (!m) return std::nullopt;
    auto* b = std::get_if<link::BindMsg>(&m->msg);
    if (!b) return std::nullopt;
    if (status == 0) ports[b->guest_port] = Port{std::move(m->fds[0]), std::move(m->fds[1])};
    if (!link::send_message(link_, link::BindReplyMsg{b->request_id, b->guest_port, status})) return std::nullopt;
    return b->guest_port;
}

// ---- Front ----

std::uint32_t Front::rd(std::size_t off) { return *g_.mem().read_obj<std::uint32_t>(GuestAddr(kRingGpa + off)); }
void Front::wr(std::size_t off, std::uint32_t v) { (void)g_.mem().write_obj(GuestAddr(kRingGpa + off), v); }

bool Front::connect(std::string* why, const std::string& protocol) {
    auto fail = [&](std::string w) {
        if (why) *why = std::move(w);
        return false;
    };
    if (g_.xs_read(fe() + "/backend") != be()) return fail("frontend 'backend' node");
    if (g_.xs_read(fe() + "/device-type") != "disk") return fail("device-type");
    if (!g_.xs_wait(be() + "/state", "2")) return fail("backend never reached InitWait");
    // SHARED_RING_INIT, then grant the page.
    std::vector<std::byte> zero(4096);
    (void)g_.mem().write(GuestAddr(kRingGpa), zero);
    wr(offsetof(abi::SringHeader, req_event), 1);
    wr(offsetof(abi::SringHeader, rsp_event), 1);
    req_prod_ = rsp_cons_ = 0;
    g_.grant(kRingRef, kRingGpa);
    if (!g_.xs_write(fe() + "/ring-ref", std::to_string(kRingRef)) ||
        !g_.xs_write(fe() + "/event-channel", std::to_string(kPort)))
        return fail("writing ring-ref / event-channel");
    if (!protocol.empty() && !g_.xs_write(fe() + "/protocol", protocol)) return fail("writing protocol");
    if (!g_.xs_write(fe() + "/state", "3")) return fail("writing state 3");
    auto port = g_.serve_bind(0);
    if (port != kPort) return fail("no Bind for the port");
    if (!g_.xs_wait(be() + "/state", "4")) return fail("backend never reached Connected");
    if (!g_.xs_write(fe() + "/state", "4")) return fail("writing state 4");
    return true;
}

void Front::post(const abi::BlkifRequest& r, bool do_kick) {
    (void)g_.mem().write_obj(GuestAddr(kRingGpa + 64 + (req_prod_ & 31) * 112), r);
    ++req_prod_;
    std::atomic_thread_fence(std::memory_order_seq_cst);
    wr(offsetof(abi::SringHeader, req_prod), req_prod_);
    if (do_kick) kick();
}

void Front::set_req_prod(std::uint32_t v) {
    req_prod_ = v;
    wr(offsetof(abi::SringHeader, req_prod), v);
}

void Front::kick() {
    auto it = g_.ports.find(kPort);
    if (it != g_.ports.end()) signal_fd(it->second.kick.get());
}

std::optional<abi::BlkifResponse> Front::wait_response(std::chrono::milliseconds timeout) {
    const auto end = std::chrono::steady_clock::now() + timeout;
    for (;;) {
        if (rd(offsetof(abi::SringHeader, rsp_prod)) != rsp_cons_) {
            std::atomic_thread_fence(std::memory_order_seq_cst);
            auto r = g_.mem().read_obj<abi::BlkifResponse>(GuestAddr(kRingGpa + 64 + (rsp_cons_ & 31) * 112));
            ++rsp_cons_;
            return *r;
        }
        // RING_FINAL_CHECK_FOR_RESPONSES: ask to be notified, then look once more.
        wr(offsetof(abi::SringHeader, rsp_event), rsp_cons_ + 1);
        std::atomic_thread_fence(std::memory_order_seq_cst);
        if (rd(offsetof(abi::SringHeader, rsp_prod)) != rsp_cons_) continue;
        const auto now = std::chrono::steady_clock::now();
        if (now >= end) return std::nullopt;
        auto it = g_.ports.find(kPort);
        if (it == g_.ports.end()) return std::nullopt;
        if (wait_readable(it->second.notify.get(),
                          std::chrono::duration_cast<std::chrono::milliseconds>(end - now))) {
            drain(it->second.notify.get());
            ++notified_;
        }
    }
}

std::optional<std::int16_t> Front::roundtrip(const abi::BlkifRequest& r) {
    post(r);
    auto rsp = wait_response();
    if (!rsp) return std::nullopt;
    if (rsp->id != r.id) return std::int16_t{-100};
    return rsp->status;
}

abi::BlkifRequest blk_req(std::uint8_t op, std::uint64_t id, std::uint64_t sector,
                          std::vector<std::tuple<std::uint32_t, std::uint8_t, std::uint8_t>> segs) {
    abi::BlkifRequest r{};
    r.operation = op;
    r.id = id;
    r.sector_number = sector;
    r.nr_segments = static_cast<std::uint8_t>(segs.size());
    for (std::size_t i = 0; i < segs.size() && i < abi::kBlkifMaxSegments; ++i) {
        r.seg[i] = abi::BlkifSegment{std::get<0>(segs[i]), std::get<1>(segs[i]), std::get<2>(segs[i]), 0};
    }
    return r;
}

std::vector<std::byte> read_file(const std::string& path, std::uint64_t offset, std::size_t len) {
    std::ifstream f(path, std::ios::binary);
    f.seekg(static_cast<std::streamoff>(offset));
    std::vector<std::byte> out(len);
    f.read(reinterpret_cast<char*>(out.data()), static_cast<std::streamsize>(len));
    out.resize(static_cast<std::size_t>(f.gcount()));
    return out;
}

}  // namespace dom0_it
