// Fuzzes the volume spec parser (user input on the command line and, later, in configs).
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "storage/volume_spec.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    std::string_view text(reinterpret_cast<const char*>(data), size);
    auto spec = nitro_card::storage::parse_volume_spec(text);
    if (spec && spec->size_bytes && (*spec->size_bytes == 0 || *spec->size_bytes % 512 != 0)) __builtin_trap();
    (void)nitro_card::storage::parse_size(text);
    return 0;
}
