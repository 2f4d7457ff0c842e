#include "nvme/admin_data.hpp"

#include <algorithm>
#include <cstring>

#include <fmt/format.h>

namespace nitro_card::nvme {

namespace {

std::uint64_t fnv1a(std::string_view text, std::uint64_t seed) {
    std::uint64_t h = seed;
    for (unsigned char c : text) h = (h ^ c) * 0x100000001b3ull;
    return h;
}

// Little-endian 128-bit counter fields of the SMART log.
void put_u128(std::uint8_t (&field)[16], std::uint64_t v) {
    std::memset(field, 0, sizeof field);
    std::memcpy(field, &v, sizeof v);
}

void put_le16(std::uint8_t (&field)[2], std::uint16_t v) {
    std::memcpy(field, &v, sizeof v);
}

// Thousands of 512-byte units, rounded up (§5.16.1.3, Data Units Read/Written).
std::uint64_t data_units(std::uint64_t bytes) {
    const std::uint64_t units = bytes / 512 + (bytes % 512 != 0);
    return units / 1000 + (units % 1000 != 0);
}

}  // namespace

std::array<std::uint8_t, 16> volume_guid(std::string_view serial) {
    const std::uint64_t a = fnv1a(serial, 0xcbf29ce484222325ull);
    const std::uint64_t b = fnv1a(serial, 0x6c62272e07bb0142ull);
    std::array<std::uint8_t, 16> g{};
    std::memcpy(g.data(), &a, 8);
    std::memcpy(g.data() + 8, &b, 8);
    g[6] = static_cast<std::uint8_t>((g[6] & 0x0f) | 0x80);  // version 8
    g[8] = static_cast<std::uint8_t>((g[8] & 0x3f) | 0x80);  // variant 10b
    return g;
}

std::string uuid_nqn(const std::array<std::uint8_t, 16>& g) {
    std::string hex;
    for (std::size_t i = 0; i < g.size(); ++i) {
        if (i == 4 || i == 6 || i == 8 || i == 10) hex += '-';
        hex += fmt::format("{:02x}", g[i]);
    }
    return "nqn.2014-08.org.nvmexpress:uuid:" + hex;
}

IdentifyController identify_controller(const ControllerInfo& info) {
    IdentifyController id{};
    id.vid = info.vendor_id;
    id.ssvid = info.subsystem_vendor_id;
    put_ascii(id.sn, info.serial);
    put_ascii(id.mn, info.model);
    put_ascii(id.fr, info.firmware);
    id.rab = 6;  // 64 commands
    id.mdts = info.mdts;
    id.cntlid = info.cntlid;
    id.ver = kVersion;
    id.cntrltype = 1;  // I/O controller (NVMe 1.4)
    id.oacs = OACS_DBBUF;
    id.acl = kAbortLimit;
    id.aerl = kAsyncEventLimit;
    id.frmw = 0x03;  // one slot (bits 3:1 = 1), slot 1 read-only (bit 0)
    id.elpe = kErrorLogEntries;
    id.wctemp = kWarningTempK;
    id.cctemp = kCriticalTempK;
    id.sqes = SQES_NVM;
    id.cqes = CQES_NVM;
    id.nn = kNamespaceId;
    id.oncs = ONCS_DSM | ONCS_WRITE_ZEROES;
    id.vwc = VWC_PRESENT | VWC_NO_FLUSH_BROADCAST;
    // NUL terminated: the controller checked at creation that it fits with its terminator.
    std::memcpy(id.subnqn, info.subnqn.data(), std::min(info.subnqn.size(), sizeof id.subnqn - 1));
    id.psd[0].mp = 2500;  // 25 W, the only power state (NPSS = 0)
    if (!info.device_name.empty()) {
        // EBS puts the block device name the instance asked for ("sdf") at the start of the
        // vendor-specific area, space padded; tools such as ebsnvme-id read it from there.
        put_ascii(std::span<char>(reinterpret_cast<char*>(id.vs), 32), info.device_name);
    }
    return id;
}

IdentifyNamespace identify_namespace(const ControllerInfo& info) {
    IdentifyNamespace ns{};
    ns.nsze = info.ns.blocks;
    ns.ncap = info.ns.blocks;
    ns.nuse = info.ns.blocks;
    ns.nlbaf = 0;
    ns.flbas = 0;
    ns.dlfeat = 0x01;  // deallocated blocks read as zeroes (both backends zero a discard)
    ns.lbaf[0] = LbaFormat{0, info.ns.lba_shift, 0};
    std::memcpy(ns.nguid, info.nguid.data(), sizeof ns.nguid);
    return ns;
}

Page active_namespace_list(std::uint32_t after) {
    Page p{};
    if (after < kNamespaceId) std::memcpy(p.data(), &kNamespaceId, sizeof kNamespaceId);
    return p;
}

Page namespace_descriptors(const ControllerInfo& info) {
    Page p{};
    const NamespaceIdDescriptor d{NIDT_NGUID, NIDL_NGUID, {0, 0}};
    std::memcpy(p.data(), &d, sizeof d);
    std::memcpy(p.data() + sizeof d, info.nguid.data(), NIDL_NGUID);
    return p;
}

SmartLog smart_log(const ControllerStats& stats, std::chrono::seconds powered_on) {
    SmartLog s{};
    put_le16(s.temperature, kTemperatureK);
    s.avail_spare = 100;
    s.spare_thresh = 10;
    put_u128(s.data_units_read, data_units(stats.bytes_read));
    put_u128(s.data_units_written, data_units(stats.bytes_written));
    put_u128(s.host_read_commands, stats.read_commands);
    put_u128(s.host_write_commands, stats.write_commands);
    put_u128(s.power_cycles, 1);
    put_u128(s.power_on_hours, static_cast<std::uint64_t>(powered_on.count() / 3600));
    s.temp_sensor[0] = kTemperatureK;
    return s;
}

FirmwareSlotLog firmware_slot_log(const ControllerInfo& info) {
    FirmwareSlotLog f{};
    f.afi = 1;  // running from slot 1
    put_ascii(f.frs[0], info.firmware);
    return f;
}

}  // namespace nitro_card::nvme
