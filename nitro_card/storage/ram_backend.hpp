// A volume held in anonymous memory, for benchmarks that want the I/O path without a disk.
// Requests run during submit() but complete through the same queue as FileBackend's: the
// completion is reaped later and completion_fd() is signalled, so callers cannot tell the two
// apart except by speed.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>

#include "common/fd.hpp"
#include "storage/backend.hpp"

namespace nitro_card::storage {

class RamBackend final : public BlockBackend {
public:
    // size_bytes must be a positive multiple of kSectorSize. Pages are allocated on first write.
    [[nodiscard]] static common::Result<std::unique_ptr<RamBackend>> create(
        std::uint64_t size_bytes, std::uint32_t queue_depth = kDefaultQueueDepth);

    [[nodiscard]] std::uint64_t size_bytes() const noexcept override { return mem_.size(); }
    [[nodiscard]] std::uint32_t queue_depth() const noexcept override { return depth_; }
    [[nodiscard]] std::uint32_t in_flight() const noexcept override {
        return static_cast<std::uint32_t>(done_.size());
    }
    common::Status submit(const Request& req) override;
    std::size_t reap(std::span<Completion> out) override;
    [[nodiscard]] int completion_fd() const noexcept override { return event_.fd(); }

private:
    RamBackend(common::Mmap mem, common::EventFd event, std::uint32_t depth)
        : mem_(std::move(mem)), event_(std::move(event)), depth_(depth) {}
    void zero(std::uint64_t offset, std::uint64_t length);

    common::Mmap mem_;
    common::EventFd event_;
    std::uint32_t depth_;
    std::deque<Completion> done_;  // finished, not yet reaped; at most depth_ entries
};

}  // namespace nitro_card::storage
