#include "common/guest_memory.hpp"

#include <sys/mman.h>

#include <algorithm>
#include <fmt/format.h>

namespace common {

namespace {
constexpr std::uint64_t kPage = 4096;

bool overlaps(std::uint64_t a, std::uint64_t alen, std::uint64_t b, std::uint64_t blen) {
    return a < b + blen && b < a + alen;
}
}  // namespace

Result<RegionTable> RegionTable::validate(std::vector<MemoryRegion> regions, std::uint64_t fd_size) {
    if (regions.empty()) return fail(Error::invalid("guest memory needs at least one region"));
    std::sort(regions.begin(), regions.end(),
              [](const auto& a, const auto& b) { return a.base < b.base; });
    for (std::size_t i = 0; i < regions.size(); ++i) {
        const auto& r = regions[i];
        std::uint64_t end, fd_end;
        if (r.size == 0) return fail(Error::invalid(fmt::format("region {} is empty", i)));
        if (r.base.value() % kPage || r.size % kPage || r.fd_offset % kPage)
            return fail(Error::invalid(fmt::format("region {:#x}+{:#x} is not page aligned",
                                                   r.base.value(), r.size)));
        if (__builtin_add_overflow(r.base.value(), r.size, &end) ||
            __builtin_add_overflow(r.fd_offset, r.size, &fd_end))
            return fail(Error::invalid(fmt::format("region {:#x}+{:#x} overflows", r.base.value(), r.size)));
        if (fd_end > fd_size)
            return fail(Error::invalid(fmt::format(
                "region {:#x}+{:#x} at memfd offset {:#x} exceeds the memfd size {:#x}",
                r.base.value(), r.size, r.fd_offset, fd_size)));
        for (std::size_t j = 0; j < i; ++j) {
            const auto& q = regions[j];
            if (overlaps(r.base.value(), r.size, q.base.value(), q.size))
                return fail(Error::invalid(fmt::format("regions at {:#x} and {:#x} overlap",
                                                       q.base.value(), r.base.value())));
            if (overlaps(r.fd_offset, r.size, q.fd_offset, q.size))
                return fail(Error::invalid(fmt::format(
                    "regions at {:#x} and {:#x} share memfd bytes", q.base.value(), r.base.value())));
        }
    }
    RegionTable t;
    t.regions_ = std::move(regions);
    return t;
}

const MemoryRegion* RegionTable::find(GuestAddr gpa, std::uint64_t len) const {
    if (len == 0) len = 1;
    std::uint64_t last;
    if (__builtin_add_overflow(gpa.value(), len - 1, &last)) return nullptr;
    for (const auto& r : regions_) {
        std::uint64_t b = r.base.value();
        if (gpa.value() >= b && last <= b + (r.size - 1)) return &r;
    }
    return nullptr;
}

std::uint64_t RegionTable::total_size() const {
    std::uint64_t s = 0;
    for (const auto& r : regions_) s += r.size;
    return s;
}

Result<GuestMemory> GuestMemory::create(std::vector<MemoryRegion> regions) {
    std::uint64_t total = 0;
    for (auto& r : regions) {
        r.fd_offset = total;
        total += r.size;
    }
    auto fd = MemFd::create("guest-ram", total);
    if (!fd) return fail(std::move(fd.error()).context("creating guest RAM"));
    return attach(std::move(*fd), std::move(regions));
}

Result<GuestMemory> GuestMemory::attach(MemFd fd, std::vector<MemoryRegion> regions) {
    auto table = RegionTable::validate(std::move(regions), fd.size());
    if (!table) return fail(std::move(table.error()));
    auto map = Mmap::map_shared(fd.fd(), fd.size(), 0, PROT_READ | PROT_WRITE);
    if (!map) return fail(std::move(map.error()).context("mapping guest RAM"));
    // Guest RAM must not end up in core dumps or be merged; advisory only.
    (void)::madvise(map->data(), map->size(), MADV_DONTDUMP);
    return GuestMemory(std::move(fd), std::move(*map), std::move(*table));
}

Result<std::span<std::byte>> GuestMemory::slice(GuestAddr gpa, std::uint64_t len) const {
    const MemoryRegion* r = table_.find(gpa, len);
    if (!r)
        return fail(Error::out_of_range(
            fmt::format("guest range {:#x}+{:#x} is not inside guest RAM", gpa.value(), len)));
    std::uint64_t off = r->fd_offset + (gpa.value() - r->base.value());
    return std::span<std::byte>(map_.data() + off, static_cast<std::size_t>(len));
}

Status GuestMemory::read(GuestAddr gpa, std::span<std::byte> out) const {
    auto s = slice(gpa, out.size());
    if (!s) return fail(std::move(s.error()));
    std::memcpy(out.data(), s->data(), out.size());
    return {};
}

Status GuestMemory::write(GuestAddr gpa, std::span<const std::byte> in) const {
    auto s = slice(gpa, in.size());
    if (!s) return fail(std::move(s.error()));
    std::memcpy(s->data(), in.data(), in.size());
    return {};
}

}  // namespace common
