// The NVMe controller: I/O, hostile guests, and lifetime (memory, reset, throttling).
#include "nvme_controller_driver.hpp"

using namespace nvme_ctrl_test;

// ---- I/O ---------------------------------------------------------------------------------------


TEST_CASE("nvme controller: I/O through slow-path doorbells") {
    Driver d;
    d.enable();
    REQUIRE(d.admin(set_features(FeatureId::NumberOfQueues, 1 | 1 << 16)).dw0 == (1u | 1u << 16));
    IoQueue q = d.create_queue(1, 64, 1);
    (void)d.irqs(1);
    io_suite(d, q);
    CHECK(d.ioeventfd_rings == 0);
    CHECK(d.irqs(1) >= 1);
    const auto s = d.ctrl().stats();
    CHECK(s.bytes_written >= 512 + 4096 + 8192 + 64 * 1024 + kMaxTransfer);
    CHECK(s.bytes_read >= s.bytes_written - 2 * 8192);
    CHECK(s.write_commands >= 8);
    CHECK(s.read_commands >= 8);
    CHECK(s.doorbell_writes > 0);

    // A second queue pair on another vector, and the SMART data units follow the counters.
    IoQueue q2 = d.create_queue(2, 16, 2);
    round_trip(d, q2, 3000, 4096, 0, 11);
    CHECK(d.irqs(2) >= 1);
    const std::uint64_t log = d.alloc(kPage);
    REQUIRE(d.admin_status(get_log(LogPageId::SmartHealth, 512, log)) == StatusCode::Success);
    const auto smart = d.get<SmartLog>(log);
    std::uint64_t units = 0, reads = 0;
    std::memcpy(&units, smart.data_units_written, 8);
    std::memcpy(&reads, smart.host_read_commands, 8);
    CHECK(units == (d.ctrl().stats().bytes_written / 512 + 999) / 1000);
    CHECK(reads == d.ctrl().stats().read_commands);
}

TEST_CASE("nvme controller: I/O through shadow doorbells, ioeventfds and EventIdx") {
    Driver d;
    d.enable();
    IoQueue q = d.create_queue(1, 32, 1);
    d.dbbuf();
    CHECK(d.event_idx(1, false) == 0);
    io_suite(d, q);
    CHECK(d.ioeventfd_rings > 0);
    // After draining the SQ the controller published EventIdx = the tail it processed.
    CHECK(d.event_idx(1, false) == q.tail);

    // A batch of 8 behind one doorbell completes with one interrupt.
    (void)d.irqs(1);
    const std::uint64_t buf = d.alloc(8 * 512);
    const std::uint32_t old = q.tail;
    for (std::uint32_t i = 0; i < 8; ++i)
        (void)d.io_put(q, rw(IoOpcode::Read, i, 1, buf + 512 * i));
    const unsigned rings = d.ioeventfd_rings;
    d.io_ring(q, old);
    CHECK(d.ioeventfd_rings == rings + 1);
    for (int i = 0; i < 8; ++i) CHECK(status_of(d.io_wait(q)) == StatusCode::Success);
    CHECK(d.irqs(1) == 1);
    CHECK(d.event_idx(1, false) == q.tail);

    // Queues created after Doorbell Buffer Config use shadow doorbells from the start.
    IoQueue q2 = d.create_queue(2, 8, 2);
    CHECK(d.ctrl().doorbells().size() == 4);
    for (int i = 0; i < 20; ++i)
        round_trip(d, q2, 4000 + 8 * static_cast<std::uint64_t>(i), 4096, 0,
                   20 + static_cast<unsigned>(i));
    // A slow-path doorbell write (the vmm has not registered the ioeventfd yet) is a wake-up
    // too; the value still comes from the shadow doorbell.
    (void)d.io_put(q, rw(IoOpcode::Read, 0, 1, buf));
    d.store_shadow(1, false, q.tail);
    d.ctrl().bar0_write(sq_tail_doorbell(1, 0), 4, q.tail);
    CHECK(status_of(d.io_wait(q)) == StatusCode::Success);
}

TEST_CASE("nvme controller: a full CQ holds completions until the host frees entries") {
    for (const bool shadow : {false, true}) {
        CAPTURE(shadow);
        Driver d;
        d.enable();
        IoQueue q = d.create_queue(1, 16, 1, 4);  // a 4-entry CQ holds 3 completions
        if (shadow) d.dbbuf();
        const std::uint64_t buf = d.alloc(10 * 512);
        const std::uint32_t old = q.tail;
        for (std::uint32_t i = 0; i < 10; ++i)
            (void)d.io_put(q, rw(IoOpcode::Read, i, 1, buf + 512 * i));
        d.io_ring(q, old);
        // Three arrive; the fourth slot stays free (head == tail means empty).
        for (int i = 0; i < 3; ++i) (void)d.io_wait(q, false);
        std::this_thread::sleep_for(20ms);
        CHECK_FALSE(d.io_poll(q, false).has_value());
        // Releasing them lets the rest through, a CQ's worth at a time.
        std::set<std::uint16_t> seen;
        unsigned got = 3;
        std::uint32_t published = 0;
        while (got < 10) {
            d.publish(1, true, q.head, published);
            published = q.head;
            for (int i = 0; i < 3 && got < 10; ++i, ++got) seen.insert(d.io_wait(q, false).cid);
        }
        CHECK(seen.size() == 7);
        if (shadow) CHECK(d.ioeventfd_rings >= 2);
    }
}

// ---- hostile guests ----------------------------------------------------------------------------

TEST_CASE("nvme controller: bad queue creation is refused with the right status") {
    Driver d;
    d.enable();
    const std::uint64_t mem = d.alloc(64 * kPage);
    CHECK(d.admin_status(create_cq(1, 1, mem, 1)) == StatusCode::InvalidQueueSize);  // qsize 0
    CHECK(d.admin_status(create_cq(1, 1025, mem, 1)) ==
          StatusCode::InvalidQueueSize);  // > MQES + 1
    CHECK(d.admin_status(create_cq(0, 16, mem, 1)) ==
          StatusCode::InvalidQueueIdentifier);  // admin qid
    CHECK(d.admin_status(create_cq(5, 16, mem, 1)) ==
          StatusCode::InvalidQueueIdentifier);  // > max queues
    CHECK(d.admin_status(create_cq(1, 16, mem, 1, kIen)) == StatusCode::InvalidField);  // PC = 0
    CHECK(d.admin_status(create_cq(1, 16, mem, 5)) == StatusCode::InvalidInterruptVector);
    CHECK(d.admin_status(create_cq(1, 512, kRamBytes - kPage, 1)) ==
          StatusCode::InvalidField);  // past RAM
    CHECK(d.admin_status(create_cq(1, 16, 1ull << 40, 1)) == StatusCode::InvalidField);
    CHECK(d.admin_status(create_cq(1, 16, mem + 512, 1)) == StatusCode::PrpOffsetInvalid);
    CHECK(d.admin_status(create_sq(1, 16, mem, 1)) ==
          StatusCode::CompletionQueueInvalid);  // no CQ 1
    REQUIRE(d.admin_status(create_cq(1, 16, mem, 1)) == StatusCode::Success);
    CHECK(d.admin_status(create_cq(1, 16, mem + kPage, 1)) ==
          StatusCode::InvalidQueueIdentifier);  // exists
    CHECK(d.admin_status(create_sq(1, 0x10000, mem + kPage, 1)) == StatusCode::InvalidQueueSize);
    CHECK(d.admin_status(create_sq(1, 16, mem + kPage, 2)) == StatusCode::CompletionQueueInvalid);
    CHECK(d.admin_status(create_sq(1, 128, kRamBytes - kPage, 1)) == StatusCode::InvalidField);
    REQUIRE(d.admin_status(create_sq(1, 16, mem + kPage, 1)) == StatusCode::Success);
    CHECK(d.admin_status(create_sq(1, 16, mem + 2 * kPage, 1)) ==
          StatusCode::InvalidQueueIdentifier);
    // A CQ in use cannot go; deleting what does not exist is Invalid Queue Identifier.
    auto del_cq = command(op(AdminOpcode::DeleteIoCq));
    del_cq.cdw10 = 1;
    auto del_sq = command(op(AdminOpcode::DeleteIoSq));
    del_sq.cdw10 = 1;
    CHECK(d.admin_status(del_cq) == StatusCode::InvalidQueueDeletion);
    REQUIRE(d.admin_status(del_sq) == StatusCode::Success);
    CHECK(d.admin_status(del_sq) == StatusCode::InvalidQueueIdentifier);
    REQUIRE(d.admin_status(del_cq) == StatusCode::Success);
    CHECK(d.admin_status(del_cq) == StatusCode::InvalidQueueIdentifier);
    del_cq.cdw10 = 0;
    CHECK(d.admin_status(del_cq) == StatusCode::InvalidQueueIdentifier);
    // Doorbell Buffer Config outside guest RAM, or not page aligned.
    auto dbbuf = command(op(AdminOpcode::DoorbellBufferConfig));
    dbbuf.prp1 = kRamBytes;
    dbbuf.prp2 = mem;
    CHECK(d.admin_status(dbbuf) == StatusCode::InvalidField);
    dbbuf.prp1 = mem + 8;
    CHECK(d.admin_status(dbbuf) == StatusCode::InvalidField);
    // Unknown admin opcodes; Identify into a buffer outside guest RAM.
    CHECK(d.admin_status(command(0x7f)) == StatusCode::InvalidOpcode);
    CHECK(d.admin_status(identify(1, 0, kRamBytes)) == StatusCode::DataTransferError);
    // The queues can be made again.
    IoQueue q = d.create_queue(1, 16, 1);
    round_trip(d, q, 0, 4096, 0, 1);
}

TEST_CASE("nvme controller: malformed I/O gets an error status and the queue keeps serving") {
    for (const bool shadow : {false, true}) {
        CAPTURE(shadow);
        Driver d;
        d.enable();
        IoQueue q = d.create_queue(1, 64, 1);
        if (shadow) d.dbbuf();
        const std::uint64_t buf = d.alloc(kMaxTransfer + kPage);
        const std::uint64_t list = d.alloc(kPage);

        // PRPs outside guest RAM: data page, second page, list page, list entry.
        CHECK(d.io_status(q, rw(IoOpcode::Read, 0, 8, kRamBytes)) == StatusCode::DataTransferError);
        CHECK(d.io_status(q, rw(IoOpcode::Read, 0, 16, buf, kRamBytes)) ==
              StatusCode::DataTransferError);
        CHECK(d.io_status(q, rw(IoOpcode::Read, 0, 64, buf, kRamBytes)) ==
              StatusCode::DataTransferError);
        d.put(list, std::uint64_t{1} << 44);
        CHECK(d.io_status(q, rw(IoOpcode::Write, 0, 24, buf, list)) ==
              StatusCode::DataTransferError);
        // Misaligned PRP1 and PRP2.
        CHECK(d.io_status(q, rw(IoOpcode::Read, 0, 1, buf + 2)) == StatusCode::PrpOffsetInvalid);
        CHECK(d.io_status(q, rw(IoOpcode::Read, 0, 16, buf, buf + 4096 + 512)) ==
              StatusCode::PrpOffsetInvalid);
        // A PRP list that chains back to itself: its only two slots are a data page and a
        // pointer to the same list page.
        const std::uint64_t loop = list + kPage - 16;
        d.put(loop, buf + kPage);
        d.put(loop + 8, list);
        CHECK(d.io_status(q, rw(IoOpcode::Read, 0, 32, buf, loop)) ==
              StatusCode::DataTransferError);
        // Over MDTS.
        CHECK(d.io_status(q, rw(IoOpcode::Read, 0, kMaxTransfer / 512 + 1, buf, list)) ==
              StatusCode::InvalidField);
        // LBA past the end, and a range that wraps.
        CHECK(d.io_status(q, rw(IoOpcode::Read, kVolumeBlocks, 1, buf)) ==
              StatusCode::LbaOutOfRange);
        CHECK(d.io_status(q, rw(IoOpcode::Write, kVolumeBlocks - 1, 2, buf, buf + kPage)) ==
              StatusCode::LbaOutOfRange);
        CHECK(d.io_status(q, rw(IoOpcode::Read, ~0ull, 1, buf)) == StatusCode::LbaOutOfRange);
        auto wz = rw(IoOpcode::WriteZeroes, kVolumeBlocks - 4, 8, 0);
        CHECK(d.io_status(q, wz) == StatusCode::LbaOutOfRange);
        // A DSM range past the end.
        d.put(list, DsmRange{0, 8, kVolumeBlocks - 4});
        auto dsm = command(op(IoOpcode::DatasetManagement));
        dsm.nsid = 1;
        dsm.prp1 = list;
        dsm.cdw11 = 1 << 2;
        CHECK(d.io_status(q, dsm) == StatusCode::LbaOutOfRange);
        // Bad opcodes, a bad namespace, SGLs, fused commands.
        CHECK(d.io_status(q, command(0x7f)) == StatusCode::InvalidOpcode);
        CHECK(d.io_status(q, command(op(IoOpcode::Compare))) == StatusCode::InvalidOpcode);
        CHECK(d.io_status(q, rw(IoOpcode::Read, 0, 1, buf)) == StatusCode::Success);
        auto bad_ns = rw(IoOpcode::Read, 0, 1, buf);
        bad_ns.nsid = 2;
        CHECK(d.io_status(q, bad_ns) == StatusCode::InvalidNamespace);
        auto sgl = rw(IoOpcode::Read, 0, 1, buf);
        sgl.flags = 0x40;
        CHECK(d.io_status(q, sgl) == StatusCode::InvalidField);
        // Errors carry Do Not Retry.
        const auto e = d.io(q, command(0x7f));
        CHECK(status_dnr(e.status));
        // Still serving.
        round_trip(d, q, 10, kMaxTransfer, 0, 3);
        CHECK(d.ctrl().stats().error_completions >= 18);
        CHECK(d.rd32(reg::CSTS) == 1);
    }
}

TEST_CASE("nvme controller: bad doorbell values are ignored and reported") {
    Driver d;
    d.enable();
    IoQueue q = d.create_queue(1, 16, 1);
    d.admin_submit(command(op(AdminOpcode::AsyncEventRequest)));
    REQUIRE_FALSE(d.admin_poll().has_value());

    // An SQ tail past the queue size: ignored (nothing fetched), reported.
    d.wr32(sq_tail_doorbell(1, 0), 16);
    auto ev = d.admin_poll();
    REQUIRE(ev.has_value());
    CHECK(((ev->dw0 >> 8) & 0xff) ==
          static_cast<unsigned>(ErrorEventInfo::InvalidDoorbellWriteValue));
    // A CQ head past the queue size and a doorbell past the queues: no AER left, still ignored.
    d.wr32(cq_head_doorbell(1, 0), 99);
    d.wr32(cq_head_doorbell(4, 0), 1);
    d.wr32(sq_tail_doorbell(200, 0), 1);
    CHECK(d.ctrl().stats().invalid_doorbells == 4);
    CHECK(d.io_status(q, rw(IoOpcode::Read, 0, 1, d.alloc(512))) == StatusCode::Success);

    // With shadow doorbells, a shadow tail past the queue size is ignored until it is sane.
    d.dbbuf();
    const std::uint64_t buf = d.alloc(512);
    const std::uint32_t old = q.tail;
    (void)d.io_put(q, rw(IoOpcode::Read, 0, 1, buf));
    d.publish(1, false, 100, old);
    d.ring_ioeventfd(sq_tail_doorbell(1, 0));
    std::this_thread::sleep_for(20ms);
    CHECK_FALSE(d.io_poll(q).has_value());
    d.publish(1, false, q.tail, old);
    d.ring_ioeventfd(sq_tail_doorbell(1, 0));
    CHECK(status_of(d.io_wait(q)) == StatusCode::Success);
    CHECK(d.rd32(reg::CSTS) == 1);
}

// ---- lifetime: memory, reset, throttling --------------------------------------------------------

TEST_CASE("nvme controller: detach and reset wait for I/O at the backend") {
    auto held = std::make_unique<HeldBackend>();
    HeldBackend* backend = held.get();
    Driver d(config(std::move(held)));
    d.enable();
    IoQueue q = d.create_queue(1, 16, 1);
    const std::uint64_t buf = d.alloc(kPage);

    // A read sits at the backend; detaching guest RAM waits for it.
    const std::uint16_t cid = d.io_submit(q, rw(IoOpcode::Read, 0, 8, buf));
    const auto deadline = std::chrono::steady_clock::now() + kWait;
    while (backend->submitted() == 0 && std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(100us);
    REQUIRE(backend->submitted() == 1);
    std::atomic<bool> detached{false};
    std::thread control([&] {
        d.ctrl().detach_memory();
        detached = true;
    });
    std::this_thread::sleep_for(20ms);
    CHECK_FALSE(detached.load());
    backend->release();
    control.join();
    CHECK(detached.load());
    // Its completion was posted before the memory went.
    auto c = d.io_poll(q);
    REQUIRE(c.has_value());
    CHECK(c->cid == cid);

    // Without guest RAM nothing is fetched; with it back, the command runs.
    const std::uint32_t old = q.tail;
    (void)d.io_put(q, rw(IoOpcode::Read, 0, 8, buf));
    d.io_ring(q, old);
    std::this_thread::sleep_for(20ms);
    CHECK_FALSE(d.io_poll(q).has_value());
    d.ctrl().attach_memory(d.mem_ptr());
    CHECK(status_of(d.io_wait(q)) == StatusCode::Success);

    // CC.EN = 0 drops the queues: doorbells go, the queues can be created again.
    d.dbbuf();
    CHECK(d.ctrl().doorbells().size() == 2);
    d.wr32(reg::CC, Driver::kCc);
    CHECK(d.ctrl().doorbells().empty());
    d.enable();
    IoQueue again = d.create_queue(1, 16, 1);
    round_trip(d, again, 8, 4096, 0, 7);
    d.ctrl().reset();
    CHECK(d.rd32(reg::CSTS) == 0);
}

TEST_CASE(
    "nvme controller: a command still at the backend when the controller resets posts nothing") {
    // A backend that holds completions until released, released by another thread while the
    // control thread waits in CC.EN = 0.
    auto held = std::make_unique<HeldBackend>();
    HeldBackend* backend = held.get();
    Driver d(config(std::move(held)));
    d.enable();
    IoQueue q = d.create_queue(1, 16, 1);
    (void)d.io_submit(q, rw(IoOpcode::Read, 0, 8, d.alloc(kPage)));
    const auto deadline = std::chrono::steady_clock::now() + kWait;
    while (backend->submitted() == 0 && std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(100us);
    std::thread releaser([&] {
        std::this_thread::sleep_for(20ms);
        backend->release();
    });
    d.wr32(reg::CC, Driver::kCc);  // returns once the read finished
    releaser.join();
    CHECK((d.rd32(reg::CSTS) & 1) == 0);
    CHECK_FALSE(d.io_poll(q).has_value());
}

TEST_CASE("nvme controller: the rate limiter throttles and the time is counted") {
    auto cfg = config();
    cfg.volume_limits = nitro_card::storage::Limits{10, std::nullopt};  // 10 IOPS, a 10-I/O burst
    Driver d(std::move(cfg));
    d.enable();
    IoQueue q = d.create_queue(1, 32, 1);
    const std::uint64_t buf = d.alloc(12 * 512);
    const auto start = std::chrono::steady_clock::now();
    const std::uint32_t old = q.tail;
    for (std::uint32_t i = 0; i < 12; ++i)
        (void)d.io_put(q, rw(IoOpcode::Read, i, 1, buf + 512 * i));
    d.io_ring(q, old);
    for (int i = 0; i < 12; ++i) CHECK(status_of(d.io_wait(q)) == StatusCode::Success);
    const auto elapsed = std::chrono::steady_clock::now() - start;
    CHECK(elapsed >= 150ms);  // the 11th and 12th wait 100 ms each
    const auto s = d.ctrl().stats();
    CHECK(s.throttled_commands == 2);
    CHECK(s.throttled_ns >= 150'000'000);
}

TEST_CASE("nvme controller: a shared instance limiter and a file-backed volume") {
    auto instance = std::make_shared<SharedRateLimiter>(nitro_card::storage::Limits::unlimited());
    char path[] = "/tmp/nvme_controller_test_XXXXXX";
    const int fd = ::mkstemp(path);
    REQUIRE(fd >= 0);
    ::close(fd);
    ::unlink(path);
    nitro_card::storage::FileBackendOptions o;
    o.create_size = kVolumeBytes;
    auto file = nitro_card::storage::FileBackend::open(path, o);
    REQUIRE(file.has_value());
    auto cfg = config(std::move(*file));
    cfg.instance_limiter = instance;
    {
        Driver d(std::move(cfg));
        d.enable();
        IoQueue q = d.create_queue(1, 16, 1);
        d.dbbuf();
        // Write-through mode: every write is flushed before it completes.
        REQUIRE(d.admin_status(set_features(FeatureId::VolatileWriteCache, 0)) ==
                StatusCode::Success);
        io_suite(d, q);
        d.wr32(reg::CC, Driver::kCc | 1 | cc::SHN_NORMAL << 14);
        CHECK(csts::SHST.get(d.rd32(reg::CSTS)) == csts::SHST_COMPLETE);
    }
    CHECK(instance->stats().throttled_requests == 0);
    ::unlink(path);
}

TEST_CASE("nvme controller: Delete I/O SQ aborts what it has not started and waits for the rest") {
    auto cfg = config();
    cfg.volume_limits = nitro_card::storage::Limits{1, std::nullopt};  // one I/O per second
    Driver d(std::move(cfg));
    d.enable();
    IoQueue q = d.create_queue(1, 16, 1);
    const std::uint64_t buf = d.alloc(3 * 512);
    const std::uint32_t old = q.tail;
    for (std::uint32_t i = 0; i < 3; ++i)
        (void)d.io_put(q, rw(IoOpcode::Read, i, 1, buf + 512 * i));
    d.io_ring(q, old);
    // The first is admitted at once; the other two wait a second each for the limiter.
    CHECK(status_of(d.io_wait(q)) == StatusCode::Success);
    auto del_sq = command(op(AdminOpcode::DeleteIoSq));
    del_sq.cdw10 = 1;
    REQUIRE(d.admin_status(del_sq) == StatusCode::Success);
    for (int i = 0; i < 2; ++i) {
        auto c = d.io_poll(q);
        REQUIRE(c.has_value());
        CHECK(status_of(*c) == StatusCode::AbortSqDeleted);
    }
    auto del_cq = command(op(AdminOpcode::DeleteIoCq));
    del_cq.cdw10 = 1;
    CHECK(d.admin_status(del_cq) == StatusCode::Success);
    CHECK(d.ctrl().stats().throttled_commands == 1);

    // With a command at the backend, the deletion waits for it and its completion is posted.
    auto held = std::make_unique<HeldBackend>();
    HeldBackend* backend = held.get();
    Driver h(config(std::move(held)));
    h.enable();
    IoQueue hq = h.create_queue(1, 16, 1);
    const std::uint16_t cid = h.io_submit(hq, rw(IoOpcode::Read, 0, 1, h.alloc(512)));
    const auto deadline = std::chrono::steady_clock::now() + kWait;
    while (backend->submitted() == 0 && std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(100us);
    std::thread releaser([&] {
        std::this_thread::sleep_for(20ms);
        backend->release();
    });
    CHECK(h.admin_status(del_sq) == StatusCode::Success);
    releaser.join();
    auto c = h.io_poll(hq);
    REQUIRE(c.has_value());
    CHECK(c->cid == cid);
    CHECK(status_of(*c) == StatusCode::Success);
}

TEST_CASE("nvme controller: a CQ that left guest RAM is a fatal error (CSTS.CFS) until reset") {
    Driver d;
    d.enable();
    // CQ in the upper half of guest RAM, SQ in the lower half.
    constexpr std::uint64_t kHalf = kRamBytes / 2;
    (void)d.alloc(kHalf);
    const std::uint64_t cq = d.alloc(16 * sizeof(CqEntry));
    const std::uint64_t sq = 0x8000;
    REQUIRE(d.admin_status(create_cq(1, 16, cq, 1)) == StatusCode::Success);
    REQUIRE(d.admin_status(create_sq(1, 16, sq, 1)) == StatusCode::Success);

    // The vmm unmaps the upper half (DMA_UNMAP): the card rebuilds its view without it.
    auto fd = common::MemFd::adopt(common::UniqueFd(::dup(d.mem().memfd().fd())));
    REQUIRE(fd.has_value());
    auto lower = common::GuestMemory::attach(std::move(*fd), {{GuestAddr(0), kHalf, 0}});
    REQUIRE(lower.has_value());
    d.ctrl().detach_memory();
    d.ctrl().attach_memory(std::make_shared<const common::GuestMemory>(std::move(*lower)));

    REQUIRE(d.mem().write_obj(GuestAddr(sq), rw(IoOpcode::Read, 0, 1, 0x9000)));
    d.wr32(sq_tail_doorbell(1, 0), 1);
    const auto deadline = std::chrono::steady_clock::now() + kWait;
    while ((d.rd32(reg::CSTS) & 2) == 0 && std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(100us);
    CHECK(d.rd32(reg::CSTS) == 3);  // RDY | CFS
    // A controller reset clears it.
    d.ctrl().detach_memory();
    d.ctrl().attach_memory(d.mem_ptr());
    d.enable();
    CHECK(d.rd32(reg::CSTS) == 1);
    IoQueue q = d.create_queue(1, 16, 1);
    round_trip(d, q, 0, 4096, 0, 1);
}
