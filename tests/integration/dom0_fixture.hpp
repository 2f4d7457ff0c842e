// What the dom0 integration tests need: a real xen-dom0 process, and a fake vmm with a guest
// that has no CPU: guest memory is a memfd both processes map, the frontends are written here
// (a xenstore client on the store ring, a blkfront on a granted blkif ring), and event channels
// are the link's eventfds (the test writes a kick eventfd where the vmm would, and reads a notify
// eventfd where the vmm would inject an upcall).
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "common/fd.hpp"
#include "common/guest_memory.hpp"
#include "common/unix_socket.hpp"
#include "support/card_process.hpp"
#include "xen_model/abi/xen_abi.hpp"
#include "xen_model/link/dom0_link_codec.hpp"

namespace dom0_it {

inline const std::string kXenDom0 = NH_BUILD_DIR "/bin/xen-dom0";
inline constexpr std::uint64_t kMiB = 1 << 20;
inline constexpr std::uint64_t kRamBytes = 16 * kMiB;
inline constexpr std::uint64_t kGrantGpa = 0xfe000000;
inline constexpr std::uint32_t kGrantFrames = 2;
inline constexpr std::uint64_t kStoreGpa = xen_model::abi::kXenstorePfn << 12;
inline constexpr std::uint32_t kStorePort = 1;
inline constexpr std::uint32_t kXvda = 51712;
inline constexpr std::chrono::milliseconds kWait{5000};

class TempDir final {
public:
    TempDir();
    ~TempDir();
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
    [[nodiscard]] std::string file(const std::string& name) const { return path_ + "/" + name; }

private:
    std::string path_;
};

// xen-dom0 listening on a socket in a temp dir, its output in dom0.log there.
class Dom0 final {
public:
    explicit Dom0(std::vector<std::string> extra_args = {});
    [[nodiscard]] const std::string& socket() const { return socket_; }
    [[nodiscard]] testsupport::CardProcess& process() { return *proc_; }
    [[nodiscard]] std::string log() const { return proc_->log(); }
    [[nodiscard]] const TempDir& dir() const { return dir_; }
    // Waits until the log contains `text`.
    bool wait_log(const std::string& text, std::chrono::milliseconds timeout = kWait) const;

private:
    TempDir dir_;
    std::string socket_;
    std::optional<testsupport::CardProcess> proc_;
};

// A guest's memory (RAM, the Xen special area, grant frames) and the vmm's link to dom0.
class Guest final {
public:
    Guest();
    // Connects and sends Attach with these volume specs; returns the AttachReply.
    [[nodiscard]] xen_model::link::AttachReplyMsg attach(const std::string& socket, std::vector<std::string> volumes,
                                                         const std::string& name = "i-test");
    [[nodiscard]] common::GuestMemory& mem() { return mem_; }
    [[nodiscard]] std::uint32_t domid() const { return domid_; }
    [[nodiscard]] common::card::UnixSocket& link() { return link_; }
    void close_link() { link_ = {}; }

    // ---- xenstore as the guest ----
    // One request/reply; nullopt with *err set on an XS_ERROR reply.
    std::optional<std::string> xs(xen_model::abi::XsType type, const std::string& payload, std::string* err = nullptr);
    std::optional<std::string> xs_read(const std::string& path) {
        return xs(xen_model::abi::XsType::Read, path + std::string(1, '\0'));
    }
    bool xs_write(const std::string& path, const std::string& value) {
        return xs(xen_model::abi::XsType::Write, path + std::string(1, '\0') + value).has_value();
    }
    // Polls a node until it reads `value`.
    bool xs_wait(const std::string& path, const std::string& value, std::chrono::milliseconds timeout = kWait);

    // ---- grants ----
    void grant(std::uint32_t ref, std::uint64_t gpa, bool readonly = false, std::uint16_t domid = 0,
               std::uint16_t extra_flags = 0);
    [[nodiscard]] std::uint16_t grant_flags(std::uint32_t ref);

    // ---- the vmm's side of a Bind ----
    struct Port {
        common::UniqueFd kick;    // the test writes it: the guest sent on the port
        common::UniqueFd notify;  // dom0 writes it: the guest is notified
    };
    // Waits for dom0's Bind and answers it with `status`; returns the port number bound.
    std::optional<std::uint32_t> serve_bind(std::int32_t status = 0, std::chrono::milliseconds timeout = kWait);
    std::map<std::uint32_t, Port> ports;

private:
    common::GuestMemory mem_;
    common::EventFd store_kick_, store_notify_;
    common::card::UnixSocket link_;
    std::uint32_t domid_ = 0;
    std::uint32_t next_req_ = 1;
    std::string rsp_buf_;
};

// A blkfront on one ring, driven by the test.
class Front final {
public:
    static constexpr std::uint64_t kRingGpa = 0x100000;
    static constexpr std::uint32_t kRingRef = 8;
    static constexpr std::uint32_t kPort = 5;

    Front(Guest& g, std::uint32_t devid = kXvda) : g_(g), devid_(devid) {}
    // The xenbus handshake: backend InitWait → ring page granted, keys written, Initialised →
    // Bind answered → backend Connected. Returns false (with a message) on any step failing.
    bool connect(std::string* why = nullptr, const std::string& protocol = "x86_64-abi");
    [[nodiscard]] std::string fe() const { return fmt::format("/local/domain/{}/device/vbd/{}", g_.domid(), devid_); }
    [[nodiscard]] std::string be() const { return fmt::format("/local/domain/0/backend/vbd/{}/{}", g_.domid(), devid_); }

    // Puts a request in the next slot (publishing req_prod) and kicks the port.
    void post(const xen_model::abi::BlkifRequest& r, bool kick = true);
    void set_req_prod(std::uint32_t v);
    void kick();
    // Waits for the next response (re-arming rsp_event as blkfront does).
    std::optional<xen_model::abi::BlkifResponse> wait_response(std::chrono::milliseconds timeout = kWait);
    // Posts one request and waits for its response status.
    std::optional<std::int16_t> roundtrip(const xen_model::abi::BlkifRequest& r);
    [[nodiscard]] std::uint32_t notifications_seen() const { return notified_; }

private:
    std::uint32_t rd(std::size_t off);
    void wr(std::size_t off, std::uint32_t v);
    Guest& g_;
    std::uint32_t devid_;
    std::uint32_t req_prod_ = 0, rsp_cons_ = 0;
    std::uint32_t notified_ = 0;
};

// A blkif request with one segment per (gref, first, last).
xen_model::abi::BlkifRequest blk_req(std::uint8_t op, std::uint64_t id, std::uint64_t sector,
                                    std::vector<std::tuple<std::uint32_t, std::uint8_t, std::uint8_t>> segs);

std::vector<std::byte> read_file(const std::string& path, std::uint64_t offset, std::size_t len);

}  // namespace dom0_it
