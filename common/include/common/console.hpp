// What nitrovm and hostd agree on about the guest console's output file.
#pragma once

#include <string_view>

namespace common {

// The first line of a console file that nitrovm trimmed to its --console-limit; the limit, the
// bytes dropped and "]\n" follow.
inline constexpr std::string_view kConsoleTrimmedPrefix = "[nitrovm: console output over ";

}  // namespace common
