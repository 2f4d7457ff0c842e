// Small platform devices: the i8042 (only what reset and Linux's probe need), the debug exit
// port and the boot-time marker.
#pragma once

#include <chrono>
#include <cstdint>
#include <mutex>

#include "devices/bus.hpp"
#include "devices/vm_control.hpp"

namespace hypervisor {

inline constexpr std::uint16_t kDebugExitPort = 0xf4;
inline constexpr std::uint16_t kBootMarkerPort = 0x3f0;
inline constexpr std::uint8_t kBootMarkerValue = 123;

// i8042 at 0x60 (data) and 0x64 (status/command), registered as one range 0x60..0x64.
class I8042 final : public BusDevice {
public:
    explicit I8042(VmControl& ctl) : ctl_(ctl) {}
    void read(std::uint64_t offset, std::span<std::uint8_t> data) override;
    void write(std::uint64_t offset, std::span<const std::uint8_t> data) override;

private:
    VmControl& ctl_;
    std::mutex mu_;
    std::uint8_t ctr_ = 0x30;      // controller configuration: both ports' clocks disabled
    std::uint8_t outp_ = 0x01;     // output port: system reset line not asserted
    std::uint8_t pending_cmd_ = 0;
    bool has_data_ = false;
    std::uint8_t data_ = 0;
};

// A write of N to the debug exit port ends the VM with exit status N.
class DebugExitPort final : public BusDevice {
public:
    explicit DebugExitPort(VmControl& ctl) : ctl_(ctl) {}
    void read(std::uint64_t, std::span<std::uint8_t> data) override { store_le(data, 0); }
    void write(std::uint64_t offset, std::span<const std::uint8_t> data) override;

private:
    VmControl& ctl_;
};

// Writing 123 logs the time since the vmm started (the boot-time marker).
class BootMarker final : public BusDevice {
public:
    explicit BootMarker(std::chrono::steady_clock::time_point start) : start_(start) {}
    void read(std::uint64_t, std::span<std::uint8_t> data) override { store_le(data, 0); }
    void write(std::uint64_t offset, std::span<const std::uint8_t> data) override;

private:
    std::chrono::steady_clock::time_point start_;
};

}  // namespace hypervisor
