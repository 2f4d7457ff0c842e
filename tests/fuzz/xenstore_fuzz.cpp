// Fuzzes the xenstore server as a hostile guest sees it: bytes in the req ring of a Connection
// over real GuestMemory, with the guest reading replies or not, kicking or not, and moving the
// ring indices itself. Also feeds the wire parser directly.
//
// Input: byte 0 picks the mode.
//   0: wire parser: a 16-byte header and the payload (len forced to the payload's size, or
//      kept as given when byte 1 is odd).
//   1: framed requests: records [type][tx selector][path selector][len][len bytes] become
//      well-framed messages, so the store's paths, transactions and watches are explored.
//   2: raw ring stream: records [ctl][n][n bytes] write n raw bytes (what fits) into req; ctl
//      says whether the guest then kicks, reads rsp, or scribbles an index.
// Checked: no crash or sanitizer report; nothing outside the ring page changes; while the guest
// leaves the indices alone, a connection is never broken and never has more than 1024 bytes
// outstanding in either ring.
#include <spdlog/spdlog.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>

#include "common/guest_memory.hpp"
#include "xen_model/abi/xen_abi.hpp"
#include "xen_model/xenstore/connection.hpp"
#include "xen_model/xenstore/wire.hpp"

using namespace xen_model::xenstore;
using common::GuestAddr;
using xen_model::abi::XenstoreInterface;
using xen_model::abi::XsMsgHeader;

namespace {

constexpr std::uint64_t kMemSize = 0x4000;
constexpr GuestAddr kRing{0x1000};
constexpr std::byte kFill{0xa5};

class Input {
public:
    Input(const std::uint8_t* d, std::size_t n) : d_(d), n_(n) {}
    bool empty() const { return pos_ >= n_; }
    std::uint8_t byte() { return pos_ < n_ ? d_[pos_++] : 0; }
    std::string_view take(std::size_t n) {
        n = std::min(n, n_ - pos_);
        std::string_view s(reinterpret_cast<const char*>(d_ + pos_), n);
        pos_ += n;
        return s;
    }

private:
    const std::uint8_t* d_;
    std::size_t n_;
    std::size_t pos_ = 0;
};

void fuzz_wire(Input& in) {
    const bool keep_len = (in.byte() & 1) != 0;
    XsMsgHeader h{};
    auto hb = in.take(sizeof h);
    std::memcpy(&h, hb.data(), hb.size());
    auto payload = in.take(SIZE_MAX);
    if (!keep_len) h.len = static_cast<std::uint32_t>(payload.size());
    auto r = wire::parse_request(h, std::span<const char>(payload.data(), payload.size()));
    if (!r) {
        (void)wire::error_reply(r.error(), h.req_id, h.tx_id);
        return;
    }
    // Views must lie inside the payload.
    for (auto v : {r->path, r->token, r->value}) {
        if (v.empty()) continue;
        if (v.data() < payload.data() || v.data() + v.size() > payload.data() + payload.size()) std::abort();
    }
    if (!r->path.empty() && !wire::is_special_path(r->path) && !wire::valid_path(r->path)) std::abort();
    (void)wire::watch_event(r->path, r->token);
}

struct Guest {
    const common::GuestMemory& mem;
    std::uint32_t idx(std::size_t off) const { return *mem.read_obj<std::uint32_t>(kRing + off); }
    void set(std::size_t off, std::uint32_t v) const { (void)mem.write_obj(kRing + off, v); }
    // Writes what fits of `bytes` into req and publishes req_prod.
    void put(std::string_view bytes) const {
        std::uint32_t prod = idx(offsetof(XenstoreInterface, req_prod));
        const std::uint32_t used = prod - idx(offsetof(XenstoreInterface, req_cons));
        if (used > 1024) return;
        const std::size_t n = std::min<std::size_t>(bytes.size(), 1024 - used);
        for (std::size_t i = 0; i < n; ++i, ++prod)
            (void)mem.write_obj(kRing + offsetof(XenstoreInterface, req) + (prod & 1023u), bytes[i]);
        set(offsetof(XenstoreInterface, req_prod), prod);
    }
    void read_all() const { set(offsetof(XenstoreInterface, rsp_cons), idx(offsetof(XenstoreInterface, rsp_prod))); }
};

std::string frame(std::uint32_t type, std::uint32_t tx, std::string_view payload) {
    XsMsgHeader h{type, 1, tx, static_cast<std::uint32_t>(payload.size())};
    std::string s(sizeof h, '\0');
    std::memcpy(s.data(), &h, sizeof h);
    s.append(payload);
    return s;
}

void check_invariants(const Connection& c, const Guest& g) {
    if (c.broken()) std::abort();
    if (g.idx(offsetof(XenstoreInterface, rsp_prod)) - g.idx(offsetof(XenstoreInterface, rsp_cons)) > 1024) std::abort();
    if (g.idx(offsetof(XenstoreInterface, req_prod)) - g.idx(offsetof(XenstoreInterface, req_cons)) > 1024) std::abort();
}

void fuzz_ring(Input& in, bool framed) {
    auto mem = common::GuestMemory::create({{GuestAddr(0), kMemSize, 0}});
    if (!mem) std::abort();
    auto all = mem->slice(GuestAddr(0), kMemSize);
    std::memset(all->data(), static_cast<int>(kFill), all->size());
    auto page = mem->slice(kRing, 4096);
    std::memset(page->data(), 0, page->size());

    Store store;
    (void)store.write(0, 0, "/local/domain/1/domid", "1");
    (void)store.set_perms(0, 0, "/local/domain/1/domid", 0, {1});
    (void)store.mkdir(0, 0, "/local/domain/1/device/vbd/51712");
    (void)store.write(0, 0, "/local/domain/0/backend/vbd/1/51712/state", "1");
    (void)store.write(0, 0, "/local/domain/2/secret", "s");
    auto conn = Connection::create(store, 1, *mem, kRing, [] {});
    if (!conn) std::abort();
    Guest g{*mem};

    static constexpr std::string_view kPaths[] = {
        "device",    "device/vbd/51712/state", "/local/domain/1", "/local/domain/0/backend/vbd/1/51712/state",
        "domid",     "/local/domain/2/secret", "data/a/b/c",      "@releaseDomain",
        "/",         "/local/domain/1/device", "control/shutdown", "/local/domain/0/backend",
    };
    std::uint32_t last_tx = 0;
    bool scribbled = false;  // the guest moved an index itself: the ring checks no longer apply
    int steps = 0;
    while (!in.empty() && steps++ < 512) {
        const std::uint8_t ctl = in.byte();
        if (framed) {
            const std::uint32_t type = ctl % 24;
            const std::uint8_t txsel = in.byte();
            const std::uint8_t psel = in.byte();
            const std::size_t len = in.byte();
            std::string payload;
            if (psel & 0x80) {
                payload = std::string(kPaths[psel % std::size(kPaths)]);
                payload.push_back('\0');
            }
            payload.append(in.take(len));
            const std::uint32_t tx = txsel == 0 ? 0 : txsel == 1 ? last_tx : txsel;
            g.put(frame(type, tx, payload));
            // dom0 changes things under the guest's watches now and then.
            if (txsel == 2) (void)store.write(0, 0, "/local/domain/1/device/vbd/51712/backend", "x");
            if (txsel == 3) (void)store.rm(0, 0, "/local/domain/1/data");
        } else {
            g.put(in.take(in.byte()));
            if (ctl & 0x10) g.set(offsetof(XenstoreInterface, req_prod), in.byte() * 97u);
            if (ctl & 0x20) g.set(offsetof(XenstoreInterface, rsp_cons), in.byte() * 89u);
            scribbled |= (ctl & 0x30) != 0;
        }
        if (!(ctl & 0x40)) conn->on_kick();
        if (!(ctl & 0x80)) {
            // Pick up a transaction id from a TRANSACTION_START reply if one is there.
            const std::uint32_t prod = g.idx(offsetof(XenstoreInterface, rsp_prod));
            const std::uint32_t cons = g.idx(offsetof(XenstoreInterface, rsp_cons));
            if (prod - cons >= sizeof(XsMsgHeader) + 2 && prod - cons <= 1024) {
                char buf[32] = {};
                for (std::size_t i = 0; i < sizeof buf - 1 && i < prod - cons; ++i)
                    buf[i] = *mem->read_obj<char>(kRing + offsetof(XenstoreInterface, rsp) + ((cons + i) & 1023u));
                XsMsgHeader h;
                std::memcpy(&h, buf, sizeof h);
                if (h.type == 6) last_tx = static_cast<std::uint32_t>(std::strtoul(buf + sizeof h, nullptr, 10));
            }
            g.read_all();
        }
        if (!scribbled) check_invariants(*conn, g);
    }
    conn->on_kick();
    if (!scribbled) check_invariants(*conn, g);
    store.remove_domain(1);

    // Nothing outside the ring page was written.
    const auto* bytes = all->data();
    for (std::uint64_t i = 0; i < kMemSize; ++i) {
        if (i >= kRing.value() && i < kRing.value() + 4096) continue;
        if (bytes[i] != kFill) std::abort();
    }
    // Within the page, the server writes only rsp, req_cons and rsp_prod: the rest is the guest's.
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    spdlog::set_level(spdlog::level::off);
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    Input in(data, size);
    switch (in.byte() % 3) {
        case 0: fuzz_wire(in); break;
        case 1: fuzz_ring(in, true); break;
        default: fuzz_ring(in, false); break;
    }
    return 0;
}
