#include "pci/config_space.hpp"

#include <cstring>

namespace hypervisor::pci {

ConfigSpace::ConfigSpace(const PciIds& ids) {
    auto put16 = [&](std::uint32_t o, std::uint16_t v) { std::memcpy(&data_[o], &v, 2); };
    put16(reg::VENDOR_ID, ids.vendor);
    put16(reg::DEVICE_ID, ids.device);
    data_[reg::REVISION_ID] = ids.revision;
    data_[reg::CLASS_PROG] = static_cast<std::uint8_t>(ids.class_code);
    data_[reg::CLASS_PROG + 1] = static_cast<std::uint8_t>(ids.class_code >> 8);
    data_[reg::CLASS_PROG + 2] = static_cast<std::uint8_t>(ids.class_code >> 16);
    put16(reg::SUBSYSTEM_VENDOR_ID, ids.subsystem_vendor);
    put16(reg::SUBSYSTEM_ID, ids.subsystem);
    // COMMAND: I/O, memory, bus master and INTx disable are writable.
    std::uint16_t cmd_mask = kCommandIo | kCommandMemory | kCommandMaster | kCommandIntxDisable;
    std::memcpy(&wmask_[reg::COMMAND], &cmd_mask, 2);
    wmask_[reg::INTERRUPT_LINE] = 0xff;
}

void ConfigSpace::set_interrupt_pin(std::uint8_t pin) { data_[reg::INTERRUPT_PIN] = pin; }

void ConfigSpace::add_bar(unsigned idx, std::uint64_t size, BarKind kind, std::uint64_t address,
                          bool prefetchable) {
    bars_.at(idx) = BarInfo{size, kind};
    std::uint32_t off = reg::BAR0 + idx * 4;
    std::uint64_t mask = ~(size - 1);
    std::uint32_t flags = kind == BarKind::Io ? 0x1 : (kind == BarKind::Mem64 ? 0x4 : 0x0);
    if (prefetchable && kind != BarKind::Io) flags |= 0x8;
    std::uint32_t lo = static_cast<std::uint32_t>(address & mask) | flags;
    std::uint32_t lo_mask = static_cast<std::uint32_t>(mask) & (kind == BarKind::Io ? ~0x3u : ~0xfu);
    std::memcpy(&data_[off], &lo, 4);
    std::memcpy(&wmask_[off], &lo_mask, 4);
    if (kind == BarKind::Mem64) {
        bars_.at(idx + 1) = BarInfo{};
        std::uint32_t hi = static_cast<std::uint32_t>(address >> 32);
        std::uint32_t hi_mask = static_cast<std::uint32_t>(mask >> 32);
        std::memcpy(&data_[off + 4], &hi, 4);
        std::memcpy(&wmask_[off + 4], &hi_mask, 4);
    }
}

std::uint8_t ConfigSpace::add_capability(std::span<const std::uint8_t> body,
                                         std::span<const std::uint8_t> write_mask) {
    std::uint8_t at = next_cap_at_;
    std::memcpy(&data_[at], body.data(), body.size());
    std::memcpy(&wmask_[at], write_mask.data(), write_mask.size());
    data_[at + 1] = 0;
    wmask_[at + 1] = 0;
    if (last_cap_) data_[last_cap_ + 1] = at;
    else data_[reg::CAPABILITIES_PTR] = at;
    data_[reg::STATUS] |= kStatusCapList;
    last_cap_ = at;
    next_cap_at_ = static_cast<std::uint8_t>((at + body.size() + 3) & ~3u);
    return at;
}

std::uint32_t ConfigSpace::dword(std::uint32_t off) const {
    std::uint32_t v;
    std::memcpy(&v, &data_[off & ~3u], 4);
    return v;
}

std::uint32_t ConfigSpace::read(std::uint32_t offset, unsigned size) const {
    if (offset >= data_.size() || (size != 1 && size != 2 && size != 4) || (offset & 3) + size > 4)
        return 0xffffffffu;
    std::uint32_t v = dword(offset) >> ((offset & 3) * 8);
    return size == 4 ? v : v & ((1u << (size * 8)) - 1);
}

void ConfigSpace::write(std::uint32_t offset, unsigned size, std::uint32_t value) {
    if (offset >= data_.size() || (size != 1 && size != 2 && size != 4) || (offset & 3) + size > 4)
        return;
    for (unsigned i = 0; i < size; ++i) {
        std::uint8_t m = wmask_[offset + i];
        std::uint8_t b = static_cast<std::uint8_t>(value >> (i * 8));
        data_[offset + i] = static_cast<std::uint8_t>((data_[offset + i] & ~m) | (b & m));
    }
}

std::uint16_t ConfigSpace::command() const {
    return static_cast<std::uint16_t>(read(reg::COMMAND, 2));
}

std::uint64_t ConfigSpace::bar_address(unsigned idx) const {
    const auto& b = bars_.at(idx);
    std::uint32_t lo = dword(reg::BAR0 + idx * 4);
    std::uint64_t addr = lo & (b.kind == BarKind::Io ? ~0x3u : ~0xfu);
    if (b.kind == BarKind::Mem64) addr |= std::uint64_t{dword(reg::BAR0 + (idx + 1) * 4)} << 32;
    return addr;
}

std::optional<std::uint64_t> ConfigSpace::bar_window(unsigned idx) const {
    const auto& b = bars_.at(idx);
    if (b.size == 0) return std::nullopt;
    std::uint16_t need = b.kind == BarKind::Io ? kCommandIo : kCommandMemory;
    if (!(command() & need)) return std::nullopt;
    std::uint64_t a = bar_address(idx);
    // An address of all ones (left by size probing) or zero is not a decode window.
    if (a == 0 || a == (~(b.size - 1) & (b.kind == BarKind::Mem64 ? ~0ull : 0xffffffffull) & ~0xfull))
        return std::nullopt;
    return a;
}

}  // namespace hypervisor::pci
