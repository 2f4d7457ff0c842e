// The vmm's Xen ABI without KVM: 2-level event channels over fake guest memory with an MSI
// recorder, the hypercall dispatcher with an identity (or page-scrambling) translator, the
// instruction patcher, the Xen CPUID leaves, the memory map and the platform ports.
#include <doctest/doctest.h>

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <map>
#include <thread>

#include "boot/acpi.hpp"
#include "boot/layout.hpp"
#include "boot/memory_map.hpp"
#include "kvm/cpuid.hpp"
#include "vmm/exit.hpp"
#include "xen/event_channels.hpp"
#include "xen/hypercall_patch.hpp"
#include "xen/hypercalls.hpp"
#include "xen/page_walk.hpp"
#include "xen/platform_device.hpp"
#include "xen/xen_domain.hpp"
#include "xen_model/abi/xen_abi.hpp"

using namespace hypervisor;
using namespace hypervisor::xen;
using common::GuestAddr;
namespace err = xen_model::abi::err;

namespace {

constexpr std::uint64_t kShared = 0x10000;  // shared_info page in the fake RAM
constexpr std::uint64_t kRam = 0x100000;

struct MsiRecorder final : UpcallSink {
    std::vector<std::pair<std::uint32_t, std::uint8_t>> sent;
    void upcall(std::uint32_t vcpu, std::uint8_t vector) override { sent.emplace_back(vcpu, vector); }
};

common::GuestMemory ram() {
    auto m = common::GuestMemory::create({{GuestAddr(0), kRam, 0}});
    REQUIRE(m);
    return std::move(*m);
}

std::uint64_t u64(const common::GuestMemory& m, std::uint64_t gpa) { return *m.read_obj<std::uint64_t>(GuestAddr(gpa)); }
std::uint8_t u8(const common::GuestMemory& m, std::uint64_t gpa) { return *m.read_obj<std::uint8_t>(GuestAddr(gpa)); }
void set_u64(const common::GuestMemory& m, std::uint64_t gpa, std::uint64_t v) { REQUIRE(m.write_obj(GuestAddr(gpa), v)); }
void set_u8(const common::GuestMemory& m, std::uint64_t gpa, std::uint8_t v) { REQUIRE(m.write_obj(GuestAddr(gpa), v)); }

std::uint64_t pending_word(std::uint32_t port) { return kShared + kSharedPending + (port / 64) * 8; }
std::uint64_t mask_word(std::uint32_t port) { return kShared + kSharedMask + (port / 64) * 8; }

// Identity translation, except for pages remapped by the test (to check page-wise copies).
struct FakeVirtual final : GuestVirtual {
    std::map<std::uint64_t, std::uint64_t> remap;  // virtual page -> physical page
    std::optional<std::uint64_t> translate(std::uint64_t gva) override {
        std::uint64_t page = gva & ~0xfffull;
        if (auto it = remap.find(page); it != remap.end()) return it->second | (gva & 0xfff);
        if (gva >= kRam) return std::nullopt;
        return gva;
    }
};

struct FakeEnv final : HypercallEnv {
    std::vector<std::uint32_t> kicks, closed, shutdowns;
    void kick_dom0(std::uint32_t p) override { kicks.push_back(p); }
    void dom0_port_closed(std::uint32_t p) override { closed.push_back(p); }
    void shutdown(std::uint32_t r) override { shutdowns.push_back(r); }
    std::uint64_t grant_frames_gpa() const override { return 0xc0000000; }
};

}  // namespace

TEST_CASE("event channels: raise sets pending, pending_sel and upcall_pending, then injects") {
    auto m = ram();
    MsiRecorder msi;
    EventChannels ev(m, 2, msi);
    auto p = ev.bind_ipi(1);
    REQUIRE(p == 1);
    ev.raise(1);  // no shared_info yet: nothing to write
    CHECK(ev.stats().lost == 1);
    ev.set_shared_info(GuestAddr(kShared));
    CHECK(ev.set_upcall_vector(1, 0xf3) == 0);
    ev.raise(1);
    CHECK(u64(m, pending_word(1)) == 2);
    std::uint64_t v1 = kShared + kVcpuInfoSize;  // vCPU 1's vcpu_info inside shared_info
    CHECK(u64(m, v1 + kVcpuPendingSel) == 1);
    CHECK(u8(m, v1 + kVcpuUpcallPending) == 1);
    REQUIRE(msi.sent.size() == 1);
    CHECK(msi.sent[0] == std::pair<std::uint32_t, std::uint8_t>{1, 0xf3});
    // Already pending: the guest has not seen it yet; no second injection.
    ev.raise(1);
    CHECK(msi.sent.size() == 1);
    // §3.8: a second port becoming pending injects even though upcall_pending is still 1.
    auto p2 = ev.bind_ipi(1);
    REQUIRE(p2 == 2);
    ev.raise(2);
    CHECK(msi.sent.size() == 2);
    CHECK(u64(m, pending_word(2)) == 6);
}

TEST_CASE("event channels: masked ports stay pending until unmask delivers them") {
    auto m = ram();
    MsiRecorder msi;
    EventChannels ev(m, 1, msi);
    ev.set_shared_info(GuestAddr(kShared));
    REQUIRE(ev.set_upcall_vector(0, 0xf3) == 0);
    auto port = static_cast<std::uint32_t>(ev.bind_virq(1, 0));
    REQUIRE(port >= 1);
    auto high = ev.bind_ipi(0);
    REQUIRE(high >= 1);
    CHECK(ev.pending_report().empty());
    set_u64(m, mask_word(port), 1ull << (port % 64));
    ev.raise(port);
    CHECK(ev.pending(port));
    CHECK(msi.sent.empty());
    CHECK(u64(m, kShared + kVcpuPendingSel) == 0);
    // The end-of-run report names the port the guest has not taken, and nothing else.
    auto report = ev.pending_report();
    REQUIRE(report.size() == 1);
    CHECK(report[0] == fmt::format("port {} (virq, vCPU 0) pending, masked", port));
    CHECK(ev.unmask(port) == 0);
    CHECK_FALSE(ev.masked(port));
    CHECK(u64(m, kShared + kVcpuPendingSel) == 1ull << (port / 64));
    CHECK(msi.sent.size() == 1);
    report = ev.pending_report();
    REQUIRE(report.size() == 2);
    CHECK(report[0] == fmt::format("port {} (virq, vCPU 0) pending, unmasked", port));
    CHECK(report[1].starts_with("vCPU 0: upcall_pending 1, pending_sel"));
    // Unmasking a port that was not masked delivers nothing new.
    CHECK(ev.unmask(port) == 0);
    CHECK(msi.sent.size() == 1);
    // Unmask of an unmasked, not pending port: nothing.
    set_u64(m, pending_word(port), 0);
    CHECK(ev.unmask(port) == 0);
    CHECK(msi.sent.size() == 1);
}

TEST_CASE("event channels: pending_sel selects the word of the port; registered vcpu_info is used") {
    auto m = ram();
    MsiRecorder msi;
    EventChannels ev(m, 1, msi);
    ev.set_shared_info(GuestAddr(kShared));
    REQUIRE(ev.set_upcall_vector(0, 0x40) == 0);
    // Fill ports 1..130 so that port 130 lies in word 2.
    std::int64_t last = 0;
    for (int i = 0; i < 130; ++i) last = ev.alloc_unbound(0);
    REQUIRE(last == 130);
    REQUIRE(ev.bind_dom0(130) == 0);
    CHECK(ev.bind_dom0(130) == err::kBusy);
    CHECK(ev.bind_dom0(4000) == err::kInval);
    // vcpu_info moves to a registered area; its contents move with it.
    set_u8(m, kShared + kVcpuUpcallPending, 0);
    CHECK(ev.set_vcpu_info(0, GuestAddr(0x20040)) == 0);
    CHECK(ev.set_vcpu_info(0, GuestAddr(0x20041)) == err::kInval);  // misaligned
    CHECK(ev.set_vcpu_info(3, GuestAddr(0x20040)) == err::kNoEnt);
    ev.raise(130);
    CHECK(u64(m, 0x20040 + kVcpuPendingSel) == 1ull << 2);
    CHECK(u8(m, 0x20040 + kVcpuUpcallPending) == 1);
    CHECK(u64(m, kShared + kVcpuPendingSel) == 0);  // the legacy slot is no longer used
    CHECK(msi.sent.size() == 1);
}

TEST_CASE("event channels: port table rules") {
    auto m = ram();
    MsiRecorder msi;
    EventChannels ev(m, 2, msi);
    ev.set_shared_info(GuestAddr(kShared));
    CHECK(ev.alloc_unbound(5) == err::kSrch);
    auto u = static_cast<std::uint32_t>(ev.alloc_unbound(0));
    CHECK(ev.send(u).rc == 0);  // unbound: dropped
    CHECK_FALSE(ev.send(u).to_dom0);
    REQUIRE(ev.bind_dom0(u) == 0);
    CHECK(ev.send(u).to_dom0);
    CHECK(ev.bind_vcpu(u, 1) == 0);
    auto v = static_cast<std::uint32_t>(ev.bind_virq(0, 1));
    CHECK(ev.bind_virq(0, 1) == err::kExist);
    CHECK(ev.bind_virq(24, 0) == err::kInval);
    CHECK(ev.send(v).rc == err::kInval);
    CHECK(ev.bind_vcpu(v, 0) == err::kInval);
    CHECK(ev.send(0).rc == err::kInval);
    CHECK(ev.send(9999).rc == err::kInval);
    EvtchnStatus st{};
    CHECK(ev.status(u, st) == 0);
    CHECK(st.status == evtchn_stat::interdomain);
    CHECK(st.vcpu == 1);
    CHECK(ev.status(v, st) == 0);
    CHECK(st.status == evtchn_stat::virq);
    auto c = ev.close(u);
    CHECK(c.rc == 0);
    CHECK(c.was_dom0);
    CHECK(ev.status(u, st) == 0);
    CHECK(st.status == evtchn_stat::closed);
    CHECK(ev.close(u).rc == err::kInval);
    // dom0 closing its end turns the port back into an unbound one.
    auto w = static_cast<std::uint32_t>(ev.alloc_unbound(0));
    REQUIRE(ev.bind_dom0(w) == 0);
    CHECK(ev.unbind_dom0(w));
    CHECK(ev.status(w, st) == 0);
    CHECK(st.status == evtchn_stat::unbound);
    CHECK(ev.set_upcall_vector(0, 5) == err::kInval);
    CHECK(ev.set_upcall_vector(0, 0) == 0);
}

TEST_CASE("event channels: housekeeping re-sends an upcall that stayed pending two ticks") {
    auto m = ram();
    MsiRecorder msi;
    EventChannels ev(m, 1, msi);
    ev.set_shared_info(GuestAddr(kShared));
    REQUIRE(ev.set_upcall_vector(0, 0xf3) == 0);
    auto p = static_cast<std::uint32_t>(ev.bind_ipi(0));
    ev.raise(p);
    REQUIRE(msi.sent.size() == 1);
    ev.housekeeping_tick();  // first sighting
    CHECK(msi.sent.size() == 1);
    ev.housekeeping_tick();  // still pending: the MSI was lost
    CHECK(msi.sent.size() == 2);
    CHECK(ev.stats().rekicks == 1);
    set_u8(m, kShared + kVcpuUpcallPending, 0);  // the guest took it
    ev.housekeeping_tick();
    ev.housekeeping_tick();
    CHECK(msi.sent.size() == 2);
}

TEST_CASE("event channels: poll wakes when a listed port becomes pending") {
    auto m = ram();
    MsiRecorder msi;
    EventChannels ev(m, 1, msi);
    ev.set_shared_info(GuestAddr(kShared));
    auto p = static_cast<std::uint32_t>(ev.bind_ipi(0));
    std::uint32_t ports[] = {p};
    CHECK_FALSE(ev.wait_any_pending(ports, std::chrono::microseconds(100)));
    std::thread t([&] {
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
        ev.raise(p);
    });
    CHECK(ev.wait_any_pending(ports, std::chrono::seconds(5)));
    t.join();
}

TEST_CASE("hypercalls: version, features, shared_info, params, vcpu_info, grant table") {
    auto m = ram();
    MsiRecorder msi;
    EventChannels ev(m, 2, msi);
    FakeEnv env;
    HypercallConfig cfg;
    cfg.ram = {{GuestAddr(0), kRam, 0}};
    cfg.store_port = 1;
    cfg.store_pfn = 0xfeff9;
    Hypercalls hc(m, ev, env, cfg);
    FakeVirtual gv;
    auto call = [&](std::uint64_t nr, std::uint64_t a0, std::uint64_t a1 = 0, std::uint64_t a2 = 0) {
        return hc.dispatch(0, false, HypercallArgs{nr, {a0, a1, a2, 0, 0}}, gv);
    };
    CHECK(call(hc::xen_version, xenver::version) == ((4 << 16) | 17));
    CHECK(call(hc::xen_version, xenver::pagesize) == 4096);
    CHECK(call(hc::xen_version, 99) == err::kNoSys);
    REQUIRE(m.write_obj(GuestAddr(0x3000), XenFeatureInfo{0, 0xffff}));
    CHECK(call(hc::xen_version, xenver::get_features, 0x3000) == 0);
    CHECK(m.read_obj<XenFeatureInfo>(GuestAddr(0x3000))->submap == 7);
    CHECK(call(hc::xen_version, xenver::get_features, kRam + 8) == err::kFault);
    CHECK(call(99, 0) == err::kNoSys);
    CHECK(hc.dispatch(0, true, HypercallArgs{hc::xen_version, {0, 0, 0, 0, 0}}, gv) == err::kPerm);

    // shared_info: must be a RAM page; it is zeroed.
    set_u64(m, kShared + 8, 0x1234);
    REQUIRE(m.write_obj(GuestAddr(0x3000), AddToPhysmap{0x7ff0, 0, xenmem::space_shared_info, 0, kShared >> 12}));
    CHECK(call(hc::memory_op, xenmem::add_to_physmap, 0x3000) == 0);
    CHECK(u64(m, kShared + 8) == 0);
    CHECK(ev.shared_info() == GuestAddr(kShared));
    REQUIRE(m.write_obj(GuestAddr(0x3000), AddToPhysmap{0x7ff0, 0, xenmem::space_shared_info, 0, 0xfeff9}));
    CHECK(call(hc::memory_op, xenmem::add_to_physmap, 0x3000) == err::kInval);
    // grant frames: only at BAR1 + idx, idx < 64.
    REQUIRE(m.write_obj(GuestAddr(0x3000), AddToPhysmap{0x7ff0, 0, xenmem::space_grant_table, 3, 0xc0003}));
    CHECK(call(hc::memory_op, xenmem::add_to_physmap, 0x3000) == 0);
    REQUIRE(m.write_obj(GuestAddr(0x3000), AddToPhysmap{0x7ff0, 0, xenmem::space_grant_table, 3, 0xc0004}));
    CHECK(call(hc::memory_op, xenmem::add_to_physmap, 0x3000) == err::kInval);
    REQUIRE(m.write_obj(GuestAddr(0x3000), AddToPhysmap{0x7ff0, 0, xenmem::space_grant_table, 64, 0xc0040}));
    CHECK(call(hc::memory_op, xenmem::add_to_physmap, 0x3000) == err::kInval);
    REQUIRE(m.write_obj(GuestAddr(0x3000), GnttabQuerySize{0x7ff0, 0, 0, 0, -1, 0}));
    CHECK(call(hc::grant_table_op, gnttabop::query_size, 0x3000, 1) == 0);
    auto q = *m.read_obj<GnttabQuerySize>(GuestAddr(0x3000));
    CHECK(q.status == 0);
    CHECK(q.nr_frames == 4);
    CHECK(q.max_nr_frames == 64);
    REQUIRE(m.write_obj(GuestAddr(0x3000), GnttabSetVersion{2}));
    CHECK(call(hc::grant_table_op, gnttabop::set_version, 0x3000, 1) == err::kNoSys);
    REQUIRE(m.write_obj(GuestAddr(0x3000), GnttabSetVersion{1}));
    CHECK(call(hc::grant_table_op, gnttabop::set_version, 0x3000, 1) == 0);

    // HVM params.
    auto param = [&](std::uint32_t idx) {
        REQUIRE(m.write_obj(GuestAddr(0x3000), HvmParam{0x7ff0, 0, idx, 0xdead}));
        auto rc = call(hc::hvm_op, hvmop::get_param, 0x3000);
        return std::pair{rc, m.read_obj<HvmParam>(GuestAddr(0x3000))->value};
    };
    CHECK(param(hvm_param::store_pfn) == std::pair<std::int64_t, std::uint64_t>{0, 0xfeff9});
    CHECK(param(hvm_param::store_evtchn) == std::pair<std::int64_t, std::uint64_t>{0, 1});
    CHECK(param(hvm_param::console_evtchn) == std::pair<std::int64_t, std::uint64_t>{0, 0});
    CHECK(param(hvm_param::console_pfn) == std::pair<std::int64_t, std::uint64_t>{0, 0});
    CHECK(param(200).first == err::kInval);
    REQUIRE(m.write_obj(GuestAddr(0x3000), HvmParam{0x7ff0, 0, hvm_param::callback_irq, 1}));
    CHECK(call(hc::hvm_op, hvmop::set_param, 0x3000) == 0);
    CHECK(call(hc::hvm_op, hvmop::pagetable_dying, 0x3000) == err::kNoSys);
    REQUIRE(m.write_obj(GuestAddr(0x3000), HvmUpcallVector{1, 0xf3, {}}));
    CHECK(call(hc::hvm_op, hvmop::set_evtchn_upcall_vector, 0x3000) == 0);

    // register_vcpu_info: offset and RAM checks.
    REQUIRE(m.write_obj(GuestAddr(0x3000), RegisterVcpuInfo{0x20, 4096 - 64, 0}));
    CHECK(call(hc::vcpu_op, vcpuop::register_vcpu_info, 1, 0x3000) == 0);
    REQUIRE(m.write_obj(GuestAddr(0x3000), RegisterVcpuInfo{0x20, 4096 - 63, 0}));
    CHECK(call(hc::vcpu_op, vcpuop::register_vcpu_info, 1, 0x3000) == err::kInval);
    REQUIRE(m.write_obj(GuestAddr(0x3000), RegisterVcpuInfo{0xfeff8, 0, 0}));
    CHECK(call(hc::vcpu_op, vcpuop::register_vcpu_info, 1, 0x3000) == err::kInval);
    CHECK(call(hc::vcpu_op, vcpuop::register_vcpu_info, 2, 0x3000) == err::kNoEnt);
    CHECK(hc.count(hc::vcpu_op) == 4);
}

TEST_CASE("hypercalls: event channels through the guest ABI, dom0 kicks, shutdown, poll") {
    auto m = ram();
    MsiRecorder msi;
    EventChannels ev(m, 2, msi);
    ev.set_shared_info(GuestAddr(kShared));
    FakeEnv env;
    HypercallConfig cfg;
    cfg.ram = {{GuestAddr(0), kRam, 0}};
    Hypercalls hc(m, ev, env, cfg);
    FakeVirtual gv;
    auto evtchn = [&](std::uint64_t op, std::uint64_t arg) {
        return hc.dispatch(0, false, HypercallArgs{hc::event_channel_op, {op, arg, 0, 0, 0}}, gv);
    };
    REQUIRE(m.write_obj(GuestAddr(0x3000), EvtchnAllocUnbound{0x7ff0, 0, 0}));
    CHECK(evtchn(evtchnop::alloc_unbound, 0x3000) == 0);
    auto port = m.read_obj<EvtchnAllocUnbound>(GuestAddr(0x3000))->port;
    CHECK(port == 1);
    REQUIRE(ev.bind_dom0(port) == 0);
    REQUIRE(m.write_obj(GuestAddr(0x3100), EvtchnPort{port}));
    CHECK(evtchn(evtchnop::send, 0x3100) == 0);
    CHECK(env.kicks == std::vector<std::uint32_t>{port});
    CHECK(evtchn(evtchnop::close, 0x3100) == 0);
    CHECK(env.closed == std::vector<std::uint32_t>{port});
    CHECK(evtchn(evtchnop::bind_interdomain, 0x3100) == err::kPerm);
    CHECK(evtchn(evtchnop::init_control, 0x3100) == err::kNoSys);
    CHECK(evtchn(evtchnop::expand_array, 0x3100) == err::kNoSys);

    // An IPI port whose struct straddles two virtual pages that map to scattered physical ones.
    gv.remap[0x7000] = 0x5000;
    gv.remap[0x8000] = 0x9000;
    REQUIRE(m.write_obj(GuestAddr(0x5ffc), std::uint32_t{1}));  // vcpu = 1 at the end of one page
    CHECK(evtchn(evtchnop::bind_ipi, 0x7ffc) == 0);
    auto ipi = *m.read_obj<std::uint32_t>(GuestAddr(0x9000));  // port lands on the next page
    CHECK(ipi == 1);
    REQUIRE(ev.set_upcall_vector(1, 0xf3) == 0);
    REQUIRE(m.write_obj(GuestAddr(0x3100), EvtchnPort{ipi}));
    CHECK(evtchn(evtchnop::send, 0x3100) == 0);
    CHECK(msi.sent.size() == 1);
    CHECK(evtchn(evtchnop::send, kRam - 2) == err::kFault);  // runs off guest memory

    REQUIRE(m.write_obj(GuestAddr(0x3200), EvtchnStatus{0x7ff0, 0, ipi, 0, 0, 0, 0, 0}));
    CHECK(evtchn(evtchnop::status, 0x3200) == 0);
    CHECK(m.read_obj<EvtchnStatus>(GuestAddr(0x3200))->status == evtchn_stat::ipi);

    // poll returns at once for a pending port, after a short wait otherwise.
    REQUIRE(m.write_obj(GuestAddr(0x3300), std::uint32_t{ipi}));
    REQUIRE(m.write_obj(GuestAddr(0x3400), SchedPoll{0x3300, 1, 0, 0}));
    CHECK(hc.dispatch(0, false, HypercallArgs{hc::sched_op, {schedop::poll, 0x3400, 0, 0, 0}}, gv) == 0);
    REQUIRE(m.write_obj(GuestAddr(0x3400), SchedPoll{0x3300, 129, 0, 0}));
    CHECK(hc.dispatch(0, false, HypercallArgs{hc::sched_op, {schedop::poll, 0x3400, 0, 0, 0}}, gv) == err::kInval);

    REQUIRE(m.write_obj(GuestAddr(0x3500), SchedShutdown{schedop::suspend}));
    CHECK(hc.dispatch(0, false, HypercallArgs{hc::sched_op, {schedop::shutdown, 0x3500, 0, 0, 0}}, gv) == err::kInval);
    REQUIRE(m.write_obj(GuestAddr(0x3500), SchedShutdown{schedop::poweroff}));
    CHECK(hc.dispatch(0, false, HypercallArgs{hc::sched_op, {schedop::shutdown, 0x3500, 0, 0, 0}}, gv) == 0);
    CHECK(env.shutdowns == std::vector<std::uint32_t>{schedop::poweroff});
    CHECK(hc.summary().find("event_channel_op") != std::string::npos);
}

TEST_CASE("hypercalls: CPL3 callers are allowed only for the probe") {
    auto m = ram();
    MsiRecorder msi;
    EventChannels ev(m, 1, msi);
    FakeEnv env;
    HypercallConfig cfg;
    cfg.allow_user_mode = true;
    Hypercalls hc(m, ev, env, cfg);
    FakeVirtual gv;
    CHECK(hc.dispatch(0, true, HypercallArgs{hc::xen_version, {0, 0, 0, 0, 0}}, gv) == ((4 << 16) | 17));
}

TEST_CASE("hypercall patching: finds the aligned vmmcall/vmcall pair and rewrites both") {
    std::vector<std::uint8_t> text(256, 0x90);
    auto put = [&](std::size_t at, std::initializer_list<std::uint8_t> b) { std::copy(b.begin(), b.end(), text.begin() + static_cast<std::ptrdiff_t>(at)); };
    put(0x40, {0x0f, 0x01, 0xd9, 0xc3});
    put(0x50, {0x0f, 0x01, 0xc1, 0xc3});
    put(0x8f, {0x0f, 0x01, 0xd9});  // a pair at a misaligned address: not a match
    put(0x9f, {0x0f, 0x01, 0xc1});
    auto found = find_hypercall_pairs(text, 0x1000000);
    REQUIRE(found.size() == 1);
    CHECK(found[0] == 0x40);
    // Alignment is by guest address, not by offset in the buffer.
    CHECK(find_hypercall_pairs(text, 0x1000001).size() == 1);  // then only 0x8f/0x9f is aligned
    CHECK(find_hypercall_pairs(text, 0x1000001)[0] == 0x8f);
    patch_hypercall_pair(text, 0x40);
    CHECK(text[0x40] == 0xe6);
    CHECK(text[0x41] == 0x1e);
    CHECK(text[0x42] == 0x90);
    CHECK(text[0x43] == 0xc3);
    CHECK(text[0x50] == 0xe6);
    CHECK(text[0x52] == 0x90);
    CHECK(find_hypercall_pairs(text, 0x1000000).empty());
    CHECK(find_hypercall_pairs(std::span(text).first(10), 0).empty());
    // Two pairs: both reported (the loader then refuses).
    put(0xc0, {0x0f, 0x01, 0xd9});
    put(0xd0, {0x0f, 0x01, 0xc1});
    put(0x60, {0x0f, 0x01, 0xd9});
    put(0x70, {0x0f, 0x01, 0xc1});
    CHECK(find_hypercall_pairs(text, 0).size() == 2);
}

TEST_CASE("hypercall page: 32-byte stubs that load the number and trap on port 0x1e") {
    auto p = hypercall_page();
    REQUIRE(p.size() == 4096);
    const std::uint8_t* s = p.data() + 32 * hc::event_channel_op;
    CHECK(s[0] == 0xb8);
    CHECK(s[1] == 32);
    CHECK(s[5] == 0xe6);
    CHECK(s[6] == 0x1e);
    CHECK(s[7] == 0xc3);
    CHECK(s[8] == 0xcc);
}

TEST_CASE("xen cpuid: Xen leaves at 0x40000000, KVM leaves gone, hypervisor bit") {
    std::vector<kvm_cpuid_entry2> in(3);
    in[0].function = 1;
    in[1].function = 0x40000000;
    in[1].eax = 0x40000001;
    in[1].ebx = 0x4b4d564b;  // "KVMK"
    in[2].function = 0x40000001;
    auto out = xen_cpuid(filter_cpuid(in, 2, 4), 2);
    std::map<std::uint32_t, kvm_cpuid_entry2> by;
    for (auto& e : out) by[e.function] = e;
    CHECK(by.at(0x40000000).eax == 0x40000004);
    CHECK(by.at(0x40000000).ebx == 0x566e6558);
    CHECK(by.at(0x40000000).ecx == 0x65584d4d);
    CHECK(by.at(0x40000000).edx == 0x4d4d566e);
    CHECK(by.at(0x40000001).eax == 0x00040011);
    CHECK(by.at(0x40000002).ebx == 0x40000000);
    CHECK(by.at(0x40000004).eax == ((1u << 3) | (1u << 6)));
    CHECK(by.at(0x40000004).ebx == 2);
    CHECK((by.at(1).ecx >> 31) == 1u);
    CHECK(std::count_if(out.begin(), out.end(), [](auto& e) { return e.function == 0x40000000; }) == 1);
}

TEST_CASE("xen memory map: special area reserved, grant frames left out") {
    auto r = ram_regions(256ull << 20);
    r.push_back({GuestAddr(xen_model::abi::kSpecialAreaGpa), 0x4000, 256ull << 20});
    r.push_back({GuestAddr(layout::kXenPlatformBar1), 0x40000, (256ull << 20) + 0x4000});
    auto m = e820_map(r);
    bool reserved = false;
    for (const auto& e : m) {
        if (e.addr == xen_model::abi::kSpecialAreaGpa) reserved = e.size == 0x4000 && e.type == kE820Reserved;
        CHECK(e.addr != layout::kXenPlatformBar1);
    }
    CHECK(reserved);
}

TEST_CASE("xen platform: unplug handshake ports and the PCI identity") {
    UnplugPorts u;
    std::uint8_t w[2], b[1];
    u.read(0, w);
    CHECK((w[0] | (w[1] << 8)) == 0x49d2);
    u.read(2, b);
    CHECK(b[0] == 1);
    std::uint8_t product[2] = {3, 0}, mask[2] = {3, 0};
    u.write(2, product);
    u.write(0, mask);
    CHECK(u.product() == 3);
    CHECK(u.unplug_mask() == 3);

    PlatformDevice d(0xc000, 0xc0000000);
    auto& c = d.config();
    CHECK(c.read(0, 4) == 0x00015853);
    CHECK(c.read(0x08, 4) == 0xff800001);
    CHECK(c.read(0x2c, 4) == 0x00015853);
    CHECK(c.read(0x3d, 1) == 1);
    CHECK(c.read(0x10, 4) == 0xc001);
    CHECK(c.read(0x14, 4) == 0xc0000008);
    c.write(0x14, 4, 0xffffffff);
    CHECK(c.read(0x14, 4) == 0xff000008);  // 16 MiB, prefetchable
}

TEST_CASE("exit decoding: filtered MSR writes and Xen hypercall exits") {
    std::vector<std::uint8_t> page(4096, 0);
    auto* run = reinterpret_cast<kvm_run*>(page.data());
    run->exit_reason = KVM_EXIT_X86_WRMSR;
    run->msr.index = 0x40000000;
    run->msr.data = 0x5000;
    auto e = decode_exit(*run, page.size());
    REQUIRE(std::holds_alternative<MsrExit>(e));
    CHECK(std::get<MsrExit>(e).write);
    CHECK(std::get<MsrExit>(e).data == 0x5000);
    run->exit_reason = KVM_EXIT_XEN;
    run->xen.type = KVM_EXIT_XEN_HCALL;
    CHECK(std::holds_alternative<XenHcallExit>(decode_exit(*run, page.size())));
    run->xen.type = 7;
    CHECK(std::holds_alternative<UnknownExit>(decode_exit(*run, page.size())));
}

TEST_CASE("MADT: processor UID = APIC id = vCPU index (Xen vcpu_id of APs is the ACPI UID)") {
    constexpr std::uint32_t base = 0xe0000, n = 5;
    auto t = build_acpi(base, n);
    std::uint64_t xsdt = 0, madt = 0;
    std::memcpy(&xsdt, &t[24], 8);
    std::memcpy(&madt, &t[xsdt - base + 44], 8);
    std::size_t off = madt - base;
    REQUIRE(std::string(reinterpret_cast<const char*>(&t[off]), 4) == "APIC");
    std::uint32_t len = 0;
    std::memcpy(&len, &t[off + 4], 4);
    std::uint32_t cpus = 0;
    for (std::size_t e = off + 44; e + 2 <= off + len; e += t[e + 1]) {
        REQUIRE(t[e + 1] >= 2);
        if (t[e] != 0) continue;  // processor local APIC entries only
        CHECK(t[e + 2] == cpus);  // ACPI processor UID
        CHECK(t[e + 3] == cpus);  // APIC id
        ++cpus;
    }
    CHECK(cpus == n);
}

TEST_CASE("page walk: 4-level paging with 4 KiB, 2 MiB and 1 GiB pages; paging off; 32-bit modes left to KVM") {
    auto m = ram();
    // PML4 at 0x1000, PDPT at 0x2000, PD at 0x3000, PT at 0x4000.
    constexpr std::uint64_t P = 1, PS = 1ull << 7;
    std::uint64_t gva4k = 0xffff800000201000ull;  // PML4 256, PDPT 0, PD 1, PT 1
    set_u64(m, 0x1000 + 256 * 8, 0x2000 | P);
    set_u64(m, 0x2000 + 0 * 8, 0x3000 | P);
    set_u64(m, 0x3000 + 1 * 8, 0x4000 | P);
    set_u64(m, 0x4000 + 1 * 8, 0x7000 | P | (1ull << 63));  // NX bit is not part of the address
    set_u64(m, 0x3000 + 2 * 8, 0x200000 | P | PS);           // 2 MiB page at PD 2
    set_u64(m, 0x2000 + 1 * 8, 0x40000000 | P | PS);         // 1 GiB page at PDPT 1
    PagingState st{0x80000011, 0x1000, 0x20, 0x500};
    auto w = walk_page_tables(m, st, gva4k + 0x123);
    CHECK(w.handled);
    CHECK(w.gpa == 0x7123);
    CHECK(walk_page_tables(m, st, 0xffff800000400000ull + 0x12345).gpa == 0x212345);
    CHECK(walk_page_tables(m, st, 0xffff800040000000ull + 0x1234567).gpa == 0x41234567);
    CHECK_FALSE(walk_page_tables(m, st, 0xffff800000202000ull).gpa);  // PT entry 2 not present
    CHECK_FALSE(walk_page_tables(m, st, 0x1000).gpa);                 // PML4 0 not present
    // A table pointer outside guest memory is "not mapped", never a crash.
    set_u64(m, 0x3000 + 3 * 8, 0x7fff0000000ull | P);
    CHECK_FALSE(walk_page_tables(m, st, 0xffff800000600000ull).gpa);
    CHECK(walk_page_tables(m, PagingState{0x11, 0, 0, 0}, 0x5678).gpa == 0x5678);  // paging off
    CHECK_FALSE(walk_page_tables(m, PagingState{0x80000011, 0x1000, 0x20, 0}, 0x5678).handled);  // 32-bit
}
