// Data structures the controller returns to the host: Identify Controller, Identify Namespace,
// namespace identification descriptors, the log pages a controller answers, and the Dataset
// Management range it reads. Layouts follow the NVMe 2.0 base and NVM command set specs; the
// fields Linux 6.1 reads are named and commented, the rest are reserved bytes.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <type_traits>

namespace nitro_card::nvme {

// Power State Descriptor (§5.17.2.1): 32 of them from Identify Controller byte 2048.
struct PowerStateDescriptor {
    std::uint16_t mp;  // maximum power, centiwatts
    std::uint8_t rsvd2;
    std::uint8_t flags;   // MXPS bit 0, NOPS bit 1
    std::uint32_t enlat;  // entry latency, microseconds
    std::uint32_t exlat;  // exit latency, microseconds
    std::uint8_t rrt, rrl, rwt, rwl;
    std::uint16_t idlp;
    std::uint8_t ips;
    std::uint8_t rsvd19;
    std::uint16_t actp;
    std::uint8_t apw_aps;
    std::uint8_t rsvd23[9];
};
static_assert(sizeof(PowerStateDescriptor) == 32);

// Identify Controller data structure (§5.17.2.1, CNS 01h).
struct IdentifyController {
    std::uint16_t vid;    // PCI vendor ID
    std::uint16_t ssvid;  // PCI subsystem vendor ID
    char sn[20];          // serial number, ASCII, space padded
    char mn[40];          // model number, ASCII, space padded
    char fr[8];           // firmware revision, ASCII, space padded
    std::uint8_t rab;
    std::uint8_t ieee[3];
    std::uint8_t cmic;  // multipath and sharing: bit 1 for controllers sharing a subsystem
    std::uint8_t mdts;  // max transfer 2^MDTS * CAP.MPSMIN pages; 0 = unlimited
    std::uint16_t cntlid;
    std::uint32_t ver;
    std::uint32_t rtd3r;
    std::uint32_t rtd3e;
    std::uint32_t oaes;    // async events supported; 0 makes Linux send no AER
    std::uint32_t ctratt;  // 0: no ELBAS, no 128-bit host ID
    std::uint8_t rsvd100[11];
    std::uint8_t cntrltype;
    std::uint8_t fguid[16];
    std::uint16_t crdt1, crdt2, crdt3;  // 0: no command retry delay
    std::uint8_t rsvd134[122];
    std::uint16_t oacs;  // optional admin commands; OACS_DBBUF
    std::uint8_t acl;    // abort command limit, 0-based
    std::uint8_t aerl;   // async event request limit, 0-based
    std::uint8_t frmw;
    std::uint8_t lpa;   // log page attributes; 0 keeps Linux from asking for effects
    std::uint8_t elpe;  // error log page entries, 0-based
    std::uint8_t npss;  // number of power states, 0-based
    std::uint8_t avscc;
    std::uint8_t apsta;  // 0: no autonomous power state transitions
    std::uint16_t wctemp, cctemp;
    std::uint16_t mtfa;
    std::uint32_t hmpre;  // 0: no host memory buffer
    std::uint32_t hmmin;
    std::uint8_t tnvmcap[16];
    std::uint8_t unvmcap[16];
    std::uint32_t rpmbs;
    std::uint16_t edstt;
    std::uint8_t dsto;
    std::uint8_t fwug;
    std::uint16_t kas;  // keep alive support; 0 keeps Linux from sending Keep Alive
    std::uint16_t hctma;
    std::uint16_t mntmt, mxtmt;
    std::uint32_t sanicap;
    std::uint32_t hmminds;
    std::uint16_t hmmaxd;
    std::uint8_t rsvd338[4];
    std::uint8_t anatt;
    std::uint8_t anacap;
    std::uint32_t anagrpmax;
    std::uint32_t nanagrpid;
    std::uint8_t rsvd352[160];
    std::uint8_t sqes;  // required/maximum SQ entry size, log2: 0x66
    std::uint8_t cqes;  // required/maximum CQ entry size, log2: 0x44
    std::uint16_t maxcmd;
    std::uint32_t nn;    // number of namespaces (highest valid NSID)
    std::uint16_t oncs;  // optional NVM commands: ONCS_*
    std::uint16_t fuses;
    std::uint8_t fna;
    std::uint8_t vwc;  // volatile write cache: VWC_*
    std::uint16_t awun, awupf;
    std::uint8_t nvscc;
    std::uint8_t nwpc;
    std::uint16_t acwu;
    std::uint8_t rsvd534[2];
    std::uint32_t sgls;  // 0: no SGLs, so Linux uses PRPs only
    std::uint32_t mnan;
    std::uint8_t rsvd544[224];
    char subnqn[256];  // NVM subsystem NQN, NUL terminated; must be unique per subsystem
    std::uint8_t rsvd1024[768];
    std::uint8_t fabrics[256];  // NVMe over Fabrics only
    PowerStateDescriptor psd[32];
    std::uint8_t vs[1024];
};
static_assert(std::is_trivially_copyable_v<IdentifyController>);
static_assert(sizeof(IdentifyController) == 4096);
static_assert(offsetof(IdentifyController, sn) == 4 && offsetof(IdentifyController, mn) == 24);
static_assert(offsetof(IdentifyController, fr) == 64 && offsetof(IdentifyController, mdts) == 77);
static_assert(offsetof(IdentifyController, cntlid) == 78 &&
              offsetof(IdentifyController, ver) == 80);
static_assert(offsetof(IdentifyController, oaes) == 92 &&
              offsetof(IdentifyController, ctratt) == 96);
static_assert(offsetof(IdentifyController, crdt1) == 128 &&
              offsetof(IdentifyController, oacs) == 256);
static_assert(offsetof(IdentifyController, lpa) == 261 &&
              offsetof(IdentifyController, npss) == 263);
static_assert(offsetof(IdentifyController, apsta) == 265 &&
              offsetof(IdentifyController, hmpre) == 272);
static_assert(offsetof(IdentifyController, kas) == 320 &&
              offsetof(IdentifyController, sqes) == 512);
static_assert(offsetof(IdentifyController, nn) == 516 && offsetof(IdentifyController, oncs) == 520);
static_assert(offsetof(IdentifyController, vwc) == 525 &&
              offsetof(IdentifyController, sgls) == 536);
static_assert(offsetof(IdentifyController, subnqn) == 768 &&
              offsetof(IdentifyController, psd) == 2048);
static_assert(offsetof(IdentifyController, vs) == 3072);

// Identify Controller bit values.
inline constexpr std::uint8_t CMIC_MULTI_CONTROLLER = 1u << 1;
inline constexpr std::uint16_t OACS_DBBUF = 1u << 8;  // Doorbell Buffer Config supported
inline constexpr std::uint16_t ONCS_COMPARE = 1u << 0;
inline constexpr std::uint16_t ONCS_DSM = 1u << 2;  // Dataset Management (discard)
inline constexpr std::uint16_t ONCS_WRITE_ZEROES = 1u << 3;
inline constexpr std::uint16_t ONCS_SAVE_SELECT = 1u << 4;
inline constexpr std::uint16_t ONCS_TIMESTAMP = 1u << 6;
inline constexpr std::uint8_t VWC_PRESENT = 1u << 0;
// VWC bits 2:1 = 10b: Flush with NSID FFFFFFFFh is not supported (NVMe 1.4 and later).
inline constexpr std::uint8_t VWC_NO_FLUSH_BROADCAST = 2u << 1;
inline constexpr std::uint8_t SQES_NVM = 0x66;
inline constexpr std::uint8_t CQES_NVM = 0x44;

// LBA Format (NVM command set spec §4.1.5.1).
struct LbaFormat {
    std::uint16_t ms;    // metadata bytes per LBA
    std::uint8_t lbads;  // LBA data size, log2 (9 = 512 B, 12 = 4 KiB)
    std::uint8_t rp;     // relative performance, bits 1:0
};
static_assert(sizeof(LbaFormat) == 4);

// Identify Namespace data structure for the NVM command set (CNS 00h).
struct IdentifyNamespace {
    std::uint64_t nsze;  // size in LBAs
    std::uint64_t ncap;  // capacity in LBAs; Linux ignores a namespace with ncap 0
    std::uint64_t nuse;
    std::uint8_t nsfeat;
    std::uint8_t nlbaf;  // number of LBA formats, 0-based
    std::uint8_t flbas;  // bits 3:0 pick lbaf[]
    std::uint8_t mc;
    std::uint8_t dpc;
    std::uint8_t dps;  // 0: no end-to-end protection
    std::uint8_t nmic;
    std::uint8_t rescap;
    std::uint8_t fpi;
    std::uint8_t dlfeat;  // deallocate behaviour: bits 2:0 = 001b reads back zeroes
    std::uint16_t nawun, nawupf, nacwu, nabsn, nabo, nabspf, noiob;
    std::uint8_t nvmcap[16];
    std::uint16_t npwg, npwa, npdg, npda, nows;
    std::uint8_t rsvd74[18];
    std::uint32_t anagrpid;
    std::uint8_t rsvd96[3];
    std::uint8_t nsattr;  // bit 0: write protected
    std::uint16_t nvmsetid;
    std::uint16_t endgid;
    std::uint8_t nguid[16];  // globally unique; Linux drops duplicates
    std::uint8_t eui64[8];
    LbaFormat lbaf[64];
    std::uint8_t vs[3712];
};
static_assert(std::is_trivially_copyable_v<IdentifyNamespace>);
static_assert(sizeof(IdentifyNamespace) == 4096);
static_assert(offsetof(IdentifyNamespace, nsfeat) == 24 &&
              offsetof(IdentifyNamespace, flbas) == 26);
static_assert(offsetof(IdentifyNamespace, dlfeat) == 33 &&
              offsetof(IdentifyNamespace, noiob) == 46);
static_assert(offsetof(IdentifyNamespace, npwg) == 64 &&
              offsetof(IdentifyNamespace, anagrpid) == 92);
static_assert(offsetof(IdentifyNamespace, nsattr) == 99 &&
              offsetof(IdentifyNamespace, nguid) == 104);
static_assert(offsetof(IdentifyNamespace, eui64) == 120 &&
              offsetof(IdentifyNamespace, lbaf) == 128);
static_assert(offsetof(IdentifyNamespace, vs) == 384);

// Namespace Identification Descriptor header (§5.17.2.3, CNS 03h); NIDL bytes of ID follow.
// The list is 4096 bytes and ends at the first descriptor with NIDT 0.
struct NamespaceIdDescriptor {
    std::uint8_t nidt;
    std::uint8_t nidl;
    std::uint8_t rsvd[2];
};
static_assert(sizeof(NamespaceIdDescriptor) == 4);
inline constexpr std::uint8_t NIDT_EUI64 = 1, NIDT_NGUID = 2, NIDT_UUID = 3, NIDT_CSI = 4;
inline constexpr std::uint8_t NIDL_EUI64 = 8, NIDL_NGUID = 16, NIDL_UUID = 16, NIDL_CSI = 1;

// Error Information log entry (§5.16.1.2, LID 01h).
struct ErrorLogEntry {
    std::uint64_t error_count;  // unique, increasing; 0 marks an unused entry
    std::uint16_t sqid;
    std::uint16_t cid;
    std::uint16_t status;  // status_field() of the failed command
    std::uint16_t parameter_error_location;
    std::uint64_t lba;
    std::uint32_t nsid;
    std::uint8_t vs;
    std::uint8_t trtype;
    std::uint8_t rsvd30[2];
    std::uint64_t cs;
    std::uint16_t trtype_specific;
    std::uint8_t rsvd42[22];
};
static_assert(sizeof(ErrorLogEntry) == 64 && offsetof(ErrorLogEntry, lba) == 16);
static_assert(offsetof(ErrorLogEntry, cs) == 32);

// SMART / Health Information log (§5.16.1.3, LID 02h). The 128-bit counters are little endian
// byte arrays; temperature sits unaligned at byte 1.
struct SmartLog {
    std::uint8_t critical_warning;
    std::uint8_t temperature[2];  // kelvin
    std::uint8_t avail_spare;
    std::uint8_t spare_thresh;
    std::uint8_t percent_used;
    std::uint8_t endurance_group_critical_warning;
    std::uint8_t rsvd7[25];
    std::uint8_t data_units_read[16];  // thousands of 512-byte units
    std::uint8_t data_units_written[16];
    std::uint8_t host_read_commands[16];
    std::uint8_t host_write_commands[16];
    std::uint8_t controller_busy_time[16];
    std::uint8_t power_cycles[16];
    std::uint8_t power_on_hours[16];
    std::uint8_t unsafe_shutdowns[16];
    std::uint8_t media_errors[16];
    std::uint8_t error_log_entries[16];
    std::uint32_t warning_temp_time;
    std::uint32_t critical_temp_time;
    std::uint16_t temp_sensor[8];
    std::uint32_t thermal_transition_count[2];
    std::uint32_t thermal_total_time[2];
    std::uint8_t rsvd232[280];
};
static_assert(sizeof(SmartLog) == 512 && offsetof(SmartLog, data_units_read) == 32);
static_assert(offsetof(SmartLog, warning_temp_time) == 192 && offsetof(SmartLog, rsvd232) == 232);

// Firmware Slot Information log (§5.16.1.4, LID 03h).
struct FirmwareSlotLog {
    std::uint8_t afi;  // active firmware info: bits 2:0 active slot
    std::uint8_t rsvd1[7];
    char frs[7][8];  // revision per slot, ASCII
    std::uint8_t rsvd64[448];
};
static_assert(sizeof(FirmwareSlotLog) == 512 && offsetof(FirmwareSlotLog, frs) == 8);

// Dataset Management range (NVM command set spec §3.2.3), read from the command's data buffer.
struct DsmRange {
    std::uint32_t cattr;  // context attributes
    std::uint32_t nlb;    // number of logical blocks, 1-based
    std::uint64_t slba;
};
static_assert(sizeof(DsmRange) == 16 && offsetof(DsmRange, slba) == 8);
inline constexpr std::size_t kMaxDsmRanges = 256;

// Fills an Identify string field: ASCII left justified and space padded (SN, MN, FR). Text that
// does not fit is cut.
inline void put_ascii(std::span<char> field, std::string_view text) {
    std::fill(field.begin(), field.end(), ' ');
    std::copy_n(text.begin(), std::min(text.size(), field.size()), field.begin());
}

}  // namespace nitro_card::nvme
