// Parsing of nitrovm's own option values (sizes, guest arguments). Pure, unit-tested.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/error.hpp"

namespace hypervisor::cli {

// "256", "256M", "256MiB", "1G", "1GiB", "65536K": a size; a bare number means MiB.
[[nodiscard]] common::Result<std::uint64_t> parse_size(const std::string& text);

// Joins guest arguments into kernel command-line words; an argument with spaces is quoted
// (the kernel strips the quotes). Arguments holding a double quote or a newline are refused.
[[nodiscard]] common::Result<std::string> join_guest_args(const std::vector<std::string>& args);

}  // namespace hypervisor::cli
