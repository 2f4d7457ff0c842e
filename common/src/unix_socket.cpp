#include "common/unix_socket.hpp"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>

#include <fmt/format.h>

namespace common::card {

namespace {

Error timed_out(std::string_view what, int timeout_ms) {
    return Error{ErrorKind::System, fmt::format("{}: timed out after {} ms", what, timeout_ms),
                 ETIMEDOUT};
}

Error peer_closed(std::string_view what) {
    return Error{ErrorKind::System, fmt::format("{}: peer closed the connection", what),
                 ECONNRESET};
}

// Waits until fd is readable (or hung up, which recv/accept then report). timeout_ms < 0: forever.
Status wait_readable(int fd, int timeout_ms, std::string_view what) {
    if (timeout_ms < 0) return {};
    pollfd p{fd, POLLIN, 0};
    int r;
    do r = ::poll(&p, 1, timeout_ms);
    while (r < 0 && errno == EINTR);
    if (r < 0) return fail(Error::from_errno(fmt::format("{}: poll", what)));
    if (r == 0) return fail(timed_out(what, timeout_ms));
    if (p.revents & POLLNVAL)
        return fail(Error{ErrorKind::System, fmt::format("{}: bad fd", what), EBADF});
    return {};
}

Result<UniqueFd> new_socket() {
    int fd = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (fd < 0) return fail(Error::from_errno("socket(AF_UNIX, SOCK_SEQPACKET)"));
    return UniqueFd(fd);
}

Result<sockaddr_un> make_addr(const std::string& path) {
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    if (path.empty()) return fail(Error::invalid("unix socket path is empty"));
    if (path.size() >= sizeof a.sun_path)
        return fail(Error::invalid(fmt::format("unix socket path {} is longer than {} bytes", path,
                                               sizeof a.sun_path - 1)));
    std::memcpy(a.sun_path, path.data(), path.size());
    return a;
}

// Control-message buffers must be aligned for cmsghdr; a vector of them is.
std::vector<cmsghdr> control_buffer(std::size_t nfds) {
    if (nfds == 0) return {};
    const std::size_t space = CMSG_SPACE(nfds * sizeof(int));
    return std::vector<cmsghdr>((space + sizeof(cmsghdr) - 1) / sizeof(cmsghdr));
}

}  // namespace

UnixSocket& UnixSocket::operator=(UnixSocket&& o) noexcept {
    if (this != &o) {
        close();
        fd_ = std::move(o.fd_);
        path_ = std::exchange(o.path_, std::string());
    }
    return *this;
}

UnixSocket::~UnixSocket() {
    close();
}

void UnixSocket::close() noexcept {
    fd_.reset();
    if (!path_.empty()) {
        ::unlink(path_.c_str());
        path_.clear();
    }
}

Result<std::pair<UnixSocket, UnixSocket>> UnixSocket::pair() {
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0)
        return fail(Error::from_errno("socketpair(AF_UNIX, SOCK_SEQPACKET)"));
    return std::pair<UnixSocket, UnixSocket>(UnixSocket(UniqueFd(sv[0])),
                                             UnixSocket(UniqueFd(sv[1])));
}

Result<UnixSocket> UnixSocket::listen(const std::string& path, int backlog) {
    auto addr = make_addr(path);
    if (!addr) return fail(std::move(addr.error()));
    auto fd = new_socket();
    if (!fd) return fail(std::move(fd.error()));
    if (::bind(fd->get(), reinterpret_cast<const sockaddr*>(&*addr), sizeof *addr) != 0)
        return fail(Error::from_errno(fmt::format("bind unix socket {}", path)));
    // From here the path is ours: the socket removes it when it closes.
    UnixSocket s(std::move(*fd), path);
    if (::listen(s.fd(), backlog) != 0)
        return fail(Error::from_errno(fmt::format("listen on unix socket {}", path)));
    return s;
}

Result<UnixSocket> UnixSocket::connect(const std::string& path) {
    auto addr = make_addr(path);
    if (!addr) return fail(std::move(addr.error()));
    auto fd = new_socket();
    if (!fd) return fail(std::move(fd.error()));
    int r;
    do r = ::connect(fd->get(), reinterpret_cast<const sockaddr*>(&*addr), sizeof *addr);
    while (r != 0 && errno == EINTR);
    if (r != 0) return fail(Error::from_errno(fmt::format("connect to unix socket {}", path)));
    return UnixSocket(std::move(*fd));
}

Result<UnixSocket> UnixSocket::accept(int timeout_ms) const {
    const auto what = fmt::format("accept on unix socket {}", path_);
    if (auto w = wait_readable(fd(), timeout_ms, what); !w) return fail(std::move(w.error()));
    int c;
    do c = ::accept4(fd(), nullptr, nullptr, SOCK_CLOEXEC);
    while (c < 0 && errno == EINTR);
    if (c < 0) return fail(Error::from_errno(what));
    return UnixSocket(UniqueFd(c));
}

Status UnixSocket::send(std::span<const std::byte> bytes, std::span<const int> fds) const {
    // The receiver reads a zero-length message as end of stream, so none is ever sent.
    if (bytes.empty()) return fail(Error::invalid("refusing to send an empty message"));
    if (fds.size() > kMaxFdsHard)
        return fail(Error::invalid(
            fmt::format("{} fds exceed the kernel limit of {}", fds.size(), kMaxFdsHard)));
    iovec iov{const_cast<std::byte*>(bytes.data()), bytes.size()};
    msghdr mh{};
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    auto control = control_buffer(fds.size());
    if (!fds.empty()) {
        mh.msg_control = control.data();
        mh.msg_controllen = CMSG_SPACE(fds.size() * sizeof(int));
        cmsghdr* c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(fds.size() * sizeof(int));
        std::memcpy(CMSG_DATA(c), fds.data(), fds.size() * sizeof(int));
    }
    ssize_t n;
    do n = ::sendmsg(fd(), &mh, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    if (n < 0) {
        if (errno == EPIPE || errno == ECONNRESET) return fail(peer_closed("sendmsg"));
        return fail(Error::from_errno(
            fmt::format("sendmsg of {} bytes with {} fds", bytes.size(), fds.size())));
    }
    if (static_cast<std::size_t>(n) != bytes.size())
        return fail(Error{ErrorKind::System,
                          fmt::format("sendmsg sent {} of {} bytes", n, bytes.size()), EIO});
    return {};
}

Result<ReceivedBytes> UnixSocket::recv(std::span<std::byte> buffer, std::size_t max_fds,
                                       int timeout_ms) const {
    if (buffer.empty()) return fail(Error::invalid("recv needs a non-empty buffer"));
    max_fds = std::min<std::size_t>(max_fds, kMaxFdsHard);
    if (auto w = wait_readable(fd(), timeout_ms, "recvmsg"); !w) return fail(std::move(w.error()));

    iovec iov{buffer.data(), buffer.size()};
    msghdr mh{};
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    auto control = control_buffer(max_fds);
    if (!control.empty()) {
        mh.msg_control = control.data();
        mh.msg_controllen = CMSG_SPACE(max_fds * sizeof(int));
    }
    ssize_t n;
    do n = ::recvmsg(fd(), &mh, MSG_CMSG_CLOEXEC);
    while (n < 0 && errno == EINTR);
    if (n < 0) {
        if (errno == ECONNRESET) return fail(peer_closed("recvmsg"));
        return fail(Error::from_errno("recvmsg"));
    }

    // Take ownership of every fd that arrived before looking at anything else.
    ReceivedBytes out;
    bool foreign_control = false;
    const auto* control_end =
        reinterpret_cast<const unsigned char*>(control.data()) + mh.msg_controllen;
    for (cmsghdr* c = CMSG_FIRSTHDR(&mh); c != nullptr; c = CMSG_NXTHDR(&mh, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS ||
            c->cmsg_len < CMSG_LEN(0)) {
            foreign_control = true;
            continue;
        }
        const unsigned char* data = CMSG_DATA(c);
        std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        count = std::min(count, static_cast<std::size_t>(control_end - data) / sizeof(int));
        for (std::size_t i = 0; i < count; ++i) {
            int fd;
            std::memcpy(&fd, data + i * sizeof(int), sizeof fd);
            out.fds.emplace_back(fd);
        }
    }

    if (n == 0) return fail(peer_closed("recvmsg"));
    if (mh.msg_flags & MSG_TRUNC)
        return fail(
            Error{ErrorKind::Protocol,
                  fmt::format("received message is larger than the {}-byte limit", buffer.size()),
                  EMSGSIZE});
    // Control-space padding can leave room for one fd more than asked for, so count as well.
    if ((mh.msg_flags & MSG_CTRUNC) || out.fds.size() > max_fds)
        return fail(Error{ErrorKind::Protocol,
                          fmt::format("received message carries more than {} fds", max_fds),
                          EINVAL});
    if (foreign_control)
        return fail(Error{ErrorKind::Protocol, "received an unexpected control message", EINVAL});
    out.size = static_cast<std::size_t>(n);
    return out;
}

bool is_peer_closed(const Error& e) {
    return e.kind == ErrorKind::System && (e.errno_value == ECONNRESET || e.errno_value == EPIPE);
}

bool is_timeout(const Error& e) {
    return e.kind == ErrorKind::System && e.errno_value == ETIMEDOUT;
}

Status send_message(const UnixSocket& sock, const Message& msg, std::span<const int> fds,
                    const Capabilities& limits) {
    auto bytes = encode(msg, fds.size(), limits);
    if (!bytes) return fail(std::move(bytes.error()));
    return sock.send(*bytes, fds);
}

Result<ReceivedMessage> recv_message(const UnixSocket& sock, const Capabilities& limits,
                                     int timeout_ms) {
    if (auto v = validate_capabilities(limits); !v)
        return fail(std::move(v.error()).context("receive limits"));
    // No zero-fill: only the received prefix is ever read.
    auto buf = std::make_unique_for_overwrite<std::byte[]>(limits.max_msg_size);
    auto r = sock.recv(std::span<std::byte>(buf.get(), limits.max_msg_size), limits.max_msg_fds,
                       timeout_ms);
    if (!r) return fail(std::move(r.error()));
    auto m = decode(std::span<const std::byte>(buf.get(), r->size), r->fds.size(), limits);
    if (!m) return fail(std::move(m.error()));  // r->fds close here
    return ReceivedMessage{std::move(*m), std::move(r->fds)};
}

}  // namespace common::card
