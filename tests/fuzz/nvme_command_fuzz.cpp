// libFuzzer target for the NVMe command decoder and PRP walker.
//
// Input: a 64-byte submission queue entry, one control byte, then an image of guest RAM. The
// image backs two regions with a hole between them, so PRP lists in it can point at mapped
// pages, at the hole, or anywhere else. Every decoded command with a data pointer is walked as
// the controller would walk it, and the raw PRP1/PRP2 are walked with a length taken from the
// entry. Results are checked against the contracts in the headers; a violation traps.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <variant>
#include <vector>

#include "nvme/command.hpp"
#include "nvme/prp.hpp"
#include "nvme/queue.hpp"
#include "nvme/spec.hpp"

namespace {

using namespace nitro_card::nvme;
using common::GuestAddr;

void check(bool ok) {
    if (!ok) __builtin_trap();
}

// Region A: gpa [0, 32 KiB) -> image [0, 32 KiB); hole: gpa [32 KiB, 48 KiB);
// region B: gpa [48 KiB, 80 KiB) -> image [32 KiB, 64 KiB).
class ImageRam final : public Translator {
public:
    static constexpr std::uint64_t kSize = 64 * 1024;
    static constexpr std::uint64_t kHalf = kSize / 2;
    static constexpr std::uint64_t kBGpa = 48 * 1024;

    explicit ImageRam(std::span<const std::uint8_t> image) : ram_(kSize) {
        std::memcpy(ram_.data(), image.data(), std::min<std::size_t>(image.size(), kSize));
    }

    common::Result<std::span<std::byte>> slice(GuestAddr gpa, std::uint64_t len) const override {
        const std::uint64_t a = gpa.value();
        if (a < kHalf && len <= kHalf - a) return std::span<std::byte>(ram_.data() + a, len);
        if (a >= kBGpa && a - kBGpa < kHalf && len <= kHalf - (a - kBGpa))
            return std::span<std::byte>(ram_.data() + kHalf + (a - kBGpa), len);
        return common::fail(common::Error::out_of_range("unmapped"));
    }

    [[nodiscard]] bool owns(std::span<const std::byte> s) const {
        const auto base = reinterpret_cast<std::uintptr_t>(ram_.data());
        const auto p = reinterpret_cast<std::uintptr_t>(s.data());
        return p >= base && p - base <= kSize && s.size() <= kSize - (p - base);
    }

private:
    mutable std::vector<std::byte> ram_;
};

// Walks and checks the walk's contract: on success the segments cover exactly `length` bytes,
// each is a view the translator itself would hand out, and none is empty.
void walk(std::uint64_t prp1, std::uint64_t prp2, std::uint64_t length, const PrpLimits& limits,
          const ImageRam& ram) {
    auto segments = map_prps(prp1, prp2, length, limits, ram);
    if (!segments) {
        check(to_status(segments.error()) != StatusCode::Success);
        check(!describe(segments.error()).empty());
        check(length != 0);  // an empty transfer cannot fail with sane limits
        return;
    }
    std::uint64_t sum = 0;
    for (const auto& s : *segments) {
        check(!s.host.empty());
        check(ram.owns(s.host));
        auto again = ram.slice(s.gpa, s.host.size());
        check(again.has_value() && again->data() == s.host.data());
        sum += s.host.size();
    }
    check(sum == length);
    check(length <= limits.max_transfer);
}

void check_admin(const AdminCommand& cmd, const AdminLimits& l, const ImageRam& ram) {
    const PrpLimits pl{l.page_size, l.max_transfer};
    if (const auto* id = std::get_if<Identify>(&cmd))
        walk(id->dptr.prp1, id->dptr.prp2, 4096, pl, ram);
    if (const auto* g = std::get_if<GetLogPage>(&cmd)) {
        check(g->bytes() <= l.max_transfer && g->offset % 4 == 0);
        walk(g->dptr.prp1, g->dptr.prp2, g->bytes(), pl, ram);
    }
    if (const auto* c = std::get_if<CreateIoCq>(&cmd)) {
        check(c->qid >= 1 && c->qid <= l.max_io_qid);
        check(c->entries >= 2 && c->entries <= l.max_queue_entries);
        check(!c->interrupts_enabled || c->vector < l.interrupt_vectors);
        check(c->base % l.page_size == 0);
    }
    if (const auto* s = std::get_if<CreateIoSq>(&cmd)) {
        check(s->qid >= 1 && s->qid <= l.max_io_qid);
        check(s->cqid >= 1 && s->cqid <= l.max_io_qid);
        check(s->entries >= 2 && s->entries <= l.max_queue_entries);
        check(s->base % l.page_size == 0);
    }
    if (const auto* d = std::get_if<DoorbellBufferConfig>(&cmd))
        check(d->shadow % l.page_size == 0 && d->eventidx % l.page_size == 0);
}

void check_io(const IoCommand& cmd, const IoLimits& l, const ImageRam& ram, std::uint64_t page) {
    const PrpLimits pl{page, l.max_transfer};
    if (const auto* rw = std::get_if<ReadWrite>(&cmd)) {
        const auto& ns = l.namespaces[rw->nsid - 1];
        check(lba_range_valid(rw->slba, rw->blocks, ns.blocks));
        check(rw->bytes == std::uint64_t{rw->blocks} << ns.lba_shift &&
              rw->bytes <= l.max_transfer);
        walk(rw->dptr.prp1, rw->dptr.prp2, rw->bytes, pl, ram);
    }
    if (const auto* wz = std::get_if<WriteZeroes>(&cmd))
        check(lba_range_valid(wz->slba, wz->blocks, l.namespaces[wz->nsid - 1].blocks));
    if (const auto* d = std::get_if<DatasetManagement>(&cmd)) {
        check(d->ranges >= 1 && d->ranges <= 256);
        walk(d->dptr.prp1, d->dptr.prp2, d->bytes(), pl, ram);
    }
}

// The queue helpers must keep every result inside the queue for in-range inputs.
void check_queue_math(const SqEntry& e) {
    const std::uint32_t size = (e.cdw13 & 0xffff) % 1024 + 2;
    const std::uint32_t head = e.cdw14 % size, tail = e.cdw15 % size;
    check(sq_entries_available(head, tail, size) < size);
    check(cq_free_slots(head, tail, size) < size);
    check(next_index(tail, size) < size);
    if (cq_head_valid(e.cdw13 >> 16, head, tail, size)) check((e.cdw13 >> 16) < size);
    const auto o = static_cast<std::uint16_t>(e.cdw14), n = static_cast<std::uint16_t>(e.cdw15);
    const auto ev = static_cast<std::uint16_t>(e.cdw13);
    check(need_event(ev, n, o) ==
          (static_cast<std::uint16_t>(ev - o) < static_cast<std::uint16_t>(n - o)));
    if (auto db = decode_doorbell(e.mptr, e.cdw2 & 0xf, 64)) {
        check(db->qid <= 64);
        check(shadow_slot_offset(*db, e.cdw2 & 0xf) == e.mptr - reg::DOORBELL_BASE);
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size < sizeof(SqEntry) + 1) return 0;
    SqEntry e;
    std::memcpy(&e, data, sizeof e);
    const std::uint8_t control = data[sizeof e];
    const ImageRam ram(std::span(data + sizeof e + 1, size - sizeof e - 1));

    static constexpr std::uint64_t kPages[] = {4096, 8192, 16384, 65536};
    const std::uint64_t page = kPages[control & 0x3];
    const std::uint64_t max_transfer = (control & 0x4) ? 512 * 1024 : 128 * 1024;

    AdminLimits al;
    al.page_size = page;
    al.max_queue_entries = (control & 0x8) ? 1024 : 64;
    al.max_io_qid = 8;
    al.interrupt_vectors = 9;
    al.max_transfer = max_transfer;
    if (auto cmd = decode_admin(e, al))
        check_admin(*cmd, al, ram);
    else
        check(cmd.error() != StatusCode::Success);

    const NamespaceGeometry namespaces[] = {{std::uint64_t{1} << 20, 9},
                                            {(std::uint64_t{1} << 40) + 3, 12}};
    const IoLimits il{namespaces, max_transfer};
    if (auto cmd = decode_io(e, il))
        check_io(*cmd, il, ram, page);
    else
        check(cmd.error() != StatusCode::Success);

    // The raw pointers with a length from the entry, including lengths over the limit.
    const std::uint64_t length = (control & 0x80) ? e.cdw12 : e.cdw12 & 0xfffff;
    walk(e.prp1, e.prp2, length, PrpLimits{page, max_transfer}, ram);

    check_queue_math(e);
    return 0;
}
