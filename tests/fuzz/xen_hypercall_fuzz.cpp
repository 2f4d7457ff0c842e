// Fuzzes the vmm's Xen hypercall dispatcher and event channels with hostile guests: the input is
// a list of hypercalls (number, five arguments, calling vCPU) and the initial contents of guest
// memory, which the arguments point into (or past). Also the vmm's page walk over hostile page
// tables and the hypercall-pair scan. Any crash, hang or sanitizer report is a bug; errors
// returned to the guest are the expected outcome.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>

#include <spdlog/spdlog.h>

#include "xen/event_channels.hpp"
#include "xen/hypercall_patch.hpp"
#include "xen/hypercalls.hpp"
#include "xen/page_walk.hpp"

namespace {

using namespace hypervisor::xen;

constexpr std::uint64_t kMem = 256 * 1024;

const common::GuestMemory& memory() {
    static auto mem = [] {
        spdlog::set_level(spdlog::level::off);
        return common::GuestMemory::create({{common::GuestAddr(0), kMem, 0}});
    }();
    return *mem;
}

struct NullSink final : UpcallSink {
    void upcall(std::uint32_t, std::uint8_t) override {}
};

struct NullEnv final : HypercallEnv {
    void kick_dom0(std::uint32_t) override {}
    void dom0_port_closed(std::uint32_t) override {}
    void shutdown(std::uint32_t) override {}
    std::uint64_t grant_frames_gpa() const override { return 0x30000; }
};

// Identity below the end of memory, unmapped above; odd pages swapped to split structs.
struct Virtual final : GuestVirtual {
    std::optional<std::uint64_t> translate(std::uint64_t gva) override {
        if (gva >= kMem) return std::nullopt;
        return gva ^ 0x1000;
    }
};

std::uint64_t u64_at(const std::uint8_t* p) {
    std::uint64_t v;
    std::memcpy(&v, p, 8);
    return v;
}

constexpr std::uint64_t kNumbers[] = {hc::memory_op, hc::xen_version, hc::grant_table_op, hc::vcpu_op,
                                      hc::sched_op, hc::event_channel_op, hc::hvm_op, 0, 63, 1000};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size < 1) return 0;
    const auto& mem = memory();
    std::size_t calls = data[0] % 16;
    constexpr std::size_t kCall = 2 + 5 * 8;
    std::size_t head = 1 + calls * kCall;
    if (size < head) return 0;
    // Guest memory: the tail of the input, the rest zero.
    auto all = mem.slice(common::GuestAddr(0), kMem);
    std::memset(all->data(), 0, kMem);
    std::memcpy(all->data(), data + head, std::min<std::size_t>(size - head, kMem));

    NullSink sink;
    NullEnv env;
    EventChannels ev(mem, 4, sink);
    HypercallConfig cfg;
    cfg.ram = {{common::GuestAddr(0), kMem, 0}};
    cfg.store_port = 1;
    Hypercalls hcalls(mem, ev, env, cfg);
    Virtual gv;
    for (std::size_t i = 0; i < calls; ++i) {
        const std::uint8_t* c = data + 1 + i * kCall;
        HypercallArgs a{kNumbers[c[0] % std::size(kNumbers)], {}};
        for (std::size_t j = 0; j < 5; ++j) {
            std::uint64_t v = u64_at(c + 2 + j * 8);
            // Sub-operations and pointers: mostly small values, sometimes anything.
            a.a[j] = (v >> 63) ? v : v % (kMem + 0x2000);
            if (j == 0 && !(v >> 63)) a.a[j] = v % 32;
        }
        if (a.nr == hc::sched_op && a.a[0] == schedop::poll) a.a[0] = schedop::yield;  // sleeps 1 ms
        (void)hcalls.dispatch(c[1] % 8, false, a, gv);
        ev.raise(c[1]);
        ev.housekeeping_tick();
    }
    // The page walk over whatever the input left in memory as page tables.
    if (size >= 9) {
        PagingState st{0x80000011, u64_at(data + 1) % (kMem + 0x2000), (data[0] & 1) ? 0x1000u : 0u, 0x500};
        (void)walk_page_tables(mem, st, u64_at(data + size - 8));
    }
    auto bytes = std::span(reinterpret_cast<const std::uint8_t*>(all->data()), std::min<std::size_t>(size, kMem));
    (void)find_hypercall_pairs(bytes, data[0]);
    return 0;
}
