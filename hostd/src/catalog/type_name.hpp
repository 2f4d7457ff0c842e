// EC2 instance-type names: `<family><generation><capabilities>[-flex].<size>`, e.g. "c5n.xlarge",
// "m7i-flex.large", "x2idn.16xlarge". Parsing is pure; an error explains which part is wrong.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/error.hpp"

namespace hostd::catalog {

struct TypeName {
    std::string family;                // series letters: "m", "inf", "hpc", "x"
    std::uint32_t generation = 0;      // 5 in "m5d"
    std::vector<char> capabilities;    // in order of appearance: 'i', 'd', 'n'
    bool flex = false;                 // "-flex"
    std::string size;                  // "large", "16xlarge", "metal-48xl"

    // "m5d": what AWS calls the instance family (series, generation and capabilities).
    [[nodiscard]] std::string family_name() const;
    // The name back, as parsed: format(parse(x)) == x for every valid x.
    [[nodiscard]] std::string format() const;
    // vCPUs the size stands for on x86 (large = 2, xlarge = 4, Nxlarge = 4N); 0 when the size
    // says nothing (nano..medium, metal).
    [[nodiscard]] std::uint32_t size_vcpus() const;
};

// Parses and validates a name. Errors read "m9q.large: 'q' is not a capability letter (...)".
[[nodiscard]] common::Result<TypeName> parse_type_name(std::string_view name);

// A description of a capability letter ("AMD processor"), or "" when it is none.
[[nodiscard]] std::string_view capability_meaning(char c);

}  // namespace hostd::catalog
