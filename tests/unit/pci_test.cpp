#include <doctest/doctest.h>

#include <unistd.h>

#include <map>

#include "devices/bus.hpp"
#include "devices/test_device.hpp"
#include "pci/config_space.hpp"
#include "pci/msix.hpp"
#include "pci/root_bus.hpp"

using namespace hypervisor;
using namespace hypervisor::pci;

namespace {

// Records what MSI-X asks of the platform; "delivers" an interrupt when an attached eventfd
// holds a count, as KVM's irqfd would.
class FakeMsi final : public MsiController {
public:
    common::Result<std::uint32_t> allocate_gsi() override { return next_++; }
    common::Status set_route(std::uint32_t gsi, std::uint64_t a, std::uint32_t d) override {
        routes[gsi] = {a, d};
        return {};
    }
    common::Status attach(std::uint32_t gsi, int fd) override {
        attached[gsi] = fd;
        return {};
    }
    common::Status detach(std::uint32_t gsi, int) override {
        attached.erase(gsi);
        return {};
    }
    // Drains attached eventfds into the delivered count.
    int deliver() {
        int n = 0;
        for (auto [gsi, fd] : attached) {
            std::uint64_t v = 0;
            if (::read(fd, &v, 8) == 8) n += static_cast<int>(v);
        }
        delivered += n;
        return n;
    }
    std::map<std::uint32_t, std::pair<std::uint64_t, std::uint32_t>> routes;
    std::map<std::uint32_t, int> attached;
    int delivered = 0;

private:
    std::uint32_t next_ = 24;
};

void w32(Msix& m, std::uint64_t off, std::uint32_t v) {
    std::uint8_t b[4];
    store_le(b, v);
    m.table_write(off, b);
}
std::uint32_t pba(Msix& m) {
    std::uint8_t b[8];
    m.pba_read(0, b);
    return static_cast<std::uint32_t>(load_le(b));
}

}  // namespace

TEST_CASE("bus: rejects empty, overflowing and overlapping ranges; dispatches by offset") {
    struct Rec : BusDevice {
        std::uint64_t last = ~0ull;
        void read(std::uint64_t o, std::span<std::uint8_t> d) override { store_le(d, o + 0x100); }
        void write(std::uint64_t o, std::span<const std::uint8_t>) override { last = o; }
    };
    Bus bus("test");
    auto d = std::make_shared<Rec>();
    CHECK(bus.add(0x1000, 0x100, d));
    CHECK_FALSE(bus.add(0x2000, 0, d));
    CHECK_FALSE(bus.add(~0ull - 4, 0x10, d));
    CHECK_FALSE(bus.add(0x10ff, 1, d));
    CHECK_FALSE(bus.add(0xf00, 0x101, d));
    CHECK(bus.add(0x1100, 0x10, d));
    std::uint8_t b[4];
    CHECK(bus.read(0x1010, b));
    CHECK(load_le(b) == 0x110);
    CHECK_FALSE(bus.read(0x10fe, b));  // straddles the end of the first range
    CHECK_FALSE(bus.read(0x2000, b));
    CHECK(bus.write(0x1104, std::span<const std::uint8_t>(b, 2)));
    CHECK(d->last == 4);
    CHECK(bus.remove(0x1100));
    CHECK_FALSE(bus.write(0x1104, std::span<const std::uint8_t>(b, 2)));
}

TEST_CASE("config space: read-only ids, masked writes, BAR size probing, capability list") {
    ConfigSpace cfg(PciIds{0x1234, 0x5678, 0x010802, 1});
    cfg.add_bar(0, 0x4000, BarKind::Mem64, 0xc0004000);
    CHECK(cfg.read(reg::VENDOR_ID, 2) == 0x1234);
    cfg.write(reg::VENDOR_ID, 4, 0);
    CHECK(cfg.read(reg::VENDOR_ID, 4) == 0x56781234);
    CHECK(cfg.read(0x09, 1) == 0x02);
    CHECK(cfg.read(0x0b, 1) == 0x01);
    CHECK(cfg.read(reg::BAR0, 4) == 0xc0004004);  // 64-bit memory BAR
    CHECK_FALSE(cfg.bar_window(0).has_value());   // memory decode off
    cfg.write(reg::COMMAND, 2, kCommandMemory | kCommandMaster);
    CHECK(cfg.bar_window(0) == 0xc0004000);
    cfg.write(reg::BAR0, 4, 0xffffffff);
    CHECK(cfg.read(reg::BAR0, 4) == 0xffffc004);  // size 16 KiB
    cfg.write(reg::BAR0 + 4, 4, 0xffffffff);
    CHECK(cfg.read(reg::BAR0 + 4, 4) == 0xffffffff);
    CHECK_FALSE(cfg.bar_window(0).has_value());   // all ones is no window
    cfg.write(reg::BAR0, 4, 0xd0000000);
    cfg.write(reg::BAR0 + 4, 4, 1);
    CHECK(cfg.bar_address(0) == 0x1d0000000);
    CHECK(cfg.read(0x100, 4) == 0xffffffff);      // beyond the 256 bytes
    CHECK(cfg.read(reg::COMMAND + 1, 4) == 0xffffffff);  // crosses a dword

    std::uint8_t cap[4] = {0x09, 0, 0xab, 0xcd}, mask[4] = {0, 0, 0xff, 0};
    auto at = cfg.add_capability(cap, mask);
    auto at2 = cfg.add_capability(cap, mask);
    CHECK((cfg.read(reg::STATUS, 2) & kStatusCapList) != 0);
    CHECK(cfg.read(reg::CAPABILITIES_PTR, 1) == at);
    CHECK(cfg.read(at + 1u, 1) == at2);
    CHECK(cfg.read(at2 + 1u, 1) == 0);
    cfg.write(at + 2u, 2, 0x1111);
    CHECK(cfg.read(at + 2u, 2) == 0xcd11);
}

TEST_CASE("MSI-X: delivered only when enabled and unmasked; masked signals become pending") {
    FakeMsi ctl;
    ConfigSpace cfg(PciIds{1, 2, 3});
    auto m = Msix::create(ctl, 2);
    REQUIRE(m.has_value());
    auto& msix = **m;
    auto cap = msix.add_capability(cfg, 1, 0, 0x800);
    CHECK(cfg.read(cap, 1) == kCapIdMsix);
    CHECK((cfg.read(cap + 2u, 2) & 0x7ff) == 1);  // table size - 1

    // Vector 0 programmed but MSI-X still disabled: nothing is attached.
    w32(msix, 0, 0xfee00000);
    w32(msix, 8, 0x41);
    w32(msix, 12, 0);
    CHECK(ctl.attached.empty());
    cfg.write(cap + 2u, 2, kMsixEnable);
    msix.config_written(cfg);
    REQUIRE(ctl.attached.size() == 1);
    CHECK(ctl.routes.begin()->second.second == 0x41);
    msix.trigger(0);
    CHECK(ctl.deliver() == 1);

    // Entry mask: the trigger stays pending and shows in the PBA, then arrives on unmask.
    w32(msix, 12, 1);
    CHECK(ctl.attached.empty());
    msix.trigger(0);
    CHECK(ctl.deliver() == 0);
    CHECK((pba(msix) & 1) == 1);
    w32(msix, 12, 0);
    CHECK((pba(msix) & 1) == 0);
    CHECK(ctl.deliver() == 1);

    // Function mask holds every vector.
    cfg.write(cap + 2u, 2, kMsixEnable | kMsixFunctionMask);
    msix.config_written(cfg);
    msix.trigger(0);
    CHECK(ctl.deliver() == 0);
    cfg.write(cap + 2u, 2, kMsixEnable);
    msix.config_written(cfg);
    CHECK(ctl.deliver() == 1);

    // Rerouting while unmasked updates the route.
    w32(msix, 8, 0x42);
    CHECK(ctl.routes.begin()->second.second == 0x42);
    // Bad accesses: beyond the table, odd sizes.
    std::uint8_t b2[2] = {0xff, 0xff};
    msix.table_write(0x1000, std::span<const std::uint8_t>(b2, 2));
    msix.table_write(0, std::span<const std::uint8_t>(b2, 2));
    std::uint8_t r[4];
    msix.table_read(0, r);
    CHECK(load_le(r) == 0xfee00000);
    CHECK(ctl.delivered == 3);
}

TEST_CASE("root bus: type-1 config access, BAR windows follow the command register") {
    FakeMsi ctl;
    Bus mmio("mmio");
    RootBus bus(mmio, 0xc0000000, 0xfec00000);
    REQUIRE(bus.add(std::make_shared<HostBridge>()).has_value());
    auto dev = TestDevice::create(bus, ctl);
    REQUIRE(dev.has_value());
    auto slot = bus.add(*dev);
    REQUIRE(slot.has_value());
    CHECK(*slot == 1);
    auto addr = bus.address_port();
    auto data = bus.data_port();
    auto cfg_read = [&](unsigned d, std::uint32_t off) {
        std::uint8_t a[4], v[4];
        store_le(a, 0x80000000u | (d << 11) | off);
        addr->write(0, a);
        data->read(0, v);
        return static_cast<std::uint32_t>(load_le(v));
    };
    CHECK(cfg_read(1, 0) == 0x7e571234);
    CHECK(cfg_read(5, 0) == 0xffffffff);  // empty slot
    std::uint32_t bar0 = cfg_read(1, reg::BAR0);
    CHECK(bar0 >= 0xc0000000);
    std::uint8_t v[4];
    CHECK_FALSE(mmio.read(bar0, v));  // decode off
    bus.config_write(1, 0, reg::COMMAND, 2, kCommandMemory | kCommandMaster);
    REQUIRE(mmio.read(bar0, v));
    CHECK(load_le(v) == kTestDeviceId);
    // Moving the BAR moves the window.
    bus.config_write(1, 0, reg::BAR0, 4, 0xd0000000);
    CHECK_FALSE(mmio.read(bar0, v));
    CHECK(mmio.read(0xd0000000, v));
    bus.config_write(1, 0, reg::COMMAND, 2, 0);
    CHECK_FALSE(mmio.read(0xd0000000, v));
}
