#include <doctest/doctest.h>

#include <unistd.h>

#include <cstring>

#include "cli.hpp"
#include "devices/platform.hpp"
#include "devices/serial.hpp"
#include "kvm/cpuid.hpp"
#include "vmm/exit.hpp"

using namespace hypervisor;

TEST_CASE("exit decoding: port, MMIO and malformed exits") {
    std::vector<std::uint8_t> page(4096, 0);
    auto* run = reinterpret_cast<kvm_run*>(page.data());
    run->exit_reason = KVM_EXIT_IO;
    run->io.direction = KVM_EXIT_IO_OUT;
    run->io.size = 1;
    run->io.port = 0x3f8;
    run->io.count = 1;
    run->io.data_offset = 1024;
    auto e = decode_exit(*run, page.size());
    REQUIRE(std::holds_alternative<PioExit>(e));
    CHECK(std::get<PioExit>(e).port == 0x3f8);
    CHECK(std::get<PioExit>(e).write);
    run->io.count = 5000;  // string I/O running past the kvm_run mapping
    CHECK(std::holds_alternative<UnknownExit>(decode_exit(*run, page.size())));
    run->io.count = 1;
    run->io.size = 3;
    CHECK(std::holds_alternative<UnknownExit>(decode_exit(*run, page.size())));

    run->exit_reason = KVM_EXIT_MMIO;
    run->mmio.phys_addr = 0xc0000004;
    run->mmio.len = 4;
    run->mmio.is_write = 0;
    auto m = decode_exit(*run, page.size());
    REQUIRE(std::holds_alternative<MmioExit>(m));
    CHECK(std::get<MmioExit>(m).addr == 0xc0000004);
    CHECK_FALSE(std::get<MmioExit>(m).write);
    run->mmio.len = 16;
    CHECK(std::holds_alternative<UnknownExit>(decode_exit(*run, page.size())));

    run->exit_reason = KVM_EXIT_SHUTDOWN;
    CHECK(std::holds_alternative<ShutdownExit>(decode_exit(*run, page.size())));
    run->exit_reason = KVM_EXIT_INTR;
    CHECK(std::holds_alternative<IgnoredExit>(decode_exit(*run, page.size())));
    run->exit_reason = KVM_EXIT_INTERNAL_ERROR;
    run->internal.suberror = 1;
    run->internal.ndata = 100;  // more than the data array: clamped
    auto ie = decode_exit(*run, page.size());
    REQUIRE(std::holds_alternative<InternalErrorExit>(ie));
    CHECK(std::get<InternalErrorExit>(ie).suberror == 1);
    run->exit_reason = 9999;
    CHECK(std::holds_alternative<UnknownExit>(decode_exit(*run, page.size())));
}

TEST_CASE("CPUID filter: APIC ids, counts and hidden leaves") {
    std::vector<kvm_cpuid_entry2> in(4);
    in[0].function = 1;
    in[0].edx = 1u << 28;
    in[1].function = 0xb;
    in[1].index = 1;
    in[2].function = 6;
    in[2].eax = 0x77;
    in[3].function = 7;
    in[3].edx = 1u << 29;
    auto out = filter_cpuid(in, 3, 4);
    CHECK((out[0].ebx >> 24) == 3);
    CHECK(((out[0].ebx >> 16) & 0xff) == 4);
    CHECK((out[0].ecx & (1u << 31)) != 0);
    CHECK(out[1].edx == 3);
    CHECK(out[1].ebx == 4);
    CHECK(out[2].eax == 0);
    CHECK((out[3].edx & (1u << 29)) == 0);
    auto single = filter_cpuid(in, 0, 1);
    CHECK((single[0].edx & (1u << 28)) == 0);
}

TEST_CASE("16550: transmit goes out, THRE interrupt raised and cleared, loopback, input") {
    int fds[2];
    REQUIRE(::pipe(fds) == 0);
    std::vector<bool> levels;
    Serial16550 uart(ConsoleSink(fds[1], 0), [&](bool l) { levels.push_back(l); });
    std::uint8_t b = 'A';
    uart.write(0, std::span<const std::uint8_t>(&b, 1));
    char got = 0;
    REQUIRE(::read(fds[0], &got, 1) == 1);
    CHECK(got == 'A');
    CHECK(uart.bytes_out() == 1);
    std::uint8_t ier = 0x02;  // THRI
    uart.write(1, std::span<const std::uint8_t>(&ier, 1));
    REQUIRE_FALSE(levels.empty());
    CHECK(levels.back());
    std::uint8_t iir;
    uart.read(2, std::span<std::uint8_t>(&iir, 1));
    CHECK((iir & 0x0f) == 0x02);
    CHECK_FALSE(levels.back());  // reading IIR cleared it
    std::uint8_t in[3] = {'x', 'y', 'z'};
    uart.push_input(in);
    std::uint8_t lsr;
    uart.read(5, std::span<std::uint8_t>(&lsr, 1));
    CHECK((lsr & 1) == 1);
    std::uint8_t c;
    uart.read(0, std::span<std::uint8_t>(&c, 1));
    CHECK(c == 'x');
    ::close(fds[0]);
    ::close(fds[1]);
}

TEST_CASE("platform: exit port and i8042 reset stop the VM with the right status") {
    VmControl a;
    DebugExitPort port(a);
    std::uint8_t v = 7;
    port.write(0, std::span<const std::uint8_t>(&v, 1));
    auto s = a.wait(std::chrono::steady_clock::now());
    REQUIRE(s.has_value());
    CHECK(s->status == 7);
    CHECK(s->reason == StopReason::GuestExit);
    std::uint8_t w = 9;  // the first stop wins
    port.write(0, std::span<const std::uint8_t>(&w, 1));
    CHECK(a.wait(std::nullopt)->status == 7);

    VmControl b;
    I8042 kbd(b);
    std::uint8_t cmd = 0x20, val = 0;
    kbd.write(4, std::span<const std::uint8_t>(&cmd, 1));
    kbd.read(0, std::span<std::uint8_t>(&val, 1));
    CHECK(val == 0x30);
    CHECK_FALSE(b.stopping());
    cmd = 0xfe;
    kbd.write(4, std::span<const std::uint8_t>(&cmd, 1));
    REQUIRE(b.stopping());
    CHECK(b.wait(std::nullopt)->reason == StopReason::Reset);
}

TEST_CASE("CLI: sizes and guest arguments") {
    CHECK(*cli::parse_size("256") == 256ull << 20);
    CHECK(*cli::parse_size("1G") == 1ull << 30);
    CHECK(*cli::parse_size("512MiB") == 512ull << 20);
    CHECK_FALSE(cli::parse_size("12X").has_value());
    CHECK_FALSE(cli::parse_size("G").has_value());
    CHECK_FALSE(cli::parse_size("99999999999999G").has_value());
    CHECK(*cli::join_guest_args({"sh", "-c", "exit 7"}) == "sh -c \"exit 7\"");
    CHECK_FALSE(cli::join_guest_args({"a\"b"}).has_value());
}
