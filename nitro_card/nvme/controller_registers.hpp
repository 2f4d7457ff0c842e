// The controller's property registers (NVMe 2.0 §3.1.4) as data: their values, the bits the
// host may write, and the one place that decides whether a BAR0 access below the doorbells is
// legal. Pure: acting on a write (CC.EN, CC.SHN) is the controller's job.
#pragma once

#include <array>
#include <cstdint>
#include <expected>
#include <string_view>

#include "nvme/spec.hpp"

namespace nitro_card::nvme {

// Why a register access was refused. Reads of a refused access return 0; writes are dropped.
enum class RegisterFault : std::uint8_t {
    BadSize,   // not 4 bytes inside a register, nor 8 bytes at a 64-bit register
    Hole,      // no register at this offset
    ReadOnly,  // a write to CAP, VS, CSTS, CMBLOC or CMBSZ
};

[[nodiscard]] std::string_view describe(RegisterFault f);

// A write the register file accepted: which register, and its whole value before and after.
struct RegisterWrite {
    std::uint32_t reg = 0;  // reg::CC, reg::AQA, ...
    std::uint64_t old_value = 0;
    std::uint64_t new_value = 0;
};

// Writable bits (the rest are reserved and read back as 0).
namespace writable {
// CC: EN, CSS, MPS, AMS, SHN, IOSQES, IOCQES. CRIME needs CAP.CRMS, which is 0.
inline constexpr std::uint64_t CC = 0x00fffff1;
inline constexpr std::uint64_t AQA = 0x0fff0fff;  // ASQS 11:0, ACQS 27:16
// ASQ/ACQ keep every bit so that CC.EN = 1 can refuse a base that is not page aligned.
inline constexpr std::uint64_t QUEUE_BASE = ~std::uint64_t{0};
}  // namespace writable

class RegisterFile final {
public:
    RegisterFile(std::uint64_t cap, std::uint32_t vs);

    // Accesses the controller accepts: 4 bytes at a 4-byte aligned offset inside a register
    // (so both halves of a 64-bit register, as Linux's lo_hi_readq/lo_hi_writeq do), or 8 bytes
    // at the start of a 64-bit register. `offset` is below reg::DOORBELL_BASE.
    [[nodiscard]] std::expected<std::uint64_t, RegisterFault> read(std::uint32_t offset,
                                                                   unsigned size) const;
    // Stores the writable bits and returns what changed. INTMS/INTMC (meaningless with MSI-X)
    // and NSSR (CAP.NSSRS = 0) accept writes and keep nothing.
    [[nodiscard]] std::expected<RegisterWrite, RegisterFault> write(std::uint32_t offset,
                                                                    unsigned size,
                                                                    std::uint64_t value);

    [[nodiscard]] std::uint64_t cap() const { return get(reg::CAP); }
    [[nodiscard]] std::uint32_t cc() const { return static_cast<std::uint32_t>(get(reg::CC)); }
    [[nodiscard]] std::uint32_t csts() const { return static_cast<std::uint32_t>(get(reg::CSTS)); }
    [[nodiscard]] std::uint32_t aqa() const { return static_cast<std::uint32_t>(get(reg::AQA)); }
    [[nodiscard]] std::uint64_t asq() const { return get(reg::ASQ); }
    [[nodiscard]] std::uint64_t acq() const { return get(reg::ACQ); }

    // The controller's own updates: CC after it applied the EN/SHN rules, CSTS.
    void set_cc(std::uint32_t v) { set(reg::CC, v & writable::CC); }
    void set_csts(std::uint32_t v) { set(reg::CSTS, v); }

    // Power-on values; CAP and VS stay.
    void reset();

private:
    [[nodiscard]] static constexpr std::size_t index_of(std::uint32_t reg_offset) {
        for (std::size_t i = 0; i < kRegisters.size(); ++i)
            if (kRegisters[i].offset == reg_offset) return i;
        return kRegisters.size();
    }
    [[nodiscard]] std::uint64_t get(std::uint32_t reg_offset) const {
        return values_[index_of(reg_offset)];
    }
    void set(std::uint32_t reg_offset, std::uint64_t v) { values_[index_of(reg_offset)] = v; }

    std::array<std::uint64_t, kRegisters.size()> values_{};
};

}  // namespace nitro_card::nvme
