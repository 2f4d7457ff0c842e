#include "xen_model/grant/grant_table.hpp"

#include <atomic>
#include <utility>

#include <fmt/format.h>

namespace xen_model::grant {

using common::Error;
using common::ErrorKind;
using common::fail;
using common::Result;

namespace {

Error refused(std::uint32_t ref, std::string why) {
    return Error{ErrorKind::GuestFault, fmt::format("grant ref {}: {}", ref, why), 0};
}

// A guest that rewrites its entry faster than we can claim it gets an error, not a spin.
constexpr int kClaimAttempts = 16;

}  // namespace

GrantMapping::GrantMapping(GrantMapping&& o) noexcept
    : table_(std::exchange(o.table_, nullptr)),
      ref_(o.ref_),
      access_(o.access_),
      page_(std::exchange(o.page_, {})),
      gpa_(o.gpa_) {}

GrantMapping& GrantMapping::operator=(GrantMapping&& o) noexcept {
    if (this != &o) {
        release();
        table_ = std::exchange(o.table_, nullptr);
        ref_ = o.ref_;
        access_ = o.access_;
        page_ = std::exchange(o.page_, {});
        gpa_ = o.gpa_;
    }
    return *this;
}

void GrantMapping::release() noexcept {
    if (table_ == nullptr) return;
    std::exchange(table_, nullptr)->unpin(ref_, access_);
    page_ = {};
}

Result<std::unique_ptr<GrantTable>> GrantTable::create(const common::GuestMemory& mem, common::GuestAddr table_gpa,
                                                       std::uint32_t frames, std::vector<common::MemoryRegion> ram,
                                                       std::uint16_t backend_domid) {
    if (frames == 0 || frames > abi::kGrantFramesMax) {
        return fail(Error::invalid(fmt::format("grant table of {} frames", frames)));
    }
    if (table_gpa.value() % abi::kPageSize != 0) {
        return fail(Error::invalid(fmt::format("grant table at {:#x} is not page aligned", table_gpa.value())));
    }
    auto s = mem.slice(table_gpa, std::uint64_t{frames} * abi::kPageSize);
    if (!s) return fail(std::move(s.error()).context("grant table"));
    return std::unique_ptr<GrantTable>(new GrantTable(mem, *s, std::move(ram), backend_domid));
}

GrantTable::GrantTable(const common::GuestMemory& mem, std::span<std::byte> table,
                       std::vector<common::MemoryRegion> ram, std::uint16_t domid)
    : mem_(mem),
      table_(table),
      entries_(static_cast<std::uint32_t>(table.size() / sizeof(abi::GrantEntryV1))),
      ram_(std::move(ram)),
      domid_(domid) {}

GrantTable::~GrantTable() = default;

std::uint32_t* GrantTable::word(std::uint32_t ref) const noexcept {
    // flags (low half) and domid (high half) of entry ref, little-endian, 4-byte aligned.
    return reinterpret_cast<std::uint32_t*>(table_.data() + std::size_t{ref} * sizeof(abi::GrantEntryV1));
}

bool GrantTable::in_ram(std::uint64_t gpa) const noexcept {
    for (const auto& r : ram_) {
        const std::uint64_t b = r.base.value();
        if (gpa >= b && gpa - b < r.size && r.size - (gpa - b) >= abi::kPageSize) return true;
    }
    return false;
}

Result<GrantMapping> GrantTable::map(std::uint32_t ref, Access access) {
    if (ref >= entries_) {
        std::lock_guard lk(mu_);
        ++stats_.refused;
        return fail(refused(ref, fmt::format("past the table ({} entries)", entries_)));
    }
    const bool write = access == Access::Write;
    const std::uint16_t must_be_clear =
        abi::kGtfTypeMask | abi::kGtfSubPage | (write ? abi::kGtfReadonly : std::uint16_t{0});
    const std::uint32_t claim = abi::kGtfReading | (write ? abi::kGtfWriting : 0u);

    std::lock_guard lk(mu_);
    // GUEST-SHARED: the entry. Check a copy, then claim it only if it is still that copy.
    std::atomic_ref<std::uint32_t> w(*word(ref));
    std::uint32_t cur = w.load(std::memory_order_acquire);
    bool claimed = false;
    for (int i = 0; i < kClaimAttempts && !claimed; ++i) {
        const auto flags = static_cast<std::uint16_t>(cur & 0xffff);
        const auto domid = static_cast<std::uint16_t>(cur >> 16);
        if ((flags & must_be_clear) != abi::kGtfPermitAccess) {
            ++stats_.refused;
            if ((flags & abi::kGtfTypeMask) != abi::kGtfPermitAccess) {
                return fail(refused(ref, fmt::format("not permit_access (flags {:#x})", flags)));
            }
            if (flags & abi::kGtfSubPage) return fail(refused(ref, "sub-page grants are not supported"));
            return fail(refused(ref, "read-only grant for a page dom0 writes"));
        }
        if (domid != domid_) {
            ++stats_.refused;
            return fail(refused(ref, fmt::format("granted to domain {}, not {}", domid, domid_)));
        }
        claimed = w.compare_exchange_weak(cur, cur | claim, std::memory_order_acq_rel, std::memory_order_acquire);
    }
    if (!claimed) {
        ++stats_.refused;
        return fail(refused(ref, "entry kept changing while being claimed"));
    }
    Pin& pin = pins_[ref];
    ++pin.readers;
    if (write) ++pin.writers;

    // The frame is read once, after the claim (Xen reads it after setting the status too).
    auto* entry = reinterpret_cast<abi::GrantEntryV1*>(word(ref));
    const std::uint32_t frame = std::atomic_ref<std::uint32_t>(entry->frame).load(std::memory_order_acquire);
    const std::uint64_t gpa = std::uint64_t{frame} * abi::kPageSize;
    std::span<std::byte> page;
    if (in_ram(gpa)) {
        if (auto s = mem_.slice(common::GuestAddr(gpa), abi::kPageSize)) page = *s;
    }
    if (page.empty()) {
        ++stats_.refused;
        unpin_locked(ref, access);
        return fail(refused(ref, fmt::format("frame {:#x} is not guest RAM", frame)));
    }
    ++stats_.maps;
    return GrantMapping(this, ref, access, page, common::GuestAddr(gpa));
}

void GrantTable::unpin(std::uint32_t ref, Access access) noexcept {
    std::lock_guard lk(mu_);
    unpin_locked(ref, access);
}

void GrantTable::unpin_locked(std::uint32_t ref, Access access) noexcept {
    auto it = pins_.find(ref);
    if (it == pins_.end()) return;
    Pin& pin = it->second;
    std::uint32_t clear = 0;
    if (pin.readers > 0) --pin.readers;
    if (access == Access::Write && pin.writers > 0) --pin.writers;
    if (pin.writers == 0) clear |= abi::kGtfWriting;
    if (pin.readers == 0) {
        clear |= abi::kGtfReading;
        pins_.erase(it);
    }
    std::atomic_ref<std::uint32_t>(*word(ref)).fetch_and(~clear, std::memory_order_acq_rel);
}

std::size_t GrantTable::pinned() const {
    std::lock_guard lk(mu_);
    return pins_.size();
}

GrantStats GrantTable::stats() const {
    std::lock_guard lk(mu_);
    return stats_;
}

}  // namespace xen_model::grant
