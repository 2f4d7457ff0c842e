// The guest's side of a xenstore ring page, as Linux's xenbus_comms.c drives it: requests go
// into req at req_prod, replies and watch events come out of rsp at rsp_cons. Used by the unit
// tests to drive a xenstore::Connection over real GuestMemory.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/guest_memory.hpp"
#include "xen_model/abi/xen_abi.hpp"

namespace test_support {

struct XsMsg {
    std::uint32_t type = 0;
    std::uint32_t req_id = 0;
    std::uint32_t tx_id = 0;
    std::string payload;
};

// header + payload bytes, as the guest writes them.
inline std::string xs_request(xen_model::abi::XsType type, std::uint32_t req_id, std::uint32_t tx_id,
                              std::string_view payload, std::optional<std::uint32_t> len = std::nullopt) {
    xen_model::abi::XsMsgHeader h{static_cast<std::uint32_t>(type), req_id, tx_id,
                                  len.value_or(static_cast<std::uint32_t>(payload.size()))};
    std::string out(sizeof h, '\0');
    std::memcpy(out.data(), &h, sizeof h);
    out.append(payload);
    return out;
}

class XsGuestRing {
public:
    XsGuestRing(const common::GuestMemory& mem, common::GuestAddr page) : mem_(mem), page_(page) {}

    std::uint32_t index(std::size_t off) const { return *mem_.read_obj<std::uint32_t>(page_ + off); }
    void set_index(std::size_t off, std::uint32_t v) const { (void)mem_.write_obj(page_ + off, v); }

    // Free bytes in req (1024 - (prod - cons)).
    std::size_t req_space() const {
        using I = xen_model::abi::XenstoreInterface;
        return xen_model::abi::kXsRingSize - (index(offsetof(I, req_prod)) - index(offsetof(I, req_cons)));
    }

    // Appends bytes to req (they must fit) and publishes req_prod.
    void put(std::string_view bytes) const {
        using I = xen_model::abi::XenstoreInterface;
        std::uint32_t prod = index(offsetof(I, req_prod));
        for (char c : bytes) {
            (void)mem_.write_obj(page_ + offsetof(I, req) + (prod & 1023u), c);
            ++prod;
        }
        set_index(offsetof(I, req_prod), prod);
    }

    // Takes every byte available in rsp and publishes rsp_cons; complete messages are returned,
    // a partial one waits for the next call.
    std::vector<XsMsg> take() {
        using I = xen_model::abi::XenstoreInterface;
        std::uint32_t cons = index(offsetof(I, rsp_cons));
        const std::uint32_t prod = index(offsetof(I, rsp_prod));
        while (cons != prod) {
            buf_.push_back(*mem_.read_obj<char>(page_ + offsetof(I, rsp) + (cons & 1023u)));
            ++cons;
        }
        set_index(offsetof(I, rsp_cons), cons);
        std::vector<XsMsg> out;
        while (buf_.size() >= sizeof(xen_model::abi::XsMsgHeader)) {
            xen_model::abi::XsMsgHeader h;
            std::memcpy(&h, buf_.data(), sizeof h);
            if (buf_.size() < sizeof h + h.len) break;
            out.push_back(XsMsg{h.type, h.req_id, h.tx_id, buf_.substr(sizeof h, h.len)});
            buf_.erase(0, sizeof h + h.len);
        }
        return out;
    }

    // Bytes of rsp the guest has not consumed yet.
    std::uint32_t rsp_pending() const {
        using I = xen_model::abi::XenstoreInterface;
        return index(offsetof(I, rsp_prod)) - index(offsetof(I, rsp_cons));
    }

private:
    const common::GuestMemory& mem_;
    common::GuestAddr page_;
    std::string buf_;
};

}  // namespace test_support
