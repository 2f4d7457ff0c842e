#include "pci/msix.hpp"

#include <spdlog/spdlog.h>

#include <cstring>
#include <fmt/format.h>

#include "devices/bus.hpp"

namespace hypervisor::pci {

common::Result<std::unique_ptr<Msix>> Msix::create(MsiController& ctl, unsigned n) {
    if (n == 0 || n > 2048) return common::fail(common::Error::invalid(fmt::format("{} MSI-X vectors", n)));
    std::vector<Vector> v;
    v.reserve(n);
    for (unsigned i = 0; i < n; ++i) {
        auto efd = common::EventFd::create(true);
        if (!efd) return common::fail(std::move(efd.error()));
        auto gsi = ctl.allocate_gsi();
        if (!gsi) return common::fail(std::move(gsi.error()));
        v.push_back(Vector{std::move(*efd), *gsi});
    }
    return std::unique_ptr<Msix>(new Msix(ctl, std::move(v)));
}

std::uint8_t Msix::add_capability(ConfigSpace& cfg, std::uint8_t bir, std::uint32_t table_offset,
                                  std::uint32_t pba_offset) {
    std::uint16_t control = static_cast<std::uint16_t>(vec_.size() - 1);
    std::uint32_t table = table_offset | bir, pba = pba_offset | bir;
    std::uint8_t body[12] = {kCapIdMsix, 0, static_cast<std::uint8_t>(control), static_cast<std::uint8_t>(control >> 8)};
    std::memcpy(&body[4], &table, 4);
    std::memcpy(&body[8], &pba, 4);
    std::uint8_t mask[12] = {0, 0, 0, 0xc0};  // only enable and function mask are writable
    cap_ = cfg.add_capability(body, mask);
    return cap_;
}

void Msix::config_written(const ConfigSpace& cfg) {
    std::uint16_t control = static_cast<std::uint16_t>(cfg.read(cap_ + 2u, 2));
    std::lock_guard lock(mu_);
    bool en = control & kMsixEnable, fm = control & kMsixFunctionMask;
    if (en == enabled_ && fm == function_masked_) return;
    enabled_ = en;
    function_masked_ = fm;
    for (unsigned i = 0; i < vec_.size(); ++i) update_locked(i);
}

void Msix::table_read(std::uint64_t offset, std::span<std::uint8_t> data) {
    std::lock_guard lock(mu_);
    std::uint64_t i = offset / kMsixEntrySize, field = offset % kMsixEntrySize;
    if (i >= vec_.size() || (data.size() != 4 && data.size() != 8) || field % data.size()) {
        store_le(data, 0);
        return;
    }
    const auto& v = vec_[i];
    std::uint32_t words[4] = {v.addr_lo, v.addr_hi, v.data, v.ctrl};
    std::uint64_t val = words[field / 4];
    if (data.size() == 8) val |= std::uint64_t{words[field / 4 + 1]} << 32;
    store_le(data, val);
}

void Msix::table_write(std::uint64_t offset, std::span<const std::uint8_t> data) {
    std::lock_guard lock(mu_);
    std::uint64_t i = offset / kMsixEntrySize, field = offset % kMsixEntrySize;
    if (i >= vec_.size() || (data.size() != 4 && data.size() != 8) || field % data.size()) return;
    auto& v = vec_[i];
    std::uint64_t val = load_le(data);
    auto set = [&](std::uint64_t f, std::uint32_t w) {
        switch (f) {
            case 0: v.addr_lo = w; break;
            case 4: v.addr_hi = w; break;
            case 8: v.data = w; break;
            case 12: v.ctrl = w & 1; break;
        }
    };
    set(field, static_cast<std::uint32_t>(val));
    if (data.size() == 8) set(field + 4, static_cast<std::uint32_t>(val >> 32));
    update_locked(static_cast<unsigned>(i));
}

void Msix::pba_read(std::uint64_t offset, std::span<std::uint8_t> data) {
    std::lock_guard lock(mu_);
    std::uint64_t v = 0;
    for (std::size_t b = 0; b < data.size() * 8; ++b) {
        std::uint64_t i = offset * 8 + b;
        if (i >= vec_.size()) break;
        collect_pending_locked(static_cast<unsigned>(i));
        if (vec_[i].pending) v |= 1ull << b;
    }
    store_le(data, v);
}

void Msix::trigger(unsigned i) {
    if (i >= vec_.size()) return;
    (void)vec_[i].efd.signal();
}

// A signal that arrived while the vector was detached sits in its eventfd: move it to the PBA.
void Msix::collect_pending_locked(unsigned i) {
    auto& v = vec_[i];
    if (v.attached) return;
    auto n = v.efd.consume();
    if (n && *n) v.pending = true;
}

void Msix::update_locked(unsigned i) {
    auto& v = vec_[i];
    bool deliverable = enabled_ && !function_masked_ && !(v.ctrl & 1);
    std::uint64_t addr = (std::uint64_t{v.addr_hi} << 32) | v.addr_lo;
    if (deliverable) {
        if (addr != v.routed_addr || v.data != v.routed_data) {
            if (auto s = ctl_.set_route(v.gsi, addr, v.data); !s) {
                spdlog::warn("MSI-X vector {}: {}", i, s.error().message);
                return;
            }
            v.routed_addr = addr;
            v.routed_data = v.data;
        }
        if (!v.attached) {
            collect_pending_locked(i);
            if (auto s = ctl_.attach(v.gsi, v.efd.fd()); !s) {
                spdlog::warn("MSI-X vector {}: {}", i, s.error().message);
                return;
            }
            v.attached = true;
            if (v.pending) {  // deliver what arrived while masked
                v.pending = false;
                (void)v.efd.signal();
            }
        }
    } else if (v.attached) {
        if (auto s = ctl_.detach(v.gsi, v.efd.fd()); !s) spdlog::warn("MSI-X vector {}: {}", i, s.error().message);
        v.attached = false;
    }
}

}  // namespace hypervisor::pci
