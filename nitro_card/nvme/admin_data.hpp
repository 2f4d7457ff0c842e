// The data the admin commands return: Identify structures and log pages, built from the
// controller's identity and counters. Pure functions, so tests check the bytes Linux reads.
#pragma once

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "nvme/controller_info.hpp"
#include "nvme/identify.hpp"

namespace nitro_card::nvme {

// Limits the controller advertises and enforces.
inline constexpr std::uint8_t kAbortLimit = 3;        // ACL, 0-based
inline constexpr std::uint8_t kAsyncEventLimit = 3;   // AERL, 0-based: 4 requests held at most
inline constexpr std::uint8_t kErrorLogEntries = 0;   // ELPE, 0-based
inline constexpr std::uint16_t kTemperatureK = 310;   // what SMART reports (37 °C)
inline constexpr std::uint16_t kWarningTempK = 343;   // WCTEMP (70 °C)
inline constexpr std::uint16_t kCriticalTempK = 353;  // CCTEMP (80 °C)
inline constexpr std::uint32_t kNamespaceId = 1;      // the only namespace (NN = 1)
inline constexpr std::uint32_t kVersion = version(1, 4, 0);

using Page = std::array<std::byte, 4096>;

// A 128-bit id for the volume, derived from the serial: the namespace's NGUID and the UUID in
// the default SUBNQN. Stable for a serial, distinct for distinct serials (FNV-1a, two seeds),
// with the RFC 9562 version 8 and variant bits set so it also reads as a valid UUID.
[[nodiscard]] std::array<std::uint8_t, 16> volume_guid(std::string_view serial);
// "nqn.2014-08.org.nvmexpress:uuid:<uuid>" (NVMe 2.0 §4.5, UUID-based NQN).
[[nodiscard]] std::string uuid_nqn(const std::array<std::uint8_t, 16>& guid);

// Identify CNS 01h (§5.17.2.1). Only the fields below are non-zero; the rest advertise nothing
// (no AER notices, no APST, no keep-alive, no SGLs, no per-namespace SMART):
// VID/SSVID, SN/MN/FR, CNTLID, VER 1.4, MDTS, CNTRLTYPE I/O, OACS Doorbell Buffer Config,
// ACL/AERL, FRMW (slot 1 read-only), ELPE, WCTEMP/CCTEMP, SQES/CQES, NN 1, ONCS DSM and Write
// Zeroes, VWC present, SUBNQN, one power state, and the device name in the vendor area.
[[nodiscard]] IdentifyController identify_controller(const ControllerInfo& info);
// Identify CNS 00h for namespace 1: the whole volume, one LBA format, deallocated blocks read
// back as zeroes (DLFEAT 001b), and the NGUID.
[[nodiscard]] IdentifyNamespace identify_namespace(const ControllerInfo& info);
// Identify CNS 02h: active NSIDs greater than `after`, ascending, zero terminated.
[[nodiscard]] Page active_namespace_list(std::uint32_t after);
// Identify CNS 03h for namespace 1: one NGUID descriptor (Linux requires CNS 3 to succeed for
// VS >= 1.3; the id must match Identify Namespace's NGUID).
[[nodiscard]] Page namespace_descriptors(const ControllerInfo& info);

// Log pages (§5.16.1). The error log has no entries, so it reads as zeros.
inline constexpr std::size_t kErrorLogBytes = sizeof(ErrorLogEntry) * (kErrorLogEntries + 1u);
[[nodiscard]] SmartLog smart_log(const ControllerStats& stats, std::chrono::seconds powered_on);
[[nodiscard]] FirmwareSlotLog firmware_slot_log(const ControllerInfo& info);

}  // namespace nitro_card::nvme
