#include "cli.hpp"

#include <charconv>
#include <fmt/format.h>

namespace hypervisor::cli {

common::Result<std::uint64_t> parse_size(const std::string& text) {
    std::uint64_t n = 0;
    auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), n);
    if (ec != std::errc() || p == text.data())
        return common::fail(common::Error::invalid(fmt::format("'{}' is not a size (try 256M or 1G)", text)));
    std::string unit(p, text.data() + text.size());
    std::uint64_t mul;
    if (unit.empty() || unit == "M" || unit == "MiB" || unit == "m") mul = 1ull << 20;
    else if (unit == "G" || unit == "GiB" || unit == "g") mul = 1ull << 30;
    else if (unit == "K" || unit == "KiB" || unit == "k") mul = 1ull << 10;
    else return common::fail(common::Error::invalid(fmt::format("'{}': unknown size unit '{}'", text, unit)));
    std::uint64_t r;
    if (__builtin_mul_overflow(n, mul, &r))
        return common::fail(common::Error::invalid(fmt::format("'{}' is too large", text)));
    return r;
}

common::Result<std::string> join_guest_args(const std::vector<std::string>& args) {
    std::string out;
    for (const auto& a : args) {
        if (a.find_first_of("\"\n") != std::string::npos)
            return common::fail(common::Error::invalid(
                fmt::format("guest argument '{}' holds a double quote or newline, which a kernel "
                            "command line cannot carry", a)));
        if (!out.empty()) out += ' ';
        if (a.empty() || a.find_first_of(" \t") != std::string::npos) out += '"' + a + '"';
        else out += a;
    }
    return out;
}

}  // namespace hypervisor::cli
