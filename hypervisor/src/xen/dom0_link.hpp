// dom0 for one VM in one-shot mode: the xen-dom0 process, started like the card
// (nitro/card_process.*), and the vmm's end of the link to it (xen_model/link/dom0_link.hpp).
//
// start() spawns `xen-dom0 --socket DIR/dom0.sock --ready-fd 3 --exit-when-idle --log-level L`,
// waits for its ready byte, connects, sends Attach (memfd, region table, volumes, the xenstore
// ring and its pre-bound port with two eventfds) and waits for AttachReply. Then two threads:
//  - the link thread answers Bind (guest port unbound with remote domain 0 -> bound to dom0)
//    and Unbind (back to unbound), and notices when dom0 goes away;
//  - the event thread epolls the notify eventfds of all dom0-bound ports and raises the ports.
// The vCPU threads call kick() (guest EVTCHNOP_send on a dom0 port) and port_closed().
// If dom0 dies the error is logged and the guest keeps running; its disks stop answering.
//
// Lock order: mu_ (the port fds) before EventChannels' lock; send_mu_ only around a send.
// The destructor stops both threads, closes the socket (dom0 then drops the domain) and stops
// the process.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "common/error.hpp"
#include "common/fd.hpp"
#include "common/guest_memory.hpp"
#include "common/unix_socket.hpp"
#include "xen/event_channels.hpp"
#include "xen_model/link/dom0_link_codec.hpp"

namespace hypervisor::xen {

struct Dom0Config {
    std::string binary;
    std::string log_level = "info";
    std::string name = "nitrovm";
    std::uint32_t vcpus = 1;
    std::vector<std::string> volumes;
    // Guest memory regions as dom0 maps them; special = not RAM (xenstore page, grant frames).
    struct Region {
        common::MemoryRegion r;
        bool special;
    };
    std::vector<Region> regions;
    std::uint64_t store_gpa = 0;
    std::uint32_t store_port = 0;
    std::uint64_t grant_table_gpa = 0;
    std::uint32_t grant_frames = 0;
    std::chrono::milliseconds timeout{10000};
};

class Dom0Link final {
public:
    // Starts dom0 and attaches the VM. store_port must already be bound to dom0 in `events`.
    [[nodiscard]] static common::Result<std::unique_ptr<Dom0Link>> start(const Dom0Config& cfg,
                                                                        const common::GuestMemory& mem,
                                                                        EventChannels& events);
    ~Dom0Link();
    Dom0Link(const Dom0Link&) = delete;
    Dom0Link& operator=(const Dom0Link&) = delete;

    // The guest sent on a port bound to dom0.
    void kick(std::uint32_t port);
    // The guest closed a port bound to dom0.
    void port_closed(std::uint32_t port);
    [[nodiscard]] std::uint16_t domid() const { return domid_; }
    [[nodiscard]] std::uint64_t kicks() const { return kicks_.load(); }
    [[nodiscard]] std::uint64_t notifies() const { return notifies_.load(); }

private:
    struct PortFds {
        common::UniqueFd kick, notify;
    };
    Dom0Link(EventChannels& events) : events_(events) {}
    void link_loop();
    void event_loop();
    void add_port(std::uint32_t port, PortFds fds);
    void drop_port(std::uint32_t port);
    void send(const xen_model::link::Message& msg);

    EventChannels& events_;
    pid_t pid_ = -1;
    std::string dir_;
    common::card::UnixSocket sock_;
    common::UniqueFd epoll_;
    common::UniqueFd stop_;  // eventfd: wakes the event thread at shutdown
    std::uint16_t domid_ = 0;
    std::mutex mu_;
    std::map<std::uint32_t, PortFds> ports_;
    std::mutex send_mu_;
    std::atomic<bool> stopping_{false}, dead_{false};
    std::atomic<std::uint64_t> kicks_{0}, notifies_{0};
    std::thread link_thread_, event_thread_;
};

}  // namespace hypervisor::xen
