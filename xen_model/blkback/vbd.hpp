// One guest disk served by dom0: the xenbus handshake in xenstore (Xen §3.10) and the blkif
// ring (§3.11) against a nitro_card::storage::BlockBackend, as Linux blkback does for one
// single-page ring.
//
// Life: create() writes the backend nodes (/local/domain/0/backend/vbd/D/N/...) and the
// frontend nodes (/local/domain/D/device/vbd/N/...), then backend state InitWait, and starts the
// Vbd's thread, which watches the frontend's state. When the frontend reaches Initialised it
// reads ring-ref, event-channel and protocol, maps the ring grant, asks the vmm (through the
// PortBinder) to bind the port, and on a good BindReply sets Connected and serves the ring. The
// frontend's Closing/Closed tear the connection down (in-flight I/O is waited for, grants
// released, the port unbound); Initialising after Closed prepares for a reconnect.
//
// Hostile frontends: a bad request gets an ERROR response; an unknown operation EOPNOTSUPP;
// a producer index past the ring stops the ring until the frontend reconnects. Grants are
// released before the response that ends their use is published.
//
// Threading: one thread per Vbd runs everything above (epoll on its inbox, the kick eventfd, the
// backend's completion fd and a rate-limit timer). The public methods only queue into the inbox
// and may be called from any thread.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "common/error.hpp"
#include "storage/backend.hpp"
#include "storage/rate_limiter.hpp"
#include "xen_model/grant/grant_table.hpp"
#include "xen_model/xenstore/store.hpp"

namespace xen_model::blkback {

// How a Vbd reaches the vmm's event channels (the domain's link connection).
class PortBinder {
public:
    virtual ~PortBinder() = default;
    // Sends Bind(request_id, port) with the two eventfds (kept by the caller). The BindReply is
    // delivered to Vbd::on_bind_reply by whoever reads the link.
    virtual common::Status bind(std::uint32_t request_id, std::uint32_t port, int kick_fd, int notify_fd) = 0;
    virtual void unbind(std::uint32_t port) = 0;
};

struct VbdConfig {
    std::uint32_t domid = 0;
    std::uint32_t disk = 0;  // 0 = xvda
    std::unique_ptr<nitro_card::storage::BlockBackend> backend;
    nitro_card::storage::Limits limits = nitro_card::storage::Limits::unlimited();
    std::string description;  // for logs: the volume path
};

struct VbdStats {
    std::uint64_t requests = 0;  // answered, all kinds
    std::uint64_t reads = 0, writes = 0, flushes = 0;
    std::uint64_t bytes_read = 0, bytes_written = 0;
    std::uint64_t errors = 0;        // ERROR responses
    std::uint64_t unsupported = 0;   // EOPNOTSUPP responses
    std::uint64_t notifications = 0;
    std::uint64_t throttled_requests = 0;
    std::uint64_t throttled_ns = 0;
    std::uint64_t connects = 0;
    bool ring_broken = false;  // the frontend overran the ring since its last connect
};

class Vbd final {
public:
    // Writes the nodes and starts the thread. The store, grants and binder must outlive the Vbd.
    [[nodiscard]] static common::Result<std::unique_ptr<Vbd>> create(xenstore::Store& store, grant::GrantTable& grants,
                                                                     PortBinder& binder, VbdConfig config);
    // Stops the thread, waits for in-flight I/O, releases every grant, removes the watch. The
    // xenstore nodes stay (the domain's teardown removes them).
    ~Vbd();
    Vbd(const Vbd&) = delete;
    Vbd& operator=(const Vbd&) = delete;

    [[nodiscard]] std::uint32_t devid() const noexcept;        // the virtual-device number
    [[nodiscard]] std::string backend_path() const;
    [[nodiscard]] std::string frontend_path() const;

    // From the link reader: the vmm's answer to our Bind, and a port the guest closed.
    void on_bind_reply(std::uint32_t request_id, std::int32_t status);
    void on_port_closed(std::uint32_t port);

    [[nodiscard]] VbdStats stats() const;

private:
    struct Impl;
    explicit Vbd(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

}  // namespace xen_model::blkback
