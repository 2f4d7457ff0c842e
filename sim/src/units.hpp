// Simulated time in integer picoseconds (SystemC's default resolution), and conversions.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

namespace hostsim {

using Ps = std::int64_t;

inline constexpr Ps kPsPerUs = 1'000'000;
inline constexpr Ps kPsPerS = 1'000'000'000'000;
inline constexpr Ps kNever = std::numeric_limits<Ps>::max();

// Rounds to the nearest picosecond; negative inputs clamp to zero (a cost is never negative).
inline Ps us_to_ps(double us) {
    return us <= 0.0 ? 0 : static_cast<Ps>(std::llround(us * static_cast<double>(kPsPerUs)));
}
inline double ps_to_us(Ps ps) { return static_cast<double>(ps) / static_cast<double>(kPsPerUs); }
inline double ps_to_s(Ps ps) { return static_cast<double>(ps) / static_cast<double>(kPsPerS); }

}  // namespace hostsim
