// One guest's xenstore ring: the xenstore_domain_interface page in guest memory, served by dom0.
//
// on_kick() runs when the guest notifies the store port: it drains every complete request in
// the req ring (Linux notifies only when the ring was empty, so one message per kick would
// deadlock), answers each in the rsp ring, delivers queued watch events, re-checks the ring
// before returning, and calls notify() once if it produced anything. Malformed requests
// (length over 4096, paths over the limits, missing NULs, unknown types) get an XS_ERROR
// reply; a header that cannot be trusted resets nothing outside the ring page.
//
// Ring rules (reference xen-abi.md §3.9): prod is read once per step (acquire), the bytes are
// copied out, then cons is published (release); indices are free-running and every ring offset
// is masked with 1023. Our req_cons and rsp_prod are kept here and only written to the page. A
// message may arrive in pieces over several kicks (kept in a 4112-byte assembly buffer) and a
// reply may leave in pieces when the rsp ring is nearly full (the ring is a byte stream).
// A header with len > 4096 gets an E2BIG error reply, and its payload bytes are then discarded
// as they arrive, so the stream stays in step. An index the guest moved out of range
// (prod - cons > 1024 on either ring) marks the connection broken: it is logged once and never
// served again (broken()). Output waiting for room is bounded (64 replies: no requests are
// read meanwhile; 128 queued watch events, more are dropped and counted).
//
// Lifetime: the Store holds a connection (as a WatchSink) while it has watches; call
// Store::remove_domain (or reset_watches) when the guest goes away.
//
// Changes to this interface since it was first committed: dropped_events() and broken()
// added; create() returns nullptr (and logs) when the ring address is not page aligned or not
// in guest memory.
//
// Threading: on_kick() and post() may race; the connection serialises them internally
// (whoever is serving also serves the kicks and posts that arrive meanwhile, so neither
// blocks). notify() is called without any lock held, once per serving pass that wrote output.
#pragma once

#include <cstdint>
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
    [[nodiscard]] std::uint64_t dropped_events() const;
    [[nodiscard]] bool broken() const;

private:
    Connection() = default;
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace xen_model::xenstore
