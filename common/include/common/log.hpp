// Logging set-up for every process: spdlog's default logger on stderr, level from a name.
#pragma once

#include <string_view>

#include "common/error.hpp"

namespace common {

// level: trace, debug, info, warn, error, off. The process name prefixes each line.
Status setup_logging(std::string_view process_name, std::string_view level);

}  // namespace common
