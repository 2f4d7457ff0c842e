// A PCI type-0 configuration space: 256 bytes with per-byte write masks, BARs with the
// size-probing protocol, and a capability list. No knowledge of how accesses arrive.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <span>

namespace hypervisor::pci {

// PCI Local Bus 3.0 §6.1 register offsets.
namespace reg {
inline constexpr std::uint32_t VENDOR_ID = 0x00, DEVICE_ID = 0x02, COMMAND = 0x04, STATUS = 0x06,
                               REVISION_ID = 0x08, CLASS_PROG = 0x09, HEADER_TYPE = 0x0e,
                               BAR0 = 0x10, SUBSYSTEM_VENDOR_ID = 0x2c, SUBSYSTEM_ID = 0x2e,
                               CAPABILITIES_PTR = 0x34, INTERRUPT_LINE = 0x3c, INTERRUPT_PIN = 0x3d;
}
inline constexpr std::uint16_t kCommandIo = 0x1, kCommandMemory = 0x2, kCommandMaster = 0x4,
                               kCommandIntxDisable = 0x400;
inline constexpr std::uint16_t kStatusCapList = 0x10;
inline constexpr std::uint8_t kCapIdMsix = 0x11;

struct PciIds {
    std::uint16_t vendor, device;
    std::uint32_t class_code;  // class << 16 | subclass << 8 | prog-if
    std::uint8_t revision = 0;
    std::uint16_t subsystem_vendor = 0, subsystem = 0;
};

enum class BarKind { Mem32, Mem64, Io };

struct BarInfo {
    std::uint64_t size = 0;  // power of two; 0 = unused
    BarKind kind = BarKind::Mem32;
};

class ConfigSpace final {
public:
    explicit ConfigSpace(const PciIds& ids);

    // Declares BAR idx (a 64-bit BAR takes idx and idx+1) with its initial address.
    void add_bar(unsigned idx, std::uint64_t size, BarKind kind, std::uint64_t address,
                 bool prefetchable = false);
    // INTx pin (1 = INTA#); read-only to the guest.
    void set_interrupt_pin(std::uint8_t pin);
    // Appends a capability; body[0] is the id, body[1] (next) is filled in. write_mask has
    // the same length. Returns the capability's offset.
    std::uint8_t add_capability(std::span<const std::uint8_t> body, std::span<const std::uint8_t> write_mask);

    // Reads 1, 2 or 4 bytes at an offset that does not cross a dword. Out-of-range reads give ~0.
    [[nodiscard]] std::uint32_t read(std::uint32_t offset, unsigned size) const;
    void write(std::uint32_t offset, unsigned size, std::uint32_t value);

    [[nodiscard]] std::uint16_t command() const;
    [[nodiscard]] const BarInfo& bar(unsigned idx) const { return bars_.at(idx); }
    // The BAR's programmed address (both halves for 64-bit BARs).
    [[nodiscard]] std::uint64_t bar_address(unsigned idx) const;
    // Where the BAR decodes now, or nullopt when decoding is off or the BAR is unused.
    [[nodiscard]] std::optional<std::uint64_t> bar_window(unsigned idx) const;

private:
    std::uint32_t dword(std::uint32_t off) const;
    std::array<std::uint8_t, 256> data_{};
    std::array<std::uint8_t, 256> wmask_{};
    std::array<BarInfo, 6> bars_{};
    std::uint8_t last_cap_ = 0;
    std::uint8_t next_cap_at_ = 0x40;
};

}  // namespace hypervisor::pci
