#include "catalog/type_name.hpp"

#include <algorithm>
#include <array>
#include <charconv>
#include <fmt/format.h>
#include <fmt/ranges.h>

namespace hostd::catalog {

namespace {

using common::Error;
using common::fail;

// Instance series (naming convention in the EC2 documentation).
constexpr std::array<std::string_view, 15> kSeries = {"c", "d", "f", "g", "hpc", "i", "inf", "m",
                                                      "p", "r", "t", "trn", "u", "vt", "x"};

constexpr std::array<std::string_view, 5> kSmallSizes = {"nano", "micro", "small", "medium", "large"};

bool is_lower(char c) { return c >= 'a' && c <= 'z'; }
bool is_digit(char c) { return c >= '0' && c <= '9'; }

common::Status check_size(std::string_view name, std::string_view size) {
    if (size.empty()) return fail(Error::invalid(fmt::format("{}: the size after '.' is missing", name)));
    if (std::ranges::find(kSmallSizes, size) != kSmallSizes.end() || size == "xlarge" || size == "metal" ||
        size == "metal-24xl" || size == "metal-48xl")
        return {};
    if (size.ends_with("xlarge")) {
        auto n = size.substr(0, size.size() - 6);
        unsigned v = 0;
        auto [p, ec] = std::from_chars(n.data(), n.data() + n.size(), v);
        if (ec == std::errc() && p == n.data() + n.size() && v >= 2 && v <= 1024 && n[0] != '0') return {};
        return fail(Error::invalid(
            fmt::format("{}: size '{}': the multiplier before 'xlarge' must be a number from 2 to 1024", name, size)));
    }
    return fail(Error::invalid(fmt::format(
        "{}: unknown size '{}' (nano, micro, small, medium, large, xlarge, <N>xlarge, metal, metal-24xl, metal-48xl)",
        name, size)));
}

}  // namespace

std::string_view capability_meaning(char c) {
    switch (c) {
        case 'a': return "AMD processor";
        case 'g': return "AWS Graviton processor";
        case 'i': return "Intel processor";
        case 'd': return "instance-store NVMe";
        case 'n': return "network optimized";
        case 'b': return "EBS optimized";
        case 'e': return "extra storage or memory";
        case 'z': return "high frequency";
        default: return "";
    }
}

std::string TypeName::family_name() const {
    std::string s = fmt::format("{}{}{}", family, generation, std::string(capabilities.begin(), capabilities.end()));
    if (flex) s += "-flex";
    return s;
}

std::string TypeName::format() const { return family_name() + "." + size; }

std::uint32_t TypeName::size_vcpus() const {
    if (size == "large") return 2;
    if (size == "xlarge") return 4;
    if (size.ends_with("xlarge") && size.size() > 6) {
        unsigned v = 0;
        std::from_chars(size.data(), size.data() + size.size() - 6, v);
        return 4 * v;
    }
    return 0;
}

common::Result<TypeName> parse_type_name(std::string_view name) {
    if (name.empty()) return fail(Error::invalid("the instance type name is empty"));
    if (name.size() > 64) return fail(Error::invalid(fmt::format("'{}...': name too long", name.substr(0, 32))));
    auto dot = name.find('.');
    if (dot == std::string_view::npos)
        return fail(Error::invalid(fmt::format("{}: no '.' between family and size (e.g. m5.large)", name)));
    std::string_view fam = name.substr(0, dot), size = name.substr(dot + 1);
    TypeName t;
    std::size_t i = 0;
    while (i < fam.size() && is_lower(fam[i])) ++i;
    t.family = std::string(fam.substr(0, i));
    if (t.family.empty())
        return fail(Error::invalid(fmt::format("{}: the family must start with a series letter (c, m, r, t, ...)", name)));
    if (std::ranges::find(kSeries, t.family) == kSeries.end())
        return fail(Error::invalid(fmt::format("{}: unknown family '{}': '{}' is not an instance series ({})", name,
                                               fam, t.family, fmt::join(kSeries, ", "))));
    std::size_t g = i;
    while (i < fam.size() && is_digit(fam[i])) ++i;
    if (i == g)
        return fail(Error::invalid(fmt::format("{}: unknown family '{}': no generation number after '{}'", name, fam,
                                               t.family)));
    if (fam[g] == '0')
        return fail(Error::invalid(fmt::format("{}: unknown family '{}': generation '{}' has a leading zero", name,
                                               fam, fam.substr(g, i - g))));
    auto [p, ec] = std::from_chars(fam.data() + g, fam.data() + i, t.generation);
    if (ec != std::errc() || t.generation == 0 || t.generation > 99)
        return fail(Error::invalid(fmt::format("{}: unknown family '{}': generation '{}' is out of range (1..99)", name,
                                               fam, fam.substr(g, i - g))));
    while (i < fam.size() && fam[i] != '-') {
        char c = fam[i];
        if (capability_meaning(c).empty())
            return fail(Error::invalid(fmt::format(
                "{}: unknown family '{}': '{}' is not a capability letter (a AMD, g Graviton, i Intel, d instance "
                "store, n network, b EBS, e extra, z high frequency)",
                name, fam, c)));
        if (std::ranges::find(t.capabilities, c) != t.capabilities.end())
            return fail(Error::invalid(fmt::format("{}: unknown family '{}': capability '{}' repeated", name, fam, c)));
        t.capabilities.push_back(c);
        ++i;
    }
    if (i < fam.size()) {
        if (fam.substr(i) != "-flex")
            return fail(Error::invalid(
                fmt::format("{}: unknown family '{}': the only suffix is '-flex', not '{}'", name, fam, fam.substr(i))));
        t.flex = true;
    }
    if (auto s = check_size(name, size); !s) return fail(s.error());
    t.size = std::string(size);
    return t;
}

}  // namespace hostd::catalog
