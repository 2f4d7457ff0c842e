// The vmm's side of the card protocol, for tests that drive a real nitro-card process: one
// connected socket, request/reply calls with bounded waits, typed helpers for the commands the
// hypervisor sends (hypervisor/src/nitro/remote_function.cpp), and raw access for hostile bytes.
#pragma once

#include <chrono>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "common/card_protocol.hpp"
#include "common/error.hpp"
#include "common/fd.hpp"
#include "common/guest_memory.hpp"
#include "common/unix_socket.hpp"
#include "support/register_port.hpp"

namespace testsupport {

inline constexpr std::chrono::milliseconds kCallTimeout{5000};

// DEVICE_GET_REGION_IO_FDS as the card answers it: the sub-regions and the fds they name.
struct IoFds {
    std::vector<common::card::IoFdEntry> entries;
    std::vector<common::UniqueFd> fds;
};

class CardClient final {
public:
    // Connects to a card socket, retrying until `timeout` (the card may still be accepting its
    // previous client).
    [[nodiscard]] static common::Result<CardClient> connect(
        const std::string& path, std::chrono::milliseconds timeout = kCallTimeout);

    // Sends one command with `fds` and waits for the reply with the same id. A reply that does
    // not match (id, command, direction) is a Protocol error; an ErrorReply is returned as is.
    [[nodiscard]] common::Result<common::card::ReceivedMessage> call(common::card::Body body,
                                                                     std::span<const int> fds = {});

    // Typed calls. An error reply becomes an Error of kind Protocol whose errno_value is the
    // card's errno.
    [[nodiscard]] common::Result<common::card::VersionInfo> version();
    common::Status dma_map(int memfd, std::uint64_t fd_offset, common::GuestAddr addr,
                           std::uint64_t size);
    // One DMA_MAP per region of `mem`, as the vmm does at attach.
    common::Status dma_map(const common::GuestMemory& mem);
    common::Status dma_unmap(common::GuestAddr addr, std::uint64_t size);
    [[nodiscard]] common::Result<common::card::DeviceGetInfoReply> device_info();
    [[nodiscard]] common::Result<common::card::RegionInfoReply> region_info(std::uint32_t index);
    [[nodiscard]] common::Result<common::card::IrqInfoReply> irq_info(std::uint32_t index);
    // MSI-X vectors 0..eventfds.size()-1 signal these eventfds.
    common::Status set_irqs(std::span<const int> eventfds);
    [[nodiscard]] common::Result<std::vector<std::byte>> region_read(std::uint32_t region,
                                                                     std::uint64_t offset,
                                                                     std::uint32_t count);
    common::Status region_write(std::uint32_t region, std::uint64_t offset,
                                std::span<const std::byte> data);
    [[nodiscard]] common::Result<IoFds> region_io_fds(std::uint32_t region);

    // Raw bytes, for messages the codec would refuse to build.
    common::Status send_raw(std::span<const std::byte> bytes) const;
    // One raw message, or a timeout error (common::card::is_timeout).
    [[nodiscard]] common::Result<std::vector<std::byte>> recv_raw(
        std::chrono::milliseconds timeout) const;

    [[nodiscard]] const common::card::Capabilities& limits() const { return limits_; }
    [[nodiscard]] std::uint16_t next_id() const { return next_id_; }
    void close() { sock_ = common::card::UnixSocket(); }

private:
    explicit CardClient(common::card::UnixSocket sock) : sock_(std::move(sock)) {}

    common::card::UnixSocket sock_;
    common::card::Capabilities limits_;
    std::uint16_t next_id_ = 1;
};

// BAR0 of the card's device as a RegisterPort: REGION_READ/REGION_WRITE of region 0, exactly
// the slow path a vCPU's MMIO exit takes in the hypervisor.
class CardRegisters final : public RegisterPort {
public:
    explicit CardRegisters(CardClient& client) : client_(client) {}
    [[nodiscard]] std::uint32_t read32(std::uint64_t offset) override;
    void write32(std::uint64_t offset, std::uint32_t value) override;

private:
    CardClient& client_;
};

}  // namespace testsupport
