#include "devices/bus.hpp"

#include <fmt/format.h>
#include <mutex>

namespace hypervisor {

common::Status Bus::add(std::uint64_t base, std::uint64_t len, std::shared_ptr<BusDevice> dev) {
    std::uint64_t last;
    if (len == 0) return common::fail(common::Error::invalid(fmt::format("{}: empty range at {:#x}", name_, base)));
    if (__builtin_add_overflow(base, len - 1, &last))
        return common::fail(common::Error::invalid(fmt::format("{}: range {:#x}+{:#x} overflows", name_, base, len)));
    std::unique_lock lock(mu_);
    auto next = ranges_.lower_bound(base);
    if (next != ranges_.end() && next->first <= last)
        return common::fail(common::Error::invalid(
            fmt::format("{}: range {:#x}+{:#x} overlaps {:#x}", name_, base, len, next->first)));
    if (next != ranges_.begin()) {
        auto prev = std::prev(next);
        if (prev->first + (prev->second.len - 1) >= base)
            return common::fail(common::Error::invalid(
                fmt::format("{}: range {:#x}+{:#x} overlaps {:#x}", name_, base, len, prev->first)));
    }
    ranges_.emplace(base, Range{len, std::move(dev)});
    return {};
}

bool Bus::remove(std::uint64_t base) {
    std::unique_lock lock(mu_);
    return ranges_.erase(base) > 0;
}

std::pair<std::shared_ptr<BusDevice>, std::uint64_t> Bus::lookup(std::uint64_t addr,
                                                                 std::uint64_t size) const {
    std::shared_lock lock(mu_);
    auto it = ranges_.upper_bound(addr);
    if (it == ranges_.begin()) return {nullptr, 0};
    --it;
    std::uint64_t off = addr - it->first;
    if (off >= it->second.len || size > it->second.len - off) return {nullptr, 0};
    return {it->second.dev, off};
}

bool Bus::read(std::uint64_t addr, std::span<std::uint8_t> data) const {
    auto [dev, off] = lookup(addr, data.size());
    if (!dev) return false;
    dev->read(off, data);
    return true;
}

bool Bus::write(std::uint64_t addr, std::span<const std::uint8_t> data) const {
    auto [dev, off] = lookup(addr, data.size());
    if (!dev) return false;
    dev->write(off, data);
    return true;
}

}  // namespace hypervisor
