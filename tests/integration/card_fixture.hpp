// What every card integration test needs: a temporary directory, a real nitro-card process with
// fresh volume files in it, and a fake vmm attached to one of its sockets the way the hypervisor
// attaches (hypervisor/src/nitro/remote_function.cpp), with guest RAM in a memfd and the NVMe
// driver mock on top. No /dev/kvm: guest RAM is only a memfd both processes map.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "common/fd.hpp"
#include "common/guest_memory.hpp"
#include "support/card_client.hpp"
#include "support/card_process.hpp"
#include "support/nvme_driver_mock.hpp"

namespace integration {

inline const std::string kNitroCard = NH_BUILD_DIR "/bin/nitro-card";

// Guest RAM: one 32 MiB memfd mapped as two DMA regions, 16 MiB at 0 and 16 MiB at 4 GiB (a
// PCI hole between them, as on a real guest). The driver's heap is the low region above 1 MiB.
inline constexpr std::uint64_t kMiB = 1 << 20;
inline constexpr std::uint64_t kLowRamBytes = 16 * kMiB;
inline constexpr std::uint64_t kHighRamBase = 4ull << 30;
inline constexpr std::uint64_t kHighRamBytes = 16 * kMiB;
inline constexpr std::uint64_t kHeapBase = 1 * kMiB;

inline constexpr std::uint64_t kVolumeBytes = 16 * kMiB;
inline constexpr std::uint32_t kLba = 512;
inline constexpr std::chrono::milliseconds kWait{5000};

// A fresh directory under /tmp, removed with everything in it.
class TempDir final {
public:
    TempDir();
    ~TempDir();
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
    [[nodiscard]] const std::string& path() const { return path_; }
    [[nodiscard]] std::string file(const std::string& name) const { return path_ + "/" + name; }

private:
    std::string path_;
};

// A running nitro-card serving one volume per entry of `volume_options` ("size=16M",
// "size=16M,iops=100"...), each backed by vol<i>.img in a fresh temp dir, with its output in
// card.log there. `prefill` runs before the card starts: a volume file it writes is opened as
// it is; the card creates the others. The card is killed, if still running, on destruction.
class Card final {
public:
    explicit Card(std::vector<std::string> volume_options, std::vector<std::string> extra_args = {},
                  std::function<void(const TempDir&)> prefill = {});
    [[nodiscard]] std::string socket(unsigned i) const {
        return dir_.file(fmt::format("nvme{}.sock", i));
    }
    [[nodiscard]] std::string volume(unsigned i) const {
        return dir_.file(fmt::format("vol{}.img", i));
    }
    [[nodiscard]] testsupport::CardProcess& process() { return *proc_; }
    [[nodiscard]] std::string log() const { return proc_->log(); }
    [[nodiscard]] const TempDir& dir() const { return dir_; }

private:
    TempDir dir_;
    std::optional<testsupport::CardProcess> proc_;
};

// Bytes [offset, offset + len) of a file.
[[nodiscard]] std::vector<std::byte> read_file(const std::string& path, std::uint64_t offset,
                                               std::size_t len);
// A volume file of `size` bytes with `data` at `offset`.
void write_volume_file(const std::string& path, std::uint64_t size, std::uint64_t offset,
                       std::span<const std::byte> data);
// A recognisable pattern; different seeds give different bytes.
void fill_pattern(std::span<std::byte> out, unsigned seed);
[[nodiscard]] std::vector<std::byte> pattern(std::size_t len, unsigned seed);

// The fake vmm of one device: guest RAM, the protocol connection, MSI-X eventfds and the NVMe
// driver mock over the card's BAR0.
class Vmm final {
public:
    // Creates guest RAM and connects (no message sent yet).
    explicit Vmm(const std::string& socket);

    // The hypervisor's attach (RemoteFunction::connect): VERSION, DMA_MAP of both regions,
    // region and IRQ info, SET_IRQS with one eventfd per MSI-X vector. Fails the test on error.
    void attach();

    [[nodiscard]] testsupport::CardClient& client() { return *client_; }
    [[nodiscard]] testsupport::NvmeDriverMock& driver() { return *driver_; }
    [[nodiscard]] const common::GuestMemory& mem() const { return mem_; }
    [[nodiscard]] unsigned vectors() const { return static_cast<unsigned>(irqs_.size()); }

    // Interrupts seen on `vector` so far (the eventfd's counts, accumulated).
    [[nodiscard]] std::uint64_t irq_count(unsigned vector);
    // Waits (bounded) until irq_count(vector) >= at_least.
    [[nodiscard]] bool wait_irqs(unsigned vector, std::uint64_t at_least);
    // DEVICE_GET_REGION_IO_FDS and hands the doorbell eventfds to the driver (what the vmm's
    // KVM_IOEVENTFD registration achieves). Returns the sub-regions the card listed.
    std::vector<common::card::IoFdEntry> register_doorbell_fds();

private:
    common::GuestMemory mem_;
    std::optional<testsupport::CardClient> client_;
    std::unique_ptr<testsupport::CardRegisters> regs_;
    std::unique_ptr<testsupport::NvmeDriverMock> driver_;
    std::vector<common::EventFd> irqs_;
    std::vector<std::uint64_t> irq_totals_;
};

// Identify Controller strings without their space padding.
[[nodiscard]] std::string trimmed(const char* field, std::size_t n);

}  // namespace integration
