// One guest domain served by xen-dom0: the link connection from its vmm, its guest memory and
// grant table, its xenstore connection and its Vbds.
//
// The Domain's thread first waits for Attach, builds everything (memory, grants, volumes,
// xenstore base nodes, the store ring connection, one Vbd per volume) and answers AttachReply;
// any failure is answered with an error status and message and leaves nothing behind. It then
// serves the link (BindReply and PortClosed go to the Vbds) and the store port's kicks until the
// vmm closes the socket, sends something it may not, or dom0 stops. Teardown stops the Vbds
// (in-flight I/O finishes, grants are released), drops the xenstore connection, removes the
// domain's nodes (Store::remove_domain and its backend directories) and closes every fd.
//
// Threading: one thread per Domain; Vbds have their own. PortBinder calls come from Vbd
// threads and share the socket under a mutex.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>

#include "common/fd.hpp"
#include "common/unix_socket.hpp"
#include "xen_model/blkback/vbd.hpp"
#include "xen_model/xenstore/store.hpp"

namespace xen_model::dom0 {

struct DomainOptions {
    // How long a new connection may take to send Attach.
    std::chrono::milliseconds attach_timeout{10'000};
};

class Domain final : public blkback::PortBinder {
public:
    // Starts serving an accepted connection. allocate_domid hands out unique ids.
    [[nodiscard]] static common::Result<std::unique_ptr<Domain>> start(xenstore::Store& store,
                                                                       common::card::UnixSocket sock,
                                                                       std::function<std::uint32_t()> allocate_domid,
                                                                       DomainOptions options = {});
    // Stops the domain (as if the vmm had gone) and waits for its thread.
    ~Domain() override;
    Domain(const Domain&) = delete;
    Domain& operator=(const Domain&) = delete;

    // True once the thread has torn everything down; the owner may then destroy the Domain.
    [[nodiscard]] bool finished() const noexcept { return finished_.load(std::memory_order_acquire); }
    // True if the domain got as far as AttachReply (it counts as served).
    [[nodiscard]] bool attached() const noexcept { return attached_.load(std::memory_order_acquire); }

    // PortBinder, for the Vbds.
    common::Status bind(std::uint32_t request_id, std::uint32_t port, int kick_fd, int notify_fd) override;
    void unbind(std::uint32_t port) override;

private:
    struct State;
    Domain(xenstore::Store& store, common::card::UnixSocket sock, std::function<std::uint32_t()> allocate_domid,
           DomainOptions options, common::EventFd stop);
    void run();

    xenstore::Store& store_;
    common::card::UnixSocket sock_;
    std::mutex send_mu_;
    std::function<std::uint32_t()> allocate_domid_;
    DomainOptions options_;
    common::EventFd stop_;
    std::atomic<bool> finished_{false};
    std::atomic<bool> attached_{false};
    std::thread thread_;
};

}  // namespace xen_model::dom0
