// Guest tests: boot the probe guest under the real nitrovm and check what the guest reported.
// Exits 77 (reported by CTest as skipped) when /dev/kvm is missing.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <regex>

#include "support/process.hpp"

using testsupport::run_process;

namespace {

const std::string kNitrovm = NH_BUILD_DIR "/bin/nitrovm";
const std::string kProbe = NH_BUILD_DIR "/guest/probe.elf";
constexpr std::chrono::seconds kTimeout{60};

testsupport::ProcessResult nitrovm(std::vector<std::string> args) {
    args.insert(args.begin(), {kNitrovm, "run"});
    auto r = run_process(args, kTimeout);
    INFO("stdout:\n" << r.out << "\nstderr:\n" << r.err);
    REQUIRE_FALSE(r.timed_out);
    return r;
}

}  // namespace

TEST_CASE("probe guest on 1 vCPU prints its banner and exits 0") {
    auto r = nitrovm({"--guest", "probe", "--vcpus", "1", "--", "exit", "0"});
    CHECK(r.status == 0);
    CHECK(r.out.find("probe: banner cpus=1 ") != std::string::npos);
    CHECK(r.out.find("probe: exit status 0") != std::string::npos);
    CHECK(r.err.find("boot marker") != std::string::npos);
}

TEST_CASE("probe guest on 2 vCPUs: both CPUs come up and the exit status round-trips") {
    auto r = nitrovm({"--guest", "probe", "--vcpus", "2", "--", "exit", "7"});
    CHECK(r.status == 7);
    CHECK(r.out.find("probe: banner cpus=2 ") != std::string::npos);
    for (int status : {0, 1, 42, 255}) {
        auto s = nitrovm({"--vcpus", "2", "--", "exit", std::to_string(status)});
        CHECK(s.status == status);
    }
}

TEST_CASE("probe guest: every AP runs code at CPL3") {
    auto r = nitrovm({"--vcpus", "2", "--", "smp"});
    CHECK(r.status == 0);
    CHECK(r.out.find("cpus=2") != std::string::npos);
}

TEST_CASE("probe guest: MSI-X from the test device arrives through the irqfd; masking holds it") {
    auto r = nitrovm({"--vcpus", "1", "--", "msi", "200"});
    CHECK(r.status == 0);
    std::smatch m;
    REQUIRE(std::regex_search(r.out, m, std::regex(R"(msi: delivered=(\d+)/(\d+) masked_ok=(\d))")));
    CHECK(m[1] == "200");
    CHECK(m[2] == "200");
    CHECK(m[3] == "1");
}

TEST_CASE("probe guest: an unknown workload is reported by the guest") {
    auto r = nitrovm({"--", "no-such-workload"});
    CHECK(r.status == 2);
}

TEST_CASE("bad input: missing, malformed or truncated kernels and bad sizes exit 2 with one line") {
    auto missing = nitrovm({"--kernel", "/nonexistent"});
    CHECK(missing.status == 2);
    CHECK(missing.err.find("/nonexistent") != std::string::npos);

    char junk_path[] = "/tmp/nitrovm-junk-XXXXXX";
    int fd = ::mkstemp(junk_path);
    REQUIRE(fd >= 0);
    REQUIRE(::write(fd, "this is not a kernel image at all, not even close", 49) == 49);
    ::close(fd);
    auto junk = nitrovm({"--kernel", junk_path});
    CHECK(junk.status == 2);
    CHECK(junk.err.find("neither a PVH ELF nor a bzImage") != std::string::npos);

    // The probe image cut in half: its segments run past the end of the file.
    std::ifstream in(kProbe, std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), {});
    REQUIRE(bytes.size() > 512);
    {
        std::ofstream cut(junk_path, std::ios::binary | std::ios::trunc);
        cut.write(bytes.data(), static_cast<std::streamsize>(bytes.size() / 2));
    }
    auto truncated = nitrovm({"--kernel", junk_path});
    CHECK(truncated.status == 2);
    ::unlink(junk_path);

    auto small = nitrovm({"--memory", "1M", "--", "exit", "0"});
    CHECK(small.status == 2);
    CHECK(small.err.find("--memory") != std::string::npos);
    auto vcpus = nitrovm({"--vcpus", "0"});
    CHECK(vcpus.status == 2);
    auto badsize = nitrovm({"--memory", "lots"});
    CHECK(badsize.status == 2);
    for (const auto* r : {&missing, &junk, &truncated, &small, &vcpus, &badsize}) {
        // One line, prefixed with the program name.
        CHECK(r->err.find("nitrovm: error: ") != std::string::npos);
    }
}

int main(int argc, char** argv) {
    if (::access("/dev/kvm", R_OK | W_OK) != 0) {
        std::printf("SKIP: /dev/kvm is not available on this machine; guest tests need KVM\n");
        return 77;
    }
    doctest::Context ctx(argc, argv);
    return ctx.run();
}
