#include "card/volume_id.hpp"

#include <fmt/format.h>

#include <cstdint>

namespace nitro_card {

std::string volume_id_for(std::string_view path) {
    std::uint64_t h = 0xcbf29ce484222325ull, g = 0x84222325cbf29ce4ull;
    for (unsigned char c : path) {
        h = (h ^ c) * 0x100000001b3ull;
        g = (g ^ c) * 0x100000001b3ull + 7;
    }
    return fmt::format("vol{:x}{:016x}", static_cast<unsigned>(g & 0xf), h);
}

}  // namespace nitro_card
