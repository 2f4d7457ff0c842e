// Splitting a catalog file (a JSON array) into its entries, each with its line, so a
// protobuf JSON error can be reported with file and line. Pure; fuzzed (type_name_fuzz).
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "common/error.hpp"

namespace hostd::catalog {

// One element of a top-level JSON array: its text and the line it starts on (1-based).
struct JsonElement {
    std::string text;
    int line = 0;
};
// Splits a JSON array into its elements without interpreting them (strings and nesting aware).
[[nodiscard]] common::Result<std::vector<JsonElement>> split_json_array(std::string_view text);

}  // namespace hostd::catalog
