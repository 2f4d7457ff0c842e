#include "xen_model/xenstore/wire.hpp"

#include <array>
#include <charconv>
#include <cstring>

namespace xen_model::xenstore {

std::string_view to_wire(XsError e) noexcept {
    // The names Linux's xsd_errors table knows (xs_wire.h).
    switch (e) {
        case XsError::NoEnt: return "ENOENT";
        case XsError::Inval: return "EINVAL";
        case XsError::Access: return "EACCES";
        case XsError::Exist: return "EEXIST";
        case XsError::IsDir: return "EISDIR";
        case XsError::NoSpc: return "ENOSPC";
        case XsError::Again: return "EAGAIN";
        case XsError::Busy: return "EBUSY";
        case XsError::Perm: return "EPERM";
        case XsError::NoSys: return "ENOSYS";
        case XsError::TooBig: return "E2BIG";
        case XsError::Io: return "EIO";
    }
    return "EINVAL";
}

}  // namespace xen_model::xenstore

namespace xen_model::xenstore::wire {
namespace {

using abi::XsType;

bool path_char(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '/' ||
           c == '_' || c == '@' || c == '-' || c == '.';
}

// Exactly N NUL-terminated strings filling the payload, none holding another NUL.
template <std::size_t N>
XsResult<std::array<std::string_view, N>> split_args(std::span<const char> payload) {
    std::array<std::string_view, N> out{};
    std::size_t pos = 0;
    for (std::size_t i = 0; i < N; ++i) {
        const void* nul = pos < payload.size() ? std::memchr(payload.data() + pos, 0, payload.size() - pos) : nullptr;
        if (nul == nullptr) return std::unexpected(XsError::Inval);
        const auto end = static_cast<std::size_t>(static_cast<const char*>(nul) - payload.data());
        out[i] = std::string_view(payload.data() + pos, end - pos);
        pos = end + 1;
    }
    if (pos != payload.size()) return std::unexpected(XsError::Inval);
    return out;
}

// TRANSACTION_START and RESET_WATCHES carry nothing; Linux sends one empty string ("\0").
bool empty_payload(std::span<const char> payload) {
    return payload.empty() || (payload.size() == 1 && payload[0] == '\0');
}

bool watch_path(std::string_view p) { return valid_path(p) || is_special_path(p); }

}  // namespace

bool is_special_path(std::string_view p) { return p == "@releaseDomain" || p == "@introduceDomain"; }

bool valid_path(std::string_view p) {
    if (p.empty()) return false;
    const bool absolute = p.front() == '/';
    if (p.size() > (absolute ? abi::kXsAbsPathMax : abi::kXsRelPathMax)) return false;
    if (p == "/") return true;
    if (p.back() == '/') return false;
    char prev = '\0';
    for (char c : p) {
        if (!path_char(c)) return false;
        if (c == '/' && prev == '/') return false;
        prev = c;
    }
    return true;
}

bool valid_absolute_path(std::string_view p) { return !p.empty() && p.front() == '/' && valid_path(p); }

XsResult<Request> parse_request(const abi::XsMsgHeader& hdr, std::span<const char> payload) {
    if (hdr.len > abi::kXsPayloadMax) return std::unexpected(XsError::TooBig);
    if (payload.size() != hdr.len) return std::unexpected(XsError::Inval);
    Request r;
    r.type = static_cast<XsType>(hdr.type);
    r.req_id = hdr.req_id;
    r.tx_id = hdr.tx_id;
    switch (r.type) {
        case XsType::Directory:
        case XsType::Read:
        case XsType::Mkdir:
        case XsType::Rm: {
            auto a = split_args<1>(payload);
            if (!a || !valid_path((*a)[0])) return std::unexpected(XsError::Inval);
            r.path = (*a)[0];
            return r;
        }
        case XsType::Write: {
            const void* nul = std::memchr(payload.data(), 0, payload.size());
            if (nul == nullptr) return std::unexpected(XsError::Inval);
            const auto end = static_cast<std::size_t>(static_cast<const char*>(nul) - payload.data());
            r.path = std::string_view(payload.data(), end);
            r.value = std::string_view(payload.data() + end + 1, payload.size() - end - 1);
            if (!valid_path(r.path)) return std::unexpected(XsError::Inval);
            return r;
        }
        case XsType::Watch:
        case XsType::Unwatch: {
            auto a = split_args<2>(payload);
            if (!a || !watch_path((*a)[0])) return std::unexpected(XsError::Inval);
            r.path = (*a)[0];
            r.token = (*a)[1];
            return r;
        }
        case XsType::TransactionStart:
        case XsType::ResetWatches:
            if (!empty_payload(payload)) return std::unexpected(XsError::Inval);
            return r;
        case XsType::TransactionEnd: {
            auto a = split_args<1>(payload);
            if (!a || ((*a)[0] != "T" && (*a)[0] != "F")) return std::unexpected(XsError::Inval);
            r.commit = (*a)[0] == "T";
            return r;
        }
        case XsType::GetDomainPath: {
            auto a = split_args<1>(payload);
            if (!a) return std::unexpected(XsError::Inval);
            const std::string_view s = (*a)[0];
            // Decimal, no sign, no leading zeros, a 16-bit domid.
            if (s.empty() || s.size() > 5 || (s.size() > 1 && s.front() == '0')) return std::unexpected(XsError::Inval);
            std::uint32_t v = 0;
            auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
            if (ec != std::errc{} || p != s.data() + s.size() || v > 0xffff) return std::unexpected(XsError::Inval);
            r.domid = v;
            return r;
        }
        // Toolstack operations: only dom0's own tools may send them, never a guest's ring.
        case XsType::Control:
        case XsType::Introduce:
        case XsType::Release:
        case XsType::SetPerms:
        case XsType::IsDomainIntroduced:
        case XsType::Resume:
        case XsType::SetTarget:
            return std::unexpected(XsError::Access);
        // Server-to-guest types arriving in the request ring.
        case XsType::WatchEvent:
        case XsType::Error:
            return std::unexpected(XsError::Inval);
        case XsType::GetPerms:
        case XsType::DirectoryPart:
            return std::unexpected(XsError::NoSys);
    }
    return std::unexpected(XsError::NoSys);
}

XsResult<std::string> message(abi::XsType type, std::uint32_t req_id, std::uint32_t tx_id,
                              std::string_view payload) {
    if (payload.size() > abi::kXsPayloadMax) return std::unexpected(XsError::TooBig);
    abi::XsMsgHeader h{static_cast<std::uint32_t>(type), req_id, tx_id, static_cast<std::uint32_t>(payload.size())};
    std::string out(sizeof h + payload.size(), '\0');
    std::memcpy(out.data(), &h, sizeof h);
    if (!payload.empty()) std::memcpy(out.data() + sizeof h, payload.data(), payload.size());
    return out;
}

std::string ok_reply(abi::XsType type, std::uint32_t req_id, std::uint32_t tx_id) {
    return *message(type, req_id, tx_id, std::string_view("OK\0", 3));
}

std::string error_reply(XsError e, std::uint32_t req_id, std::uint32_t tx_id) {
    std::string p(to_wire(e));
    p.push_back('\0');
    return *message(XsType::Error, req_id, tx_id, p);
}

XsResult<std::string> directory_reply(std::uint32_t req_id, std::uint32_t tx_id,
                                      const std::vector<std::string>& children) {
    std::string p;
    for (const auto& c : children) {
        if (p.size() + c.size() + 1 > abi::kXsPayloadMax) return std::unexpected(XsError::TooBig);
        p.append(c);
        p.push_back('\0');
    }
    return message(XsType::Directory, req_id, tx_id, p);
}

XsResult<std::string> watch_event(std::string_view path, std::string_view token) {
    if (path.size() + token.size() + 2 > abi::kXsPayloadMax) return std::unexpected(XsError::TooBig);
    std::string p;
    p.reserve(path.size() + token.size() + 2);
    p.append(path);
    p.push_back('\0');
    p.append(token);
    p.push_back('\0');
    return message(XsType::WatchEvent, 0, 0, p);
}

}  // namespace xen_model::xenstore::wire
