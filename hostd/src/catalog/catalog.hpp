// The instance-type catalog: JSON files (configs/instance-types/*.json, each an array of
// nitrohost.v1.InstanceType in protobuf's JSON mapping) loaded, validated and indexed.
//
// Memory scale factor: this machine cannot give an m5.large its 8 GiB per guest, so every type's
// guest RAM is its published memory divided by `memory_scale` (default 32: m5.large 256 MiB,
// t3.micro 32 MiB), rounded up to a MiB and at least kMinGuestMemoryMib. vCPU counts are not scaled.
#pragma once

#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "catalog/json_split.hpp"
#include "common/error.hpp"
#include "nitrohost/v1/host.pb.h"

namespace hostd::catalog {

inline constexpr std::uint32_t kMinGuestMemoryMib = 32;

class Catalog final {
public:
    // Loads every *.json in `dir` (sorted by name). An error names the file, the line of the entry
    // and the field: "compute.json:12: entry 3 (c5.large): vcpus: must be at least 1".
    [[nodiscard]] static common::Result<Catalog> load_dir(const std::filesystem::path& dir, double memory_scale);
    // The same for given texts (name, contents): what the unit tests use.
    [[nodiscard]] static common::Result<Catalog> load_texts(
        const std::vector<std::pair<std::string, std::string>>& files, double memory_scale);

    // The type, or an explanation: "m9q.large: unknown family 'm9q': ...", "m5.nano: family m5 has no
    // size 'nano' (it has large, xlarge, 24xlarge, metal)".
    [[nodiscard]] common::Result<const nitrohost::v1::InstanceType*> lookup(std::string_view name) const;
    [[nodiscard]] std::vector<nitrohost::v1::InstanceType> filter(
        const nitrohost::v1::DescribeInstanceTypesRequest& req) const;
    [[nodiscard]] const std::vector<nitrohost::v1::InstanceType>& types() const { return types_; }
    [[nodiscard]] double memory_scale() const { return memory_scale_; }

private:
    std::vector<nitrohost::v1::InstanceType> types_;
    double memory_scale_ = 32;
};

}  // namespace hostd::catalog
