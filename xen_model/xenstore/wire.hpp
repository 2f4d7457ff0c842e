// The xenstore wire format (xs_wire.h) as pure functions: a request's payload split into its
// arguments per message type, path syntax, and reply/event framing. Nothing here touches guest
// memory or the Store, so unit tests and the fuzzer call it directly.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "xen_model/abi/xen_abi.hpp"
#include "xen_model/xenstore/store.hpp"

namespace xen_model::xenstore::wire {

// A parsed request. The views point into the payload given to parse_request.
struct Request {
    abi::XsType type = abi::XsType::Error;
    std::uint32_t req_id = 0;
    std::uint32_t tx_id = 0;
    std::string_view path;   // DIRECTORY, READ, WRITE, MKDIR, RM, WATCH, UNWATCH (as sent: may be relative)
    std::string_view token;  // WATCH, UNWATCH
    std::string_view value;  // WRITE: the bytes after the path's NUL (may hold NULs, may be empty)
    bool commit = false;     // TRANSACTION_END: "T" commits, "F" aborts
    DomId domid = 0;         // GET_DOMAIN_PATH
};

// Splits `payload` (exactly hdr.len bytes) by message type. Each string argument must end with
// a NUL and hold no other NUL; paths must pass valid_path (or be a special "@..." watch path for
// WATCH/UNWATCH). Errors: Inval for malformed input, TooBig for len > kXsPayloadMax, Access for
// privileged types a guest may not send, NoSys for types not served.
[[nodiscard]] XsResult<Request> parse_request(const abi::XsMsgHeader& hdr, std::span<const char> payload);

// Path syntax as xenstored accepts it: characters [A-Za-z0-9/_@.-], no empty component, no
// trailing '/' (except "/" itself). Absolute paths start with '/' and are at most kXsAbsPathMax
// bytes; relative ones at most kXsRelPathMax.
[[nodiscard]] bool valid_path(std::string_view p);
[[nodiscard]] bool valid_absolute_path(std::string_view p);
// "@releaseDomain" and "@introduceDomain": watchable, not nodes.
[[nodiscard]] bool is_special_path(std::string_view p);

// A whole message (header + payload) ready for the rsp ring. Payloads over kXsPayloadMax fail
// with TooBig; callers turn that into an error reply.
[[nodiscard]] XsResult<std::string> message(abi::XsType type, std::uint32_t req_id, std::uint32_t tx_id,
                                            std::string_view payload);
[[nodiscard]] std::string ok_reply(abi::XsType type, std::uint32_t req_id, std::uint32_t tx_id);
[[nodiscard]] std::string error_reply(XsError e, std::uint32_t req_id, std::uint32_t tx_id);
// child\0child\0... (an empty directory is an empty payload).
[[nodiscard]] XsResult<std::string> directory_reply(std::uint32_t req_id, std::uint32_t tx_id,
                                                    const std::vector<std::string>& children);
// XS_WATCH_EVENT: path\0token\0 with req_id = tx_id = 0.
[[nodiscard]] XsResult<std::string> watch_event(std::string_view path, std::string_view token);

}  // namespace xen_model::xenstore::wire
