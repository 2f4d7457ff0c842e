#include "nitro/remote_function.hpp"

#include <spdlog/spdlog.h>

#include <bit>
#include <cstring>

#include "devices/bus.hpp"

namespace hypervisor::nitro {

namespace card = common::card;
using common::Error;
using common::fail;
using common::Result;
using common::Status;

namespace {

constexpr int kCallTimeoutMs = 10000;
constexpr unsigned kMsixBar = 2;

template <typename T>
Result<T> expect_body(card::ReceivedMessage&& m, std::string_view what) {
    if (auto* e = std::get_if<card::ErrorReply>(&m.msg.body))
        return fail(Error{common::ErrorKind::Protocol, fmt::format("{}: the card answered errno {}", what, e->error),
                          static_cast<int>(e->error)});
    if (auto* t = std::get_if<T>(&m.msg.body)) return std::move(*t);
    return fail(Error{common::ErrorKind::Protocol, fmt::format("{}: unexpected reply", what), 0});
}

}  // namespace

RemoteFunction::RemoteFunction(RemoteDeviceSpec spec, card::UnixSocket sock, pci::ConfigSpace cfg,
                               IoEventRegistrar& ioevents)
    : spec_(std::move(spec)), sock_(std::move(sock)), cfg_(std::move(cfg)), ioevents_(ioevents) {}

RemoteFunction::~RemoteFunction() {
    std::lock_guard l(fd_mu_);
    unregister_io_fds_locked();
}

Result<card::ReceivedMessage> RemoteFunction::call(card::Body body, std::span<const int> fds) {
    std::lock_guard l(io_mu_);
    card::Message m{next_id_++, false, std::move(body)};
    if (auto s = card::send_message(sock_, m, fds, limits_); !s) return fail(std::move(s.error()));
    auto r = card::recv_message(sock_, limits_, kCallTimeoutMs);
    if (!r) return fail(std::move(r.error()));
    if (r->msg.id != m.id || !r->msg.is_reply() || r->msg.command() != m.command())
        return fail(Error{common::ErrorKind::Protocol, "reply does not match the request", 0});
    return r;
}

Result<std::shared_ptr<RemoteFunction>> RemoteFunction::connect(const RemoteDeviceSpec& spec,
                                                                const common::GuestMemory& mem,
                                                                pci::RootBus& bus, pci::MsiController& msi,
                                                                IoEventRegistrar& ioevents) {
    auto where = [&](std::string_view step) { return fmt::format("{} ({}): {}", spec.name, spec.socket_path, step); };
    auto sock = card::UnixSocket::connect(spec.socket_path);
    if (!sock) return fail(std::move(sock.error()).context(where("connecting to the card")));
    // Built with placeholder config space; the real one replaces it below.
    auto fn = std::shared_ptr<RemoteFunction>(
        new RemoteFunction(spec, std::move(*sock), pci::ConfigSpace(pci::PciIds{0xffff, 0xffff, 0}), ioevents));

    auto v = fn->call(card::VersionRequest{});
    if (!v) return fail(std::move(v.error()).context(where("VERSION")));
    auto vr = expect_body<card::VersionReply>(std::move(*v), where("VERSION"));
    if (!vr) return fail(std::move(vr.error()));
    auto agreed = card::negotiate(card::VersionInfo{}, vr->info);
    if (!agreed) return fail(std::move(agreed.error()).context(where("VERSION")));
    fn->limits_ = agreed->caps;

    for (const auto& r : mem.table().regions()) {
        card::DmaMapRequest dm;
        dm.offset = r.fd_offset;
        dm.addr = r.base;
        dm.size = r.size;
        int fd = mem.memfd().fd();
        auto m = fn->call(dm, std::span<const int>(&fd, 1));
        if (!m) return fail(std::move(m.error()).context(where("DMA_MAP")));
        if (auto b = expect_body<card::DmaMapReply>(std::move(*m), where("DMA_MAP")); !b) return fail(std::move(b.error()));
    }

    auto region = [&](std::uint32_t index) -> Result<card::RegionInfoReply> {
        auto m = fn->call(card::RegionInfoRequest{index});
        if (!m) return fail(std::move(m.error()));
        return expect_body<card::RegionInfoReply>(std::move(*m), where("DEVICE_GET_REGION_INFO"));
    };
    auto bar0 = region(card::kPciBar0RegionIndex);
    if (!bar0) return fail(std::move(bar0.error()));
    if (bar0->size < 0x2000 || !std::has_single_bit(bar0->size))
        return fail(Error::invalid(where(fmt::format("BAR0 of {:#x} bytes is not a power of two >= 8 KiB", bar0->size))));
    fn->bar0_size_ = bar0->size;

    auto cfg_read = fn->call(card::RegionReadRequest{card::kPciConfigRegionIndex, 0, 64});
    if (!cfg_read) return fail(std::move(cfg_read.error()).context(where("reading config space")));
    auto cfg_bytes = expect_body<card::RegionReadReply>(std::move(*cfg_read), where("reading config space"));
    if (!cfg_bytes) return fail(std::move(cfg_bytes.error()));
    if (cfg_bytes->data.size() != 64) return fail(Error::invalid(where("short config space")));
    auto u16 = [&](std::size_t o) {
        std::uint16_t x;
        std::memcpy(&x, cfg_bytes->data.data() + o, 2);
        return x;
    };
    auto u8 = [&](std::size_t o) { return static_cast<std::uint8_t>(cfg_bytes->data[o]); };
    pci::PciIds ids{u16(0), u16(2), (std::uint32_t{u8(0xb)} << 16) | (std::uint32_t{u8(0xa)} << 8) | u8(9),
                    u8(8), u16(0x2c), u16(0x2e)};

    auto irq = fn->call(card::IrqInfoRequest{card::kPciMsixIrqIndex});
    if (!irq) return fail(std::move(irq.error()).context(where("DEVICE_GET_IRQ_INFO")));
    auto irq_info = expect_body<card::IrqInfoReply>(std::move(*irq), where("DEVICE_GET_IRQ_INFO"));
    if (!irq_info) return fail(std::move(irq_info.error()));
    unsigned vectors = std::min<unsigned>(irq_info->count, spec.max_vectors);
    if (vectors == 0) return fail(Error::invalid(where("the device has no MSI-X vectors")));
    auto msix = pci::Msix::create(msi, vectors);
    if (!msix) return fail(std::move(msix.error()).context(where("MSI-X")));
    fn->msix_ = std::move(*msix);

    // Config space: the card's identity, BARs placed here, MSI-X in BAR2 owned by the vmm.
    fn->cfg_ = pci::ConfigSpace(ids);
    auto bar0_at = bus.allocate_mmio(bar0->size);
    if (!bar0_at) return fail(std::move(bar0_at.error()));
    std::uint64_t table = fn->msix_->table_bytes();
    std::uint64_t half = std::bit_ceil(std::max<std::uint64_t>(table, 2048));
    auto bar2_at = bus.allocate_mmio(2 * half);
    if (!bar2_at) return fail(std::move(bar2_at.error()));
    fn->cfg_.add_bar(0, bar0->size, pci::BarKind::Mem64, *bar0_at);
    fn->cfg_.add_bar(kMsixBar, 2 * half, pci::BarKind::Mem64, *bar2_at);
    fn->msix_->add_capability(fn->cfg_, kMsixBar, 0, static_cast<std::uint32_t>(half));

    std::vector<int> efds;
    for (unsigned i = 0; i < vectors; ++i) efds.push_back(fn->msix_->eventfd(i));
    card::SetIrqsRequest set;
    set.start = 0;
    set.count = vectors;
    auto s = fn->call(set, efds);
    if (!s) return fail(std::move(s.error()).context(where("DEVICE_SET_IRQS")));
    if (auto b = expect_body<card::SetIrqsReply>(std::move(*s), where("DEVICE_SET_IRQS")); !b)
        return fail(std::move(b.error()));
    if (auto r = fn->refresh_io_fds(); !r) return fail(std::move(r.error()).context(where("doorbell fds")));
    spdlog::info("{}: attached to the card at {}: {:04x}:{:04x}, BAR0 {} KiB at {:#x}, {} MSI-X vectors",
                 spec.name, spec.socket_path, ids.vendor, ids.device, bar0->size >> 10, *bar0_at, vectors);
    return fn;
}

Status RemoteFunction::refresh_io_fds() {
    auto m = call(card::RegionIoFdsRequest{card::kPciBar0RegionIndex, {}});
    if (!m) return fail(std::move(m.error()));
    auto fds = std::move(m->fds);
    auto reply = expect_body<card::RegionIoFdsReply>(std::move(*m), "DEVICE_GET_REGION_IO_FDS");
    if (!reply) return fail(std::move(reply.error()));
    std::vector<IoFd> next;
    for (const auto& e : reply->entries) {
        if (e.fd_index >= fds.size() || !fds[e.fd_index].valid() || e.offset >= bar0_size_ ||
            e.offset + std::max<std::uint64_t>(e.size, 1) > bar0_size_)
            return fail(Error{common::ErrorKind::Protocol, fmt::format("bad doorbell fd entry at {:#x}", e.offset), 0});
        next.push_back(IoFd{std::move(fds[e.fd_index]), e});
    }
    std::lock_guard l(fd_mu_);
    auto at = registered_at_;
    unregister_io_fds_locked();
    io_fds_ = std::move(next);
    register_io_fds_locked(at ? at : cfg_.bar_window(0));
    return {};
}

void RemoteFunction::register_io_fds_locked(std::optional<std::uint64_t> bar0) {
    registered_at_.reset();
    if (!bar0) return;
    for (auto& f : io_fds_) {
        auto dm = (f.entry.flags & card::kIoFdDatamatch) ? std::optional(f.entry.datamatch) : std::nullopt;
        if (auto s = ioevents_.add(f.fd.get(), *bar0 + f.entry.offset, static_cast<std::uint32_t>(f.entry.size), dm); !s)
            spdlog::warn("{}: doorbell at BAR0+{:#x} stays on the slow path: {}", spec_.name, f.entry.offset,
                         s.error().message);
    }
    registered_at_ = bar0;
}

void RemoteFunction::unregister_io_fds_locked() {
    if (!registered_at_) return;
    for (auto& f : io_fds_) {
        auto dm = (f.entry.flags & card::kIoFdDatamatch) ? std::optional(f.entry.datamatch) : std::nullopt;
        (void)ioevents_.remove(f.fd.get(), *registered_at_ + f.entry.offset, static_cast<std::uint32_t>(f.entry.size), dm);
    }
    registered_at_.reset();
}

void RemoteFunction::config_written(std::uint32_t) {
    msix_->config_written(cfg_);
    std::lock_guard l(fd_mu_);
    auto want = cfg_.bar_window(0);
    if (want == registered_at_) return;
    unregister_io_fds_locked();
    register_io_fds_locked(want);
}

void RemoteFunction::bar_read(unsigned bar, std::uint64_t offset, std::span<std::uint8_t> data) {
    if (bar == kMsixBar) {
        std::uint64_t half = cfg_.bar(kMsixBar).size / 2;
        if (offset < half) return msix_->table_read(offset, data);
        return msix_->pba_read(offset - half, data);
    }
    if (bar != 0 || broken_.load()) return store_le(data, ~0ull);
    slow_path_.fetch_add(1, std::memory_order_relaxed);
    auto m = call(card::RegionReadRequest{0, offset, static_cast<std::uint32_t>(data.size())});
    if (m) {
        if (auto r = expect_body<card::RegionReadReply>(std::move(*m), "REGION_READ"); r && r->data.size() == data.size()) {
            std::memcpy(data.data(), r->data.data(), data.size());
            return;
        }
    }
    if (!broken_.exchange(true))
        spdlog::error("{}: the card stopped answering ({}); the device reads as all ones", spec_.name,
                      m ? "bad reply" : m.error().message);
    store_le(data, ~0ull);
}

void RemoteFunction::bar_write(unsigned bar, std::uint64_t offset, std::span<const std::uint8_t> data) {
    if (bar == kMsixBar) {
        if (offset < cfg_.bar(kMsixBar).size / 2) msix_->table_write(offset, data);
        return;
    }
    if (bar != 0 || broken_.load()) return;
    slow_path_.fetch_add(1, std::memory_order_relaxed);
    card::RegionWriteRequest w{0, offset, {}};
    w.data.resize(data.size());
    std::memcpy(w.data.data(), data.data(), data.size());
    auto m = call(std::move(w));
    if (!m || !std::holds_alternative<card::RegionWriteReply>(m->msg.body)) {
        if (!broken_.exchange(true))
            spdlog::error("{}: the card stopped answering ({}); writes are dropped", spec_.name,
                          m ? "bad reply" : m.error().message);
        return;
    }
    for (auto o : spec_.refresh_offsets) {
        if (o != offset) continue;
        if (auto s = refresh_io_fds(); !s) spdlog::warn("{}: doorbell fds: {}", spec_.name, s.error().message);
        break;
    }
}

}  // namespace hypervisor::nitro
