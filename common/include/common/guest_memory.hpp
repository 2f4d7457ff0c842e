// The one checked guest-memory API, shared by the vmm, the card and dom0.
//
// Guest RAM lives in one memfd. A RegionTable says which guest-physical ranges map to which
// offsets of it. GuestMemory maps the memfd once and answers every access only after proving
// that [gpa, gpa + len) lies inside one region, without overflow. Another process rebuilds the
// same view from the memfd and the table (GuestMemory::attach).
#pragma once

#include <compare>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <type_traits>
#include <vector>

#include "common/error.hpp"
#include "common/fd.hpp"

namespace common {

// A guest-physical address. Arithmetic is explicit so that host and guest addresses never mix.
class GuestAddr final {
public:
    constexpr GuestAddr() = default;
    constexpr explicit GuestAddr(std::uint64_t v) : v_(v) {}
    [[nodiscard]] constexpr std::uint64_t value() const { return v_; }
    // Wraps on overflow; callers that care use checked_add.
    [[nodiscard]] constexpr GuestAddr operator+(std::uint64_t off) const { return GuestAddr(v_ + off); }
    [[nodiscard]] constexpr bool checked_add(std::uint64_t off, GuestAddr& out) const {
        std::uint64_t r;
        if (__builtin_add_overflow(v_, off, &r)) return false;
        out = GuestAddr(r);
        return true;
    }
    constexpr auto operator<=>(const GuestAddr&) const = default;

private:
    std::uint64_t v_ = 0;
};

struct MemoryRegion {
    GuestAddr base;
    std::uint64_t size = 0;
    std::uint64_t fd_offset = 0;  // where the region starts in the memfd
};

// Sorted, non-overlapping regions. Built through validate() so every instance is sane.
class RegionTable final {
public:
    // Rejects empty or overflowing regions, overlaps in guest space or in the memfd, and
    // regions that do not fit in a memfd of fd_size bytes. Page alignment is required.
    [[nodiscard]] static Result<RegionTable> validate(std::vector<MemoryRegion> regions,
                                                      std::uint64_t fd_size);
    [[nodiscard]] const std::vector<MemoryRegion>& regions() const { return regions_; }
    // The region holding [gpa, gpa+len), or nullptr. len 0 is treated as 1.
    [[nodiscard]] const MemoryRegion* find(GuestAddr gpa, std::uint64_t len) const;
    [[nodiscard]] std::uint64_t total_size() const;

private:
    std::vector<MemoryRegion> regions_;
};

class GuestMemory final {
public:
    // Creates guest RAM: a new memfd sized for the regions, mapped once.
    [[nodiscard]] static Result<GuestMemory> create(std::vector<MemoryRegion> regions);
    // Rebuilds the view in another process from a received memfd and region table.
    [[nodiscard]] static Result<GuestMemory> attach(MemFd fd, std::vector<MemoryRegion> regions);

    [[nodiscard]] const RegionTable& table() const { return table_; }
    [[nodiscard]] const MemFd& memfd() const { return fd_; }

    // Host view of [gpa, gpa+len): checked; fails with OutOfRange naming the range.
    [[nodiscard]] Result<std::span<std::byte>> slice(GuestAddr gpa, std::uint64_t len) const;

    // Copies len bytes out of / into guest memory.
    Status read(GuestAddr gpa, std::span<std::byte> out) const;
    Status write(GuestAddr gpa, std::span<const std::byte> in) const;

    template <typename T>
    [[nodiscard]] Result<T> read_obj(GuestAddr gpa) const {
        static_assert(std::is_trivially_copyable_v<T>);
        T v;
        auto s = slice(gpa, sizeof(T));
        if (!s) return fail(std::move(s.error()));
        std::memcpy(&v, s->data(), sizeof(T));
        return v;
    }
    template <typename T>
    Status write_obj(GuestAddr gpa, const T& v) const {
        static_assert(std::is_trivially_copyable_v<T>);
        auto s = slice(gpa, sizeof(T));
        if (!s) return fail(std::move(s.error()));
        std::memcpy(s->data(), &v, sizeof(T));
        return {};
    }

    // For handing a region to the kernel (KVM_SET_USER_MEMORY_REGION) only.
    [[nodiscard]] void* host_base_for_kernel(const MemoryRegion& r) const {
        return map_.data() + r.fd_offset;
    }

private:
    GuestMemory(MemFd fd, Mmap map, RegionTable t)
        : fd_(std::move(fd)), map_(std::move(map)), table_(std::move(t)) {}
    MemFd fd_;
    Mmap map_;
    RegionTable table_;
};

}  // namespace common
