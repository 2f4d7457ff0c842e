// Small helpers the instance manager's files share (manager.cpp, supervision.cpp).
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

namespace hostd::instances::detail {

// Wall-clock milliseconds since the epoch (the API's timestamps).
std::int64_t now_ms();
// The whole file, or "" when it cannot be read.
std::string slurp(const std::filesystem::path& p);
// Writes through a temporary file and a rename, so readers never see half a record.
bool write_atomic(const std::filesystem::path& p, const std::string& text);

}  // namespace hostd::instances::detail
