// The console's output file stays under its limit and keeps the newest output.
#include <doctest/doctest.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

#include "devices/console_sink.hpp"

using namespace hypervisor;

namespace {

std::string read_all(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    std::ostringstream s;
    s << f.rdbuf();
    return s.str();
}

// Numbered lines, so any suffix shows where it starts.
std::string printed(int lines) {
    std::string out;
    for (int i = 0; i < lines; ++i) out += "line " + std::to_string(i) + " of the guest's console\n";
    return out;
}

void check_bounded(int flags) {
    char path[] = "/tmp/nh-console-XXXXXX";
    const int made = ::mkstemp(path);
    REQUIRE(made >= 0);
    ::close(made);
    const int fd = ::open(path, flags);
    REQUIRE(fd >= 0);
    const std::uint64_t limit = 4096;
    const std::string text = printed(2000);  // about 62 KiB
    {
        ConsoleSink sink(fd, limit);
        std::uint64_t largest = 0;
        for (char c : text) {  // a byte at a time, as the UART writes
            const auto b = static_cast<std::uint8_t>(c);
            sink.write({&b, 1});
            struct stat st {};
            REQUIRE(::fstat(fd, &st) == 0);
            largest = std::max(largest, static_cast<std::uint64_t>(st.st_size));
        }
        CHECK(largest <= limit);
        CHECK(sink.dropped_bytes() > text.size() - limit);
    }
    ::close(fd);
    const std::string kept = read_all(path);
    ::unlink(path);
    REQUIRE(kept.size() <= limit);
    // A line saying what was dropped, then the newest output exactly as printed.
    const auto nl = kept.find('\n');
    REQUIRE(nl != std::string::npos);
    CHECK(kept.substr(0, nl).find("older bytes dropped") != std::string::npos);
    const std::string rest = kept.substr(nl + 1);
    CHECK(rest.size() >= limit / 4);
    CHECK(text.substr(text.size() - rest.size()) == rest);
}

}  // namespace

TEST_CASE("console file opened for appending, write-only (as hostd opens it): bounded, the newest kept") {
    check_bounded(O_WRONLY | O_APPEND);
}

TEST_CASE("console file opened read-write without O_APPEND (a shell's redirection): bounded, the newest kept") {
    check_bounded(O_RDWR);
}

TEST_CASE("console into a pipe: every byte passes, whatever the limit") {
    int fds[2];
    REQUIRE(::pipe(fds) == 0);
    {
        ConsoleSink sink(fds[1], 16);
        const std::string text = "more than sixteen bytes of output\n";
        sink.write({reinterpret_cast<const std::uint8_t*>(text.data()), text.size()});
        CHECK(sink.dropped_bytes() == 0);
        char buf[64] = {};
        CHECK(::read(fds[0], buf, sizeof(buf)) == static_cast<ssize_t>(text.size()));
        CHECK(std::string(buf, text.size()) == text);
    }
    ::close(fds[0]);
    ::close(fds[1]);
}
