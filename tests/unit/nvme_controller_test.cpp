// The NVMe controller: identity, registers and the admin sequence Linux 6.1 sends.
#include "nvme_controller_driver.hpp"

using namespace nvme_ctrl_test;

// ---- identity and registers -------------------------------------------------------------------

TEST_CASE("nvme controller: EBS identity in config space and Identify Controller") {
    Driver d;
    const auto hdr = d.ctrl().config_header();
    REQUIRE(hdr.size() == 64);
    auto u16 = [&](std::size_t o) { return static_cast<std::uint16_t>(hdr[o] | hdr[o + 1] << 8); };
    CHECK(u16(0x00) == 0x1d0f);
    CHECK(u16(0x02) == 0x8061);
    CHECK(u16(0x2c) == 0x1d0f);
    CHECK(u16(0x2e) == 0x8061);
    CHECK(hdr[0x0b] == 0x01);
    CHECK(hdr[0x0a] == 0x08);
    CHECK(hdr[0x09] == 0x02);
    CHECK(d.ctrl().bar0_size() == 16 * 1024);
    CHECK(d.ctrl().msix_vectors() == 5);
    CHECK(d.ctrl().serial() == kVolumeId);

    d.enable();
    const std::uint64_t buf = d.alloc(kPage);
    REQUIRE(d.admin_status(identify(1, 0, buf)) == StatusCode::Success);
    const auto id = d.get<IdentifyController>(buf);
    CHECK(id.vid == 0x1d0f);
    CHECK(id.ssvid == 0x1d0f);
    CHECK(ascii(id.sn, 20) == kVolumeId);
    CHECK(ascii(id.mn, 40) == fmt::format("{:<40}", "Amazon Elastic Block Store"));
    CHECK(ascii(id.fr, 8) == "1.0     ");
    CHECK(id.mdts == 5);
    CHECK(id.cntlid == 1);
    CHECK(id.ver == version(1, 4, 0));
    CHECK((id.oacs & OACS_DBBUF) != 0);
    CHECK(id.oncs == (ONCS_DSM | ONCS_WRITE_ZEROES));
    CHECK((id.vwc & VWC_PRESENT) != 0);
    CHECK(id.sgls == 0);
    CHECK(id.nn == 1);
    CHECK(id.sqes == 0x66);
    CHECK(id.cqes == 0x44);
    CHECK(id.oaes == 0);
    CHECK(id.lpa == 0);
    CHECK(id.kas == 0);
    CHECK(id.apsta == 0);
    const std::string nqn(id.subnqn);
    CHECK(nqn.starts_with("nqn.2014-08.org.nvmexpress:uuid:"));
    CHECK(nqn.size() == 32 + 36);

    // Another volume gets another SUBNQN and NGUID; instance storage has its own model and id.
    auto other = config();
    other.serial = "vol0fedcba987654321f";
    other.kind = VolumeKind::InstanceStore;
    auto c2 = Controller::create(std::move(other));
    REQUIRE(c2.has_value());
    CHECK((*c2)->info().subnqn != d.ctrl().info().subnqn);
    CHECK((*c2)->info().nguid != d.ctrl().info().nguid);
    CHECK((*c2)->info().model == "Amazon EC2 NVMe Instance Storage");
    CHECK((*c2)->config_header()[2] == 0x00);
    CHECK((*c2)->config_header()[3] == 0xcd);
}

TEST_CASE("nvme controller: configuration is validated") {
    auto no_backend = config();
    no_backend.backend.reset();
    CHECK_FALSE(Controller::create(std::move(no_backend)).has_value());
    auto long_serial = config();
    long_serial.serial = "vol0123456789abcdef0123";
    CHECK_FALSE(Controller::create(std::move(long_serial)).has_value());
    auto no_queues = config();
    no_queues.max_io_queues = 0;
    CHECK_FALSE(Controller::create(std::move(no_queues)).has_value());
    auto big_mdts = config();
    big_mdts.mdts = 12;
    CHECK_FALSE(Controller::create(std::move(big_mdts)).has_value());
    CHECK(is_ebs_volume_id(kVolumeId));
    CHECK_FALSE(is_ebs_volume_id("vol0123456789abcdef"));
    CHECK_FALSE(is_ebs_volume_id("vol0123456789abcdefg"));
}

TEST_CASE("nvme registers: accesses Linux makes, and the ones it must not") {
    RegisterFile r(0x0000'0020'0f01'03ffull, version(1, 4, 0));
    CHECK(r.read(reg::CAP, 8).value() == 0x0000'0020'0f01'03ffull);
    CHECK(r.read(reg::CAP, 4).value() == 0x0f01'03ff);
    CHECK(r.read(reg::CAP + 4, 4).value() == 0x20);
    CHECK(r.read(reg::VS, 4).value() == 0x00010400);
    CHECK(r.read(reg::CC, 2).error() == RegisterFault::BadSize);
    CHECK(r.read(reg::CC + 1, 4).error() == RegisterFault::BadSize);
    CHECK(r.read(reg::CC, 8).error() == RegisterFault::BadSize);
    CHECK(r.read(0x40, 4).error() == RegisterFault::Hole);
    CHECK(r.write(reg::CAP, 4, 0).error() == RegisterFault::ReadOnly);
    CHECK(r.write(reg::CSTS, 4, 1).error() == RegisterFault::ReadOnly);
    // ASQ as two dwords (lo_hi_writeq) and as one qword.
    REQUIRE(r.write(reg::ASQ, 4, 0x1234'5000).has_value());
    REQUIRE(r.write(reg::ASQ + 4, 4, 0x1).has_value());
    CHECK(r.asq() == 0x1'1234'5000ull);
    REQUIRE(r.write(reg::ACQ, 8, 0x2'0000'3000ull).has_value());
    CHECK(r.acq() == 0x2'0000'3000ull);
    // Reserved bits of AQA and CC read back as zero.
    REQUIRE(r.write(reg::AQA, 4, 0xffff'ffff).has_value());
    CHECK(r.aqa() == 0x0fff'0fff);
    auto w = r.write(reg::CC, 4, 0xffff'ffff);
    REQUIRE(w.has_value());
    CHECK(w->reg == reg::CC);
    CHECK(w->new_value == writable::CC);
    // INTMS/INTMC accept writes and keep nothing (MSI-X only).
    REQUIRE(r.write(reg::INTMS, 4, 1).has_value());
    CHECK(r.read(reg::INTMS, 4).value() == 0);
    r.reset();
    CHECK(r.cc() == 0);
    CHECK(r.read(reg::CAP, 8).value() == 0x0000'0020'0f01'03ffull);
}

TEST_CASE("nvme controller: CAP, VS, enable, shutdown and disable") {
    Driver d;
    const std::uint64_t cap = d.rd64(reg::CAP);
    CHECK(cap::MQES.get(cap) == 1023);
    CHECK(cap::CQR.get(cap) == 1);
    CHECK(cap::TO.get(cap) > 0);
    CHECK(cap::DSTRD.get(cap) == 0);
    CHECK(((cap >> 37) & 1) == 1);  // CSS: NVM command set
    CHECK(((cap >> 43) & 1) == 0);  // no I/O command sets (CSI) path
    CHECK(cap::MPSMIN.get(cap) == 0);
    CHECK(cap::MPSMAX.get(cap) == 0);
    CHECK(d.ctrl().bar0_read(reg::CAP, 8) == cap);
    CHECK(d.rd32(reg::VS) == 0x00010400);
    CHECK(d.rd32(reg::CSTS) == 0);
    CHECK(d.rd32(reg::CMBSZ) == 0);
    CHECK(d.rd32(reg::INTMS) == 0);

    // Odd sizes, misaligned and unknown offsets are ignored, counted, and change nothing.
    const auto bad_before = d.ctrl().stats().bad_register_accesses;
    d.ctrl().bar0_write(reg::CC, 2, 1);
    d.ctrl().bar0_write(reg::CC + 2, 4, 1);
    d.ctrl().bar0_write(reg::VS, 4, 0);
    d.ctrl().bar0_write(0x1002, 4, 1);
    d.ctrl().bar0_write(0x1000, 8, 1);
    d.ctrl().bar0_write(0x4000, 4, 1);
    CHECK(d.rd32(reg::CC) == 0);
    CHECK(d.rd32(reg::VS) == 0x00010400);
    CHECK(d.ctrl().stats().bad_register_accesses == bad_before + 6);

    d.enable();
    CHECK(d.rd32(reg::CSTS) == 1);
    // Shutdown: SHST reads "complete" once the write returns.
    d.wr32(reg::CC, Driver::kCc | 1 | cc::SHN_NORMAL << 14);
    CHECK(csts::SHST.get(d.rd32(reg::CSTS)) == csts::SHST_COMPLETE);
    // Disable: RDY drops; the admin doorbell of a disabled controller does nothing.
    d.wr32(reg::CC, Driver::kCc);
    CHECK((d.rd32(reg::CSTS) & 1) == 0);
    d.enable();
    CHECK(d.rd32(reg::CSTS) == 1);
    CHECK(d.ctrl().stats().slow_path_accesses() > 0);

    // reset(): registers back to power-on values.
    d.ctrl().reset();
    CHECK(d.rd32(reg::CC) == 0);
    CHECK(d.rd32(reg::CSTS) == 0);
    CHECK(d.rd64(reg::ASQ) == 0);
    CHECK(d.rd64(reg::CAP) == cap);
}

TEST_CASE("nvme controller: CC.EN = 1 with bad admin queue registers sets CSTS.CFS") {
    Driver d;
    const std::uint64_t q = d.alloc(kPage);
    auto try_enable = [&](std::uint32_t aqa, std::uint64_t asq, std::uint64_t acq,
                          std::uint32_t cc) {
        d.wr32(reg::CC, 0);
        d.wr32(reg::AQA, aqa);
        d.wr64(reg::ASQ, asq);
        d.wr64(reg::ACQ, acq);
        d.wr32(reg::CC, cc);
        d.wr32(reg::CC, cc | 1);
        return d.rd32(reg::CSTS);
    };
    const std::uint32_t good = 31 | 31 << 16;
    CHECK(try_enable(0, q, q + 2048, Driver::kCc) == 2);              // one-entry queues
    CHECK(try_enable(good, q + 64, q + 2048, Driver::kCc) == 2);      // ASQ not page aligned
    CHECK(try_enable(good, kRamBytes, q, Driver::kCc) == 2);          // ASQ outside guest RAM
    CHECK(try_enable(good, q, q + 2048, Driver::kCc | 1 << 7) == 2);  // 8 KiB pages
    CHECK(try_enable(good, q, q + 4096, Driver::kCc) == 1);           // and a good one
}

// ---- the admin sequence Linux 6.1 sends (devices.md §2.4) ------------------------------------

TEST_CASE("nvme controller: Linux 6.1 bring-up, identify and queue setup") {
    Driver d;
    d.enable();
    const std::uint64_t buf = d.alloc(kPage);

    REQUIRE(d.admin_status(identify(1, 0, buf)) == StatusCode::Success);
    CHECK(d.irqs(0) >= 1);  // vector 0 after admin completions

    // Set Features Number of Queues: one queue asked (0-based 0), one granted.
    auto nq = d.admin(set_features(FeatureId::NumberOfQueues, 0));
    CHECK(status_of(nq) == StatusCode::Success);
    CHECK(nq.dw0 == 0);
    // More than the controller has: capped at max_io_queues (4, 0-based 3).
    nq = d.admin(set_features(FeatureId::NumberOfQueues, 63 | 63 << 16));
    CHECK(nq.dw0 == (3u | 3u << 16));
    CHECK(d.admin_status(set_features(FeatureId::NumberOfQueues, 0xffff)) ==
          StatusCode::InvalidField);

    IoQueue q1 = d.create_queue(1, 64, 1);
    // Number of Queues may not change once I/O queues exist.
    CHECK(d.admin_status(set_features(FeatureId::NumberOfQueues, 0)) ==
          StatusCode::CommandSequenceError);
    CHECK(d.ctrl().doorbells().empty());  // no ioeventfds before Doorbell Buffer Config
    d.dbbuf();
    const auto dbs = d.ctrl().doorbells();
    REQUIRE(dbs.size() == 2);
    CHECK(dbs[0].offset == 0x1008);
    CHECK(dbs[1].offset == 0x100c);
    CHECK(dbs[0].size == 4);
    CHECK(dbs[0].eventfd >= 0);
    CHECK(d.admin_status(set_features(FeatureId::AsyncEventConfiguration, 0x100)) ==
          StatusCode::Success);

    // Identify CNS 6 (I/O command set controller): an NVMe error Linux tolerates.
    auto cns6 = identify(6, 0, buf);
    CHECK(d.admin_status(cns6) == StatusCode::InvalidField);
    CHECK(d.admin_status(identify(0x10, 0, buf)) == StatusCode::InvalidField);

    // CNS 2: the active namespace list is {1}.
    REQUIRE(d.admin_status(identify(2, 0, buf)) == StatusCode::Success);
    CHECK(d.get<std::uint32_t>(buf) == 1);
    CHECK(d.get<std::uint32_t>(buf + 4) == 0);
    REQUIRE(d.admin_status(identify(2, 1, buf)) == StatusCode::Success);
    CHECK(d.get<std::uint32_t>(buf) == 0);

    // CNS 3: an NGUID descriptor, the same NGUID as Identify Namespace.
    REQUIRE(d.admin_status(identify(3, 1, buf)) == StatusCode::Success);
    const auto desc = d.get<NamespaceIdDescriptor>(buf);
    CHECK(desc.nidt == NIDT_NGUID);
    CHECK(desc.nidl == 16);
    std::array<std::uint8_t, 16> nguid{};
    std::memcpy(nguid.data(), d.host(buf + 4, 16), 16);
    CHECK(nguid == d.ctrl().info().nguid);
    CHECK(d.get<std::uint8_t>(buf + 20) == 0);  // list end

    // CNS 0 (twice, as Linux does).
    for (int i = 0; i < 2; ++i) {
        REQUIRE(d.admin_status(identify(0, 1, buf)) == StatusCode::Success);
        const auto ns = d.get<IdentifyNamespace>(buf);
        CHECK(ns.nsze == kVolumeBlocks);
        CHECK(ns.ncap == kVolumeBlocks);
        CHECK(ns.nlbaf == 0);
        CHECK(ns.flbas == 0);
        CHECK(ns.lbaf[0].lbads == 9);
        CHECK(std::memcmp(ns.nguid, nguid.data(), 16) == 0);
    }
    CHECK(d.admin_status(identify(0, 2, buf)) == StatusCode::InvalidNamespace);
    CHECK(d.admin_status(identify(3, 0, buf)) == StatusCode::InvalidNamespace);

    // And the namespace reads: the first I/O goes through the shadow doorbell and ioeventfd.
    const std::uint64_t data = d.alloc(kPage);
    CHECK(d.io_status(q1, rw(IoOpcode::Read, 0, 8, data)) == StatusCode::Success);
    CHECK(d.ioeventfd_rings >= 1);
    CHECK(d.irqs(1) >= 1);
    CHECK(d.ctrl().stats().admin_commands >= 15);
}

TEST_CASE("nvme controller: features, logs, abort and asynchronous events") {
    Driver d;
    d.enable();
    const std::uint64_t buf = d.alloc(kPage);

    auto vwc = d.admin(get_features(FeatureId::VolatileWriteCache));
    CHECK(vwc.dw0 == 1);
    CHECK(d.admin_status(set_features(FeatureId::VolatileWriteCache, 0)) == StatusCode::Success);
    CHECK(d.admin(get_features(FeatureId::VolatileWriteCache)).dw0 == 0);
    CHECK(d.admin(get_features(FeatureId::VolatileWriteCache, 1)).dw0 == 1);  // default
    CHECK(d.admin(get_features(FeatureId::NumberOfQueues)).dw0 == (3u | 3u << 16));
    CHECK(d.admin_status(set_features(FeatureId::InterruptCoalescing, 0x0a05)) ==
          StatusCode::Success);
    CHECK(d.admin(get_features(FeatureId::InterruptCoalescing)).dw0 == 0x0a05);
    CHECK(d.admin_status(set_features(FeatureId::Arbitration, 3)) == StatusCode::Success);
    CHECK(d.admin(get_features(FeatureId::TemperatureThreshold)).dw0 == kWarningTempK);
    CHECK(d.admin_status(set_features(FeatureId::PowerManagement, 1)) == StatusCode::InvalidField);
    CHECK(d.admin_status(set_features(FeatureId::Timestamp, 0)) == StatusCode::InvalidField);
    CHECK(d.admin_status(set_features(static_cast<FeatureId>(0x7f), 0)) ==
          StatusCode::InvalidField);
    CHECK(d.admin_status(get_features(static_cast<FeatureId>(0x7f))) == StatusCode::InvalidField);
    auto save = set_features(FeatureId::Arbitration, 0);
    save.cdw10 |= 1u << 31;
    CHECK(d.admin_status(save) == StatusCode::FeatureNotSaveable);

    // Abort: "not aborted".
    auto abort = command(op(AdminOpcode::Abort));
    abort.cdw10 = 1 | 5u << 16;
    const auto a = d.admin(abort);
    CHECK(status_of(a) == StatusCode::Success);
    CHECK((a.dw0 & 1) == 1);

    // Logs: error log empty, SMART sane, firmware slot 1 = FR.
    std::memset(d.host(buf, kPage), 0xff, kPage);
    REQUIRE(d.admin_status(get_log(LogPageId::ErrorInformation, 64, buf)) == StatusCode::Success);
    CHECK(zeroes(d.host(buf, 64), 64));
    REQUIRE(d.admin_status(get_log(LogPageId::SmartHealth, 512, buf)) == StatusCode::Success);
    const auto smart = d.get<SmartLog>(buf);
    CHECK((smart.temperature[0] | smart.temperature[1] << 8) == 310);
    CHECK(smart.avail_spare == 100);
    CHECK(smart.critical_warning == 0);
    REQUIRE(d.admin_status(get_log(LogPageId::FirmwareSlot, 512, buf)) == StatusCode::Success);
    const auto fw = d.get<FirmwareSlotLog>(buf);
    CHECK(fw.afi == 1);
    CHECK(ascii(fw.frs[0], 8) == "1.0     ");
    CHECK(d.admin_status(get_log(LogPageId::CommandsSupportedAndEffects, 64, buf)) ==
          StatusCode::InvalidLogPage);
    CHECK(d.admin_status(get_log(static_cast<LogPageId>(0x70), 64, buf)) ==
          StatusCode::InvalidLogPage);
    CHECK(d.admin_status(get_log(LogPageId::SmartHealth, 512, buf, false, 1)) ==
          StatusCode::InvalidField);

    // Asynchronous Event Requests are held, at most AERL + 1 of them.
    for (int i = 0; i <= kAsyncEventLimit; ++i) {
        d.admin_submit(command(op(AdminOpcode::AsyncEventRequest)));
        CHECK_FALSE(d.admin_poll().has_value());
    }
    CHECK(d.admin_status(command(op(AdminOpcode::AsyncEventRequest))) ==
          StatusCode::AsyncEventRequestLimitExceeded);
    (void)d.irqs(0);

    // A doorbell of a queue that does not exist: ignored, reported through a held AER.
    d.wr32(sq_tail_doorbell(3, 0), 1);
    auto ev = d.admin_poll();
    REQUIRE(ev.has_value());
    CHECK(status_of(*ev) == StatusCode::Success);
    CHECK((ev->dw0 & 0x7) == static_cast<unsigned>(AsyncEventType::ErrorStatus));
    CHECK(((ev->dw0 >> 8) & 0xff) ==
          static_cast<unsigned>(ErrorEventInfo::InvalidDoorbellRegister));
    CHECK(((ev->dw0 >> 16) & 0xff) == static_cast<unsigned>(LogPageId::ErrorInformation));
    CHECK(d.irqs(0) >= 1);
    // Masked until the error log is read with RAE = 0.
    d.wr32(sq_tail_doorbell(3, 0), 1);
    CHECK_FALSE(d.admin_poll().has_value());
    REQUIRE(d.admin_status(get_log(LogPageId::ErrorInformation, 64, buf, true)) ==
            StatusCode::Success);
    d.wr32(sq_tail_doorbell(3, 0), 1);
    CHECK_FALSE(d.admin_poll().has_value());
    REQUIRE(d.admin_status(get_log(LogPageId::ErrorInformation, 64, buf, false)) ==
            StatusCode::Success);
    // An admin SQ tail past the queue: Invalid Doorbell Write Value, and the write is ignored.
    d.wr32(reg::DOORBELL_BASE, 32);
    ev = d.admin_poll();
    REQUIRE(ev.has_value());
    CHECK(((ev->dw0 >> 8) & 0xff) ==
          static_cast<unsigned>(ErrorEventInfo::InvalidDoorbellWriteValue));
    CHECK(d.ctrl().stats().invalid_doorbells == 4);
    // The admin queue still serves.
    CHECK(d.admin_status(identify(1, 0, buf)) == StatusCode::Success);
}
