// What travels with a TLM generic payload between an instance and its I/O path.
#pragma once

#include <tlm>

#include <cstdint>

#include "../units.hpp"

namespace hostsim {

struct IoExtension final : tlm::tlm_extension<IoExtension> {
    int instance = 0;
    int slot = 0;
    Ps issued = 0;          // when the workload issued it (latency starts here)
    std::uint32_t bytes = 0;
    bool write = false;

    tlm::tlm_extension_base* clone() const override { return new IoExtension(*this); }
    void copy_from(const tlm::tlm_extension_base& other) override {
        *this = static_cast<const IoExtension&>(other);
    }
};

inline IoExtension& io_of(tlm::tlm_generic_payload& gp) {
    IoExtension* ext = nullptr;
    gp.get_extension(ext);
    return *ext;  // every payload is created with one (Instance's constructor)
}

inline std::uint32_t pages_of(std::uint32_t bytes) { return (bytes + 4095u) / 4096u; }

}  // namespace hostsim
