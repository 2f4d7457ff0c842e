// Attaching to a real nitro-card as the vmm does, then replaying what Linux 6.1's nvme driver
// sends (devices.md §2.4): bring-up, Identify, queue setup, and Write/Read/Flush round trips
// whose data is checked in guest memory and in the volume file, first with slow-path doorbells,
// then with shadow doorbells and the doorbell eventfds the card hands out.
#include <doctest/doctest.h>

#include <cstring>
#include <set>
#include <string>

#include "card_fixture.hpp"
#include "nvme/identify.hpp"

using namespace integration;
using namespace testsupport;
using nitro_card::nvme::AdminOpcode;
using nitro_card::nvme::Cns;
using nitro_card::nvme::CqEntry;
using nitro_card::nvme::FeatureId;
using nitro_card::nvme::IdentifyController;
using nitro_card::nvme::IdentifyNamespace;
using nitro_card::nvme::IoOpcode;
using nitro_card::nvme::StatusCode;
namespace card = common::card;
namespace reg = nitro_card::nvme::reg;
namespace cap = nitro_card::nvme::cap;
namespace csts = nitro_card::nvme::csts;
namespace cc = nitro_card::nvme::cc;

namespace {

constexpr std::uint64_t kPage = kNvmePage;
constexpr std::uint64_t kPrefillLba = 2048;  // 1 MiB into the volume
constexpr std::size_t kPrefillBytes = 64 * 1024;
constexpr std::string_view kUuidNqnPrefix = "nqn.2014-08.org.nvmexpress:uuid:";

bool is_volume_id(const std::string& s) {
    if (s.size() != 20 || !s.starts_with("vol")) return false;
    for (char c : s.substr(3))
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
    return true;
}

std::vector<std::byte> guest_bytes(NvmeDriverMock& d, std::uint64_t gpa, std::size_t len) {
    auto s = d.host(gpa, len);
    return {s.begin(), s.end()};
}

// Writes `len` bytes from guest `src` to `lba`, reads them back into the zeroed guest buffer
// at `dst`, and checks both the copy and the volume file.
void round_trip(Vmm& vm, const Card& c, IoQueue& q, std::uint64_t lba, std::uint64_t src,
                std::uint64_t dst, std::size_t len, unsigned seed) {
    NvmeDriverMock& d = vm.driver();
    INFO("queue " << q.qid << ", LBA " << lba << ", " << len << " bytes, buffers " << std::hex
                  << src << " -> " << dst);
    fill_pattern(d.host(src, len), seed);
    const auto blocks = static_cast<std::uint32_t>(len / kLba);
    const auto [w1, w2] = d.prps(src, len);
    CHECK(d.io_status(q, io_cmd(IoOpcode::Write, lba, blocks, w1, w2)) == StatusCode::Success);
    std::memset(d.host(dst, len).data(), 0, len);
    const auto [r1, r2] = d.prps(dst, len);
    CHECK(d.io_status(q, io_cmd(IoOpcode::Read, lba, blocks, r1, r2)) == StatusCode::Success);
    const auto expected = pattern(len, seed);
    CHECK(guest_bytes(d, dst, len) == expected);
    CHECK(read_file(c.volume(0), lba * kLba, len) == expected);
}

// The data-path cases Linux produces (nvme_pci_setup_prps): PRP1 only, PRP1 + PRP2, a PRP
// list, each with and without a page offset in PRP1, and a buffer in the high RAM region.
void prp_round_trips(Vmm& vm, const Card& c, IoQueue& q, std::uint64_t lba, unsigned seed) {
    NvmeDriverMock& d = vm.driver();
    const std::uint64_t src = d.alloc(80 * 1024), dst = d.alloc(80 * 1024);
    round_trip(vm, c, q, lba, src, dst, 4096, seed);                                 // PRP1
    round_trip(vm, c, q, lba + 8, src + 512, dst + 1024, 1024, seed + 1);            // PRP1, offset
    round_trip(vm, c, q, lba + 16, src, dst, 8192, seed + 2);                        // PRP1 + PRP2
    round_trip(vm, c, q, lba + 32, src + 0x800, dst + 0x200, 4096, seed + 3);        // PRP2, offset
    round_trip(vm, c, q, lba + 64, src, dst, 64 * 1024, seed + 4);                   // PRP list
    round_trip(vm, c, q, lba + 256, src + 0xa00, dst + 0x400, 12 * 1024, seed + 5);  // list, offset
    const std::uint64_t high = kHighRamBase + 3 * kPage;  // across the hole: another DMA region
    round_trip(vm, c, q, lba + 512, high, src, 16 * 1024, seed + 6);
    CHECK(d.io_status(q, flush_cmd()) == StatusCode::Success);
}

}  // namespace

TEST_CASE("card: attach as the vmm, bring the controller up as Linux 6.1 does, move data") {
    const auto prefill = pattern(kPrefillBytes, 99);
    Card c({"size=16M"}, {}, [&](const TempDir& dir) {
        write_volume_file(dir.file("vol0.img"), kVolumeBytes, kPrefillLba * kLba, prefill);
    });
    Vmm vm(c.socket(0));
    testsupport::CardClient& client = vm.client();

    // ---- the hypervisor's attach ----
    auto info = client.device_info();
    REQUIRE(info.has_value());
    CHECK((info->flags & card::kDeviceFlagPci) != 0);
    CHECK(info->num_regions >= 8);
    vm.attach();
    auto bar0 = client.region_info(card::kPciBar0RegionIndex);
    REQUIRE(bar0.has_value());
    CHECK(bar0->size == 16 * 1024);
    CHECK((bar0->flags & (card::kRegionFlagRead | card::kRegionFlagWrite)) ==
          (card::kRegionFlagRead | card::kRegionFlagWrite));
    CHECK((bar0->flags & card::kRegionFlagMmap) == 0);
    auto cfg = client.region_read(card::kPciConfigRegionIndex, 0, 64);
    REQUIRE(cfg.has_value());
    const auto cfg8 = [&](std::size_t o) { return static_cast<std::uint32_t>((*cfg)[o]); };
    const auto cfg16 = [&](std::size_t o) { return cfg8(o) | cfg8(o + 1) << 8; };
    CHECK(cfg16(0x00) == 0x1d0f);
    CHECK(cfg16(0x02) == 0x8061);
    CHECK((cfg8(0x0b) << 16 | cfg8(0x0a) << 8 | cfg8(0x09)) == 0x010802);
    CHECK(cfg16(0x2c) == 0x1d0f);
    CHECK(cfg16(0x2e) == 0x8061);
    auto irq = client.irq_info(card::kPciMsixIrqIndex);
    REQUIRE(irq.has_value());
    CHECK((irq->flags & card::kIrqInfoEventfd) != 0);
    CHECK(vm.vectors() == irq->count);
    REQUIRE(irq->count >= 3);  // admin + one per I/O queue used below
    // Before Doorbell Buffer Config an ioeventfd would lose the doorbell value (§2.6).
    auto early = client.region_io_fds(card::kPciBar0RegionIndex);
    REQUIRE(early.has_value());
    CHECK(early->entries.empty());

    // ---- registers and bring-up (nvme/pci.c:1851-1898) ----
    NvmeDriverMock& d = vm.driver();
    CHECK(d.rd32(reg::CSTS) != 0xffffffff);
    REQUIRE(d.enable(32));
    const std::uint64_t capv = d.cap();
    CHECK(cap::MQES.get(capv) >= 63);
    CHECK(cap::CQR.get(capv) == 1);
    CHECK(cap::TO.get(capv) > 0);
    CHECK(cap::DSTRD.get(capv) == 0);
    CHECK((cap::CSS.get(capv) & cap::CSS_NVM) != 0);
    CHECK(cap::MPSMIN.get(capv) == 0);
    CHECK(d.rd32(reg::VS) >= nitro_card::nvme::version(1, 3, 0));
    CHECK(d.rd32(reg::CC) == (NvmeDriverMock::kCc | cc::EN.put(1)));

    // ---- Identify (controller, active namespaces, descriptors, namespace) ----
    const std::uint64_t idbuf = d.alloc(kPage);
    CHECK(d.admin_status(identify_cmd(Cns::Controller, 0, idbuf)) == StatusCode::Success);
    const auto id = d.get<IdentifyController>(idbuf);
    CHECK(id.vid == 0x1d0f);
    CHECK(id.ssvid == 0x1d0f);
    CHECK(std::string(id.mn, sizeof id.mn) == fmt::format("{:<40}", "Amazon Elastic Block Store"));
    const std::string serial = trimmed(id.sn, sizeof id.sn);
    CHECK_MESSAGE(is_volume_id(serial), serial);
    const std::string subnqn(id.subnqn, strnlen(id.subnqn, sizeof id.subnqn));
    CHECK(subnqn.starts_with(kUuidNqnPrefix));
    CHECK(subnqn.size() == kUuidNqnPrefix.size() + 36);
    CHECK(id.mdts >= 5);  // 128 KiB and more: the PRP lists below fit
    CHECK(id.nn == 1);
    CHECK(id.sqes == 0x66);
    CHECK(id.cqes == 0x44);
    CHECK((id.oacs & nitro_card::nvme::OACS_DBBUF) != 0);
    CHECK((id.vwc & nitro_card::nvme::VWC_PRESENT) != 0);
    CHECK(id.sgls == 0);
    CHECK(vm.wait_irqs(0, 1));  // admin completions raise vector 0

    const std::uint64_t nslist = d.alloc(kPage);
    CHECK(d.admin_status(identify_cmd(Cns::ActiveNamespaceList, 0, nslist)) == StatusCode::Success);
    CHECK(d.get<std::uint32_t>(nslist) == 1);
    CHECK(d.get<std::uint32_t>(nslist + 4) == 0);
    const std::uint64_t descs = d.alloc(kPage);
    CHECK(d.admin_status(identify_cmd(Cns::NamespaceDescriptorList, 1, descs)) ==
          StatusCode::Success);
    CHECK(d.get<std::uint8_t>(descs) == nitro_card::nvme::NIDT_NGUID);
    CHECK(d.get<std::uint8_t>(descs + 1) == nitro_card::nvme::NIDL_NGUID);
    const std::uint64_t nsbuf = d.alloc(kPage);
    CHECK(d.admin_status(identify_cmd(Cns::Namespace, 1, nsbuf)) == StatusCode::Success);
    const auto ns = d.get<IdentifyNamespace>(nsbuf);
    CHECK(ns.nsze == kVolumeBytes / kLba);
    CHECK(ns.ncap == ns.nsze);
    CHECK(ns.lbaf[ns.flbas & 0xf].lbads == 9);

    // ---- queues: Set/Get Features, an AER held, Create I/O CQ/SQ ----
    const CqEntry nq = d.admin(set_features_cmd(FeatureId::NumberOfQueues, 1u | 1u << 16));
    REQUIRE(status_of(nq) == StatusCode::Success);
    CHECK(nq.dw0 == (1u | 1u << 16));  // two SQs and two CQs, 0-based
    const CqEntry gq = d.admin(get_features_cmd(FeatureId::NumberOfQueues));
    CHECK(status_of(gq) == StatusCode::Success);
    CHECK(gq.dw0 == nq.dw0);
    const CqEntry wc = d.admin(get_features_cmd(FeatureId::VolatileWriteCache));
    CHECK(status_of(wc) == StatusCode::Success);
    CHECK((wc.dw0 & 1) == 1);
    // Linux sends an AER only when OAES advertises events (this card's is 0); one is sent anyway
    // to see that it is held, not completed.
    const std::uint16_t aer = d.admin_submit(admin_cmd(AdminOpcode::AsyncEventRequest));

    // Linux 6.1 creates the I/O queues first and sends Doorbell Buffer Config after them
    // (devices.md §2.3), so the queues exist on the slow path before they are shadowed.
    IoQueue q1, q2;
    {
        const auto [cq, sq] = d.create_queue(q1, 1, 64, 1, true);
        REQUIRE(cq == StatusCode::Success);
        REQUIRE(sq == StatusCode::Success);
    }
    {
        const auto [cq, sq] = d.create_queue(q2, 2, 16, 2, false);  // IEN = 0: polled
        REQUIRE(cq == StatusCode::Success);
        REQUIRE(sq == StatusCode::Success);
    }

    // ---- (a) slow-path doorbells: REGION_WRITE at 0x1000 + 8 * qid ----
    const std::uint64_t irqs_before = vm.irq_count(1);
    const unsigned mmio_before = d.mmio_doorbells();
    CHECK(read_file(c.volume(0), kPrefillLba * kLba, kPrefillBytes) == prefill);
    {
        const std::uint64_t buf = d.alloc(kPrefillBytes);
        const auto [p1, p2] = d.prps(buf, kPrefillBytes);
        CHECK(d.io_status(q1, io_cmd(IoOpcode::Read, kPrefillLba, kPrefillBytes / kLba, p1, p2)) ==
              StatusCode::Success);
        CHECK(guest_bytes(d, buf, kPrefillBytes) == prefill);
    }
    prp_round_trips(vm, c, q1, 0, 1);
    CHECK(d.mmio_doorbells() > mmio_before);
    CHECK(d.ioeventfd_doorbells() == 0);
    CHECK(vm.wait_irqs(1, irqs_before + 1));
    const std::uint64_t polled_irqs = vm.irq_count(2);
    round_trip(vm, c, q2, 4096, d.alloc(kPage), d.alloc(kPage), 4096, 7);
    // The card raises a vector after posting a batch; once a later command on queue 1 has
    // raised vector 1, a raise of vector 2 for queue 2's batch would have happened.
    const std::uint64_t irqs_q1 = vm.irq_count(1);
    CHECK(d.io_status(q1, flush_cmd()) == StatusCode::Success);
    CHECK(vm.wait_irqs(1, irqs_q1 + 1));
    CHECK(vm.irq_count(2) == polled_irqs);  // IEN = 0: completions without interrupts

    // ---- (b) shadow doorbells + the doorbell eventfds from DEVICE_GET_REGION_IO_FDS ----
    REQUIRE(d.enable_shadow_doorbells() == StatusCode::Success);
    // The card carried the register values over into the shadow page (as QEMU does).
    CHECK(d.shadow_value(1, false) == q1.tail);
    CHECK(d.shadow_value(1, true) == q1.head);
    const auto entries = vm.register_doorbell_fds();
    std::set<std::uint64_t> offsets;
    for (const auto& e : entries) {
        offsets.insert(e.offset);
        CHECK(e.size == 4);
        CHECK((e.flags & card::kIoFdDatamatch) == 0);
    }
    CHECK(offsets == std::set<std::uint64_t>{0x1008, 0x100c, 0x1010, 0x1014});
    const unsigned mmio_shadow = d.mmio_doorbells();
    const std::uint64_t irqs_shadow = vm.irq_count(1);
    // Once the card has caught up it asks for a doorbell on the next update (EventIdx = tail),
    // so this command must ring the eventfd, and the eventfd must wake the card.
    REQUIRE(d.wait_event_idx(1, false, q1.tail));
    const unsigned rings = d.ioeventfd_doorbells();
    CHECK(d.io_status(q1, io_cmd(IoOpcode::Read, 0, 8, d.alloc(kPage))) == StatusCode::Success);
    CHECK(d.ioeventfd_doorbells() >= rings + 1);  // the SQ tail (and maybe the CQ head)
    prp_round_trips(vm, c, q1, 8192, 20);
    CHECK(d.mmio_doorbells() == mmio_shadow);  // no I/O doorbell took the slow path
    CHECK(vm.wait_irqs(1, irqs_shadow + 1));
    round_trip(vm, c, q2, 12288, d.alloc(kPage), d.alloc(kPage), 4096, 30);

    // A batch: 40 writes behind one doorbell (the SQ wraps), then their reads.
    {
        constexpr unsigned kBatch = 40;
        const std::uint64_t src = d.alloc(kBatch * kPage), dst = d.alloc(kBatch * kPage);
        fill_pattern(d.host(src, kBatch * kPage), 41);
        for (int pass = 0; pass < 2; ++pass) {
            const std::uint32_t old = q1.tail;
            std::set<std::uint16_t> cids;
            for (unsigned i = 0; i < kBatch; ++i) {
                const std::uint64_t buf = (pass == 0 ? src : dst) + i * kPage;
                cids.insert(d.io_put(q1, io_cmd(pass == 0 ? IoOpcode::Write : IoOpcode::Read,
                                                20000 + i * 8, 8, buf)));
            }
            d.io_ring(q1, old);
            for (unsigned i = 0; i < kBatch; ++i) {
                const CqEntry e = d.io_wait(q1);
                CHECK(status_of(e) == StatusCode::Success);
                CHECK(cids.erase(e.cid) == 1);
            }
        }
        CHECK(guest_bytes(d, dst, kBatch * kPage) == guest_bytes(d, src, kBatch * kPage));
        CHECK(read_file(c.volume(0), 20000 * kLba, kBatch * kPage) ==
              guest_bytes(d, src, kBatch * kPage));
    }

    // The AER is still held: nothing happened that it reports.
    CHECK_FALSE(d.admin_try(aer).has_value());

    // Normal shutdown (CC.SHN = 01b): SHST reaches "complete" after the flush.
    d.wr32(reg::CC, d.rd32(reg::CC) | cc::SHN.put(cc::SHN_NORMAL));
    CHECK(csts::SHST.get(d.rd32(reg::CSTS)) == csts::SHST_COMPLETE);
}

TEST_CASE("card: two volumes are two controllers with their own identity") {
    Card c({"size=16M", "size=8M"});
    std::vector<std::string> serials, nqns;
    std::vector<std::uint64_t> sizes;
    for (unsigned i = 0; i < 2; ++i) {
        Vmm vm(c.socket(i));
        vm.attach();
        NvmeDriverMock& d = vm.driver();
        REQUIRE(d.enable());
        const std::uint64_t buf = d.alloc(kPage), nsbuf = d.alloc(kPage);
        REQUIRE(d.admin_status(identify_cmd(Cns::Controller, 0, buf)) == StatusCode::Success);
        REQUIRE(d.admin_status(identify_cmd(Cns::Namespace, 1, nsbuf)) == StatusCode::Success);
        const auto id = d.get<IdentifyController>(buf);
        serials.push_back(trimmed(id.sn, sizeof id.sn));
        nqns.emplace_back(id.subnqn, strnlen(id.subnqn, sizeof id.subnqn));
        sizes.push_back(d.get<IdentifyNamespace>(nsbuf).nsze * kLba);
        CHECK(is_volume_id(serials.back()));

        // Each controller writes its own file.
        IoQueue q;
        const auto [cq, sq] = d.create_queue(q, 1, 8, 1, true);
        REQUIRE(cq == StatusCode::Success);
        REQUIRE(sq == StatusCode::Success);
        const std::uint64_t data = d.alloc(kPage);
        fill_pattern(d.host(data, kPage), 50 + i);
        CHECK(d.io_status(q, io_cmd(IoOpcode::Write, 8, 8, data)) == StatusCode::Success);
        CHECK(read_file(c.volume(i), 8 * kLba, kPage) == pattern(kPage, 50 + i));
    }
    CHECK(serials[0] != serials[1]);
    CHECK(nqns[0] != nqns[1]);
    CHECK(sizes == std::vector<std::uint64_t>{16 * kMiB, 8 * kMiB});
}
