// Guest tests: boot the probe guest under the real nitrovm and check what the guest reported.
// Exits 77 (reported by CTest as skipped) when /dev/kvm is missing.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
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

// A minimal PVH ELF whose 32-bit entry runs `code`; written to a temporary file.
std::string tiny_guest(const std::vector<std::uint8_t>& code) {
    std::vector<std::uint8_t> f(0x1000, 0);
    auto put = [&](std::size_t o, auto v) { std::memcpy(&f[o], &v, sizeof v); };
    const std::uint8_t ident[16] = {0x7f, 'E', 'L', 'F', 2, 1, 1};
    std::memcpy(f.data(), ident, 16);
    put(16, std::uint16_t{2});        // ET_EXEC
    put(18, std::uint16_t{62});       // EM_X86_64
    put(20, std::uint32_t{1});
    put(24, std::uint64_t{0x100000}); // e_entry
    put(32, std::uint64_t{64});       // e_phoff
    put(52, std::uint16_t{64});
    put(54, std::uint16_t{56});
    put(56, std::uint16_t{2});        // two program headers
    // PT_LOAD: file 0x800.. at 1 MiB
    put(64, std::uint32_t{1});
    put(68, std::uint32_t{5});
    put(72, std::uint64_t{0x800});
    put(80, std::uint64_t{0x100000});
    put(88, std::uint64_t{0x100000});
    put(96, std::uint64_t{code.size()});
    put(104, std::uint64_t{code.size()});
    // PT_NOTE at 0x400: "Xen", type 18, entry 1 MiB
    put(120, std::uint32_t{4});
    put(128, std::uint64_t{0x400});
    put(152, std::uint64_t{20});
    put(0x400, std::uint32_t{4});
    put(0x404, std::uint32_t{4});
    put(0x408, std::uint32_t{18});
    std::memcpy(&f[0x40c], "Xen", 4);
    put(0x410, std::uint32_t{0x100000});
    std::memcpy(&f[0x800], code.data(), code.size());
    char path[] = "/tmp/nitrovm-tiny-XXXXXX";
    int fd = ::mkstemp(path);
    REQUIRE(fd >= 0);
    REQUIRE(::write(fd, f.data(), f.size()) == static_cast<ssize_t>(f.size()));
    ::close(fd);
    return path;
}

}  // namespace

TEST_CASE("a guest that triple-faults ends with status 125 and a register dump") {
    auto path = tiny_guest({0x0f, 0x0b});  // ud2 with no IDT: #UD, #DF, triple fault
    auto r = nitrovm({"--kernel", path});
    ::unlink(path.c_str());
    CHECK(r.status == 125);
    CHECK(r.err.find("triple fault") != std::string::npos);
    CHECK(r.err.find("rip=0x0000000000100000") != std::string::npos);
    CHECK(r.err.find("instruction bytes: 0f 0b") != std::string::npos);
}

TEST_CASE("a guest that never ends is stopped by --timeout with status 124") {
    auto path = tiny_guest({0xeb, 0xfe});  // jmp .
    auto r = nitrovm({"--kernel", path, "--timeout", "0.3", "--vcpus", "2"});
    ::unlink(path.c_str());
    CHECK(r.status == 124);
    CHECK(r.err.find("timeout") != std::string::npos);
    CHECK(r.elapsed < std::chrono::seconds(10));
}

TEST_CASE("probe guest on 1 vCPU prints its banner and exits 0") {
    auto r = nitrovm({"--guest", "probe", "--vcpus", "1", "--", "exit", "0"});
    CHECK(r.status == 0);
    CHECK(r.out.find("probe: banner cpus=1 ") != std::string::npos);
    CHECK(r.out.find("probe: exit status 0") != std::string::npos);
    CHECK(r.err.find("boot marker") != std::string::npos);
}

TEST_CASE("a guest that prints without end: its console file stays under --console-limit, the newest kept") {
    char path[] = "/tmp/nitrovm-console-XXXXXX";
    const int fd = ::mkstemp(path);
    REQUIRE(fd >= 0);
    ::close(fd);
    // About 45 KiB of output into a file (the shell's redirection) limited to 16 KiB.
    auto r = run_process({"/bin/sh", "-c",
                          "exec " + kNitrovm + " run --guest probe --console-limit 16K -- print 1500 > " + path},
                         kTimeout);
    std::ifstream f(path, std::ios::binary);
    const std::string console((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    ::unlink(path);
    INFO("stderr:\n" << r.err << "\nconsole (" << console.size() << " bytes), its start:\n" << console.substr(0, 200));
    REQUIRE_FALSE(r.timed_out);
    CHECK(r.status == 0);
    CHECK(console.size() <= 16384);
    CHECK(console.rfind("[nitrovm: console output over 16384 bytes; ", 0) == 0);
    CHECK(console.find("print: line 1499 of 1500") != std::string::npos);
    CHECK(console.find("probe: exit status 0") != std::string::npos);
    CHECK(console.find("print: line 0 of 1500") == std::string::npos);
    CHECK(r.err.find("console: output reached its 16384 byte limit") != std::string::npos);
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

    // The probe image cut right after its headers: its note and segments run past the end.
    std::ifstream in(kProbe, std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), {});
    REQUIRE(bytes.size() > 512);
    {
        std::ofstream cut(junk_path, std::ios::binary | std::ios::trunc);
        cut.write(bytes.data(), 512);
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

namespace {
// Counts the 512-byte blocks of a backing file that do not hold the probe's nvme-verify pattern
// for controller `ctrl` (guest/probe/README.md: "NVMEPROB", ctrl, lba, then dword w of block k
// is k*0x9E3779B1 + ctrl*0x85EBCA6B + w).
std::size_t pattern_mismatches(const std::string& path, std::uint64_t ctrl, std::size_t& blocks) {
    std::ifstream in(path, std::ios::binary);
    std::vector<char> b(512);
    std::size_t bad = 0;
    blocks = 0;
    for (std::uint64_t k = 0; in.read(b.data(), 512); ++k, ++blocks) {
        std::uint64_t c, lba;
        std::memcpy(&c, &b[8], 8);
        std::memcpy(&lba, &b[16], 8);
        bool ok = std::memcmp(b.data(), "NVMEPROB", 8) == 0 && c == ctrl && lba == k;
        for (std::uint32_t w = 6; ok && w < 128; ++w) {
            std::uint32_t v;
            std::memcpy(&v, &b[w * 4], 4);
            ok = v == static_cast<std::uint32_t>(k * 0x9E3779B1u + ctrl * 0x85EBCA6Bu + w);
        }
        if (!ok) ++bad;
    }
    return bad;
}
}  // namespace

TEST_CASE("nitro: nvme-verify on two EBS volumes through the card; the pattern is in the backing files") {
    // One volume on a disk file system (io_uring), one on tmpfs (copied through a mapping).
    std::string a = "/tmp/nitrovm-test-a-" + std::to_string(::getpid()) + ".img";
    std::string b = "/dev/shm/nitrovm-test-b-" + std::to_string(::getpid()) + ".img";
    ::unlink(a.c_str());
    ::unlink(b.c_str());
    auto r = nitrovm({"--vcpus", "1", "--volume", a + ",size=16M", "--volume", b + ",size=8M", "--", "nvme-verify"});
    CHECK(r.status == 0);
    CHECK(r.out.find("model='Amazon Elastic Block Store' serial='vol") != std::string::npos);
    CHECK(r.out.find("nvme-verify: controllers=2 passed=2") != std::string::npos);
    CHECK(r.err.find("volume " + b + ": on a memory file system") != std::string::npos);
    std::size_t blocks_a = 0, blocks_b = 0;
    CHECK(pattern_mismatches(a, 0, blocks_a) == 0);
    CHECK(pattern_mismatches(b, 1, blocks_b) == 0);
    CHECK(blocks_a == 16 * 2048);
    CHECK(blocks_b == 8 * 2048);
    ::unlink(a.c_str());
    ::unlink(b.c_str());
}

TEST_CASE("nitro: bad volume specs are refused with one line and status 2") {
    auto r = nitrovm({"--volume", "/tmp/x.img,size=12Q", "--", "exit", "0"});
    CHECK(r.status == 2);
    CHECK(r.err.find("bad size '12Q'") != std::string::npos);
    auto missing = nitrovm({"--volume", "/nonexistent-dir/x.img", "--", "exit", "0"});
    CHECK(missing.status == 2);
}


// ---- The Xen I/O model: the probe's blkfront (xen-verify, xen-bench) against dom0's blkback ----
// Run as their own CTest entry (probe_guest_xen), skipped while nitrovm has no Xen mode.
namespace {
std::string temp_image(const char* tag) {
    std::string path = "/tmp/nitrovm-xen-" + std::string(tag) + "-" + std::to_string(::getpid()) + ".img";
    ::unlink(path.c_str());
    return path;
}
}  // namespace

TEST_SUITE("xen") {
TEST_CASE("xen: xen-verify on two 64 MiB vbds through dom0; both backing files hold the pattern") {
    std::string a = temp_image("a"), b = temp_image("b");
    auto r = nitrovm({"--vcpus", "1", "--io-model", "xen", "--volume", a + ",size=64M", "--volume", b + ",size=64M",
                      "--", "xen-verify"});
    CHECK(r.status == 0);
    CHECK(r.out.find("xen-verify: disks=2 passed=2") != std::string::npos);
    CHECK(r.out.find("xen-verify: disk 0 edge last_block=ok sub_page_segment=ok partial_segments=ok "
                     "past_end=-1,-1 ok") != std::string::npos);
    std::size_t blocks_a = 0, blocks_b = 0;
    CHECK(pattern_mismatches(a, 0, blocks_a) == 0);
    CHECK(pattern_mismatches(b, 1, blocks_b) == 0);
    CHECK(blocks_a == 64 * 2048);
    CHECK(blocks_b == 64 * 2048);
    ::unlink(a.c_str());
    ::unlink(b.c_str());
}

TEST_CASE("xen: the same probe image passes nvme-verify under --io-model nitro and xen-verify under --io-model xen") {
    std::string a = temp_image("na"), b = temp_image("nb");
    std::vector<std::string> common = {"--vcpus", "1", "--volume", a + ",size=16M", "--volume", b + ",size=8M"};
    auto with = [&](std::vector<std::string> extra) {
        std::vector<std::string> args = common;
        args.insert(args.end(), extra.begin(), extra.end());
        return args;
    };
    auto nitro = nitrovm(with({"--io-model", "nitro", "--", "nvme-verify"}));
    CHECK(nitro.status == 0);
    CHECK(nitro.out.find("nvme-verify: controllers=2 passed=2") != std::string::npos);
    auto xen = nitrovm(with({"--io-model", "xen", "--", "xen-verify", "irq=1"}));
    CHECK(xen.status == 0);
    CHECK(xen.out.find("xen-verify: disks=2 passed=2") != std::string::npos);
    // Disk index = controller index: the backing files look the same after either model.
    std::size_t blocks_a = 0, blocks_b = 0;
    CHECK(pattern_mismatches(a, 0, blocks_a) == 0);
    CHECK(pattern_mismatches(b, 1, blocks_b) == 0);
    CHECK(blocks_a == 16 * 2048);
    CHECK(blocks_b == 8 * 2048);
    ::unlink(a.c_str());
    ::unlink(b.c_str());
}

TEST_CASE("xen: xen-bench prints a result line per queue depth, polled and with upcalls") {
    std::string a = temp_image("bench");
    auto polled = nitrovm({"--vcpus", "1", "--io-model", "xen", "--volume", a + ",size=16M", "--", "xen-bench",
                           "rw=randwrite", "bs=4096", "qd=1,32", "seconds=1"});
    CHECK(polled.status == 0);
    std::regex result(R"(result: workload=xen-bench rw=randwrite bs=4096 qd=(\d+) iops=(\d+) mbps=[\d.]+ p50_us=\d+ p99_us=\d+)");
    std::vector<std::string> qds;
    for (std::sregex_iterator it(polled.out.begin(), polled.out.end(), result), end; it != end; ++it) {
        qds.push_back((*it)[1]);
        CHECK(std::stoull((*it)[2]) > 0);
    }
    CHECK(qds == std::vector<std::string>{"1", "32"});
    CHECK(polled.out.find("xen-bench: disk 0 ok ios=") != std::string::npos);

    auto irq = nitrovm({"--vcpus", "1", "--io-model", "xen", "--volume", a + ",size=16M", "--", "xen-bench",
                        "rw=randread", "qd=4", "seconds=1", "irq=1"});
    CHECK(irq.status == 0);
    std::smatch m;
    REQUIRE(std::regex_search(irq.out, m, std::regex(R"(xen-bench: disk 0 ok ios=(\d+) .* notify_received=(\d+) upcalls=(\d+))")));
    CHECK(std::stoull(m[1]) > 0);
    CHECK(std::stoull(m[3]) > 0);  // it waited on the upcall counter, so upcalls came
    ::unlink(a.c_str());
}
}  // TEST_SUITE("xen")

namespace {
// The xen suite needs nitrovm's Xen mode and the dom0 process; without them it is skipped.
bool xen_suite_only(int argc, char** argv) {
    for (int i = 1; i < argc; ++i) {
        if (std::strcmp(argv[i], "--test-suite=xen") == 0) return true;
    }
    return false;
}

std::string xen_mode_missing() {
    if (::access(NH_BUILD_DIR "/bin/xen-dom0", X_OK) != 0) return "xen-dom0 is not built";
    auto r = run_process({kNitrovm, "run", "--vcpus", "1", "--io-model", "xen", "--", "exit", "0"}, kTimeout);
    if (r.timed_out || r.status != 0) return "nitrovm --io-model xen does not boot the probe: " + r.err.substr(0, 300);
    return {};
}
}  // namespace

int main(int argc, char** argv) {
    if (::access("/dev/kvm", R_OK | W_OK) != 0) {
        std::printf("SKIP: /dev/kvm is not available on this machine; guest tests need KVM\n");
        return 77;
    }
    if (xen_suite_only(argc, argv)) {
        if (auto why = xen_mode_missing(); !why.empty()) {
            std::printf("SKIP: %s\n", why.c_str());
            return 77;
        }
    }
    doctest::Context ctx(argc, argv);
    return ctx.run();
}
