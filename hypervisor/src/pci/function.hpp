// A PCI function as the root bus sees it: a config space and BAR accesses.
#pragma once

#include <cstdint>
#include <span>
#include <string>

#include "pci/config_space.hpp"

namespace hypervisor::pci {

class Function {
public:
    virtual ~Function() = default;
    [[nodiscard]] virtual std::string name() const = 0;
    [[nodiscard]] virtual ConfigSpace& config() = 0;
    // Hook after the root bus applied a config write (MSI-X enable, for example).
    virtual void config_written(std::uint32_t /*offset*/) {}
    virtual void bar_read(unsigned bar, std::uint64_t offset, std::span<std::uint8_t> data) = 0;
    virtual void bar_write(unsigned bar, std::uint64_t offset, std::span<const std::uint8_t> data) = 0;
};

}  // namespace hypervisor::pci
