// The volume argument of the command line: PATH[,size=64M][,iops=N][,mbps=N][,ram].
//
//   size=N[K|M|G]      bytes (K, M, G are powers of 1024); a positive multiple of 512. Creates the
//                      file with this size when it is missing; required for a RAM volume.
//   iops=N|unlimited   I/O operations per second (default: gp3's 3000)
//   mbps=N|unlimited   MiB per second (default: gp3's 125)
//   ram                keep the volume in memory; PATH is then only its name
//   instance-store     an instance-store disk ("Amazon EC2 NVMe Instance Storage") rather than
//                      an EBS volume
//
// PATH may not contain a comma. The parser is a pure function (no file system access), so a
// fuzzer can call it directly.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "common/error.hpp"
#include "storage/rate_limiter.hpp"

namespace nitro_card::storage {

struct VolumeSpec {
    std::string path;
    std::optional<std::uint64_t> size_bytes{};
    Limits limits = Limits::gp3();
    bool ram = false;
    bool instance_store = false;
    bool operator==(const VolumeSpec&) const = default;
};

// Errors quote the whole spec and name the field at fault:
// "volume spec '/tmp/a.img,size=12Q': bad size '12Q'".
[[nodiscard]] common::Result<VolumeSpec> parse_volume_spec(std::string_view spec);

// A byte count with an optional K, M or G suffix; nullopt when malformed or overflowing.
[[nodiscard]] std::optional<std::uint64_t> parse_size(std::string_view text) noexcept;

}  // namespace nitro_card::storage
