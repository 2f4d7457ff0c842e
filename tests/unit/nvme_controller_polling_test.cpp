// The NVMe controller's adaptive polling of shadow doorbells.
#include "nvme_controller_driver.hpp"

using namespace nvme_ctrl_test;

// ---- adaptive polling
// ----------------------------------------------------------------------------

// A window far longer than any pause between this test's I/Os (the cap, 100 ms), so the worker
// is still polling whenever the driver submits.
constexpr unsigned kLongPollUs = kMaxPollUs;

TEST_CASE("nvme controller: polling picks up shadow-only submissions and the guest never rings") {
    // No back-off: on a loaded machine the worker would otherwise stop polling for a while when
    // it loses its CPU, and then (correctly) ask for doorbells; that is the back-off test's job.
    auto cfg = config(nullptr, kLongPollUs);
    cfg.io_thread.poll_backoff = std::chrono::milliseconds(0);
    Driver d(std::move(cfg));
    d.enable();
    IoQueue q = d.create_queue(1, 8, 1);  // 8 entries: the I/Os below go round it many times
    d.dbbuf();
    const std::uint64_t buf = d.alloc(8 * 512);
    // The first I/O may ring (the worker can be asleep); from then on the worker polls.
    CHECK(d.io_status(q, rw(IoOpcode::Read, 0, 1, buf)) == StatusCode::Success);
    const unsigned rings = d.ioeventfd_rings;

    // Only the shadow doorbell: no EventIdx check, no eventfd.
    for (std::uint32_t i = 0; i < 20; ++i) {
        const std::uint16_t cid = d.io_put(q, rw(IoOpcode::Read, i, 1, buf));
        d.store_shadow(1, false, q.tail);
        const CqEntry c = d.io_wait(q, false);
        CHECK(c.cid == cid);
        CHECK(status_of(c) == StatusCode::Success);
        d.store_shadow(1, true, q.head);
    }
    CHECK(d.ioeventfd_rings == rings);

    // The driver's own rule (nvme_dbbuf_need_event) for SQ tails and CQ heads, one I/O at a
    // time and in batches that fill the ring (7 of 8 entries): EventIdx always stays where no
    // update steps over it, lap after lap.
    for (int i = 0; i < 40; ++i) round_trip(d, q, 8 * static_cast<std::uint64_t>(i), 512, 0, 7);
    for (int batch = 0; batch < 6; ++batch) {
        const std::uint32_t old = q.tail;
        for (std::uint32_t i = 0; i < 7; ++i)
            (void)d.io_put(q, rw(IoOpcode::Read, i, 1, buf + 512 * i));
        d.io_ring(q, old);
        for (int i = 0; i < 7; ++i) CHECK(status_of(d.io_wait(q)) == StatusCode::Success);
    }
    CHECK(d.ioeventfd_rings == rings);

    const auto s = d.ctrl().stats();
    CHECK(s.poll_hits > 0);
    CHECK(s.io_commands == 1 + 20 + 80 + 42);
}

TEST_CASE("nvme controller: when the polling window expires EventIdx asks for the next doorbell") {
    constexpr unsigned kShortPollUs = 2000;
    Driver d(config(nullptr, kShortPollUs));
    d.enable();
    IoQueue q = d.create_queue(1, 16, 1);
    d.dbbuf();
    const std::uint64_t buf = d.alloc(512);
    for (int round = 0; round < 3; ++round) {
        CAPTURE(round);
        CHECK(d.io_status(q, rw(IoOpcode::Read, 0, 1, buf)) == StatusCode::Success);
        // No more work: once the window has passed, EventIdx is the tail processed.
        CHECK(eventually([&] { return d.event_idx(1, false) == q.tail; }));
        std::this_thread::sleep_for(10ms);  // the worker is in epoll by now
        CHECK(d.event_idx(1, false) == q.tail);

        // So the driver rings for the next submission, and the eventfd wakes the worker.
        const auto before = d.ctrl().stats();
        const unsigned rings = d.ioeventfd_rings;
        const std::uint32_t old = q.tail;
        const std::uint16_t cid = d.io_put(q, rw(IoOpcode::Read, 1, 1, buf));
        d.io_ring(q, old);
        CHECK(d.ioeventfd_rings == rings + 1);
        const CqEntry c = d.io_wait(q);
        CHECK(c.cid == cid);
        CHECK(status_of(c) == StatusCode::Success);
        CHECK(d.ctrl().stats().doorbell_wakeups > before.doorbell_wakeups);
    }
    const auto s = d.ctrl().stats();
    CHECK(s.poll_ns >= 3ull * kShortPollUs * 1000 / 2);  // three windows ran out at least
}

TEST_CASE("nvme controller: with polling off the worker publishes EventIdx after every drain") {
    Driver d(config(nullptr, 0));
    d.enable();
    IoQueue q = d.create_queue(1, 16, 1);
    d.dbbuf();
    const std::uint64_t buf = d.alloc(512);
    for (int i = 0; i < 20; ++i) {
        const unsigned rings = d.ioeventfd_rings;
        CHECK(d.io_status(q, rw(IoOpcode::Read, 0, 1, buf)) == StatusCode::Success);
        CHECK(d.ioeventfd_rings == rings + 1);  // every submission after a drain rings
        CHECK(d.event_idx(1, false) == q.tail);
    }
    const auto s = d.ctrl().stats();
    CHECK(s.poll_hits == 0);
    CHECK(s.poll_ns == 0);
    CHECK(s.doorbell_wakeups > 0);
}

TEST_CASE("nvme controller: the I/O suite, bad I/O and a full CQ with the worker polling") {
    {
        Driver d(config(nullptr, kLongPollUs));
        d.enable();
        IoQueue q = d.create_queue(1, 32, 1);
        d.dbbuf();
        io_suite(d, q);
        IoQueue q2 = d.create_queue(2, 8, 2);  // created while the worker polls
        for (int i = 0; i < 12; ++i)
            round_trip(d, q2, 4000 + 8 * static_cast<std::uint64_t>(i), 4096, 0, 30);
        // A malformed command and a PRP outside guest RAM: error statuses, the queue goes on.
        CHECK(d.io_status(q, command(0x7f)) == StatusCode::InvalidOpcode);
        CHECK(d.io_status(q, rw(IoOpcode::Read, 0, 8, kRamBytes)) == StatusCode::DataTransferError);
        round_trip(d, q, 0, 4096, 0, 31);
    }
    {
        // A 4-entry CQ holds 3: the rest wait for the host to free entries, which it announces
        // with a CQ head doorbell (EventIdx = the head while the CQ is full), polling or not.
        Driver d(config(nullptr, kLongPollUs));
        d.enable();
        IoQueue q = d.create_queue(1, 16, 1, 4);
        d.dbbuf();
        const std::uint64_t buf = d.alloc(10 * 512);
        const std::uint32_t old = q.tail;
        for (std::uint32_t i = 0; i < 10; ++i)
            (void)d.io_put(q, rw(IoOpcode::Read, i, 1, buf + 512 * i));
        d.io_ring(q, old);
        for (int i = 0; i < 3; ++i) (void)d.io_wait(q, false);
        std::this_thread::sleep_for(20ms);
        CHECK_FALSE(d.io_poll(q, false).has_value());
        std::set<std::uint16_t> seen;
        unsigned got = 3;
        std::uint32_t published = 0;
        while (got < 10) {
            d.publish(1, true, q.head, published);
            published = q.head;
            for (int i = 0; i < 3 && got < 10; ++i, ++got) seen.insert(d.io_wait(q, false).cid);
        }
        CHECK(seen.size() == 7);
    }
}

TEST_CASE("nvme controller: a polling worker that loses its CPU stops polling for a while") {
    // The worker and a spinning thread share one CPU: a yield in the polling loop hands the
    // CPU to the spinner for a time slice, which the worker notices.
    cpu_set_t allowed;
    REQUIRE(::sched_getaffinity(0, sizeof allowed, &allowed) == 0);
    int cpu = 0;
    while (cpu < CPU_SETSIZE && !CPU_ISSET(cpu, &allowed)) ++cpu;
    REQUIRE(cpu < CPU_SETSIZE);
    auto cfg = config(nullptr, kLongPollUs);
    cfg.io_thread.cpus = {cpu};
    cfg.io_thread.poll_backoff = 10s;  // the rest of the case runs backed off
    Driver d(std::move(cfg));
    d.enable();
    IoQueue q = d.create_queue(1, 16, 1);
    d.dbbuf();
    const std::uint64_t buf = d.alloc(512);

    std::atomic<bool> stop{false};
    std::thread spinner([&] {
        cpu_set_t one;
        CPU_ZERO(&one);
        CPU_SET(cpu, &one);
        (void)::pthread_setaffinity_np(::pthread_self(), sizeof one, &one);
        const auto deadline = std::chrono::steady_clock::now() + kWait;
        while (!stop.load() && std::chrono::steady_clock::now() < deadline) {
        }
    });
    CHECK(d.io_status(q, rw(IoOpcode::Read, 0, 1, buf)) == StatusCode::Success);
    CHECK(eventually([&] { return d.ctrl().stats().poll_backoffs > 0; }));
    stop.store(true);
    spinner.join();

    // Backed off, the worker publishes EventIdx after each drain and sleeps: the driver rings
    // for every submission, and each completes.
    for (int i = 0; i < 5; ++i) {
        const unsigned rings = d.ioeventfd_rings;
        CHECK(d.io_status(q, rw(IoOpcode::Read, 0, 1, buf)) == StatusCode::Success);
        CHECK(d.ioeventfd_rings == rings + 1);
        CHECK(d.event_idx(1, false) == q.tail);
    }
}

TEST_CASE("nvme controller: a polling window longer than the cap is refused") {
    auto c = Controller::create(config(nullptr, kMaxPollUs + 1));
    CHECK_FALSE(c.has_value());
}
