#include <algorithm>
#include <fmt/format.h>

#include "catalog/json_split.hpp"

namespace hostd::catalog {

namespace {

using common::Error;
using common::fail;

int line_of(std::string_view text, std::size_t pos) {
    pos = std::min(pos, text.size());
    return 1 + static_cast<int>(std::count(text.begin(), text.begin() + static_cast<std::ptrdiff_t>(pos), '\n'));
}

}  // namespace

common::Result<std::vector<JsonElement>> split_json_array(std::string_view text) {
    std::vector<JsonElement> out;
    std::size_t i = 0;
    auto skip_ws = [&] {
        while (i < text.size() && (text[i] == ' ' || text[i] == '\n' || text[i] == '\t' || text[i] == '\r')) ++i;
    };
    skip_ws();
    if (i >= text.size() || text[i] != '[')
        return fail(Error::invalid(fmt::format("line {}: expected '[' (a JSON array of instance types)", line_of(text, i))));
    ++i;
    skip_ws();
    if (i < text.size() && text[i] == ']') return out;
    while (true) {
        skip_ws();
        std::size_t start = i;
        int depth = 0;
        bool in_str = false;
        for (; i < text.size(); ++i) {
            char c = text[i];
            if (in_str) {
                if (c == '\\') ++i;
                else if (c == '"') in_str = false;
                continue;
            }
            if (c == '"') in_str = true;
            else if (c == '{' || c == '[') ++depth;
            else if (c == '}' || c == ']') {
                if (depth == 0) break;  // the array's own ']'
                --depth;
            } else if (c == ',' && depth == 0) break;
        }
        if (i >= text.size() || in_str || depth != 0)
            return fail(Error::invalid(fmt::format("line {}: entry {} is not closed", line_of(text, start), out.size() + 1)));
        auto elem = text.substr(start, i - start);
        while (!elem.empty() && (elem.back() == ' ' || elem.back() == '\n' || elem.back() == '\t' || elem.back() == '\r'))
            elem.remove_suffix(1);
        if (elem.empty()) return fail(Error::invalid(fmt::format("line {}: empty entry", line_of(text, start))));
        out.push_back({std::string(elem), line_of(text, start)});
        if (text[i] == ']') break;
        ++i;  // ','
    }
    ++i;
    skip_ws();
    if (i != text.size())
        return fail(Error::invalid(fmt::format("line {}: text after the closing ']'", line_of(text, i))));
    return out;
}

}  // namespace hostd::catalog
