// CPU time used by this process (all its threads), for the exit logs that benchmarks read.
#pragma once

#include <sys/resource.h>

namespace common {

struct CpuTime {
    double user_ms = 0;
    double system_ms = 0;
    [[nodiscard]] double total_ms() const { return user_ms + system_ms; }
};

[[nodiscard]] inline CpuTime process_cpu_time() {
    rusage ru{};
    ::getrusage(RUSAGE_SELF, &ru);
    auto ms = [](const timeval& t) { return static_cast<double>(t.tv_sec) * 1e3 + static_cast<double>(t.tv_usec) / 1e3; };
    return CpuTime{ms(ru.ru_utime), ms(ru.ru_stime)};
}

}  // namespace common
