#include "common/card_protocol.hpp"

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <iterator>
#include <limits>
#include <type_traits>
#include <utility>

#include <fmt/format.h>

// Returns the error of a Status/Result-producing expression from the enclosing function.
#define CARD_TRY(expr)                                                     \
    do {                                                                   \
        if (auto card_try_r_ = (expr); !card_try_r_)                       \
            return std::unexpected<Error>(std::move(card_try_r_.error())); \
    } while (0)

namespace common::card {

namespace {

// Payload sizes from the vfio-user spec, header excluded.
constexpr std::size_t kVersionSize = 20;  // major, minor, then our 4 x u32 capability block
constexpr std::size_t kDmaMapSize = 32;
constexpr std::size_t kDmaUnmapSize = 24;
constexpr std::size_t kDeviceInfoSize = 16;
constexpr std::size_t kRegionInfoSize = 32;
constexpr std::size_t kIoFdsHeadSize = 16;
constexpr std::size_t kIoFdEntrySize = 40;
constexpr std::size_t kIrqInfoSize = 16;
constexpr std::size_t kSetIrqsSize = 20;
constexpr std::size_t kRegionAccessSize = 16;
constexpr std::uint32_t kIoFdTypeIoeventfd = 0;
constexpr std::uint32_t kMinDataXfer = 8;  // one 64-bit register
constexpr std::uint32_t kIrqSetDataMask = kIrqSetDataNone | kIrqSetDataBool | kIrqSetDataEventfd;
constexpr std::uint32_t kIrqSetActionMaskAll =
    kIrqSetActionMask | kIrqSetActionUnmask | kIrqSetActionTrigger;

template <typename... Args>
std::unexpected<Error> bad(int err, fmt::format_string<Args...> f, Args&&... args) {
    return fail(Error{ErrorKind::Protocol, fmt::format(f, std::forward<Args>(args)...), err});
}

// Appends native-endian fields. Stops growing past the hard message limit and remembers that,
// so a runaway vector in a body cannot make encode() allocate without bound.
class Writer {
public:
    template <typename... Ts>
    void put(const Ts&... vs) {
        (put_bytes(std::as_bytes(std::span<const Ts, 1>(&vs, 1))), ...);
    }
    void put_bytes(std::span<const std::byte> b) {
        if (overflow_ || b.size() > kMaxMsgSizeHard - out_.size()) {
            overflow_ = true;
            return;
        }
        out_.insert(out_.end(), b.begin(), b.end());
    }
    [[nodiscard]] bool overflow() const { return overflow_; }
    std::vector<std::byte>& bytes() { return out_; }

private:
    std::vector<std::byte> out_;
    bool overflow_ = false;
};

// Reads native-endian fields in order. Callers check the payload size first; reading past the
// end yields zeros rather than touching memory it does not own.
class Reader {
public:
    explicit Reader(std::span<const std::byte> b) : b_(b) {}
    template <typename... Ts>
    void read(Ts&... vs) {
        (read_one(vs), ...);
    }
    std::vector<std::byte> rest() {
        auto r = b_.subspan(pos_);
        pos_ = b_.size();
        return {r.begin(), r.end()};
    }

private:
    template <typename T>
    void read_one(T& v) {
        static_assert(std::is_trivially_copyable_v<T>);
        v = T{};
        if (b_.size() - pos_ < sizeof v) {
            pos_ = b_.size();
            return;
        }
        std::memcpy(&v, b_.data() + pos_, sizeof v);
        pos_ += sizeof v;
    }
    std::span<const std::byte> b_;
    std::size_t pos_ = 0;
};

std::uint32_t clamp_u32(std::size_t n) {
    return static_cast<std::uint32_t>(
        std::min<std::size_t>(n, std::numeric_limits<std::uint32_t>::max()));
}

// What one payload is decoded against.
struct In {
    std::span<const std::byte> payload;
    std::size_t fds;
    const Capabilities& limits;
    bool reply;
};

Status want_fds(const In& in, std::size_t n) {
    if (in.fds != n) return bad(EINVAL, "{} fds attached, expected {}", in.fds, n);
    return {};
}

// Fixed-size payloads: exactly `size` bytes and `fds` fds.
Status want(const In& in, std::size_t size, std::size_t fds) {
    if (in.payload.size() != size)
        return bad(EINVAL, "payload is {} bytes, expected {}", in.payload.size(), size);
    return want_fds(in, fds);
}

Status known_bits(std::string_view what, std::uint32_t v, std::uint32_t allowed) {
    if (v & ~allowed) return bad(EINVAL, "{} {:#x} has unknown bits {:#x}", what, v, v & ~allowed);
    return {};
}

// A request's argsz is the room it offers for the reply; a reply's is its own exact size.
Status check_argsz(const In& in, std::uint32_t argsz, std::size_t reply_size) {
    if (in.reply ? argsz != reply_size : argsz < reply_size)
        return bad(EINVAL, "argsz {} does not fit a {}-byte reply", argsz, reply_size);
    return {};
}

Status check_dma_range(GuestAddr addr, std::uint64_t size) {
    if (size == 0) return bad(EINVAL, "DMA range at {:#x} is empty", addr.value());
    if (addr.value() % kPageSize || size % kPageSize)
        return bad(EINVAL, "DMA range {:#x}+{:#x} is not 4 KiB aligned", addr.value(), size);
    GuestAddr end;
    if (!addr.checked_add(size, end))
        return bad(EINVAL, "DMA range {:#x}+{:#x} wraps around", addr.value(), size);
    return {};
}

Status check_dma_map(const DmaMapRequest& m) {
    CARD_TRY(known_bits("DMA_MAP flags", m.flags, kDmaRead | kDmaWrite));
    if ((m.flags & (kDmaRead | kDmaWrite)) == 0)
        return bad(EINVAL, "DMA_MAP grants neither read nor write");
    CARD_TRY(check_dma_range(m.addr, m.size));
    if (m.offset % kPageSize)
        return bad(EINVAL, "memfd offset {:#x} is not 4 KiB aligned", m.offset);
    // mmap takes a signed off_t.
    std::uint64_t end;
    if (__builtin_add_overflow(m.offset, m.size, &end) ||
        end > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
        return bad(EINVAL, "memfd range {:#x}+{:#x} overflows", m.offset, m.size);
    return {};
}

Status check_region_index(std::uint32_t index) {
    if (index >= kMaxRegions) return bad(EINVAL, "region index {} >= {}", index, kMaxRegions);
    return {};
}

Status check_irq_index(std::uint32_t index) {
    if (index >= kNumIrqIndexes) return bad(EINVAL, "IRQ index {} >= {}", index, kNumIrqIndexes);
    return {};
}

// ---- Payload decoders, one per command; `in.reply` selects the direction ----

Result<Body> decode_version(Reader& r, const In& in) {
    CARD_TRY(want(in, kVersionSize, 0));
    VersionInfo v;
    r.read(v.major, v.minor, v.caps.max_msg_size, v.caps.max_msg_fds, v.caps.max_data_xfer,
           v.caps.max_dma_maps);
    CARD_TRY(validate_capabilities(v.caps));
    if (in.reply) return VersionReply{v};
    return VersionRequest{v};
}

Result<Body> decode_dma_map(Reader& r, const In& in) {
    if (in.reply) {
        CARD_TRY(want(in, 0, 0));
        return DmaMapReply{};
    }
    CARD_TRY(want(in, kDmaMapSize, 1));
    std::uint32_t argsz;
    DmaMapRequest m;
    r.read(argsz, m.flags, m.offset, m.addr, m.size);
    // Here argsz is the size of the request itself (vfio-user DMA_MAP).
    if (argsz != kDmaMapSize) return bad(EINVAL, "argsz {} is not {}", argsz, kDmaMapSize);
    CARD_TRY(check_dma_map(m));
    return m;
}

Result<Body> decode_dma_unmap(Reader& r, const In& in) {
    CARD_TRY(want(in, kDmaUnmapSize, 0));
    std::uint32_t argsz, flags;
    DmaUnmapReply u;
    r.read(argsz, flags, u.addr, u.size);
    CARD_TRY(check_argsz(in, argsz, kDmaUnmapSize));
    if (flags != 0) return bad(EINVAL, "flags {:#x} must be 0", flags);
    CARD_TRY(check_dma_range(u.addr, u.size));
    if (in.reply) return u;
    return DmaUnmapRequest{u.addr, u.size};
}

Result<Body> decode_device_info(Reader& r, const In& in) {
    CARD_TRY(want(in, kDeviceInfoSize, 0));
    std::uint32_t argsz;
    DeviceGetInfoReply d;
    r.read(argsz, d.flags, d.num_regions, d.num_irqs);
    CARD_TRY(check_argsz(in, argsz, kDeviceInfoSize));
    if (!in.reply) {
        if (d.flags || d.num_regions || d.num_irqs)
            return bad(EINVAL, "request fields must be zero");
        return DeviceGetInfoRequest{};
    }
    CARD_TRY(known_bits("device flags", d.flags, kDeviceFlagReset | kDeviceFlagPci));
    if (d.num_regions > kMaxRegions)
        return bad(EINVAL, "{} regions exceed the limit of {}", d.num_regions, kMaxRegions);
    if (d.num_irqs > kNumIrqIndexes)
        return bad(EINVAL, "{} IRQ types exceed the limit of {}", d.num_irqs, kNumIrqIndexes);
    return d;
}

Result<Body> decode_region_info(Reader& r, const In& in) {
    const bool mmap = in.reply && in.fds == 1;  // checked against the flag below
    CARD_TRY(want(in, kRegionInfoSize, mmap ? 1 : 0));
    std::uint32_t argsz, cap_offset;
    RegionInfoReply ri;
    r.read(argsz, ri.flags, ri.index, cap_offset, ri.size, ri.offset);
    CARD_TRY(check_argsz(in, argsz, kRegionInfoSize));
    CARD_TRY(check_region_index(ri.index));
    if (!in.reply) {
        if (ri.flags || cap_offset || ri.size || ri.offset)
            return bad(EINVAL, "request fields other than index must be zero");
        return RegionInfoRequest{ri.index};
    }
    if (ri.flags & kRegionFlagCaps)
        return bad(ENOTSUP, "region capability chains are not supported");
    CARD_TRY(
        known_bits("region flags", ri.flags, kRegionFlagRead | kRegionFlagWrite | kRegionFlagMmap));
    if (cap_offset != 0) return bad(EINVAL, "cap_offset {:#x} without the CAPS flag", cap_offset);
    std::uint64_t end;
    if (__builtin_add_overflow(ri.offset, ri.size, &end))
        return bad(EINVAL, "region {:#x}+{:#x} overflows", ri.offset, ri.size);
    // With MMAP the reply carries the fd to map; without, none.
    if (mmap != ((ri.flags & kRegionFlagMmap) != 0))
        return bad(EINVAL, "region flags {:#x} with {} fds attached", ri.flags, in.fds);
    if (mmap && (ri.size == 0 || ri.size % kPageSize || ri.offset % kPageSize))
        return bad(EINVAL, "mappable region {:#x}+{:#x} is empty or not 4 KiB aligned", ri.offset,
                   ri.size);
    return ri;
}

Status check_io_fd_entry(const IoFdEntry& e, std::uint32_t type, std::uint32_t padding,
                         std::size_t fds) {
    if (type != kIoFdTypeIoeventfd) return bad(ENOTSUP, "type {} is not ioeventfd", type);
    if (padding != 0) return bad(EINVAL, "padding {:#x} is not zero", padding);
    CARD_TRY(known_bits("flags", e.flags, kIoFdDatamatch));
    if (e.size != 0 && e.size != 1 && e.size != 2 && e.size != 4 && e.size != 8)
        return bad(EINVAL, "size {} is not 0, 1, 2, 4 or 8", e.size);
    std::uint64_t end;
    if (__builtin_add_overflow(e.offset, e.size, &end))
        return bad(EINVAL, "range {:#x}+{} overflows", e.offset, e.size);
    if (e.fd_index >= fds) return bad(EINVAL, "fd_index {} but {} fds attached", e.fd_index, fds);
    if (!(e.flags & kIoFdDatamatch)) {
        if (e.datamatch != 0) return bad(EINVAL, "datamatch {:#x} without the flag", e.datamatch);
    } else {
        // KVM refuses datamatch on any-length ioeventfds, and a wider value can never match.
        if (e.size == 0) return bad(EINVAL, "datamatch needs a size");
        if (e.size < 8 && (e.datamatch >> (e.size * 8)) != 0)
            return bad(EINVAL, "datamatch {:#x} is wider than {} bytes", e.datamatch, e.size);
    }
    return {};
}

Result<Body> decode_region_io_fds(Reader& r, const In& in) {
    if (in.payload.size() < kIoFdsHeadSize)
        return bad(EINVAL, "payload is {} bytes, shorter than {}", in.payload.size(),
                   kIoFdsHeadSize);
    std::uint32_t argsz, flags, index, count;
    r.read(argsz, flags, index, count);
    if (flags != 0) return bad(EINVAL, "flags {:#x} must be 0", flags);
    CARD_TRY(check_region_index(index));
    const std::uint64_t size = kIoFdsHeadSize + std::uint64_t{count} * kIoFdEntrySize;
    if (in.payload.size() != size)
        return bad(EINVAL, "{} sub-regions need {} bytes, payload is {}", count, size,
                   in.payload.size());
    CARD_TRY(check_argsz(in, argsz, in.reply ? size : kIoFdsHeadSize));
    std::vector<IoFdEntry> entries(count);
    std::vector<bool> used(in.fds, false);
    for (std::uint32_t i = 0; i < count; ++i) {
        IoFdEntry& e = entries[i];
        std::uint32_t type, padding;
        r.read(e.offset, e.size, e.fd_index, type, e.flags, padding, e.datamatch);
        if (auto s = check_io_fd_entry(e, type, padding, in.fds); !s)
            return fail(std::move(s.error()).context(fmt::format("sub-region {}", i)));
        used[e.fd_index] = true;
    }
    for (std::size_t i = 0; i < used.size(); ++i)
        if (!used[i]) return bad(EINVAL, "fd {} is not used by any sub-region", i);
    if (in.reply) return RegionIoFdsReply{index, std::move(entries)};
    return RegionIoFdsRequest{index, std::move(entries)};
}

Result<Body> decode_irq_info(Reader& r, const In& in) {
    CARD_TRY(want(in, kIrqInfoSize, 0));
    std::uint32_t argsz;
    IrqInfoReply ii;
    r.read(argsz, ii.flags, ii.index, ii.count);
    CARD_TRY(check_argsz(in, argsz, kIrqInfoSize));
    CARD_TRY(check_irq_index(ii.index));
    if (!in.reply) {
        if (ii.flags || ii.count)
            return bad(EINVAL, "request fields other than index must be zero");
        return IrqInfoRequest{ii.index};
    }
    CARD_TRY(
        known_bits("IRQ info flags", ii.flags,
                   kIrqInfoEventfd | kIrqInfoMaskable | kIrqInfoAutomasked | kIrqInfoNoresize));
    if (ii.count > kMaxIrqsPerIndex)
        return bad(EINVAL, "{} interrupts exceed the limit of {}", ii.count, kMaxIrqsPerIndex);
    return ii;
}

Result<Body> decode_set_irqs(Reader& r, const In& in) {
    if (in.reply) {
        CARD_TRY(want(in, 0, 0));
        return SetIrqsReply{};
    }
    if (in.payload.size() != kSetIrqsSize)
        return bad(EINVAL, "payload is {} bytes, expected {}", in.payload.size(), kSetIrqsSize);
    std::uint32_t argsz;
    SetIrqsRequest s;
    r.read(argsz, s.flags, s.index, s.start, s.count);
    // Here argsz is the size of the request itself (vfio-user DEVICE_SET_IRQS).
    if (argsz != kSetIrqsSize) return bad(EINVAL, "argsz {} is not {}", argsz, kSetIrqsSize);
    CARD_TRY(known_bits("SET_IRQS flags", s.flags, kIrqSetDataMask | kIrqSetActionMaskAll));
    const std::uint32_t data = s.flags & kIrqSetDataMask;
    if (data == kIrqSetDataBool) return bad(ENOTSUP, "DATA_BOOL is not supported");
    if (data != kIrqSetDataNone && data != kIrqSetDataEventfd)
        return bad(EINVAL, "flags {:#x} need exactly one DATA_ bit", s.flags);
    if (std::popcount(s.flags & kIrqSetActionMaskAll) != 1)
        return bad(EINVAL, "flags {:#x} need exactly one ACTION_ bit", s.flags);
    CARD_TRY(check_irq_index(s.index));
    if (std::uint64_t{s.start} + s.count > kMaxIrqsPerIndex)
        return bad(EINVAL, "interrupts {}+{} exceed the limit of {}", s.start, s.count,
                   kMaxIrqsPerIndex);
    if (data == kIrqSetDataNone) {
        CARD_TRY(want_fds(in, 0));
        if (s.count == 0 && s.start != 0) return bad(EINVAL, "count 0 with start {}", s.start);
    } else {
        if (s.count == 0) return bad(EINVAL, "DATA_EVENTFD with count 0");
        // No fds de-assigns the range.
        if (in.fds != 0 && in.fds != s.count)
            return bad(EINVAL, "{} fds attached for {} interrupts", in.fds, s.count);
    }
    return s;
}

// REGION_READ / REGION_WRITE: offset u64, region u32, count u32, then data in one direction.
Result<Body> decode_region_access(Reader& r, const In& in, bool write) {
    if (in.payload.size() < kRegionAccessSize)
        return bad(EINVAL, "payload is {} bytes, shorter than {}", in.payload.size(),
                   kRegionAccessSize);
    std::uint64_t offset;
    std::uint32_t region, count;
    r.read(offset, region, count);
    CARD_TRY(check_region_index(region));
    if (count == 0 || count > in.limits.max_data_xfer)
        return bad(EINVAL, "count {} is not in [1, {}]", count, in.limits.max_data_xfer);
    std::uint64_t end;
    if (__builtin_add_overflow(offset, std::uint64_t{count}, &end))
        return bad(EINVAL, "access {:#x}+{} overflows", offset, count);
    const bool has_data = write != in.reply;  // write requests and read replies carry data
    CARD_TRY(want(in, kRegionAccessSize + (has_data ? count : 0), 0));
    if (write && in.reply) return RegionWriteReply{region, offset, count};
    if (write) return RegionWriteRequest{region, offset, r.rest()};
    if (in.reply) return RegionReadReply{region, offset, r.rest()};
    return RegionReadRequest{region, offset, count};
}

bool is_known(std::uint16_t c) {
    return command_name(static_cast<Command>(c)) != "UNKNOWN";
}

Result<Body> decode_body(Command c, const In& in) {
    Reader r(in.payload);
    switch (c) {
        case Command::Version:
            return decode_version(r, in);
        case Command::DmaMap:
            return decode_dma_map(r, in);
        case Command::DmaUnmap:
            return decode_dma_unmap(r, in);
        case Command::DeviceGetInfo:
            return decode_device_info(r, in);
        case Command::DeviceGetRegionInfo:
            return decode_region_info(r, in);
        case Command::DeviceGetRegionIoFds:
            return decode_region_io_fds(r, in);
        case Command::DeviceGetIrqInfo:
            return decode_irq_info(r, in);
        case Command::DeviceSetIrqs:
            return decode_set_irqs(r, in);
        case Command::RegionRead:
            return decode_region_access(r, in, false);
        case Command::RegionWrite:
            return decode_region_access(r, in, true);
        case Command::DeviceReset:
            CARD_TRY(want(in, 0, 0));
            if (in.reply) return DeviceResetReply{};
            return DeviceResetRequest{};
    }
    return bad(ENOSYS, "unknown command {}", static_cast<unsigned>(c));
}

// ---- Payload encoders: the layouts the decoders above read ----

struct PayloadWriter {
    Writer& w;
    const Capabilities& limits;

    static constexpr auto u32(std::size_t n) { return static_cast<std::uint32_t>(n); }
    static constexpr std::uint32_t kZero = 0;

    void version(const VersionInfo& v) {
        w.put(v.major, v.minor, v.caps.max_msg_size, v.caps.max_msg_fds, v.caps.max_data_xfer,
              v.caps.max_dma_maps);
    }
    void io_fds(std::uint32_t argsz, std::uint32_t index, const std::vector<IoFdEntry>& es) {
        w.put(argsz, kZero, index, clamp_u32(es.size()));
        for (const auto& e : es) {
            w.put(e.offset, e.size, e.fd_index, kIoFdTypeIoeventfd, e.flags, kZero, e.datamatch);
            if (w.overflow()) return;
        }
    }
    void access(std::uint32_t region, std::uint64_t offset, std::uint32_t count) {
        w.put(offset, region, count);
    }

    void operator()(const VersionRequest& m) { version(m.info); }
    void operator()(const VersionReply& m) { version(m.info); }
    void operator()(const DmaMapRequest& m) {
        w.put(u32(kDmaMapSize), m.flags, m.offset, m.addr, m.size);
    }
    void operator()(const DmaUnmapRequest& m) { w.put(u32(kDmaUnmapSize), kZero, m.addr, m.size); }
    void operator()(const DmaUnmapReply& m) { w.put(u32(kDmaUnmapSize), kZero, m.addr, m.size); }
    void operator()(const DeviceGetInfoRequest&) {
        w.put(u32(kDeviceInfoSize), kZero, kZero, kZero);
    }
    void operator()(const DeviceGetInfoReply& m) {
        w.put(u32(kDeviceInfoSize), m.flags, m.num_regions, m.num_irqs);
    }
    void operator()(const RegionInfoRequest& m) {
        w.put(u32(kRegionInfoSize), kZero, m.index, kZero, std::uint64_t{0}, std::uint64_t{0});
    }
    void operator()(const RegionInfoReply& m) {
        w.put(u32(kRegionInfoSize), m.flags, m.index, kZero, m.size, m.offset);
    }
    void operator()(const RegionIoFdsRequest& m) {
        // Offer the largest reply a message may hold.
        io_fds(limits.max_msg_size - u32(kHeaderSize), m.index, m.entries);
    }
    void operator()(const RegionIoFdsReply& m) {
        io_fds(clamp_u32(kIoFdsHeadSize + m.entries.size() * kIoFdEntrySize), m.index, m.entries);
    }
    void operator()(const IrqInfoRequest& m) { w.put(u32(kIrqInfoSize), kZero, m.index, kZero); }
    void operator()(const IrqInfoReply& m) { w.put(u32(kIrqInfoSize), m.flags, m.index, m.count); }
    void operator()(const SetIrqsRequest& m) {
        w.put(u32(kSetIrqsSize), m.flags, m.index, m.start, m.count);
    }
    void operator()(const RegionReadRequest& m) { access(m.region, m.offset, m.count); }
    void operator()(const RegionReadReply& m) {
        access(m.region, m.offset, clamp_u32(m.data.size()));
        w.put_bytes(m.data);
    }
    void operator()(const RegionWriteRequest& m) {
        access(m.region, m.offset, clamp_u32(m.data.size()));
        w.put_bytes(m.data);
    }
    void operator()(const RegionWriteReply& m) { access(m.region, m.offset, m.count); }
    // Bodies without payload.
    void operator()(const DmaMapReply&) {}
    void operator()(const SetIrqsReply&) {}
    void operator()(const DeviceResetRequest&) {}
    void operator()(const DeviceResetReply&) {}
    void operator()(const ErrorReply&) {}
};

}  // namespace

std::string_view command_name(Command c) {
    // Indexed by command number; gaps are commands this protocol does not use.
    static constexpr std::string_view kNames[] = {"",
                                                  "VERSION",
                                                  "DMA_MAP",
                                                  "DMA_UNMAP",
                                                  "DEVICE_GET_INFO",
                                                  "DEVICE_GET_REGION_INFO",
                                                  "DEVICE_GET_REGION_IO_FDS",
                                                  "DEVICE_GET_IRQ_INFO",
                                                  "DEVICE_SET_IRQS",
                                                  "REGION_READ",
                                                  "REGION_WRITE",
                                                  "",
                                                  "",
                                                  "DEVICE_RESET"};
    const auto i = static_cast<std::size_t>(c);
    if (i >= std::size(kNames) || kNames[i].empty()) return "UNKNOWN";
    return kNames[i];
}

Command Message::command() const {
    return std::visit(
        [](const auto& b) {
            using T = std::decay_t<decltype(b)>;
            if constexpr (std::is_same_v<T, ErrorReply>)
                return b.command;
            else
                return T::kCommand;
        },
        body);
}

bool Message::is_reply() const {
    return std::visit(
        [](const auto& b) {
            using T = std::decay_t<decltype(b)>;
            if constexpr (std::is_same_v<T, ErrorReply>)
                return true;
            else
                return T::kReply;
        },
        body);
}

Result<Header> parse_header(std::span<const std::byte> bytes) {
    if (bytes.size() < kHeaderSize)
        return bad(EINVAL, "message of {} bytes is shorter than the {}-byte header", bytes.size(),
                   kHeaderSize);
    Header h;
    Reader(bytes).read(h.id, h.command, h.size, h.flags, h.error);
    return h;
}

Status validate_capabilities(const Capabilities& c) {
    if (c.max_data_xfer < kMinDataXfer || c.max_data_xfer > kMaxDataXfer)
        return bad(EINVAL, "max_data_xfer {} is not in [{}, {}]", c.max_data_xfer, kMinDataXfer,
                   kMaxDataXfer);
    if (c.max_msg_fds < 1 || c.max_msg_fds > kMaxFdsHard)
        return bad(EINVAL, "max_msg_fds {} is not in [1, {}]", c.max_msg_fds, kMaxFdsHard);
    const std::uint32_t min_msg =
        static_cast<std::uint32_t>(kHeaderSize + kRegionAccessSize) + c.max_data_xfer;
    if (c.max_msg_size < min_msg || c.max_msg_size > kMaxMsgSizeHard)
        return bad(EINVAL, "max_msg_size {} is not in [{}, {}]", c.max_msg_size, min_msg,
                   kMaxMsgSizeHard);
    if (c.max_dma_maps < 1 || c.max_dma_maps > kMaxDmaMapsHard)
        return bad(EINVAL, "max_dma_maps {} is not in [1, {}]", c.max_dma_maps, kMaxDmaMapsHard);
    return {};
}

Result<Message> decode(std::span<const std::byte> bytes, std::size_t fd_count,
                       const Capabilities& limits) {
    auto h = parse_header(bytes);
    if (!h) return fail(std::move(h.error()));
    if (h->size != bytes.size())
        return bad(EINVAL, "header says {} bytes, message has {}", h->size, bytes.size());
    if (bytes.size() > limits.max_msg_size)
        return bad(EMSGSIZE, "message of {} bytes exceeds the limit of {}", bytes.size(),
                   limits.max_msg_size);
    if (fd_count > limits.max_msg_fds)
        return bad(EINVAL, "{} fds exceed the limit of {}", fd_count, limits.max_msg_fds);
    if (h->flags & ~(kFlagTypeMask | kFlagNoReply | kFlagError))
        return bad(EINVAL, "header flags {:#x} have unknown bits", h->flags);
    const std::uint32_t type = h->flags & kFlagTypeMask;
    if (type != kFlagTypeCommand && type != kFlagTypeReply)
        return bad(EINVAL, "unknown message type {}", type);
    const bool reply = type == kFlagTypeReply;
    if (reply && (h->flags & kFlagNoReply)) return bad(EINVAL, "no_reply set on a reply");
    if (!reply && (h->flags & kFlagError)) return bad(EINVAL, "error bit set on a command");
    // The error field is reserved in commands and only meaningful with the error bit.
    if (!(h->flags & kFlagError) && h->error != 0)
        return bad(EINVAL, "error field {} without the error bit", h->error);

    Message m;
    m.id = h->id;
    m.no_reply = (h->flags & kFlagNoReply) != 0;
    const auto cmd = static_cast<Command>(h->command);
    if (h->flags & kFlagError) {
        // vfio-user: an error reply is the header alone.
        if (bytes.size() != kHeaderSize)
            return bad(EINVAL, "error reply carries {} payload bytes", bytes.size() - kHeaderSize);
        if (fd_count != 0) return bad(EINVAL, "error reply carries {} fds", fd_count);
        m.body = ErrorReply{cmd, h->error};
        return m;
    }
    if (!is_known(h->command)) return bad(ENOSYS, "unknown command {}", h->command);
    auto body = decode_body(cmd, In{bytes.subspan(kHeaderSize), fd_count, limits, reply});
    if (!body)
        return fail(
            std::move(body.error())
                .context(fmt::format("{} {}", command_name(cmd), reply ? "reply" : "command")));
    m.body = std::move(*body);
    return m;
}

Result<std::vector<std::byte>> encode(const Message& msg, std::size_t fd_count,
                                      const Capabilities& limits) {
    const bool reply = msg.is_reply();
    std::uint32_t flags = reply ? kFlagTypeReply : kFlagTypeCommand;
    std::uint32_t error = 0;
    if (msg.no_reply) flags |= kFlagNoReply;
    if (const auto* e = std::get_if<ErrorReply>(&msg.body)) {
        flags |= kFlagError;
        error = e->error;
    }
    Writer w;
    const std::uint32_t size_placeholder = 0;
    w.put(msg.id, static_cast<std::uint16_t>(msg.command()), size_placeholder, flags, error);
    std::visit(PayloadWriter{w, limits}, msg.body);
    if (w.overflow())
        return bad(EMSGSIZE, "{} message exceeds {} bytes", command_name(msg.command()),
                   kMaxMsgSizeHard);
    auto& out = w.bytes();
    const auto size = static_cast<std::uint32_t>(out.size());
    std::memcpy(out.data() + 4, &size, sizeof size);
    if (auto check = decode(out, fd_count, limits); !check)
        return fail(std::move(check.error()).context("refusing to send an invalid message"));
    return std::move(out);
}

Message make_reply(const Message& request, Body body) {
    return Message{request.id, false, std::move(body)};
}

Message error_reply(const Message& request, int errno_value) {
    const auto e = static_cast<std::uint32_t>(errno_value > 0 ? errno_value : EINVAL);
    return Message{request.id, false, ErrorReply{request.command(), e}};
}

Message error_reply(const Message& request, const Error& e) {
    return error_reply(request, e.errno_value);
}

Message error_reply(const Header& request, int errno_value) {
    const auto e = static_cast<std::uint32_t>(errno_value > 0 ? errno_value : EINVAL);
    return Message{request.id, false, ErrorReply{static_cast<Command>(request.command), e}};
}

Result<VersionInfo> negotiate(const VersionInfo& ours, const VersionInfo& theirs) {
    if (ours.major != theirs.major)
        return bad(ENOTSUP, "peer speaks protocol {}.{}, this side {}.{}", theirs.major,
                   theirs.minor, ours.major, ours.minor);
    CARD_TRY(validate_capabilities(ours.caps));
    CARD_TRY(validate_capabilities(theirs.caps));
    VersionInfo v;
    v.major = ours.major;
    v.minor = std::min(ours.minor, theirs.minor);
    v.caps.max_msg_size = std::min(ours.caps.max_msg_size, theirs.caps.max_msg_size);
    v.caps.max_msg_fds = std::min(ours.caps.max_msg_fds, theirs.caps.max_msg_fds);
    v.caps.max_data_xfer = std::min(ours.caps.max_data_xfer, theirs.caps.max_data_xfer);
    v.caps.max_dma_maps = std::min(ours.caps.max_dma_maps, theirs.caps.max_dma_maps);
    return v;
}

// ---- DmaMapTable ----

Status DmaMapTable::map(const DmaMapRequest& req) {
    CARD_TRY(check_dma_map(req));
    const std::uint64_t a = req.addr.value();
    const std::uint64_t end = a + req.size;  // cannot wrap: checked above
    auto next = maps_.lower_bound(a);
    const DmaMapping* hit = nullptr;
    if (next != maps_.end() && next->first < end) hit = &next->second;
    if (next != maps_.begin()) {
        const auto& prev = std::prev(next)->second;
        if (prev.addr.value() + prev.size > a) hit = &prev;
    }
    if (hit)
        return bad(EEXIST, "DMA range {:#x}+{:#x} overlaps the mapping {:#x}+{:#x}", a, req.size,
                   hit->addr.value(), hit->size);
    if (maps_.size() >= max_maps_)
        return bad(ENOSPC, "the table already holds {} DMA mappings", max_maps_);
    maps_.emplace(a, DmaMapping{req.addr, req.size, req.offset, req.flags});
    return {};
}

Status DmaMapTable::unmap(GuestAddr addr, std::uint64_t size) {
    auto it = maps_.find(addr.value());
    if (it == maps_.end() || it->second.size != size)
        return bad(ENOENT, "no DMA mapping is exactly {:#x}+{:#x}", addr.value(), size);
    maps_.erase(it);
    return {};
}

const DmaMapping* DmaMapTable::find(GuestAddr addr, std::uint64_t len) const {
    if (len == 0) len = 1;
    std::uint64_t last;
    if (__builtin_add_overflow(addr.value(), len - 1, &last)) return nullptr;
    auto it = maps_.upper_bound(addr.value());
    if (it == maps_.begin()) return nullptr;
    const auto& m = std::prev(it)->second;
    return last <= m.addr.value() + (m.size - 1) ? &m : nullptr;
}

std::vector<DmaMapping> DmaMapTable::mappings() const {
    std::vector<DmaMapping> out;
    out.reserve(maps_.size());
    for (const auto& [a, m] : maps_) out.push_back(m);
    return out;
}

std::vector<MemoryRegion> DmaMapTable::memory_regions() const {
    std::vector<MemoryRegion> out;
    out.reserve(maps_.size());
    for (const auto& [a, m] : maps_) out.push_back(MemoryRegion{m.addr, m.size, m.fd_offset});
    return out;
}

}  // namespace common::card

#undef CARD_TRY
