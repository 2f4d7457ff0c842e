// The card process over its life: clients leaving and coming back, --exit-when-idle, SIGTERM,
// a bad command line, and a volume's IOPS limit seen from the guest.
#include <doctest/doctest.h>

#include <signal.h>

#include <algorithm>
#include <filesystem>
#include <thread>

#include "card_fixture.hpp"
#include "support/process.hpp"

using namespace integration;
using namespace testsupport;
using nitro_card::nvme::CqEntry;
using nitro_card::nvme::IoOpcode;
using nitro_card::nvme::StatusCode;
namespace reg = nitro_card::nvme::reg;
namespace csts = nitro_card::nvme::csts;
using namespace std::chrono_literals;

namespace {

constexpr std::uint64_t kPage = kNvmePage;

// Attaches, enables and creates I/O queue 1 with `entries` entries on vector 1.
IoQueue bring_up(Vmm& vm, std::uint32_t entries = 64) {
    vm.attach();
    REQUIRE(vm.driver().enable());
    IoQueue q;
    const auto [cq, sq] = vm.driver().create_queue(q, 1, entries, 1, true);
    REQUIRE(cq == StatusCode::Success);
    REQUIRE(sq == StatusCode::Success);
    return q;
}

bool gone(const std::string& path) {
    return !std::filesystem::exists(path);
}

}  // namespace

TEST_CASE("lifecycle: a client that leaves resets the device; the next one finds it idle") {
    Card c({"size=16M"});
    {
        Vmm vm(c.socket(0));
        IoQueue q = bring_up(vm);
        NvmeDriverMock& d = vm.driver();
        const std::uint64_t buf = d.alloc(kPage);
        fill_pattern(d.host(buf, kPage), 5);
        CHECK(d.io_status(q, io_cmd(IoOpcode::Write, 800, 8, buf)) == StatusCode::Success);
        CHECK(csts::RDY.get(d.rd32(reg::CSTS)) == 1);
        // Leave with the controller enabled, its queues live and an AER held.
        (void)d.admin_submit(admin_cmd(nitro_card::nvme::AdminOpcode::AsyncEventRequest));
    }
    {
        Vmm vm(c.socket(0));
        vm.attach();
        NvmeDriverMock& d = vm.driver();
        // Power-on state: not ready, not enabled, no admin queue.
        CHECK(csts::RDY.get(d.rd32(reg::CSTS)) == 0);
        CHECK(d.rd32(reg::CC) == 0);
        CHECK(d.rd64(reg::ASQ) == 0);
        // Queue 1 can be created again (the old one is gone) and the data is still there.
        REQUIRE(d.enable());
        IoQueue q;
        const auto [cq, sq] = d.create_queue(q, 1, 16, 1, true);
        REQUIRE(cq == StatusCode::Success);
        REQUIRE(sq == StatusCode::Success);
        const std::uint64_t buf = d.alloc(kPage);
        CHECK(d.io_status(q, io_cmd(IoOpcode::Read, 800, 8, buf)) == StatusCode::Success);
        const auto got = d.host(buf, kPage);
        CHECK(std::vector<std::byte>(got.begin(), got.end()) == pattern(kPage, 5));
        CHECK(vm.wait_irqs(1, 1));  // the new client's eventfds are the ones signalled
    }
    CHECK(c.process().running());
}

TEST_CASE("lifecycle: --exit-when-idle ends the card once its client has left") {
    Card c({"size=16M"}, {"--exit-when-idle"});
    {
        Vmm vm(c.socket(0));
        (void)bring_up(vm, 8);
        CHECK(c.process().running());
    }
    const auto status = c.process().wait(kWait);
    REQUIRE_MESSAGE(status.has_value(), c.log());
    CHECK(*status == 0);
    CHECK(gone(c.socket(0)));
}

TEST_CASE("lifecycle: SIGTERM stops the card with status 0, even with a client attached") {
    Card c({"size=16M", "size=1M"});
    Vmm vm(c.socket(0));
    (void)bring_up(vm, 8);
    REQUIRE(c.process().signal(SIGTERM));
    const auto status = c.process().wait(kWait);
    REQUIRE_MESSAGE(status.has_value(), c.log());
    CHECK(*status == 0);
    CHECK(gone(c.socket(0)));
    CHECK(gone(c.socket(1)));
}

TEST_CASE("lifecycle: a bad --volume is a one-line error and exit status 2") {
    TempDir dir;
    const std::string existing = dir.file("exists.img");
    write_volume_file(existing, 1 * kMiB, 0, {});
    const std::vector<std::string> bad{
        dir.file("a.img") + ",size=abc",           // not a size
        dir.file("b.img") + ",size=1000",          // not whole sectors
        dir.file("c.img") + ",size=16M,bogus=1",   // unknown field
        dir.file("d.img") + ",size=16M,iops=0",    // a zero limit
        ",size=16M",                               // no path
        dir.file("missing.img"),                   // does not exist, no size to create it
        existing + ",size=2M",                     // exists with another size
        dir.file("no/such/dir.img") + ",size=1M",  // cannot be created
    };
    for (const auto& v : bad) {
        INFO("--volume " << v);
        auto r = run_process({kNitroCard, "--socket-dir", dir.path(), "--volume", v}, 10s);
        INFO("stderr: " << r.err);
        REQUIRE_FALSE(r.timed_out);
        CHECK(r.status == 2);
        CHECK(r.out.empty());
        CHECK(r.err.starts_with("nitro-card: error: "));
        CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);
        CHECK(r.err.ends_with("\n"));
        CHECK(gone(dir.file("nvme0.sock")));
    }
}

// The limiter is checked by time, loosely: the card does not expose its throttle counters
// (ControllerCounters::throttled_ns) over any interface a vmm or guest can read, so the only
// observable effect is that completions are spread out. Only a lower bound is asserted, which
// a slow machine cannot break; there is no upper bound beyond the usual 5 s completion wait.
TEST_CASE("rate limit: a volume with iops=100 holds a burst to 100 I/Os per second") {
    Card c({"size=16M,iops=100"});
    Vmm vm(c.socket(0));
    IoQueue q = bring_up(vm, 256);
    NvmeDriverMock& d = vm.driver();
    const std::uint64_t buf = d.alloc(kPage);

    // Each I/O of up to 256 KiB costs one token; the bucket starts with one second's worth (100)
    // so an idle volume absorbs a burst. Drain it first.
    const auto batch = [&](unsigned n, std::uint64_t first_lba) {
        const std::uint32_t old = q.tail;
        for (unsigned i = 0; i < n; ++i)
            (void)d.io_put(q, io_cmd(IoOpcode::Read, first_lba + i, 1, buf));
        d.io_ring(q, old);
        for (unsigned i = 0; i < n; ++i) CHECK(status_of(d.io_wait(q)) == StatusCode::Success);
    };
    batch(100, 0);
    const auto start = std::chrono::steady_clock::now();
    batch(50, 1000);
    const auto elapsed = std::chrono::steady_clock::now() - start;
    INFO("50 reads took " << std::chrono::duration_cast<std::chrono::milliseconds>(elapsed).count()
                          << " ms");
    // 50 tokens at 100 per second is 0.5 s; what refilled while the first batch ran is credited.
    CHECK(elapsed >= 300ms);
}
