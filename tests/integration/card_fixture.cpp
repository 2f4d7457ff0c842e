#include "card_fixture.hpp"

#include <doctest/doctest.h>

#include <fcntl.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <stdexcept>
#include <thread>

namespace integration {

namespace card = common::card;
using common::GuestAddr;

TempDir::TempDir() {
    char tmpl[] = "/tmp/nitro-card-it-XXXXXX";
    if (::mkdtemp(tmpl) == nullptr) throw std::runtime_error("mkdtemp failed");
    path_ = tmpl;
}

TempDir::~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
}

Card::Card(std::vector<std::string> volume_options, std::vector<std::string> extra_args,
           std::function<void(const TempDir&)> prefill) {
    if (prefill) prefill(dir_);
    std::vector<std::string> args{"--socket-dir", dir_.path()};
    for (std::size_t i = 0; i < volume_options.size(); ++i) {
        args.push_back("--volume");
        args.push_back(volume(static_cast<unsigned>(i)) + "," + volume_options[i]);
    }
    args.insert(args.end(), extra_args.begin(), extra_args.end());
    auto p = testsupport::CardProcess::start(kNitroCard, args, dir_.file("card.log"));
    if (!p) FAIL(p.error().message);
    proc_.emplace(std::move(*p));
}

std::vector<std::byte> read_file(const std::string& path, std::uint64_t offset, std::size_t len) {
    auto fd = common::UniqueFd::open(path, O_RDONLY | O_CLOEXEC);
    REQUIRE_MESSAGE(fd.has_value(), fd.error().message);
    std::vector<std::byte> out(len);
    REQUIRE(::pread(fd->get(), out.data(), len, static_cast<off_t>(offset)) ==
            static_cast<ssize_t>(len));
    return out;
}

void write_volume_file(const std::string& path, std::uint64_t size, std::uint64_t offset,
                       std::span<const std::byte> data) {
    auto fd = common::UniqueFd::open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    REQUIRE_MESSAGE(fd.has_value(), fd.error().message);
    REQUIRE(::ftruncate(fd->get(), static_cast<off_t>(size)) == 0);
    REQUIRE(::pwrite(fd->get(), data.data(), data.size(), static_cast<off_t>(offset)) ==
            static_cast<ssize_t>(data.size()));
}

void fill_pattern(std::span<std::byte> out, unsigned seed) {
    std::uint32_t x = seed * 2654435761u + 1;
    for (auto& b : out) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        b = static_cast<std::byte>(x);
    }
}

std::vector<std::byte> pattern(std::size_t len, unsigned seed) {
    std::vector<std::byte> v(len);
    fill_pattern(v, seed);
    return v;
}

std::string trimmed(const char* field, std::size_t n) {
    std::string s(field, n);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\0')) s.pop_back();
    return s;
}

// ---- Vmm -----------------------------------------------------------------------------------

namespace {

common::GuestMemory make_guest_ram() {
    auto mem = common::GuestMemory::create(
        {{GuestAddr(0), kLowRamBytes, 0}, {GuestAddr(kHighRamBase), kHighRamBytes, kLowRamBytes}});
    if (!mem) throw std::runtime_error(mem.error().message);
    return std::move(*mem);
}

}  // namespace

Vmm::Vmm(const std::string& socket) : mem_(make_guest_ram()) {
    auto c = testsupport::CardClient::connect(socket);
    REQUIRE_MESSAGE(c.has_value(), c.error().message);
    client_.emplace(std::move(*c));
    regs_ = std::make_unique<testsupport::CardRegisters>(*client_);
    driver_ = std::make_unique<testsupport::NvmeDriverMock>(mem_, *regs_, kHeapBase, kLowRamBytes);
}

void Vmm::attach() {
    auto v = client_->version();
    REQUIRE_MESSAGE(v.has_value(), v.error().message);
    CHECK(v->major == card::kProtocolMajor);
    auto m = client_->dma_map(mem_);
    REQUIRE_MESSAGE(m.has_value(), m.error().message);
    auto bar0 = client_->region_info(card::kPciBar0RegionIndex);
    REQUIRE_MESSAGE(bar0.has_value(), bar0.error().message);
    auto cfg = client_->region_info(card::kPciConfigRegionIndex);
    REQUIRE_MESSAGE(cfg.has_value(), cfg.error().message);
    auto irq = client_->irq_info(card::kPciMsixIrqIndex);
    REQUIRE_MESSAGE(irq.has_value(), irq.error().message);
    REQUIRE(irq->count > 0);
    irqs_.clear();
    irq_totals_.assign(irq->count, 0);
    std::vector<int> fds;
    for (unsigned i = 0; i < irq->count; ++i) {
        auto e = common::EventFd::create();
        REQUIRE(e.has_value());
        fds.push_back(e->fd());
        irqs_.push_back(std::move(*e));
    }
    auto s = client_->set_irqs(fds);
    REQUIRE_MESSAGE(s.has_value(), s.error().message);
}

std::uint64_t Vmm::irq_count(unsigned vector) {
    REQUIRE(vector < irqs_.size());
    auto n = irqs_[vector].consume();
    REQUIRE(n.has_value());
    irq_totals_[vector] += *n;
    return irq_totals_[vector];
}

bool Vmm::wait_irqs(unsigned vector, std::uint64_t at_least) {
    const auto deadline = std::chrono::steady_clock::now() + kWait;
    while (irq_count(vector) < at_least) {
        if (std::chrono::steady_clock::now() >= deadline) return false;
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return true;
}

std::vector<card::IoFdEntry> Vmm::register_doorbell_fds() {
    auto r = client_->region_io_fds(card::kPciBar0RegionIndex);
    REQUIRE_MESSAGE(r.has_value(), r.error().message);
    std::vector<std::pair<std::uint64_t, common::UniqueFd>> fds;
    for (const auto& e : r->entries) {
        REQUIRE(e.fd_index < r->fds.size());
        REQUIRE(r->fds[e.fd_index].valid());
        fds.emplace_back(e.offset, std::move(r->fds[e.fd_index]));
    }
    driver_->set_doorbell_fds(std::move(fds));
    return r->entries;
}

}  // namespace integration
