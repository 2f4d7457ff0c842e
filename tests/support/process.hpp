// Runs a program with arguments, captures its stdout and stderr, and kills it after a timeout.
// For tests that drive the real binaries.
#pragma once

#include <chrono>
#include <string>
#include <vector>

namespace testsupport {

struct ProcessResult {
    int status = -1;        // exit status, or 128 + signal
    bool timed_out = false;
    std::string out, err;
    std::chrono::milliseconds elapsed{0};
};

ProcessResult run_process(const std::vector<std::string>& argv, std::chrono::seconds timeout);

}  // namespace testsupport
