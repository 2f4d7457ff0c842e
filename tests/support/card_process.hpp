// A nitro-card process started by a test: spawned with --ready-fd, its stdout and stderr in a
// log file, stopped and reaped when the object goes. Every wait is bounded.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <optional>
#include <string>
#include <vector>

#include "common/error.hpp"

namespace testsupport {

class CardProcess final {
public:
    // Runs `binary args... --ready-fd N` and waits up to `ready_timeout` for the ready byte.
    // Fails, with the log's contents in the message, if the process exits or stays silent.
    [[nodiscard]] static common::Result<CardProcess> start(
        const std::string& binary, std::vector<std::string> args, const std::string& log_path,
        std::chrono::milliseconds ready_timeout = std::chrono::seconds(5));

    CardProcess(CardProcess&& o) noexcept;
    CardProcess& operator=(CardProcess&&) = delete;
    CardProcess(const CardProcess&) = delete;
    CardProcess& operator=(const CardProcess&) = delete;
    // Kills (SIGKILL) and reaps the process if it still runs.
    ~CardProcess();

    [[nodiscard]] pid_t pid() const { return pid_; }
    // Sends a signal; false once the process has been reaped.
    bool signal(int sig) const;
    // Waits up to `timeout` for the process to end: its exit status, 128 + signal number if a
    // signal ended it, or nullopt if it still runs.
    [[nodiscard]] std::optional<int> wait(std::chrono::milliseconds timeout);
    [[nodiscard]] bool running();
    // What the process wrote to stdout and stderr so far.
    [[nodiscard]] std::string log() const;

private:
    CardProcess(pid_t pid, std::string log_path) : pid_(pid), log_path_(std::move(log_path)) {}
    [[nodiscard]] std::optional<int> reap(bool block);

    pid_t pid_ = -1;
    std::string log_path_;
    std::optional<int> status_;
};

}  // namespace testsupport
