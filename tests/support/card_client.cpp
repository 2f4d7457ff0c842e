#include "support/card_client.hpp"

#include <cstring>
#include <stdexcept>
#include <thread>

#include <fmt/format.h>

namespace testsupport {

namespace card = common::card;
using common::Error;
using common::ErrorKind;
using common::fail;
using common::Result;
using common::Status;

namespace {

int ms(std::chrono::milliseconds d) {
    return static_cast<int>(d.count());
}

template <typename T>
Result<T> body_as(card::ReceivedMessage&& m) {
    const std::string_view what = card::command_name(T::kCommand);
    if (const auto* e = std::get_if<card::ErrorReply>(&m.msg.body))
        return fail(Error{ErrorKind::Protocol,
                          fmt::format("{}: the card answered errno {} ({})", what, e->error,
                                      std::strerror(static_cast<int>(e->error))),
                          static_cast<int>(e->error)});
    if (auto* t = std::get_if<T>(&m.msg.body)) return std::move(*t);
    return fail(Error{ErrorKind::Protocol, fmt::format("{}: unexpected reply", what), 0});
}

}  // namespace

Result<CardClient> CardClient::connect(const std::string& path, std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
        auto s = card::UnixSocket::connect(path);
        if (s) return CardClient(std::move(*s));
        if (std::chrono::steady_clock::now() >= deadline)
            return fail(std::move(s.error()).context("connecting to the card"));
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
}

Result<card::ReceivedMessage> CardClient::call(card::Body body, std::span<const int> fds) {
    card::Message m{next_id_++, false, std::move(body)};
    if (auto s = card::send_message(sock_, m, fds, limits_); !s) return fail(std::move(s.error()));
    auto r = card::recv_message(sock_, limits_, ms(kCallTimeout));
    if (!r) return fail(std::move(r.error()).context(card::command_name(m.command())));
    if (r->msg.id != m.id || !r->msg.is_reply() || r->msg.command() != m.command())
        return fail(Error{ErrorKind::Protocol,
                          fmt::format("{}: reply id {} does not match request id {}",
                                      card::command_name(m.command()), r->msg.id, m.id),
                          0});
    return r;
}

Result<card::VersionInfo> CardClient::version() {
    auto m = call(card::VersionRequest{});
    if (!m) return fail(std::move(m.error()));
    auto v = body_as<card::VersionReply>(std::move(*m));
    if (!v) return fail(std::move(v.error()));
    // Both sides compute the same answer; the client checks it by negotiating again.
    auto agreed = card::negotiate(card::VersionInfo{}, v->info);
    if (!agreed) return fail(std::move(agreed.error()));
    if (*agreed != v->info)
        return fail(Error{ErrorKind::Protocol, "VERSION: the card's answer is not negotiated", 0});
    limits_ = agreed->caps;
    return *agreed;
}

Status CardClient::dma_map(int memfd, std::uint64_t fd_offset, common::GuestAddr addr,
                           std::uint64_t size) {
    card::DmaMapRequest req;
    req.offset = fd_offset;
    req.addr = addr;
    req.size = size;
    auto m = call(req, std::span<const int>(&memfd, 1));
    if (!m) return fail(std::move(m.error()));
    if (auto r = body_as<card::DmaMapReply>(std::move(*m)); !r) return fail(std::move(r.error()));
    return {};
}

Status CardClient::dma_map(const common::GuestMemory& mem) {
    for (const auto& r : mem.table().regions())
        if (auto s = dma_map(mem.memfd().fd(), r.fd_offset, r.base, r.size); !s) return s;
    return {};
}

Status CardClient::dma_unmap(common::GuestAddr addr, std::uint64_t size) {
    auto m = call(card::DmaUnmapRequest{addr, size});
    if (!m) return fail(std::move(m.error()));
    auto r = body_as<card::DmaUnmapReply>(std::move(*m));
    if (!r) return fail(std::move(r.error()));
    if (r->addr != addr || r->size != size)
        return fail(Error{ErrorKind::Protocol, "DMA_UNMAP: reply for another range", 0});
    return {};
}

Result<card::DeviceGetInfoReply> CardClient::device_info() {
    auto m = call(card::DeviceGetInfoRequest{});
    if (!m) return fail(std::move(m.error()));
    return body_as<card::DeviceGetInfoReply>(std::move(*m));
}

Result<card::RegionInfoReply> CardClient::region_info(std::uint32_t index) {
    auto m = call(card::RegionInfoRequest{index});
    if (!m) return fail(std::move(m.error()));
    return body_as<card::RegionInfoReply>(std::move(*m));
}

Result<card::IrqInfoReply> CardClient::irq_info(std::uint32_t index) {
    auto m = call(card::IrqInfoRequest{index});
    if (!m) return fail(std::move(m.error()));
    return body_as<card::IrqInfoReply>(std::move(*m));
}

Status CardClient::set_irqs(std::span<const int> eventfds) {
    card::SetIrqsRequest req;
    req.start = 0;
    req.count = static_cast<std::uint32_t>(eventfds.size());
    auto m = call(req, eventfds);
    if (!m) return fail(std::move(m.error()));
    if (auto r = body_as<card::SetIrqsReply>(std::move(*m)); !r) return fail(std::move(r.error()));
    return {};
}

Result<std::vector<std::byte>> CardClient::region_read(std::uint32_t region, std::uint64_t offset,
                                                       std::uint32_t count) {
    auto m = call(card::RegionReadRequest{region, offset, count});
    if (!m) return fail(std::move(m.error()));
    auto r = body_as<card::RegionReadReply>(std::move(*m));
    if (!r) return fail(std::move(r.error()));
    if (r->region != region || r->offset != offset || r->data.size() != count)
        return fail(Error{ErrorKind::Protocol, "REGION_READ: reply for another range", 0});
    return std::move(r->data);
}

Status CardClient::region_write(std::uint32_t region, std::uint64_t offset,
                                std::span<const std::byte> data) {
    card::RegionWriteRequest req{region, offset, {data.begin(), data.end()}};
    auto m = call(std::move(req));
    if (!m) return fail(std::move(m.error()));
    auto r = body_as<card::RegionWriteReply>(std::move(*m));
    if (!r) return fail(std::move(r.error()));
    if (r->count != data.size())
        return fail(Error{ErrorKind::Protocol, "REGION_WRITE: short write", 0});
    return {};
}

Result<IoFds> CardClient::region_io_fds(std::uint32_t region) {
    auto m = call(card::RegionIoFdsRequest{region, {}});
    if (!m) return fail(std::move(m.error()));
    auto fds = std::move(m->fds);
    auto r = body_as<card::RegionIoFdsReply>(std::move(*m));
    if (!r) return fail(std::move(r.error()));
    return IoFds{std::move(r->entries), std::move(fds)};
}

Status CardClient::send_raw(std::span<const std::byte> bytes) const {
    return sock_.send(bytes);
}

Result<std::vector<std::byte>> CardClient::recv_raw(std::chrono::milliseconds timeout) const {
    std::vector<std::byte> buf(card::kMaxMsgSizeHard);
    auto r = sock_.recv(buf, card::kMaxFdsHard, ms(timeout));
    if (!r) return fail(std::move(r.error()));
    buf.resize(r->size);
    return buf;
}

std::uint32_t CardRegisters::read32(std::uint64_t offset) {
    auto r = client_.region_read(card::kPciBar0RegionIndex, offset, 4);
    if (!r)
        throw std::runtime_error(fmt::format("BAR0 read at {:#x}: {}", offset, r.error().message));
    std::uint32_t v;
    std::memcpy(&v, r->data(), sizeof v);
    return v;
}

void CardRegisters::write32(std::uint64_t offset, std::uint32_t value) {
    std::byte b[4];
    std::memcpy(b, &value, sizeof b);
    if (auto s = client_.region_write(card::kPciBar0RegionIndex, offset, b); !s)
        throw std::runtime_error(fmt::format("BAR0 write at {:#x}: {}", offset, s.error().message));
}

}  // namespace testsupport
