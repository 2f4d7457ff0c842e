#include "storage/volume_spec.hpp"

#include <cctype>
#include <charconv>
#include <limits>

#include <fmt/format.h>

#include "storage/backend.hpp"

namespace nitro_card::storage {

using common::Error;
using common::fail;

namespace {

std::optional<std::uint64_t> parse_number(std::string_view text) noexcept {
    std::uint64_t v = 0;
    const char* end = text.data() + text.size();
    auto [p, ec] = std::from_chars(text.data(), end, v);
    if (text.empty() || ec != std::errc{} || p != end) return std::nullopt;
    return v;
}

// A positive count, "unlimited" (nullopt inside the optional), or nothing at all (malformed).
std::optional<std::optional<std::uint64_t>> parse_rate(std::string_view text) noexcept {
    if (text == "unlimited") return std::optional<std::uint64_t>{};
    auto v = parse_number(text);
    if (!v || *v == 0) return std::nullopt;
    return v;
}

}  // namespace

std::optional<std::uint64_t> parse_size(std::string_view text) noexcept {
    unsigned shift = 0;
    if (!text.empty()) {
        const auto at = std::string_view("KMG").find(
            static_cast<char>(std::toupper(static_cast<unsigned char>(text.back()))));
        if (at != std::string_view::npos) {
            shift = 10 * static_cast<unsigned>(at + 1);
            text.remove_suffix(1);
        }
    }
    auto v = parse_number(text);
    if (!v || *v > (std::numeric_limits<std::uint64_t>::max() >> shift)) return std::nullopt;
    return *v << shift;
}

common::Result<VolumeSpec> parse_volume_spec(std::string_view spec) {
    auto bad = [spec](std::string what) {
        return fail(Error::invalid(fmt::format("volume spec '{}': {}", spec, what)));
    };
    VolumeSpec out;
    bool seen_size = false, seen_iops = false, seen_mbps = false;

    std::size_t comma = spec.find(',');
    out.path = std::string(spec.substr(0, comma));
    if (out.path.empty()) return bad("empty path");
    while (comma != std::string_view::npos) {
        const std::size_t start = comma + 1;
        comma = spec.find(',', start);
        const std::string_view field =
            spec.substr(start, comma == std::string_view::npos ? comma : comma - start);
        if (field.empty()) return bad("empty field");
        const std::size_t eq = field.find('=');
        const std::string_view key = field.substr(0, eq);
        const std::string_view value =
            eq == std::string_view::npos ? std::string_view{} : field.substr(eq + 1);

        if (key == "instance-store") {
            if (eq != std::string_view::npos)
                return bad(fmt::format("field 'instance-store' takes no value, got '{}'", field));
            if (out.instance_store) return bad("field 'instance-store' given twice");
            out.instance_store = true;
            continue;
        }
        if (key == "ram") {
            if (eq != std::string_view::npos)
                return bad(fmt::format("field 'ram' takes no value, got '{}'", field));
            if (out.ram) return bad("field 'ram' given twice");
            out.ram = true;
            continue;
        }
        if (key != "size" && key != "iops" && key != "mbps")
            return bad(fmt::format("unknown field '{}'", key));
        if (eq == std::string_view::npos) return bad(fmt::format("field '{}' needs a value", key));
        bool& seen = key == "size" ? seen_size : key == "iops" ? seen_iops : seen_mbps;
        if (seen) return bad(fmt::format("field '{}' given twice", key));
        seen = true;

        if (key == "size") {
            auto size = parse_size(value);
            if (!size) return bad(fmt::format("bad size '{}'", value));
            if (*size == 0 || *size % kSectorSize != 0)
                return bad(fmt::format("bad size '{}' (must be a positive multiple of {})", value,
                                       kSectorSize));
            out.size_bytes = size;
        } else if (key == "iops") {
            auto rate = parse_rate(value);
            if (!rate)
                return bad(fmt::format("bad iops '{}' (a positive number or 'unlimited')", value));
            out.limits.iops = *rate;
        } else {
            auto rate = parse_rate(value);
            if (!rate || (*rate && **rate > (std::numeric_limits<std::uint64_t>::max() >> 20)))
                return bad(fmt::format("bad mbps '{}' (a positive number or 'unlimited')", value));
            out.limits.bytes_per_second = *rate ? std::optional(**rate << 20) : std::nullopt;
        }
    }
    if (out.ram && !out.size_bytes) return bad("a RAM volume needs size=");
    return out;
}

}  // namespace nitro_card::storage
