// The card process when nitrovm runs on its own (one-shot mode): started with the VM's
// volumes, reached through per-device sockets in a private directory, stopped with the VM.
// The card exits by itself when its last client goes; the destructor makes sure of it.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <string>
#include <vector>

#include "common/error.hpp"

namespace hypervisor::nitro {

class CardProcess final {
public:
    // Starts `binary` with the volume specs and waits until every device socket listens.
    [[nodiscard]] static common::Result<CardProcess> start(const std::string& binary,
                                                           const std::vector<std::string>& volumes,
                                                           const std::string& log_level,
                                                           unsigned io_queues,
                                                           std::chrono::milliseconds timeout,
                                                           const std::vector<std::string>& extra_args = {});
    CardProcess(CardProcess&& o) noexcept;
    CardProcess& operator=(CardProcess&&) = delete;
    CardProcess(const CardProcess&) = delete;
    ~CardProcess();

    // Socket of the i-th volume's NVMe controller.
    [[nodiscard]] std::string socket_path(std::size_t i) const;
    [[nodiscard]] pid_t pid() const { return pid_; }

private:
    CardProcess(pid_t pid, std::string dir) : pid_(pid), dir_(std::move(dir)) {}
    pid_t pid_ = -1;
    std::string dir_;
};

}  // namespace hypervisor::nitro
