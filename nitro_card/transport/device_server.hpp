// Serves one Device on one unix socket: accepts the vmm, answers the card protocol
// (common/card_protocol.hpp), and maps guest RAM from the memfd the vmm sends with DMA_MAP.
// One client at a time; when it goes, the device is reset and the server waits for the next
// (a restarted vmm, or a re-attaching one).
//
// Hostile input: every message is decoded and checked by the codec; a bad one is answered
// with an error reply and the connection stays up. Nothing a client sends can stop the server.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "common/card_protocol.hpp"
#include "common/unix_socket.hpp"
#include "transport/device.hpp"

namespace nitro_card {

class DeviceServer final {
public:
    // Listens at socket_path (which must not exist). on_idle runs when a client disconnects.
    [[nodiscard]] static common::Result<std::unique_ptr<DeviceServer>> start(
        std::string socket_path, std::shared_ptr<Device> device, std::function<void()> on_idle = {});
    ~DeviceServer();
    DeviceServer(const DeviceServer&) = delete;
    DeviceServer& operator=(const DeviceServer&) = delete;

    [[nodiscard]] bool has_client() const { return connected_.load(); }
    [[nodiscard]] std::uint64_t clients_served() const { return served_.load(); }
    [[nodiscard]] const std::string& path() const { return path_; }

private:
    DeviceServer(std::string path, common::card::UnixSocket listener, std::shared_ptr<Device> dev,
                 std::function<void()> on_idle);
    void run();
    void serve(const common::card::UnixSocket& client);
    // Handles one decoded message; returns the reply and the fds that travel with it.
    common::card::Message handle(const common::card::Message& m, std::vector<common::UniqueFd>& fds,
                                 std::vector<int>& reply_fds, std::vector<common::UniqueFd>& keep);

    std::string path_;
    common::card::UnixSocket listener_;
    std::shared_ptr<Device> device_;
    std::function<void()> on_idle_;
    common::card::Capabilities limits_;
    common::card::DmaMapTable dma_;
    common::UniqueFd memfd_;
    std::shared_ptr<const common::GuestMemory> mem_;
    std::atomic<bool> stop_{false};
    std::atomic<bool> connected_{false};
    std::atomic<std::uint64_t> served_{0};
    std::thread thread_;
};

}  // namespace nitro_card
