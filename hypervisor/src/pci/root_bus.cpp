#include "pci/root_bus.hpp"

#include <spdlog/spdlog.h>

#include <fmt/format.h>

namespace hypervisor::pci {

namespace {

class BarWindow final : public BusDevice {
public:
    BarWindow(std::shared_ptr<Function> fn, unsigned bar) : fn_(std::move(fn)), bar_(bar) {}
    void read(std::uint64_t off, std::span<std::uint8_t> d) override { fn_->bar_read(bar_, off, d); }
    void write(std::uint64_t off, std::span<const std::uint8_t> d) override { fn_->bar_write(bar_, off, d); }

private:
    std::shared_ptr<Function> fn_;
    unsigned bar_;
};

class AddressPort final : public BusDevice {
public:
    AddressPort(std::mutex& mu, std::uint32_t& addr) : mu_(mu), addr_(addr) {}
    void read(std::uint64_t off, std::span<std::uint8_t> d) override {
        std::lock_guard l(mu_);
        if (off == 0 && d.size() == 4) store_le(d, addr_);
        else store_le(d, 0xffffffff);
    }
    void write(std::uint64_t off, std::span<const std::uint8_t> d) override {
        std::lock_guard l(mu_);
        if (off == 0 && d.size() == 4) addr_ = static_cast<std::uint32_t>(load_le(d)) & 0x80fffffcu;
    }

private:
    std::mutex& mu_;
    std::uint32_t& addr_;
};

class DataPort final : public BusDevice {
public:
    DataPort(RootBus& bus, std::mutex& mu, std::uint32_t& addr) : bus_(bus), mu_(mu), addr_(addr) {}
    void read(std::uint64_t off, std::span<std::uint8_t> d) override {
        auto a = current();
        if (!a) return store_le(d, ~0ull);
        store_le(d, bus_.config_read(a->dev, a->fn, a->reg + static_cast<std::uint32_t>(off), static_cast<unsigned>(d.size())));
    }
    void write(std::uint64_t off, std::span<const std::uint8_t> d) override {
        auto a = current();
        if (!a) return;
        bus_.config_write(a->dev, a->fn, a->reg + static_cast<std::uint32_t>(off), static_cast<unsigned>(d.size()),
                          static_cast<std::uint32_t>(load_le(d)));
    }

private:
    struct Target { unsigned dev, fn; std::uint32_t reg; };
    std::optional<Target> current() {
        std::lock_guard l(mu_);
        if (!(addr_ & 0x80000000u) || ((addr_ >> 16) & 0xff) != 0) return std::nullopt;  // bus 0 only
        return Target{(addr_ >> 11) & 0x1f, (addr_ >> 8) & 0x7, addr_ & 0xfc};
    }
    RootBus& bus_;
    std::mutex& mu_;
    std::uint32_t& addr_;
};

}  // namespace

RootBus::RootBus(Bus& mmio, std::uint64_t window_base, std::uint64_t window_end)
    : mmio_(mmio), next_mmio_(window_base), window_end_(window_end) {}

common::Result<std::uint64_t> RootBus::allocate_mmio(std::uint64_t size) {
    std::lock_guard l(mu_);
    if (size == 0 || (size & (size - 1)))
        return common::fail(common::Error::invalid(fmt::format("BAR size {:#x} is not a power of two", size)));
    std::uint64_t a = (next_mmio_ + size - 1) & ~(size - 1);
    if (a + size > window_end_) return common::fail(common::Error::invalid("PCI MMIO window is full"));
    next_mmio_ = a + size;
    return a;
}

common::Result<unsigned> RootBus::add(std::shared_ptr<Function> fn) {
    std::lock_guard l(mu_);
    for (unsigned d = 0; d < slots_.size(); ++d) {
        if (slots_[d].fn) continue;
        slots_[d].fn = std::move(fn);
        remap_locked(slots_[d]);
        spdlog::debug("pci 00:{:02x}.0: {}", d, slots_[d].fn->name());
        return d;
    }
    return common::fail(common::Error::invalid("PCI bus 0 is full"));
}

std::shared_ptr<BusDevice> RootBus::address_port() { return std::make_shared<AddressPort>(mu_, address_); }
std::shared_ptr<BusDevice> RootBus::data_port() { return std::make_shared<DataPort>(*this, mu_, address_); }

std::uint32_t RootBus::config_read(unsigned dev, unsigned fn, std::uint32_t offset, unsigned size) {
    std::lock_guard l(mu_);
    if (dev >= slots_.size() || fn != 0 || !slots_[dev].fn) return size == 4 ? 0xffffffffu : (1u << (size * 8)) - 1;
    return slots_[dev].fn->config().read(offset, size);
}

void RootBus::config_write(unsigned dev, unsigned fn, std::uint32_t offset, unsigned size, std::uint32_t v) {
    std::lock_guard l(mu_);
    if (dev >= slots_.size() || fn != 0 || !slots_[dev].fn) return;
    auto& s = slots_[dev];
    s.fn->config().write(offset, size, v);
    s.fn->config_written(offset);
    if (offset < reg::BAR0 + 24 || offset == reg::COMMAND) remap_locked(s);
}

void RootBus::remap_locked(Slot& s) {
    auto& cfg = s.fn->config();
    for (unsigned b = 0; b < 6; ++b) {
        if (cfg.bar(b).size == 0 || cfg.bar(b).kind == BarKind::Io) continue;
        auto want = cfg.bar_window(b);
        if (want == s.mapped[b]) continue;
        if (s.mapped[b]) mmio_.remove(*s.mapped[b]);
        s.mapped[b].reset();
        if (!want) continue;
        if (auto st = mmio_.add(*want, cfg.bar(b).size, std::make_shared<BarWindow>(s.fn, b)); !st) {
            spdlog::warn("{}: BAR{} at {:#x} not mapped: {}", s.fn->name(), b, *want, st.error().message);
            continue;
        }
        s.mapped[b] = want;
    }
}

HostBridge::HostBridge() : cfg_(PciIds{0x1d0f, 0x0200, 0x060000}) {}

}  // namespace hypervisor::pci
