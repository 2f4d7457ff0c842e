// A PCI function whose device model lives in the card process (the nitro I/O model).
//
// The vmm keeps what the guest's platform owns: the config space (ids read from the card, BARs
// placed by the vmm), the MSI-X capability and table (each vector's eventfd is handed to the card
// with SET_IRQS, so the card raises interrupts through KVM irqfds without the vmm), and the
// doorbell ioeventfds (the card creates them; the vmm registers them with KVM at BAR0 + offset
// and moves them when the guest moves BAR0). Everything else in BAR0 is the slow path: each
// access is one REGION_READ/REGION_WRITE round trip on the device's socket.
//
// The card may change which doorbells it serves on the fast path (an NVMe controller does once
// the guest has set up shadow doorbells); the vmm asks again (DEVICE_GET_REGION_IO_FDS) after a
// guest write to any of the `refresh_offsets` the device description names.
//
// Lock order: io_mu_ (socket round trips) is never held while taking msix or bus locks; fd_mu_
// guards the ioeventfd set and is taken inside config_written and after writes.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "common/card_protocol.hpp"
#include "common/guest_memory.hpp"
#include "common/unix_socket.hpp"
#include "pci/function.hpp"
#include "pci/msix.hpp"
#include "pci/root_bus.hpp"

namespace hypervisor::nitro {

// Registers and removes KVM ioeventfds (a fake in tests).
class IoEventRegistrar {
public:
    virtual ~IoEventRegistrar() = default;
    virtual common::Status add(int eventfd, std::uint64_t gpa, std::uint32_t len,
                               std::optional<std::uint64_t> datamatch) = 0;
    virtual common::Status remove(int eventfd, std::uint64_t gpa, std::uint32_t len,
                                  std::optional<std::uint64_t> datamatch) = 0;
};

struct RemoteDeviceSpec {
    std::string socket_path;
    std::string name;                          // for logs, e.g. "nvme0 vol0123..."
    std::vector<std::uint64_t> refresh_offsets;  // BAR0 writes after which io fds are re-read
    unsigned max_vectors = 64;
};

class RemoteFunction final : public pci::Function {
public:
    // Connects, negotiates, maps guest RAM, reads the device's identity, regions and IRQs, and
    // wires MSI-X. Fails with context naming the socket.
    [[nodiscard]] static common::Result<std::shared_ptr<RemoteFunction>> connect(
        const RemoteDeviceSpec& spec, const common::GuestMemory& mem, pci::RootBus& bus,
        pci::MsiController& msi, IoEventRegistrar& ioevents);
    ~RemoteFunction() override;

    std::string name() const override { return spec_.name; }
    pci::ConfigSpace& config() override { return cfg_; }
    void config_written(std::uint32_t offset) override;
    void bar_read(unsigned bar, std::uint64_t offset, std::span<std::uint8_t> data) override;
    void bar_write(unsigned bar, std::uint64_t offset, std::span<const std::uint8_t> data) override;

    // Slow-path accesses so far (for metrics: each one is a socket round trip).
    [[nodiscard]] std::uint64_t slow_path_accesses() const { return slow_path_.load(); }

private:
    struct IoFd {
        common::UniqueFd fd;
        common::card::IoFdEntry entry;
    };
    RemoteFunction(RemoteDeviceSpec spec, common::card::UnixSocket sock, pci::ConfigSpace cfg,
                   IoEventRegistrar& ioevents);
    // One request, one reply (fds of the reply returned). Serialised by io_mu_.
    common::Result<common::card::ReceivedMessage> call(common::card::Body body, std::span<const int> fds = {});
    common::Status refresh_io_fds();
    void register_io_fds_locked(std::optional<std::uint64_t> bar0);
    void unregister_io_fds_locked();

    RemoteDeviceSpec spec_;
    common::card::UnixSocket sock_;
    common::card::Capabilities limits_;
    pci::ConfigSpace cfg_;
    std::unique_ptr<pci::Msix> msix_;
    IoEventRegistrar& ioevents_;
    std::uint64_t bar0_size_ = 0;
    std::mutex io_mu_;
    std::uint16_t next_id_ = 1;
    std::mutex fd_mu_;
    std::vector<IoFd> io_fds_;
    std::optional<std::uint64_t> registered_at_;  // BAR0 address the io fds are registered at
    std::atomic<std::uint64_t> slow_path_{0};
    std::atomic<bool> broken_{false};
};

}  // namespace hypervisor::nitro
