#include "transport/device_server.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include <cerrno>
#include <cstring>

namespace nitro_card {

namespace card = common::card;
using common::Error;
using common::fail;

namespace {
constexpr int kPollMs = 200;
constexpr std::uint32_t kConfigRegionSize = 256;
constexpr std::uint32_t kPciRegions = 9;
constexpr std::uint32_t kIrqIndexes = 5;

// True when both descriptors open the same file (device and inode).
bool same_file(int a, int b) {
    struct stat sa {}, sb {};
    if (::fstat(a, &sa) != 0 || ::fstat(b, &sb) != 0) return false;
    return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}
}  // namespace

DeviceServer::DeviceServer(std::string path, card::UnixSocket listener, std::shared_ptr<Device> dev,
                           std::function<void()> on_idle)
    : path_(std::move(path)), listener_(std::move(listener)), device_(std::move(dev)), on_idle_(std::move(on_idle)) {}

common::Result<std::unique_ptr<DeviceServer>> DeviceServer::start(std::string socket_path, std::shared_ptr<Device> device,
                                                                  std::function<void()> on_idle) {
    auto l = card::UnixSocket::listen(socket_path);
    if (!l) return fail(std::move(l.error()));
    auto s = std::unique_ptr<DeviceServer>(new DeviceServer(std::move(socket_path), std::move(*l), std::move(device),
                                                            std::move(on_idle)));
    s->thread_ = std::thread([p = s.get()] { p->run(); });
    return s;
}

DeviceServer::~DeviceServer() {
    stop_.store(true);
    if (thread_.joinable()) thread_.join();
}

void DeviceServer::run() {
    while (!stop_.load()) {
        auto c = listener_.accept(kPollMs);
        if (!c) {
            if (!common::card::is_timeout(c.error())) spdlog::warn("{}: accept: {}", path_, c.error().message);
            continue;
        }
        connected_.store(true);
        served_.fetch_add(1);
        spdlog::info("{}: vmm connected", path_);
        serve(*c);
        // The client is gone: forget its memory and interrupts, back to power-on state.
        device_->set_irqs({});
        device_->detach_memory();
        device_->reset();
        dma_.clear();
        mem_.reset();
        memfd_.reset();
        limits_ = card::Capabilities{};
        connected_.store(false);
        spdlog::info("{}: vmm disconnected", path_);
        if (on_idle_) on_idle_();
    }
}

void DeviceServer::serve(const card::UnixSocket& client) {
    std::vector<std::byte> buf(card::kMaxMsgSizeHard);
    while (!stop_.load()) {
        auto r = client.recv(buf, limits_.max_msg_fds, kPollMs);
        if (!r) {
            if (card::is_timeout(r.error())) continue;
            if (!card::is_peer_closed(r.error())) spdlog::warn("{}: receive: {}", path_, r.error().message);
            return;
        }
        std::span<const std::byte> bytes(buf.data(), r->size);
        auto m = card::decode(bytes, r->fds.size(), limits_);
        if (!m) {
            auto h = card::parse_header(bytes);
            spdlog::warn("{}: refused a message: {}", path_, m.error().message);
            if (h) (void)card::send_message(client, card::error_reply(*h, m.error().errno_value), {}, limits_);
            continue;
        }
        if (m->is_reply()) {
            spdlog::warn("{}: refused an unsolicited reply", path_);
            continue;
        }
        std::vector<int> reply_fds;
        std::vector<common::UniqueFd> keep;  // fds that must stay open until the reply is sent
        auto reply = handle(*m, r->fds, reply_fds, keep);
        if (m->no_reply) continue;
        if (auto s = card::send_message(client, reply, reply_fds, limits_); !s) {
            spdlog::warn("{}: send: {}", path_, s.error().message);
            return;
        }
    }
}

card::Message DeviceServer::handle(const card::Message& m, std::vector<common::UniqueFd>& fds,
                                   std::vector<int>& reply_fds, std::vector<common::UniqueFd>& keep) {
    using R = card::Message;
    auto reply = [&](card::Body b) -> R { return card::make_reply(m, std::move(b)); };
    auto refuse = [&](int err, std::string_view why) -> R {
        spdlog::warn("{}: {} refused: {}", path_, card::command_name(m.command()), why);
        return card::error_reply(m, err);
    };
    (void)keep;
    return std::visit(
        [&](const auto& body) -> R {
            using T = std::decay_t<decltype(body)>;
            if constexpr (std::is_same_v<T, card::VersionRequest>) {
                auto agreed = card::negotiate(card::VersionInfo{}, body.info);
                if (!agreed) return refuse(agreed.error().errno_value ? agreed.error().errno_value : EINVAL, agreed.error().message);
                auto out = reply(card::VersionReply{*agreed});
                limits_ = agreed->caps;
                return out;
            } else if constexpr (std::is_same_v<T, card::DmaMapRequest>) {
                // Guest RAM is one file: the card rebuilds its view from the newest fd, so a
                // region from another file would silently replace what the others point at.
                if (!dma_.empty() && memfd_.valid() && !same_file(memfd_.get(), fds.at(0).get()))
                    return refuse(EINVAL, "DMA_MAP with a different file than the guest RAM mapped so far "
                                          "(unmap every region before switching files)");
                if (auto s = dma_.map(body); !s) return refuse(s.error().errno_value, s.error().message);
                // The new fd replaces the kept one only once the whole table maps with it: a
                // refused DMA_MAP must leave the earlier mappings (and DMA_UNMAP) working.
                common::UniqueFd fd = std::move(fds.at(0));
                auto memfd = common::MemFd::adopt(common::UniqueFd(::dup(fd.get())));
                if (!memfd) {
                    (void)dma_.unmap(body.addr, body.size);
                    return refuse(EINVAL, memfd.error().message);
                }
                auto mem = common::GuestMemory::attach(std::move(*memfd), dma_.memory_regions());
                if (!mem) {
                    (void)dma_.unmap(body.addr, body.size);
                    return refuse(EINVAL, mem.error().message);
                }
                memfd_ = std::move(fd);
                mem_ = std::make_shared<const common::GuestMemory>(std::move(*mem));
                device_->attach_memory(mem_);
                return reply(card::DmaMapReply{});
            } else if constexpr (std::is_same_v<T, card::DmaUnmapRequest>) {
                if (auto s = dma_.unmap(body.addr, body.size); !s) return refuse(s.error().errno_value, s.error().message);
                device_->detach_memory();
                mem_.reset();
                if (!dma_.empty() && memfd_.valid()) {
                    auto memfd = common::MemFd::adopt(common::UniqueFd(::dup(memfd_.get())));
                    if (memfd) {
                        if (auto mem = common::GuestMemory::attach(std::move(*memfd), dma_.memory_regions())) {
                            mem_ = std::make_shared<const common::GuestMemory>(std::move(*mem));
                            device_->attach_memory(mem_);
                        }
                    }
                }
                return reply(card::DmaUnmapReply{body.addr, body.size});
            } else if constexpr (std::is_same_v<T, card::DeviceGetInfoRequest>) {
                return reply(card::DeviceGetInfoReply{card::kDeviceFlagPci | card::kDeviceFlagReset, kPciRegions, kIrqIndexes});
            } else if constexpr (std::is_same_v<T, card::RegionInfoRequest>) {
                card::RegionInfoReply r;
                r.index = body.index;
                if (body.index == card::kPciBar0RegionIndex) {
                    r.size = device_->bar0_size();
                    r.flags = card::kRegionFlagRead | card::kRegionFlagWrite;
                } else if (body.index == card::kPciConfigRegionIndex) {
                    r.size = kConfigRegionSize;
                    r.flags = card::kRegionFlagRead | card::kRegionFlagWrite;
                }
                return reply(r);
            } else if constexpr (std::is_same_v<T, card::RegionIoFdsRequest>) {
                if (body.index != card::kPciBar0RegionIndex) return refuse(EINVAL, "doorbells live in BAR0 only");
                card::RegionIoFdsReply r;
                r.index = body.index;
                for (const auto& d : device_->doorbells()) {
                    r.entries.push_back(card::IoFdEntry{d.offset, d.size, static_cast<std::uint32_t>(reply_fds.size()), 0, 0});
                    reply_fds.push_back(d.eventfd);
                }
                return reply(std::move(r));
            } else if constexpr (std::is_same_v<T, card::IrqInfoRequest>) {
                card::IrqInfoReply r;
                r.index = body.index;
                if (body.index == card::kPciMsixIrqIndex) {
                    r.count = device_->msix_vectors();
                    r.flags = card::kIrqInfoEventfd | card::kIrqInfoNoresize;
                }
                return reply(r);
            } else if constexpr (std::is_same_v<T, card::SetIrqsRequest>) {
                if (body.index != card::kPciMsixIrqIndex) return refuse(EINVAL, "only MSI-X is offered");
                if (!(body.flags & card::kIrqSetActionTrigger)) return refuse(EINVAL, "only the trigger action is supported");
                if (body.flags & card::kIrqSetDataEventfd) {
                    if (body.start != 0 || body.count > device_->msix_vectors() || fds.size() != body.count)
                        return refuse(EINVAL, "eventfds must cover vectors 0..count-1");
                    device_->set_irqs(std::move(fds));
                } else {
                    device_->set_irqs({});
                }
                return reply(card::SetIrqsReply{});
            } else if constexpr (std::is_same_v<T, card::RegionReadRequest>) {
                card::RegionReadReply r{body.region, body.offset, {}};
                if (body.region == card::kPciConfigRegionIndex) {
                    if (body.offset >= kConfigRegionSize || body.count > kConfigRegionSize - body.offset)
                        return refuse(EINVAL, "config read out of range");
                    auto hdr = device_->config_header();
                    hdr.resize(kConfigRegionSize, 0);
                    r.data.resize(body.count);
                    std::memcpy(r.data.data(), hdr.data() + body.offset, body.count);
                    return reply(std::move(r));
                }
                if (body.region != card::kPciBar0RegionIndex) return refuse(EINVAL, "no such region");
                if ((body.count != 1 && body.count != 2 && body.count != 4 && body.count != 8) ||
                    body.offset >= device_->bar0_size() || body.count > device_->bar0_size() - body.offset)
                    return refuse(EINVAL, "register read of a bad size or place");
                std::uint64_t v = device_->bar0_read(body.offset, body.count);
                r.data.resize(body.count);
                std::memcpy(r.data.data(), &v, body.count);
                return reply(std::move(r));
            } else if constexpr (std::is_same_v<T, card::RegionWriteRequest>) {
                auto n = static_cast<std::uint32_t>(body.data.size());
                if (body.region == card::kPciConfigRegionIndex) return reply(card::RegionWriteReply{body.region, body.offset, n});
                if (body.region != card::kPciBar0RegionIndex) return refuse(EINVAL, "no such region");
                if ((n != 1 && n != 2 && n != 4 && n != 8) || body.offset >= device_->bar0_size() ||
                    n > device_->bar0_size() - body.offset)
                    return refuse(EINVAL, "register write of a bad size or place");
                std::uint64_t v = 0;
                std::memcpy(&v, body.data.data(), n);
                device_->bar0_write(body.offset, n, v);
                return reply(card::RegionWriteReply{body.region, body.offset, n});
            } else if constexpr (std::is_same_v<T, card::DeviceResetRequest>) {
                device_->reset();
                return reply(card::DeviceResetReply{});
            } else {
                return refuse(ENOSYS, "not a request this card serves");
            }
        },
        m.body);
}

}  // namespace nitro_card
