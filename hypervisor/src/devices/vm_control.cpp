#include "devices/vm_control.hpp"

namespace hypervisor {

void VmControl::request_stop(StopReason reason, int status, std::string detail) {
    {
        std::lock_guard lock(mu_);
        if (stop_) return;
        stop_ = StopRequest{reason, status, std::move(detail)};
    }
    cv_.notify_all();
}

bool VmControl::stopping() const {
    std::lock_guard lock(mu_);
    return stop_.has_value();
}

std::optional<StopRequest> VmControl::wait(
    std::optional<std::chrono::steady_clock::time_point> deadline) {
    std::unique_lock lock(mu_);
    if (deadline) {
        cv_.wait_until(lock, *deadline, [&] { return stop_.has_value(); });
    } else {
        cv_.wait(lock, [&] { return stop_.has_value(); });
    }
    return stop_;
}

}  // namespace hypervisor
