// One guest's xenstore ring: the xenstore_domain_interface page in guest memory, served by dom0.
//
// on_kick() runs when the guest notifies the store port: it drains every complete request in
// the req ring (Linux notifies only when the ring was empty, so one message per kick would
// deadlock), answers each in the rsp ring, delivers queued watch events, re-checks the ring
// before returning, and calls notify() once if it produced anything. Malformed requests
// (length over 4096, paths over the limits, missing NULs, unknown types) get an XS_ERROR
// reply; a header that cannot be trusted resets nothing outside the ring page.
//
// Threading: on_kick() and post() may race; the connection serialises them internally.
#pragma once

#include <functional>
#include <memory>

#include "common/guest_memory.hpp"
#include "xen_model/xenstore/store.hpp"

namespace xen_model::xenstore {

class Connection final : public WatchSink, public std::enable_shared_from_this<Connection> {
public:
    // `ring` is the guest-physical address of the page; `notify` raises the guest's store port.
    [[nodiscard]] static std::shared_ptr<Connection> create(Store& store, DomId domid,
                                                            const common::GuestMemory& mem,
                                                            common::GuestAddr ring,
                                                            std::function<void()> notify);
    ~Connection() override;

    void on_kick();
    void post(WatchEvent ev) override;  // queues, and delivers at once if the rsp ring has room

    // Counters for logs and tests.
    [[nodiscard]] std::uint64_t requests() const;
    [[nodiscard]] std::uint64_t errors() const;

private:
    Connection() = default;
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace xen_model::xenstore
