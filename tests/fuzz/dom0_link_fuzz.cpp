// Fuzzes the vmm <-> dom0 link decoder. Input: one byte for the fd count, then the message.
// Whatever decodes must encode back to the same bytes (the format has no slack: pads, unused
// slots and string tails must be zero).
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>

#include "xen_model/link/dom0_link_codec.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size == 0) return 0;
    const std::size_t nfds = data[0] % 4;
    std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(data + 1), size - 1);
    auto m = xen_model::link::decode(bytes, nfds);
    if (!m) return 0;
    if (xen_model::link::fds_for(*m) != nfds) __builtin_trap();
    auto again = xen_model::link::encode(*m);
    if (!again) __builtin_trap();
    if (again->size() != bytes.size() || std::memcmp(again->data(), bytes.data(), bytes.size()) != 0) __builtin_trap();
    return 0;
}
