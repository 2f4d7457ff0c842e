#include "xen_model/link/dom0_link_codec.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <type_traits>

#include <fmt/format.h>

#include "xen_model/abi/xen_abi.hpp"

namespace xen_model::link {

using common::Error;
using common::ErrorKind;
using common::fail;
using common::Result;
using common::Status;

namespace {

Error protocol(std::string msg, int err = EINVAL) {
    return Error{ErrorKind::Protocol, std::move(msg), err};
}

template <typename T>
T load(std::span<const std::byte> bytes) {
    static_assert(std::is_trivially_copyable_v<T>);
    T v;
    std::memcpy(&v, bytes.data(), sizeof(T));
    return v;
}

template <typename T>
std::vector<std::byte> store_bytes(const T& v) {
    std::vector<std::byte> out(sizeof(T));
    std::memcpy(out.data(), &v, sizeof(T));
    return out;
}

template <typename T>
LinkHeader header_for(MsgType t) {
    return LinkHeader{static_cast<std::uint32_t>(t), static_cast<std::uint32_t>(sizeof(T))};
}

// A fixed char field holding a string: NUL-terminated inside the field; the bytes after the NUL
// must be zero too, so two encodings of one message are the same bytes.
template <std::size_t N>
Result<std::string> field_string(const char (&f)[N], std::string_view what) {
    const char* end = static_cast<const char*>(std::memchr(f, '\0', N));
    if (end == nullptr) return fail(protocol(fmt::format("{} is not NUL-terminated", what)));
    for (const char* p = end; p != f + N; ++p) {
        if (*p != '\0') return fail(protocol(fmt::format("{} has bytes after its NUL", what)));
    }
    return std::string(f, end);
}

template <std::size_t N>
Status put_string(char (&f)[N], const std::string& s, std::string_view what) {
    if (s.size() >= N) return fail(Error::invalid(fmt::format("{} is {} bytes; the limit is {}", what, s.size(), N - 1)));
    if (s.find('\0') != std::string::npos) return fail(Error::invalid(fmt::format("{} contains a NUL", what)));
    std::memset(f, 0, N);
    std::memcpy(f, s.data(), s.size());
    return {};
}

bool page_aligned(std::uint64_t v) { return (v & (abi::kPageSize - 1)) == 0; }

// The checks shared by encode and decode on a typed Attach (strings were checked by the caller).
Status check_attach(const AttachMsg& a) {
    if (a.vcpus == 0 || a.vcpus > 288) return fail(protocol(fmt::format("Attach: {} vcpus", a.vcpus)));
    if (a.name.empty()) return fail(protocol("Attach: empty instance name"));
    if (a.regions.empty() || a.regions.size() > kMaxRegions) {
        return fail(protocol(fmt::format("Attach: {} regions (1..{})", a.regions.size(), kMaxRegions)));
    }
    if (a.volumes.size() > kMaxVolumes) {
        return fail(protocol(fmt::format("Attach: {} volumes (at most {})", a.volumes.size(), kMaxVolumes)));
    }
    bool any_ram = false;
    for (const auto& r : a.regions) {
        if (r.kind != RegionKind::Ram && r.kind != RegionKind::Special) {
            return fail(protocol(fmt::format("Attach: region kind {}", static_cast<std::uint32_t>(r.kind))));
        }
        any_ram = any_ram || r.kind == RegionKind::Ram;
    }
    if (!any_ram) return fail(protocol("Attach: no Ram region"));
    auto table = common::RegionTable::validate(a.memory_regions(), a.memfd_size);
    if (!table) return fail(protocol(fmt::format("Attach: region table: {}", table.error().message)));

    // The xenstore page and the grant-table frames must each lie inside one Special region.
    auto in_special = [&](std::uint64_t gpa, std::uint64_t len) {
        return std::any_of(a.regions.begin(), a.regions.end(), [&](const AttachRegion& r) {
            if (r.kind != RegionKind::Special) return false;
            std::uint64_t b = r.region.base.value();
            return gpa >= b && gpa - b <= r.region.size && len <= r.region.size - (gpa - b);
        });
    };
    if (!page_aligned(a.store_gpa) || !in_special(a.store_gpa, abi::kPageSize)) {
        return fail(protocol(fmt::format("Attach: store page {:#x} is not a page of a Special region", a.store_gpa)));
    }
    if (a.store_port == 0 || a.store_port > kMaxPort) {
        return fail(protocol(fmt::format("Attach: store port {}", a.store_port)));
    }
    if (a.grant_frames == 0 || a.grant_frames > abi::kGrantFramesMax) {
        return fail(protocol(fmt::format("Attach: {} grant frames (1..{})", a.grant_frames, abi::kGrantFramesMax)));
    }
    const std::uint64_t grant_bytes = std::uint64_t{a.grant_frames} * abi::kPageSize;
    if (!page_aligned(a.grant_table_gpa) || !in_special(a.grant_table_gpa, grant_bytes)) {
        return fail(protocol(fmt::format("Attach: grant table {:#x}+{:#x} is not inside a Special region",
                                         a.grant_table_gpa, grant_bytes)));
    }
    // The two must not overlap: the guest writes its grant entries, dom0 the store ring.
    if (a.store_gpa + abi::kPageSize > a.grant_table_gpa && a.grant_table_gpa + grant_bytes > a.store_gpa) {
        return fail(protocol("Attach: store page overlaps the grant table"));
    }
    for (const auto& v : a.volumes) {
        if (v.empty()) return fail(protocol("Attach: empty volume spec"));
    }
    return {};
}

Status check_port(std::uint32_t port, std::string_view what) {
    if (port == 0 || port > kMaxPort) return fail(protocol(fmt::format("{}: port {}", what, port)));
    return {};
}

Result<Message> decode_attach(std::span<const std::byte> bytes) {
    const auto w = load<Attach>(bytes);
    if (w.version != kVersion) {
        return fail(protocol(fmt::format("Attach: version {} (this dom0 speaks {})", w.version, kVersion), EPROTO));
    }
    if (w.region_count == 0 || w.region_count > kMaxRegions) {
        return fail(protocol(fmt::format("Attach: region_count {} (1..{})", w.region_count, kMaxRegions)));
    }
    if (w.volume_count > kMaxVolumes) {
        return fail(protocol(fmt::format("Attach: volume_count {} (at most {})", w.volume_count, kMaxVolumes)));
    }
    AttachMsg a;
    a.vcpus = w.vcpus;
    auto name = field_string(w.name, "Attach: name");
    if (!name) return fail(std::move(name.error()));
    a.name = std::move(*name);
    a.memfd_size = w.memfd_size;
    for (std::uint32_t i = 0; i < kMaxRegions; ++i) {
        const LinkRegion& r = w.regions[i];
        if (i >= w.region_count) {
            if (r.base != 0 || r.size != 0 || r.fd_offset != 0 || r.kind != 0 || r.pad != 0) {
                return fail(protocol(fmt::format("Attach: unused region slot {} is not zero", i)));
            }
            continue;
        }
        if (r.pad != 0) return fail(protocol(fmt::format("Attach: region {} pad is not zero", i)));
        if (r.kind > static_cast<std::uint32_t>(RegionKind::Special)) {
            return fail(protocol(fmt::format("Attach: region {} kind {}", i, r.kind)));
        }
        a.regions.push_back(AttachRegion{common::MemoryRegion{common::GuestAddr(r.base), r.size, r.fd_offset},
                                         static_cast<RegionKind>(r.kind)});
    }
    a.store_gpa = w.store_gpa;
    a.store_port = w.store_port;
    a.grant_frames = w.grant_frames;
    a.grant_table_gpa = w.grant_table_gpa;
    for (std::uint32_t i = 0; i < kMaxVolumes; ++i) {
        auto v = field_string(w.volumes[i], fmt::format("Attach: volume {}", i));
        if (!v) return fail(std::move(v.error()));
        if (i >= w.volume_count) {
            if (!v->empty()) return fail(protocol(fmt::format("Attach: unused volume slot {} is not empty", i)));
            continue;
        }
        a.volumes.push_back(std::move(*v));
    }
    if (auto s = check_attach(a); !s) return fail(std::move(s.error()));
    return Message{std::move(a)};
}

Result<std::vector<std::byte>> encode_one(const AttachMsg& a) {
    if (auto s = check_attach(a); !s) return fail(Error::invalid(s.error().message));
    Attach w{};
    w.hdr = header_for<Attach>(MsgType::Attach);
    w.version = kVersion;
    w.vcpus = a.vcpus;
    if (auto s = put_string(w.name, a.name, "Attach: name"); !s) return fail(std::move(s.error()));
    w.memfd_size = a.memfd_size;
    w.region_count = static_cast<std::uint32_t>(a.regions.size());
    w.volume_count = static_cast<std::uint32_t>(a.volumes.size());
    for (std::size_t i = 0; i < a.regions.size(); ++i) {
        w.regions[i] = LinkRegion{a.regions[i].region.base.value(), a.regions[i].region.size,
                                  a.regions[i].region.fd_offset, static_cast<std::uint32_t>(a.regions[i].kind), 0};
    }
    w.store_gpa = a.store_gpa;
    w.store_port = a.store_port;
    w.grant_frames = a.grant_frames;
    w.grant_table_gpa = a.grant_table_gpa;
    for (std::size_t i = 0; i < a.volumes.size(); ++i) {
        if (auto s = put_string(w.volumes[i], a.volumes[i], fmt::format("Attach: volume {}", i)); !s) {
            return fail(std::move(s.error()));
        }
    }
    return store_bytes(w);
}

Result<std::vector<std::byte>> encode_one(const AttachReplyMsg& r) {
    AttachReply w{};
    w.hdr = header_for<AttachReply>(MsgType::AttachReply);
    if (r.status > 0) return fail(Error::invalid("AttachReply: positive status"));
    if (r.status == 0 && (r.domid == 0 || r.domid > kMaxDomid)) {
        return fail(Error::invalid(fmt::format("AttachReply: domid {}", r.domid)));
    }
    w.status = r.status;
    w.domid = r.status == 0 ? r.domid : 0;
    // A too-long reason is shortened rather than refused: it is for humans.
    std::string msg = r.message.substr(0, sizeof(w.message) - 1);
    std::replace(msg.begin(), msg.end(), '\0', ' ');
    if (auto s = put_string(w.message, msg, "AttachReply: message"); !s) return fail(std::move(s.error()));
    return store_bytes(w);
}

Result<std::vector<std::byte>> encode_one(const BindMsg& b) {
    if (auto s = check_port(b.guest_port, "Bind"); !s) return fail(Error::invalid(s.error().message));
    Bind w{};
    w.hdr = header_for<Bind>(MsgType::Bind);
    w.request_id = b.request_id;
    w.guest_port = b.guest_port;
    return store_bytes(w);
}

Result<std::vector<std::byte>> encode_one(const BindReplyMsg& b) {
    if (b.status > 0) return fail(Error::invalid("BindReply: positive status"));
    BindReply w{};
    w.hdr = header_for<BindReply>(MsgType::BindReply);
    w.request_id = b.request_id;
    w.guest_port = b.guest_port;
    w.status = b.status;
    return store_bytes(w);
}

Result<std::vector<std::byte>> encode_one(const UnbindMsg& u) {
    if (auto s = check_port(u.guest_port, "Unbind"); !s) return fail(Error::invalid(s.error().message));
    Unbind w{};
    w.hdr = header_for<Unbind>(MsgType::Unbind);
    w.guest_port = u.guest_port;
    return store_bytes(w);
}

Result<std::vector<std::byte>> encode_one(const PortClosedMsg& p) {
    if (auto s = check_port(p.guest_port, "PortClosed"); !s) return fail(Error::invalid(s.error().message));
    PortClosed w{};
    w.hdr = header_for<PortClosed>(MsgType::PortClosed);
    w.guest_port = p.guest_port;
    return store_bytes(w);
}

std::size_t expected_size(MsgType t) {
    switch (t) {
        case MsgType::Attach: return sizeof(Attach);
        case MsgType::AttachReply: return sizeof(AttachReply);
        case MsgType::Bind: return sizeof(Bind);
        case MsgType::BindReply: return sizeof(BindReply);
        case MsgType::Unbind: return sizeof(Unbind);
        case MsgType::PortClosed: return sizeof(PortClosed);
    }
    return 0;
}

std::size_t expected_fds(MsgType t) {
    switch (t) {
        case MsgType::Attach: return AttachMsg::kFds;
        case MsgType::Bind: return BindMsg::kFds;
        default: return 0;
    }
}

}  // namespace

std::vector<common::MemoryRegion> AttachMsg::memory_regions() const {
    std::vector<common::MemoryRegion> out;
    out.reserve(regions.size());
    for (const auto& r : regions) out.push_back(r.region);
    return out;
}

std::size_t fds_for(const Message& m) {
    return std::visit([](const auto& v) { return std::remove_cvref_t<decltype(v)>::kFds; }, m);
}

const char* type_name(const Message& m) {
    static constexpr const char* kNames[] = {"Attach", "AttachReply", "Bind", "BindReply", "Unbind", "PortClosed"};
    return kNames[m.index()];
}

Result<std::vector<std::byte>> encode(const Message& m) {
    return std::visit([](const auto& v) { return encode_one(v); }, m);
}

Result<Message> decode(std::span<const std::byte> bytes, std::size_t nfds) {
    if (bytes.size() < sizeof(LinkHeader)) {
        return fail(protocol(fmt::format("message of {} bytes is shorter than the header", bytes.size())));
    }
    const auto h = load<LinkHeader>(bytes);
    if (h.type < static_cast<std::uint32_t>(MsgType::Attach) || h.type > static_cast<std::uint32_t>(MsgType::PortClosed)) {
        return fail(protocol(fmt::format("unknown message type {}", h.type), ENOTSUP));
    }
    const auto type = static_cast<MsgType>(h.type);
    const std::size_t want = expected_size(type);
    if (h.size != want || bytes.size() != want) {
        return fail(protocol(fmt::format("message type {}: header size {}, received {}, expected {}", h.type,
                                         h.size, bytes.size(), want)));
    }
    if (nfds != expected_fds(type)) {
        return fail(protocol(fmt::format("message type {} came with {} fds, expected {}", h.type, nfds,
                                         expected_fds(type))));
    }
    switch (type) {
        case MsgType::Attach:
            return decode_attach(bytes);
        case MsgType::AttachReply: {
            const auto w = load<AttachReply>(bytes);
            auto msg = field_string(w.message, "AttachReply: message");
            if (!msg) return fail(std::move(msg.error()));
            if (w.status > 0) return fail(protocol("AttachReply: positive status"));
            if (w.status == 0 && (w.domid == 0 || w.domid > kMaxDomid)) {
                return fail(protocol(fmt::format("AttachReply: domid {}", w.domid)));
            }
            if (w.status != 0 && w.domid != 0) return fail(protocol("AttachReply: domid with an error status"));
            return Message{AttachReplyMsg{w.status, w.domid, std::move(*msg)}};
        }
        case MsgType::Bind: {
            const auto w = load<Bind>(bytes);
            if (auto s = check_port(w.guest_port, "Bind"); !s) return fail(std::move(s.error()));
            return Message{BindMsg{w.request_id, w.guest_port}};
        }
        case MsgType::BindReply: {
            const auto w = load<BindReply>(bytes);
            if (w.pad != 0) return fail(protocol("BindReply: pad is not zero"));
            if (w.status > 0) return fail(protocol("BindReply: positive status"));
            return Message{BindReplyMsg{w.request_id, w.guest_port, w.status}};
        }
        case MsgType::Unbind: {
            const auto w = load<Unbind>(bytes);
            if (w.pad != 0) return fail(protocol("Unbind: pad is not zero"));
            if (auto s = check_port(w.guest_port, "Unbind"); !s) return fail(std::move(s.error()));
            return Message{UnbindMsg{w.guest_port}};
        }
        case MsgType::PortClosed: {
            const auto w = load<PortClosed>(bytes);
            if (w.pad != 0) return fail(protocol("PortClosed: pad is not zero"));
            if (auto s = check_port(w.guest_port, "PortClosed"); !s) return fail(std::move(s.error()));
            return Message{PortClosedMsg{w.guest_port}};
        }
    }
    return fail(protocol("unreachable message type"));
}

Status send_message(const common::card::UnixSocket& sock, const Message& m, std::span<const int> fds) {
    if (fds.size() != fds_for(m)) {
        return fail(Error::invalid(fmt::format("{} takes {} fds, given {}", type_name(m), fds_for(m), fds.size())));
    }
    auto bytes = encode(m);
    if (!bytes) return fail(std::move(bytes.error()).context(fmt::format("encoding {}", type_name(m))));
    return sock.send(*bytes, fds);
}

Result<ReceivedLinkMessage> recv_message(const common::card::UnixSocket& sock, int timeout_ms) {
    // One byte more than the largest message, so an oversized packet shows as a wrong size
    // rather than as a truncation that looks like a well-sized message.
    std::vector<std::byte> buf(kMaxMessage + 1);
    auto got = sock.recv(buf, AttachMsg::kFds, timeout_ms);
    if (!got) return fail(std::move(got.error()));
    auto msg = decode(std::span<const std::byte>(buf.data(), got->size), got->fds.size());
    if (!msg) return fail(std::move(msg.error()));  // got->fds close here
    return ReceivedLinkMessage{std::move(*msg), std::move(got->fds)};
}

}  // namespace xen_model::link
