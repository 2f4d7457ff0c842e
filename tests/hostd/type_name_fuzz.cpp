// Fuzzes what hostd parses from clients and files before protobuf sees it: instance-type names
// (a valid name must format back to itself) and the catalog's JSON array splitter (every entry
// it returns is non-empty and starts on a line of the input).
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "catalog/json_split.hpp"
#include "catalog/type_name.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    std::string_view text(reinterpret_cast<const char*>(data), size);
    if (auto n = hostd::catalog::parse_type_name(text); n) {
        if (n->format() != text) __builtin_trap();
        (void)n->size_vcpus();
    }
    if (auto elems = hostd::catalog::split_json_array(text); elems) {
        auto lines = 1 + std::count(text.begin(), text.end(), '\n');
        for (const auto& e : *elems)
            if (e.text.empty() || e.line < 1 || e.line > lines) __builtin_trap();
    }
    return 0;
}
