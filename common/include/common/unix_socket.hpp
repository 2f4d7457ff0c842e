// The transport between the vmm and a card process: an AF_UNIX SOCK_SEQPACKET socket, so each
// send() is one message on the other side, with fds passed as SCM_RIGHTS.
//
// Received fds are owned (UniqueFd) from the moment recvmsg returns, so no error path leaks
// them. A message that did not fit the buffer (MSG_TRUNC) or brought more fds than allowed
// (MSG_CTRUNC; the kernel closes the surplus) is an error, never a silently shortened message.
#pragma once

#include <cstddef>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "common/card_protocol.hpp"
#include "common/error.hpp"
#include "common/fd.hpp"

namespace common::card {

struct ReceivedBytes {
    std::size_t size = 0;  // bytes written to the front of the buffer
    std::vector<UniqueFd> fds;
};

// A connected or listening socket. A listening socket owns its path and unlinks it when closed.
class UnixSocket final {
public:
    UnixSocket() = default;
    UnixSocket(UnixSocket&& o) noexcept
        : fd_(std::move(o.fd_)), path_(std::exchange(o.path_, std::string())) {}
    UnixSocket& operator=(UnixSocket&& o) noexcept;
    UnixSocket(const UnixSocket&) = delete;
    UnixSocket& operator=(const UnixSocket&) = delete;
    ~UnixSocket();

    // Two connected ends, for tests and for handing one end to a child process.
    [[nodiscard]] static Result<std::pair<UnixSocket, UnixSocket>> pair();
    // Binds and listens at path. Fails (naming the path) if the path is too long or exists.
    [[nodiscard]] static Result<UnixSocket> listen(const std::string& path, int backlog = 1);
    [[nodiscard]] static Result<UnixSocket> connect(const std::string& path);
    // Waits for one connection; timeout_ms < 0 waits forever.
    [[nodiscard]] Result<UnixSocket> accept(int timeout_ms = -1) const;

    // Sends bytes (not empty) as one message with the given fds, which stay owned by the caller.
    Status send(std::span<const std::byte> bytes, std::span<const int> fds = {}) const;
    // Receives one message into buffer with at most max_fds fds. timeout_ms < 0 waits forever.
    // An orderly close by the peer is an error for which is_peer_closed() holds; a timeout one
    // for which is_timeout() holds.
    [[nodiscard]] Result<ReceivedBytes> recv(std::span<std::byte> buffer, std::size_t max_fds,
                                             int timeout_ms = -1) const;

    [[nodiscard]] int fd() const noexcept { return fd_.get(); }
    [[nodiscard]] bool valid() const noexcept { return fd_.valid(); }

private:
    explicit UnixSocket(UniqueFd fd, std::string path = {})
        : fd_(std::move(fd)), path_(std::move(path)) {}
    void close() noexcept;

    UniqueFd fd_;
    std::string path_;  // set only for a listening socket
};

[[nodiscard]] bool is_peer_closed(const Error& e);
[[nodiscard]] bool is_timeout(const Error& e);

// ---- Card messages over a socket ----

struct ReceivedMessage {
    Message msg;
    std::vector<UniqueFd> fds;  // in the order the message refers to them
};

// Encodes (checking the message against `limits`) and sends msg with fds.
Status send_message(const UnixSocket& sock, const Message& msg, std::span<const int> fds = {},
                    const Capabilities& limits = {});

// Receives and decodes one message under `limits`. On any error the received fds are closed.
[[nodiscard]] Result<ReceivedMessage> recv_message(const UnixSocket& sock,
                                                   const Capabilities& limits = {},
                                                   int timeout_ms = -1);

}  // namespace common::card
