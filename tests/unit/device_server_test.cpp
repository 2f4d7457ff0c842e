// The card's transport against a fake device, over a real socket: the vmm's side of the
// protocol as RemoteFunction speaks it, plus hostile messages.
#include <doctest/doctest.h>

#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <mutex>

#include "common/card_protocol.hpp"
#include "common/unix_socket.hpp"
#include "transport/device_server.hpp"

namespace card = common::card;

namespace {

class FakeDevice final : public nitro_card::Device {
public:
    FakeDevice() : bell_(*common::EventFd::create()) {}
    std::vector<std::uint8_t> config_header() const override {
        std::vector<std::uint8_t> h(64, 0);
        h[0] = 0x0f; h[1] = 0x1d; h[2] = 0x61; h[3] = 0x80;  // 1d0f:8061
        h[9] = 0x02; h[10] = 0x08; h[11] = 0x01;             // 01:08:02
        return h;
    }
    std::uint64_t bar0_size() const override { return 0x4000; }
    unsigned msix_vectors() const override { return 3; }
    void attach_memory(std::shared_ptr<const common::GuestMemory> m) override {
        std::lock_guard l(mu_);
        mem_ = std::move(m);
    }
    void detach_memory() override {
        std::lock_guard l(mu_);
        mem_.reset();
    }
    void set_irqs(std::vector<common::UniqueFd> irqs) override {
        std::lock_guard l(mu_);
        irqs_ = std::move(irqs);
    }
    std::uint64_t bar0_read(std::uint64_t offset, unsigned) override { return offset == 0x8 ? reg8_.load() : 0; }
    void bar0_write(std::uint64_t offset, unsigned, std::uint64_t v) override {
        if (offset == 0x8) reg8_.store(v);
        if (offset == 0x10) {  // "raise vector v" and "write a byte into guest RAM at 0x1000"
            std::lock_guard l(mu_);
            if (v < irqs_.size()) {
                std::uint64_t one = 1;
                (void)!::write(irqs_[v].get(), &one, 8);
            }
            if (mem_) (void)mem_->write_obj(common::GuestAddr(0x1000), std::uint8_t{0x5a});
        }
    }
    std::vector<nitro_card::Doorbell> doorbells() const override { return {{0x1008, 4, bell_.fd()}}; }
    void reset() override { resets_.fetch_add(1); }

    std::atomic<std::uint64_t> reg8_{0};
    std::atomic<int> resets_{0};
    common::EventFd bell_;

private:
    std::mutex mu_;
    std::shared_ptr<const common::GuestMemory> mem_;
    std::vector<common::UniqueFd> irqs_;
};

struct Client {
    card::UnixSocket sock;
    std::uint16_t id = 1;
    card::ReceivedMessage call(card::Body b, std::span<const int> fds = {}) {
        card::Message m{id++, false, std::move(b)};
        REQUIRE(card::send_message(sock, m, fds));
        auto r = card::recv_message(sock, {}, 5000);
        REQUIRE(r.has_value());
        CHECK(r->msg.id == m.id);
        return std::move(*r);
    }
};

std::string temp_socket() {
    return (std::filesystem::temp_directory_path() / ("nh-devsrv-" + std::to_string(::getpid()) + ".sock")).string();
}

}  // namespace

TEST_CASE("device server: the vmm's attach sequence, register access, doorbell and IRQ fds, guest RAM") {
    auto path = temp_socket();
    std::filesystem::remove(path);
    auto dev = std::make_shared<FakeDevice>();
    auto server = nitro_card::DeviceServer::start(path, dev);
    REQUIRE(server.has_value());
    auto sock = card::UnixSocket::connect(path);
    REQUIRE(sock.has_value());
    Client c{std::move(*sock)};

    auto v = c.call(card::VersionRequest{});
    REQUIRE(std::holds_alternative<card::VersionReply>(v.msg.body));

    auto mem = common::GuestMemory::create({{common::GuestAddr(0), 0x10000, 0}});
    REQUIRE(mem.has_value());
    int memfd = mem->memfd().fd();
    card::DmaMapRequest dm;
    dm.addr = common::GuestAddr(0);
    dm.size = 0x10000;
    auto d = c.call(dm, std::span<const int>(&memfd, 1));
    CHECK(std::holds_alternative<card::DmaMapReply>(d.msg.body));
    // The same range again overlaps: refused, and the server keeps serving.
    auto again = c.call(dm, std::span<const int>(&memfd, 1));
    CHECK(std::holds_alternative<card::ErrorReply>(again.msg.body));
    // A free range backed by another file would replace guest RAM under the mapped range:
    // refused, and the first file stays in use (the write through the device below lands in it).
    // (The other file is big enough for both ranges, so only its identity is wrong.)
    auto other = common::GuestMemory::create({{common::GuestAddr(0), 0x20000, 0}});
    REQUIRE(other.has_value());
    int other_fd = other->memfd().fd();
    card::DmaMapRequest elsewhere;
    elsewhere.offset = 0x10000;
    elsewhere.addr = common::GuestAddr(0x100000);
    elsewhere.size = 0x10000;
    auto swapped = c.call(elsewhere, std::span<const int>(&other_fd, 1));
    CHECK(std::holds_alternative<card::ErrorReply>(swapped.msg.body));

    auto cfg = c.call(card::RegionReadRequest{card::kPciConfigRegionIndex, 0, 64});
    auto* cr = std::get_if<card::RegionReadReply>(&cfg.msg.body);
    REQUIRE(cr);
    CHECK(static_cast<std::uint8_t>(cr->data[0]) == 0x0f);
    CHECK(static_cast<std::uint8_t>(cr->data[11]) == 0x01);

    auto irq = c.call(card::IrqInfoRequest{card::kPciMsixIrqIndex});
    REQUIRE(std::holds_alternative<card::IrqInfoReply>(irq.msg.body));
    CHECK(std::get<card::IrqInfoReply>(irq.msg.body).count == 3);
    auto e0 = *common::EventFd::create(), e1 = *common::EventFd::create(), e2 = *common::EventFd::create();
    int efds[3] = {e0.fd(), e1.fd(), e2.fd()};
    card::SetIrqsRequest set;
    set.count = 3;
    CHECK(std::holds_alternative<card::SetIrqsReply>(c.call(set, efds).msg.body));

    card::RegionWriteRequest w{0, 0x8, {}};
    w.data = {std::byte{0x34}, std::byte{0x12}, std::byte{0}, std::byte{0}};
    CHECK(std::holds_alternative<card::RegionWriteReply>(c.call(w).msg.body));
    auto rd = c.call(card::RegionReadRequest{0, 0x8, 4});
    auto* rr = std::get_if<card::RegionReadReply>(&rd.msg.body);
    REQUIRE(rr);
    std::uint32_t val;
    std::memcpy(&val, rr->data.data(), 4);
    CHECK(val == 0x1234);

    // The device raises vector 2 and writes guest RAM: both visible on this side.
    card::RegionWriteRequest kick{0, 0x10, {std::byte{2}, std::byte{0}, std::byte{0}, std::byte{0}}};
    c.call(kick);
    CHECK(*e2.consume() == 1);
    CHECK(*mem->read_obj<std::uint8_t>(common::GuestAddr(0x1000)) == 0x5a);

    // Doorbell fds come back and are the device's own eventfd.
    auto io = c.call(card::RegionIoFdsRequest{0, {}});
    auto* ir = std::get_if<card::RegionIoFdsReply>(&io.msg.body);
    REQUIRE(ir);
    REQUIRE(ir->entries.size() == 1);
    CHECK(ir->entries[0].offset == 0x1008);
    REQUIRE(io.fds.size() == 1);
    std::uint64_t one = 1;
    REQUIRE(::write(io.fds[0].get(), &one, 8) == 8);
    CHECK(*dev->bell_.consume() == 1);

    // Out-of-range register accesses and unknown regions are refused.
    CHECK(std::holds_alternative<card::ErrorReply>(c.call(card::RegionReadRequest{0, 0x4000, 4}).msg.body));
    CHECK(std::holds_alternative<card::ErrorReply>(c.call(card::RegionReadRequest{0, 0x8, 3}).msg.body));
    CHECK(std::holds_alternative<card::ErrorReply>(c.call(card::RegionReadRequest{5, 0, 4}).msg.body));

    // Garbage on the socket gets an error reply (or nothing, without a header); then normal service.
    std::byte junk[20] = {};
    junk[0] = std::byte{0x77};
    junk[2] = std::byte{0x63};  // command 99
    junk[4] = std::byte{20};
    REQUIRE(c.sock.send(junk));
    auto jr = card::recv_message(c.sock, {}, 5000);
    REQUIRE(jr.has_value());
    CHECK(std::holds_alternative<card::ErrorReply>(jr->msg.body));
    std::byte tiny[3] = {};
    REQUIRE(c.sock.send(tiny));
    CHECK(std::holds_alternative<card::RegionReadReply>(c.call(card::RegionReadRequest{0, 0x8, 4}).msg.body));

    // Disconnect: the device is reset and the server accepts the next client.
    int resets = dev->resets_.load();
    c.sock = card::UnixSocket();
    for (int i = 0; i < 100 && server->get()->has_client(); ++i) ::usleep(10000);
    CHECK_FALSE(server->get()->has_client());
    CHECK(dev->resets_.load() > resets);
    auto s2 = card::UnixSocket::connect(path);
    REQUIRE(s2.has_value());
    Client c2{std::move(*s2)};
    CHECK(std::holds_alternative<card::VersionReply>(c2.call(card::VersionRequest{}).msg.body));
    server->reset();
    std::filesystem::remove(path);
}
