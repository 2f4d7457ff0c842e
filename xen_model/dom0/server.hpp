// The xen-dom0 server: listens on its socket and runs one Domain per vmm connection.
//
// The accept thread takes connections, starts a Domain for each and reaps those that have
// finished, so a vmm that goes away frees its domain while the others keep running. Domain ids
// are handed out 1, 2, ... and never reused within the process.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "common/unix_socket.hpp"
#include "xen_model/dom0/domain.hpp"
#include "xen_model/xenstore/store.hpp"

namespace xen_model::dom0 {

class Server final {
public:
    [[nodiscard]] static common::Result<std::unique_ptr<Server>> start(const std::string& socket_path,
                                                                       DomainOptions options = {});
    // Stops accepting, then stops every domain (each tears down as if its vmm had gone).
    ~Server();
    Server(const Server&) = delete;
    Server& operator=(const Server&) = delete;

    // Domains that completed Attach and are still running.
    [[nodiscard]] std::size_t active_domains() const;
    // Domains that completed Attach since start.
    [[nodiscard]] std::uint64_t attached_total() const noexcept { return attached_total_.load(); }

private:
    Server(common::card::UnixSocket listener, DomainOptions options);
    void accept_loop();
    void reap(bool all);

    xenstore::Store store_;
    common::card::UnixSocket listener_;
    DomainOptions options_;
    std::atomic<bool> stop_{false};
    std::atomic<std::uint32_t> next_domid_{1};
    std::atomic<std::uint64_t> attached_total_{0};
    mutable std::mutex mu_;  // guards domains_
    std::vector<std::unique_ptr<Domain>> domains_;
    std::vector<bool> counted_;  // per domain: already in attached_total_
    std::thread thread_;
};

}  // namespace xen_model::dom0
