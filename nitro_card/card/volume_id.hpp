// EBS-style volume ids: "vol" + 17 hex digits, stable for a given backing path.
#pragma once

#include <string>
#include <string_view>

namespace nitro_card {

// The same path always gives the same id (FNV-1a over the path, widened to 68 bits).
[[nodiscard]] std::string volume_id_for(std::string_view path);

}  // namespace nitro_card
