#include "devices/platform.hpp"

#include <spdlog/spdlog.h>

namespace hypervisor {

namespace {
constexpr std::uint64_t kData = 0, kCmd = 4;
constexpr std::uint8_t kCmdReadCtr = 0x20, kCmdWriteCtr = 0x60, kCmdReadOutp = 0xd0,
                       kCmdWriteOutp = 0xd1, kCmdSelfTest = 0xaa, kCmdResetCpu = 0xfe;
constexpr std::uint8_t kStsOutFull = 0x01, kStsSystem = 0x04;
}  // namespace

void I8042::read(std::uint64_t offset, std::span<std::uint8_t> data) {
    std::lock_guard lock(mu_);
    std::uint8_t v = 0;
    if (offset == kData) {
        v = data_;
        has_data_ = false;
    } else if (offset == kCmd) {
        v = static_cast<std::uint8_t>(kStsSystem | (has_data_ ? kStsOutFull : 0));
    } else {
        v = 0xff;
    }
    store_le(data, v);
}

void I8042::write(std::uint64_t offset, std::span<const std::uint8_t> data) {
    std::uint8_t v = data[0];
    std::lock_guard lock(mu_);
    if (offset == kCmd) {
        pending_cmd_ = 0;
        switch (v) {
            case kCmdReadCtr: data_ = ctr_; has_data_ = true; break;
            case kCmdReadOutp: data_ = outp_; has_data_ = true; break;
            case kCmdSelfTest: data_ = 0x55; has_data_ = true; break;
            case kCmdWriteCtr:
            case kCmdWriteOutp: pending_cmd_ = v; break;
            case kCmdResetCpu:
                spdlog::info("guest reset through the i8042");
                ctl_.request_stop(StopReason::Reset, 0, "i8042 reset");
                break;
            default: break;
        }
    } else if (offset == kData) {
        if (pending_cmd_ == kCmdWriteCtr) ctr_ = v;
        else if (pending_cmd_ == kCmdWriteOutp) {
            outp_ = v;
            if (!(v & 0x01)) ctl_.request_stop(StopReason::Reset, 0, "i8042 output-port reset");
        }
        pending_cmd_ = 0;
    }
}

void DebugExitPort::write(std::uint64_t offset, std::span<const std::uint8_t> data) {
    if (offset != 0) return;
    int status = data[0];
    spdlog::info("guest wrote exit status {} to the debug exit port", status);
    ctl_.request_stop(StopReason::GuestExit, status, "debug exit port");
}

void BootMarker::write(std::uint64_t offset, std::span<const std::uint8_t> data) {
    if (offset != 0 || data[0] != kBootMarkerValue) return;
    auto us = std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - start_);
    spdlog::info("boot marker: guest reached its workload {:.3f} ms after vmm start", static_cast<double>(us.count()) / 1000.0);
}

}  // namespace hypervisor
