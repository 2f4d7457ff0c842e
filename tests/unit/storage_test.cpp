#include <doctest/doctest.h>

#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "storage/file_backend.hpp"
#include "storage/ram_backend.hpp"
#include "storage/rate_limiter.hpp"
#include "storage/volume_spec.hpp"

using namespace nitro_card::storage;
using namespace std::chrono_literals;

namespace {

constexpr std::uint64_t kMiB = 1 << 20;

// A file name in dir that does not exist yet; the file is removed at scope exit.
class TempPath {
public:
    explicit TempPath(const std::string& dir) {
        static int counter = 0;
        path_ = fmt::format("{}/nitro_storage_test_{}_{}.img", dir, ::getpid(), counter++);
        ::unlink(path_.c_str());
    }
    ~TempPath() { ::unlink(path_.c_str()); }
    TempPath(const TempPath&) = delete;
    TempPath& operator=(const TempPath&) = delete;
    [[nodiscard]] const std::string& str() const { return path_; }

private:
    std::string path_;
};

// A page-aligned buffer, so tests choose their misalignment on purpose.
class Buffer {
public:
    explicit Buffer(std::size_t n, std::uint8_t fill = 0)
        : p_(static_cast<std::uint8_t*>(std::aligned_alloc(4096, (n + 4095) / 4096 * 4096))),
          n_(n) {
        std::memset(p_.get(), fill, n);
    }
    [[nodiscard]] std::uint8_t* data() const { return p_.get(); }
    [[nodiscard]] std::size_t size() const { return n_; }
    [[nodiscard]] iovec iov(std::size_t off, std::size_t len) const {
        return {p_.get() + off, len};
    }
    void pattern(std::uint8_t seed) {
        for (std::size_t i = 0; i < n_; ++i) p_.get()[i] = static_cast<std::uint8_t>(i * 31 + seed);
    }
    [[nodiscard]] bool all(std::uint8_t v, std::size_t off, std::size_t len) const {
        for (std::size_t i = off; i < off + len; ++i)
            if (p_.get()[i] != v) return false;
        return true;
    }

private:
    struct Free {
        void operator()(std::uint8_t* p) const { std::free(p); }
    };
    std::unique_ptr<std::uint8_t, Free> p_;
    std::size_t n_;
};

bool readable(int fd, int timeout_ms) {
    pollfd p{fd, POLLIN, 0};
    return ::poll(&p, 1, timeout_ms) == 1;
}

// Waits on completion_fd() the way a worker's epoll loop would, until n completions arrived.
std::vector<Completion> wait_for(BlockBackend& b, std::size_t n) {
    std::vector<Completion> got;
    while (got.size() < n) {
        REQUIRE_MESSAGE(readable(b.completion_fd(), 10'000), "no completion within 10 s");
        b.poll_completions([&](const Completion& c) { got.push_back(c); });
    }
    CHECK(got.size() == n);
    return got;
}

Completion run(BlockBackend& b, const Request& r) {
    auto s = b.submit(r);
    REQUIRE_MESSAGE(s.has_value(), (s ? "" : s.error().message));
    return wait_for(b, 1).front();
}

Completion rw(BlockBackend& b, Op op, std::uint64_t offset, std::span<const iovec> iov) {
    std::uint64_t len = 0;
    for (const iovec& v : iov) len += v.iov_len;
    return run(b,
               Request{.op = op, .offset = offset, .length = len, .iov = iov, .tag = offset + 7});
}

std::unique_ptr<FileBackend> open_file(const TempPath& p, std::uint64_t size, bool direct,
                                       bool map = true) {
    auto b = FileBackend::open(
        p.str(), {.create_size = size, .try_direct = direct, .map_memory_files = map});
    REQUIRE_MESSAGE(b.has_value(), (b ? "" : b.error().message));
    return std::move(*b);
}

// Where the file tests run: a disk file system, and tmpfs both through io_uring and mapped.
struct Place {
    const char* dir;
    bool map;
};
const Place kPlaces[] = {{"/tmp", true}, {"/dev/shm", false}, {"/dev/shm", true}};

}  // namespace

TEST_CASE("FileBackend: write and read back, direct where possible and buffered") {
    for (const Place& place : kPlaces) {
        for (bool direct : {true, false}) {
            const std::string dir = place.dir;
            CAPTURE(dir);
            CAPTURE(place.map);
            CAPTURE(direct);
            TempPath path(dir);
            auto b = open_file(path, 4 * kMiB, direct, place.map);
            CHECK(b->mapped() == (place.map && dir == "/dev/shm"));
            CHECK(b->size_bytes() == 4 * kMiB);
            CHECK(b->block_size() == 512);
            if (!direct) CHECK_FALSE(b->direct());

            Buffer out(64 * 1024);
            out.pattern(1);
            const iovec wv[] = {out.iov(0, 8192), out.iov(8192, 64 * 1024 - 8192)};
            Completion c = rw(*b, Op::Write, 1 * kMiB, wv);
            CHECK(c.tag == 1 * kMiB + 7);
            CHECK(c.status == 0);
            CHECK(c.bytes == 64 * 1024);

            Buffer in(64 * 1024);
            const iovec rv[] = {in.iov(0, 4096), in.iov(4096, 60 * 1024)};
            c = rw(*b, Op::Read, 1 * kMiB, rv);
            CHECK(c.status == 0);
            CHECK(c.bytes == 64 * 1024);
            CHECK(std::memcmp(in.data(), out.data(), out.size()) == 0);

            // Unaligned guest buffers and odd segment lengths still work (buffered path).
            const std::uint64_t before = b->buffered_fallbacks();
            Buffer odd(8192 + 1);
            odd.pattern(9);
            const iovec ov[] = {{odd.data() + 1, 100}, {odd.data() + 101, 924}};
            CHECK(rw(*b, Op::Write, 2 * kMiB, ov).status == 0);
            Buffer back(1024 + 3);
            const iovec bv[] = {back.iov(3, 1024)};
            CHECK(rw(*b, Op::Read, 2 * kMiB, bv).status == 0);
            CHECK(std::memcmp(back.data() + 3, odd.data() + 1, 1024) == 0);
            if (b->direct()) CHECK(b->buffered_fallbacks() == before + 2);

            // The data reached the file itself.
            const int fd = ::open(path.str().c_str(), O_RDONLY | O_CLOEXEC);
            REQUIRE(fd >= 0);
            std::vector<std::uint8_t> disk(64 * 1024);
            CHECK(::pread(fd, disk.data(), disk.size(), 1 * kMiB) == 64 * 1024);
            ::close(fd);
            CHECK(std::memcmp(disk.data(), out.data(), disk.size()) == 0);
            CHECK(b->in_flight() == 0);
        }
    }
}

TEST_CASE("FileBackend: opening") {
    TempPath path("/tmp");
    SUBCASE("a missing file without a size is an error naming the path") {
        auto b = FileBackend::open(path.str());
        REQUIRE_FALSE(b.has_value());
        CHECK(b.error().kind == common::ErrorKind::NotFound);
        CHECK(b.error().message.find(path.str()) != std::string::npos);
    }
    SUBCASE("a size that is not a multiple of 512 is refused") {
        auto b = FileBackend::open(path.str(), {.create_size = 1000});
        REQUIRE_FALSE(b.has_value());
        CHECK(b.error().kind == common::ErrorKind::InvalidArgument);
    }
    SUBCASE("an existing file keeps its size and must match a given one") {
        { (void)open_file(path, kMiB, true); }
        auto again = FileBackend::open(path.str());
        REQUIRE(again.has_value());
        CHECK((*again)->size_bytes() == kMiB);
        auto other = FileBackend::open(path.str(), {.create_size = 2 * kMiB});
        REQUIRE_FALSE(other.has_value());
        CHECK(other.error().kind == common::ErrorKind::InvalidArgument);
    }
    SUBCASE("queue depth is bounded") {
        auto b = FileBackend::open(path.str(), {.create_size = kMiB, .queue_depth = 0});
        CHECK_FALSE(b.has_value());
    }
}

TEST_CASE("check_request refuses bad ranges and buffers before any I/O") {
    const std::uint64_t size = kMiB;
    Buffer buf(4096);
    const iovec one[] = {buf.iov(0, 512)};
    const iovec two[] = {buf.iov(0, 512), buf.iov(512, 512)};
    auto kind = [&](Request r) {
        auto s = check_request(r, size);
        REQUIRE_FALSE(s.has_value());
        return s.error().kind;
    };
    using common::ErrorKind;
    CHECK(kind({.op = Op::Read, .offset = size, .length = 512, .iov = one}) ==
          ErrorKind::OutOfRange);
    CHECK(kind({.op = Op::Write, .offset = size - 512, .length = 1024, .iov = two}) ==
          ErrorKind::OutOfRange);
    // offset + length wraps around 2^64.
    CHECK(kind({.op = Op::Discard, .offset = ~std::uint64_t{511}, .length = 1024}) ==
          ErrorKind::OutOfRange);
    CHECK(kind({.op = Op::Read, .offset = 100, .length = 512, .iov = one}) ==
          ErrorKind::InvalidArgument);
    CHECK(kind({.op = Op::Read, .offset = 0, .length = 100, .iov = one}) ==
          ErrorKind::InvalidArgument);
    CHECK(kind({.op = Op::Read, .offset = 0, .length = 0}) == ErrorKind::InvalidArgument);
    CHECK(kind({.op = Op::Read, .offset = 0, .length = 1024, .iov = one}) ==
          ErrorKind::InvalidArgument);
    CHECK(kind({.op = Op::Write, .offset = 0, .length = 512}) == ErrorKind::InvalidArgument);
    CHECK(kind({.op = Op::Flush, .offset = 512}) == ErrorKind::InvalidArgument);
    CHECK(kind({.op = Op::WriteZeroes, .offset = 0, .length = 512, .iov = one}) ==
          ErrorKind::InvalidArgument);
    const iovec null_buf[] = {{nullptr, 512}};
    CHECK(kind({.op = Op::Write, .offset = 0, .length = 512, .iov = null_buf}) ==
          ErrorKind::InvalidArgument);
    CHECK(
        check_request({.op = Op::Write, .offset = size - 1024, .length = 1024, .iov = two}, size));
    CHECK(check_request({.op = Op::Flush}, size));
}

TEST_CASE("FileBackend: refused requests leave the volume and the queue untouched") {
    TempPath path("/tmp");
    auto b = open_file(path, kMiB, true);
    Buffer marker(512, 0x5a);
    const iovec mv[] = {marker.iov(0, 512)};
    REQUIRE(rw(*b, Op::Write, kMiB - 512, mv).status == 0);

    Buffer junk(1024, 0xee);
    const iovec jv[] = {junk.iov(0, 1024)};
    auto s =
        b->submit({.op = Op::Write, .offset = kMiB - 512, .length = 1024, .iov = jv, .tag = 1});
    REQUIRE_FALSE(s.has_value());
    CHECK(s.error().kind == common::ErrorKind::OutOfRange);
    s = b->submit({.op = Op::Write, .offset = 256, .length = 1024, .iov = jv, .tag = 2});
    REQUIRE_FALSE(s.has_value());
    CHECK(s.error().kind == common::ErrorKind::InvalidArgument);
    CHECK(b->in_flight() == 0);
    CHECK_FALSE(readable(b->completion_fd(), 0));

    Buffer back(512);
    const iovec bv[] = {back.iov(0, 512)};
    REQUIRE(rw(*b, Op::Read, kMiB - 512, bv).status == 0);
    CHECK(back.all(0x5a, 0, 512));
}

TEST_CASE("FileBackend: flush, write-zeroes and discard") {
    for (const Place& place : kPlaces) {
        for (bool direct : {true, false}) {
            const std::string dir = place.dir;
            CAPTURE(dir);
            CAPTURE(place.map);
            CAPTURE(direct);
            TempPath path(dir);
            auto b = open_file(path, 8 * kMiB, direct, place.map);
            Buffer fill(8 * kMiB, 0xab);
            const iovec fv[] = {fill.iov(0, fill.size())};
            REQUIRE(rw(*b, Op::Write, 0, fv).status == 0);

            Completion c = run(*b, {.op = Op::Flush, .tag = 99});
            CHECK(c.tag == 99);
            CHECK(c.status == 0);

            // Write-zeroes over more than one zero-fill chunk, not page aligned at either end.
            const std::uint64_t z_off = 512, z_len = 3 * kMiB + 1024;
            c = run(*b, {.op = Op::WriteZeroes, .offset = z_off, .length = z_len, .tag = 5});
            CHECK(c.status == 0);
            CHECK(c.bytes == z_len);
            // Discard a page-aligned range and an odd one.
            CHECK(run(*b, {.op = Op::Discard, .offset = 5 * kMiB, .length = kMiB}).status == 0);
            CHECK(run(*b, {.op = Op::Discard, .offset = 7 * kMiB + 512, .length = 1536}).status ==
                  0);

            Buffer back(8 * kMiB, 0x11);
            const iovec bv[] = {back.iov(0, back.size())};
            REQUIRE(rw(*b, Op::Read, 0, bv).status == 0);
            CHECK(back.all(0xab, 0, z_off));
            CHECK(back.all(0, z_off, z_len));
            CHECK(back.all(0xab, z_off + z_len, 5 * kMiB - (z_off + z_len)));
            CHECK(back.all(0, 5 * kMiB, kMiB));
            CHECK(back.all(0xab, 6 * kMiB, kMiB + 512));
            CHECK(back.all(0, 7 * kMiB + 512, 1536));
            CHECK(back.all(0xab, 7 * kMiB + 2048, kMiB - 2048));
            CHECK(run(*b, {.op = Op::Flush}).status == 0);
        }
    }
}

TEST_CASE("FileBackend: a full queue reports busy until completions are reaped") {
    TempPath path("/tmp");
    auto opened = FileBackend::open(path.str(), {.create_size = kMiB, .queue_depth = 4});
    REQUIRE(opened.has_value());
    FileBackend& b = **opened;
    Buffer buf(4 * 4096);
    std::vector<iovec> iov;
    iov.reserve(4);
    for (std::uint64_t i = 0; i < 4; ++i) {
        iov.push_back(buf.iov(i * 4096, 4096));
        REQUIRE(b.submit(
            {.op = Op::Read, .offset = i * 4096, .length = 4096, .iov = {&iov[i], 1}, .tag = i}));
    }
    CHECK(b.in_flight() == 4);
    auto s = b.submit({.op = Op::Flush, .tag = 4});
    REQUIRE_FALSE(s.has_value());
    CHECK(is_busy(s.error()));
    CHECK_FALSE(is_busy(common::Error::invalid("x")));

    auto done = wait_for(b, 4);
    std::uint64_t tags = 0;
    for (const Completion& c : done) {
        CHECK(c.status == 0);
        tags |= 1U << c.tag;
    }
    CHECK(tags == 0xf);
    CHECK(b.in_flight() == 0);
    CHECK(run(b, {.op = Op::Flush, .tag = 4}).status == 0);
}

TEST_CASE("FileBackend: teardown with requests in flight") {
    TempPath path("/dev/shm");
    Buffer buf(64 * 1024, 3);
    const iovec v[] = {buf.iov(0, buf.size())};
    auto b = open_file(path, kMiB, true);
    for (std::uint64_t i = 0; i < 8; ++i)
        REQUIRE(b->submit(
            {.op = Op::Write, .offset = i * 64 * 1024, .length = 64 * 1024, .iov = v, .tag = i}));
    b.reset();  // waits for the kernel before the buffers go away
    auto again = open_file(path, kMiB, false);
    Buffer back(64 * 1024);
    const iovec bv[] = {back.iov(0, back.size())};
    CHECK(rw(*again, Op::Read, 7 * 64 * 1024, bv).status == 0);
    CHECK(back.all(3, 0, back.size()));
}

TEST_CASE("FileBackend: a mapped volume whose file is truncated fails requests, not the process") {
    TempPath path("/dev/shm");
    auto b = open_file(path, 4 * kMiB, false);
    REQUIRE(b->mapped());
    Buffer out(8192);
    out.pattern(4);
    const iovec wv[] = {out.iov(0, 4096), out.iov(4096, 4096)};
    REQUIRE(rw(*b, Op::Write, 0, wv).status == 0);
    REQUIRE(rw(*b, Op::Write, 3 * kMiB, wv).status == 0);

    // Someone on the host cuts the file to half its size under the running volume.
    REQUIRE(::truncate(path.str().c_str(), 2 * kMiB) == 0);
    Buffer in(8192, 0xee);
    const iovec rv[] = {in.iov(0, 4096), in.iov(4096, 4096)};
    Completion c = rw(*b, Op::Read, 3 * kMiB, rv);
    CHECK(c.status == -EIO);
    CHECK(c.bytes == 0);
    // A request that straddles the new end: the part before it is copied and counted.
    c = rw(*b, Op::Read, 2 * kMiB - 4096, rv);
    CHECK(c.status == -EIO);
    CHECK(c.bytes == 4096);
    c = rw(*b, Op::Write, 3 * kMiB, wv);
    CHECK(c.status == -ENOSPC);
    // What the file still holds is served as before.
    c = rw(*b, Op::Read, 0, rv);
    CHECK(c.status == 0);
    CHECK(std::memcmp(in.data(), out.data(), out.size()) == 0);
    CHECK(b->in_flight() == 0);
}

TEST_CASE("RamBackend: round trip, zeroing and completion_fd") {
    auto made = RamBackend::create(2 * kMiB, 2);
    REQUIRE(made.has_value());
    RamBackend& b = **made;
    CHECK(b.size_bytes() == 2 * kMiB);
    CHECK_FALSE(RamBackend::create(1000).has_value());

    Buffer out(3 * 4096);
    out.pattern(4);
    const iovec wv[] = {out.iov(0, 1000), out.iov(1000, 3 * 4096 - 1000)};
    REQUIRE(
        b.submit({.op = Op::Write, .offset = 4096 - 512, .length = 3 * 4096, .iov = wv, .tag = 1}));
    CHECK(readable(b.completion_fd(), 0));
    CHECK(b.in_flight() == 1);
    auto c = wait_for(b, 1);
    CHECK(c[0].tag == 1);
    CHECK(c[0].bytes == 3 * 4096);
    CHECK_FALSE(readable(b.completion_fd(), 0));

    Buffer in(3 * 4096);
    const iovec rv[] = {in.iov(0, 3 * 4096)};
    CHECK(rw(b, Op::Read, 4096 - 512, rv).status == 0);
    CHECK(std::memcmp(in.data(), out.data(), in.size()) == 0);

    CHECK(run(b, {.op = Op::Discard, .offset = 4096, .length = 8192 + 512}).status == 0);
    CHECK(run(b, {.op = Op::WriteZeroes, .offset = 4096 - 512, .length = 512}).status == 0);
    CHECK(rw(b, Op::Read, 4096 - 512, rv).status == 0);
    CHECK(in.all(0, 0, 8192 + 1024));
    CHECK(std::memcmp(in.data() + 8192 + 1024, out.data() + 8192 + 1024, 4096 - 1024) == 0);

    CHECK_FALSE(
        b.submit({.op = Op::Read, .offset = 2 * kMiB, .length = 4096, .iov = rv}).has_value());
    REQUIRE(b.submit({.op = Op::Flush}));
    REQUIRE(b.submit({.op = Op::Flush}));
    auto s = b.submit({.op = Op::Flush});
    REQUIRE_FALSE(s.has_value());
    CHECK(is_busy(s.error()));
    CHECK(wait_for(b, 2).size() == 2);
}

TEST_CASE("RamBackend: resubmitting from the completion callback stays bounded") {
    auto made = RamBackend::create(kMiB, 4);
    REQUIRE(made.has_value());
    RamBackend& b = **made;
    for (int i = 0; i < 4; ++i) REQUIRE(b.submit({.op = Op::Flush}));
    const std::size_t n =
        b.poll_completions([&](const Completion&) { REQUIRE(b.submit({.op = Op::Flush})); });
    CHECK(n == 4);
    CHECK(b.in_flight() == 4);
    CHECK(readable(b.completion_fd(), 0));  // the resubmitted ones are still signalled
}

TEST_CASE("io_cost: EBS counts I/Os in 256 KiB units") {
    CHECK(io_cost(0) == 1);
    CHECK(io_cost(512) == 1);
    CHECK(io_cost(256 * 1024) == 1);
    CHECK(io_cost(256 * 1024 + 1) == 2);
    CHECK(io_cost(kMiB) == 4);
    CHECK(io_cost(~std::uint64_t{0}) == (~std::uint64_t{0}) / kIoUnitBytes + 1);
}

TEST_CASE("TokenBucket: 3000 IOPS admits exactly 3000 per simulated second after the burst") {
    RateLimiter lim({.iops = 3000, .bytes_per_second = std::nullopt});
    const TimePoint t0 = TimePoint{} + 100s;
    int burst = 0;
    while (lim.try_admit(4096, t0)) ++burst;
    CHECK(burst == 3000);

    // Jump to each retry time, as a worker's timer would.
    TimePoint t = t0;
    int admitted = 0;
    while (true) {
        Admission a = lim.try_admit(4096, t);
        if (a) {
            ++admitted;
            continue;
        }
        CHECK(a.retry_at > t);
        if (a.retry_at > t0 + 1s) break;
        t = a.retry_at;
    }
    CHECK(admitted == 3000);
    CHECK(t == t0 + 1s);

    // Coarse 1 ms ticks see the same total.
    RateLimiter ticks({.iops = 3000, .bytes_per_second = std::nullopt});
    while (ticks.try_admit(0, t0)) {
    }
    int per_tick = 0;
    for (int ms = 1; ms <= 1000; ++ms)
        while (ticks.try_admit(0, t0 + std::chrono::milliseconds(ms))) ++per_tick;
    CHECK(per_tick == 3000);
}

TEST_CASE("TokenBucket: byte limit, large I/Os and the one-second burst cap") {
    RateLimiter lim(Limits::gp3());
    const TimePoint t0 = TimePoint{} + 1s;
    // 125 MiB/s in 256 KiB I/Os is 500 per second; the IOPS limit does not bind.
    int n = 0;
    while (lim.try_admit(256 * 1024, t0)) ++n;
    CHECK(n == 500);
    n = 0;
    for (int ms = 1; ms <= 1000; ++ms)
        while (lim.try_admit(256 * 1024, t0 + std::chrono::milliseconds(ms))) ++n;
    CHECK(n == 500);

    // A long idle period still refills only one second's worth.
    n = 0;
    while (lim.try_admit(256 * 1024, t0 + 60s)) ++n;
    CHECK(n == 500);

    // 1 MiB I/Os cost four IOPS tokens each.
    RateLimiter iops({.iops = 10, .bytes_per_second = std::nullopt});
    CHECK(iops.try_admit(kMiB, t0));
    CHECK(iops.try_admit(kMiB, t0));
    CHECK_FALSE(iops.try_admit(kMiB, t0));
    CHECK(iops.try_admit(256 * 1024, t0));
    CHECK(iops.try_admit(1, t0));
    CHECK_FALSE(iops.try_admit(1, t0));

    // An I/O bigger than the bucket waits for a full bucket, then leaves it in debt.
    RateLimiter small({.iops = std::nullopt, .bytes_per_second = kMiB});
    CHECK(small.try_admit(512, t0));
    Admission a = small.try_admit(4 * kMiB, t0);
    REQUIRE_FALSE(a);
    // 512 bytes at 1 MiB/s take 488281.25 ns; waits round up to the next nanosecond.
    CHECK(a.retry_at == t0 + 488282ns);
    CHECK(small.try_admit(4 * kMiB, a.retry_at));
    a = small.try_admit(512, t0 + 488282ns);
    REQUIRE_FALSE(a);
    CHECK(a.retry_at == t0 + 488282ns + 3s + 488282ns);  // three MiB of debt, then 512 bytes
}

TEST_CASE("TokenBucket: unlimited admits everything") {
    RateLimiter lim(Limits::unlimited());
    for (int i = 0; i < 100000; ++i) REQUIRE(lim.try_admit(kMiB, TimePoint{}));
    CHECK(lim.stats().throttled_requests == 0);
    CHECK(TokenBucket::unlimited().is_unlimited());
    RateLimiter bytes_only({.iops = std::nullopt, .bytes_per_second = 1024});
    CHECK(bytes_only.try_admit(0, TimePoint{}));
    CHECK(bytes_only.try_admit(1024, TimePoint{}));
    CHECK_FALSE(bytes_only.try_admit(512, TimePoint{}));
}

TEST_CASE("RateLimiter: throttled time and count") {
    RateLimiter lim({.iops = 1000, .bytes_per_second = std::nullopt});
    const TimePoint t0 = TimePoint{} + 5s;
    while (lim.try_admit(0, t0)) {
    }
    CHECK(lim.stats().throttled_requests == 1);  // the refusal that ended the loop
    CHECK_FALSE(lim.try_admit(0, t0 + 500us));   // same request, still waiting
    CHECK(lim.try_admit(0, t0 + 1ms));
    CHECK(lim.stats().throttled_requests == 1);
    CHECK(lim.stats().throttled_ns == 1'000'000);

    Admission a = lim.try_admit(0, t0 + 1ms);
    REQUIRE_FALSE(a);
    CHECK(a.retry_at == t0 + 2ms);
    CHECK(lim.try_admit(0, t0 + 3ms));  // retried late: the whole wait counts
    CHECK(lim.stats().throttled_requests == 2);
    CHECK(lim.stats().throttled_ns == 3'000'000);
}

TEST_CASE("CompositeLimiter: both must admit, and a refusal takes nothing") {
    const TimePoint t0 = TimePoint{} + 1s;
    SUBCASE("the instance refuses") {
        RateLimiter vol({.iops = 10, .bytes_per_second = std::nullopt});
        RateLimiter inst({.iops = 2, .bytes_per_second = std::nullopt});
        CompositeLimiter both(vol, inst);
        CHECK(both.try_admit(512, t0));
        CHECK(both.try_admit(512, t0));
        Admission a = both.try_admit(512, t0);
        REQUIRE_FALSE(a);
        CHECK(a.retry_at == t0 + 500ms);
        for (int i = 0; i < 8; ++i) CHECK(vol.try_admit(512, t0));
        CHECK_FALSE(vol.try_admit(512, t0));
        CHECK(inst.stats().throttled_requests == 1);
    }
    SUBCASE("the volume refuses") {
        RateLimiter vol({.iops = 2, .bytes_per_second = std::nullopt});
        RateLimiter inst({.iops = 10, .bytes_per_second = std::nullopt});
        CompositeLimiter both(vol, inst);
        CHECK(both.try_admit(512, t0));
        CHECK(both.try_admit(512, t0));
        CHECK_FALSE(both.try_admit(512, t0));
        for (int i = 0; i < 8; ++i) CHECK(inst.try_admit(512, t0));
        CHECK_FALSE(inst.try_admit(512, t0));
        CHECK(vol.stats().throttled_requests == 1);
        CHECK(both.try_admit(512, t0 + 500ms));
        CHECK(vol.stats().throttled_ns == 500'000'000);
    }
    SUBCASE("both refuse: retry when both can admit") {
        RateLimiter vol({.iops = 4, .bytes_per_second = std::nullopt});
        RateLimiter inst({.iops = 1, .bytes_per_second = std::nullopt});
        CompositeLimiter both(vol, inst);
        for (int i = 0; i < 4; ++i) CHECK(vol.try_admit(0, t0));
        CHECK(inst.try_admit(0, t0));
        Admission a = both.try_admit(0, t0);
        REQUIRE_FALSE(a);
        CHECK(a.retry_at == t0 + 1s);
        CHECK(both.try_admit(0, a.retry_at));
    }
}

TEST_CASE("parse_volume_spec") {
    auto ok = [](std::string_view s) {
        auto v = parse_volume_spec(s);
        REQUIRE_MESSAGE(v.has_value(), (v ? "" : v.error().message));
        return *v;
    };
    auto error = [](std::string_view s) {
        auto v = parse_volume_spec(s);
        REQUIRE_FALSE(v.has_value());
        CHECK(v.error().kind == common::ErrorKind::InvalidArgument);
        return v.error().message;
    };

    VolumeSpec plain = ok("/tmp/a.img");
    CHECK(plain.path == "/tmp/a.img");
    CHECK_FALSE(plain.size_bytes.has_value());
    CHECK(plain.limits == Limits::gp3());
    CHECK_FALSE(plain.ram);

    VolumeSpec full = ok("/tmp/a.img,size=64M,iops=16000,mbps=1000");
    CHECK(full.size_bytes == 64 * kMiB);
    CHECK(full.limits.iops == 16000);
    CHECK(full.limits.bytes_per_second == 1000 * kMiB);

    VolumeSpec ram = ok("scratch,ram,size=1G,iops=unlimited,mbps=unlimited");
    CHECK(ram.ram);
    CHECK(ram.size_bytes == 1024 * kMiB);
    CHECK(ram.limits == Limits::unlimited());

    CHECK(parse_size("512") == 512);
    CHECK(parse_size("4k") == 4096);
    CHECK(parse_size("2G") == 2ULL << 30);
    CHECK_FALSE(parse_size("").has_value());
    CHECK_FALSE(parse_size("K").has_value());
    CHECK_FALSE(parse_size("-1").has_value());
    CHECK_FALSE(parse_size("1 M").has_value());
    CHECK_FALSE(parse_size("17179869184G").has_value());

    CHECK(error("/tmp/a.img,size=12Q") == "volume spec '/tmp/a.img,size=12Q': bad size '12Q'");
    CHECK(error("/tmp/a.img,size=1000").find("bad size '1000'") != std::string::npos);
    CHECK(error("/tmp/a.img,size=0").find("bad size '0'") != std::string::npos);
    CHECK(error("/tmp/a.img,size=").find("bad size ''") != std::string::npos);
    CHECK(error("/tmp/a.img,size=99999999999999999999").find("bad size") != std::string::npos);
    CHECK(error("/tmp/a.img,iops=0").find("bad iops '0'") != std::string::npos);
    CHECK(error("/tmp/a.img,iops=fast").find("bad iops 'fast'") != std::string::npos);
    CHECK(error("/tmp/a.img,mbps=-5").find("bad mbps '-5'") != std::string::npos);
    CHECK(error("/tmp/a.img,mbps=17592186044416").find("bad mbps") != std::string::npos);
    CHECK(error("/tmp/a.img,colour=red").find("unknown field 'colour'") != std::string::npos);
    CHECK(error("/tmp/a.img,size=1M,size=2M").find("'size' given twice") != std::string::npos);
    CHECK(error("/tmp/a.img,,ram").find("empty field") != std::string::npos);
    CHECK(error("/tmp/a.img,").find("empty field") != std::string::npos);
    CHECK(error("/tmp/a.img,iops").find("'iops' needs a value") != std::string::npos);
    CHECK(error("/tmp/a.img,ram=yes").find("'ram' takes no value") != std::string::npos);
    CHECK(error("scratch,ram").find("needs size=") != std::string::npos);
    CHECK(error("").find("empty path") != std::string::npos);
    CHECK(error(",size=1M").find("empty path") != std::string::npos);
}

TEST_CASE("volume spec: instance-store flag") {
    auto s = nitro_card::storage::parse_volume_spec("/tmp/local.img,size=8M,instance-store");
    REQUIRE(s.has_value());
    CHECK(s->instance_store);
    CHECK_FALSE(nitro_card::storage::parse_volume_spec("/tmp/a,instance-store=1").has_value());
    CHECK_FALSE(nitro_card::storage::parse_volume_spec("/tmp/a,instance-store,instance-store").has_value());
    CHECK_FALSE(nitro_card::storage::parse_volume_spec("/tmp/a.img").value().instance_store);
}
