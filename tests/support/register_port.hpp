// How a driver-side mock reaches a device's BAR0: 32-bit MMIO reads and writes, as the guest's
// loads and stores would be. A port to the real card sends them over the card protocol; a port
// that cannot deliver one throws std::runtime_error (a test bug or a dead card, not a guest
// condition the mock should handle).
#pragma once

#include <cstdint>

namespace testsupport {

class RegisterPort {
public:
    virtual ~RegisterPort() = default;
    [[nodiscard]] virtual std::uint32_t read32(std::uint64_t offset) = 0;
    virtual void write32(std::uint64_t offset, std::uint32_t value) = 0;
};

}  // namespace testsupport
