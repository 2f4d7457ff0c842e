#include "storage/file_backend.hpp"

#include <fcntl.h>
#include <linux/fs.h>
#include <linux/magic.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "storage/guarded_copy.hpp"

namespace nitro_card::storage {

using common::Error;
using common::fail;
using common::UniqueFd;

namespace {

// Zero-fill writes go out in pieces of this size from one shared zero page range.
constexpr std::size_t kZeroChunk = 1 << 20;

// Errors with which fallocate says "this filesystem or device cannot do that mode".
bool mode_unsupported(int res) {
    return res == -EOPNOTSUPP || res == -EINVAL || res == -ENOTTY;
}

common::Result<UniqueFd> open_or_create(const std::string& path,
                                        const FileBackendOptions& options) {
    auto fd = UniqueFd::open(path, O_RDWR);
    if (fd || fd.error().errno_value != ENOENT) return fd;
    if (!options.create_size)
        return fail(Error::not_found(
            fmt::format("volume file {} does not exist and no size was given to create it", path)));
    const std::uint64_t size = *options.create_size;
    if (size == 0 || size % kSectorSize != 0)
        return fail(
            Error::invalid(fmt::format("cannot create {}: size {} is not a positive multiple of {}",
                                       path, size, kSectorSize)));
    fd = UniqueFd::open(path, O_RDWR | O_CREAT | O_EXCL, 0644);
    if (!fd) return fd;
    if (::ftruncate(fd->get(), static_cast<off_t>(size)) != 0) {
        auto err = Error::from_errno(fmt::format("sizing {} to {} bytes", path, size));
        ::unlink(path.c_str());
        return fail(std::move(err));
    }
    spdlog::info("created volume file {} ({} bytes, sparse)", path, size);
    return fd;
}

common::Result<std::uint64_t> volume_size(const std::string& path, int fd) {
    struct stat st {};
    if (::fstat(fd, &st) != 0) return fail(Error::from_errno(fmt::format("fstat {}", path)));
    if (S_ISREG(st.st_mode)) return static_cast<std::uint64_t>(st.st_size);
    if (S_ISBLK(st.st_mode)) {
        std::uint64_t bytes = 0;
        if (::ioctl(fd, BLKGETSIZE64, &bytes) != 0)
            return fail(Error::from_errno(fmt::format("BLKGETSIZE64 {}", path)));
        return bytes;
    }
    return fail(
        Error::invalid(fmt::format("{} is neither a regular file nor a block device", path)));
}

// True for file systems whose files are memory: tmpfs (/dev/shm) and ramfs.
bool on_memory_fs(int fd) {
    struct statfs fs {};
    if (::fstatfs(fd, &fs) != 0) return false;
    return fs.f_type == TMPFS_MAGIC || fs.f_type == RAMFS_MAGIC;
}

}  // namespace

FileBackend::Ring::~Ring() {
    if (live_) io_uring_queue_exit(&ring_);
}

common::Status FileBackend::Ring::init(unsigned entries) {
    if (int r = io_uring_queue_init(entries, &ring_, 0); r < 0)
        return fail(Error{common::ErrorKind::Unsupported,
                          fmt::format("io_uring_queue_init({}): {}", entries, std::strerror(-r)),
                          -r});
    live_ = true;
    return {};
}

FileBackend::FileBackend(std::string path, UniqueFd fd, common::EventFd event, std::uint64_t size,
                         std::uint32_t depth)
    : path_(std::move(path)),
      fd_(std::move(fd)),
      size_(size),
      depth_(depth),
      slots_(depth),
      event_(std::move(event)) {
    free_.reserve(depth);
    for (std::uint32_t i = depth; i > 0; --i) free_.push_back(i - 1);
}

common::Result<std::unique_ptr<FileBackend>> FileBackend::open(const std::string& path,
                                                               const FileBackendOptions& options) {
    if (options.queue_depth == 0 || options.queue_depth > kMaxQueueDepth)
        return fail(Error::invalid(fmt::format("volume {}: queue depth {} outside 1..{}", path,
                                               options.queue_depth, kMaxQueueDepth)));
    auto fd = open_or_create(path, options);
    if (!fd) return fail(std::move(fd.error()));
    auto size = volume_size(path, fd->get());
    if (!size) return fail(std::move(size.error()));
    if (*size == 0 || *size % kSectorSize != 0)
        return fail(Error::invalid(fmt::format(
            "volume {}: size {} is not a positive multiple of {}", path, *size, kSectorSize)));
    if (options.create_size && *options.create_size != *size)
        return fail(
            Error::invalid(fmt::format("volume {} exists with {} bytes, but size {} was asked for",
                                       path, *size, *options.create_size)));
    auto event = common::EventFd::create();
    if (!event) return fail(std::move(event.error()).context(fmt::format("volume {}", path)));

    std::unique_ptr<FileBackend> b(
        new FileBackend(path, std::move(*fd), std::move(*event), *size, options.queue_depth));
    b->options_batch_ = options.batch_submissions;
    if (options.map_memory_files) {
        if (auto s = b->setup_mapping(); !s) return fail(std::move(s.error()));
    }
    // A mapped file's reads and writes never reach a descriptor: O_DIRECT would change nothing.
    if (!b->mapped() && options.try_direct) {
        if (auto s = b->setup_direct(); !s) return fail(std::move(s.error()));
    } else if (!b->mapped()) {
        spdlog::debug("volume {}: buffered I/O (O_DIRECT disabled by options)", path);
    }
    if (auto s = b->setup_ring(); !s)
        return fail(std::move(s.error()).context(fmt::format("volume {}", path)));
    return b;
}

common::Status FileBackend::setup_direct() {
    auto dfd = UniqueFd::open(path_, O_RDWR | O_DIRECT);
    if (!dfd) {
        // EINVAL is the filesystem refusing O_DIRECT; anything else is just as survivable.
        spdlog::debug("volume {}: buffered I/O ({})", path_, dfd.error().message);
        return {};
    }
    struct statx sx {};
    bool reported = false;
#ifdef STATX_DIOALIGN
    if (::statx(dfd->get(), "", AT_EMPTY_PATH, STATX_DIOALIGN, &sx) == 0 &&
        (sx.stx_mask & STATX_DIOALIGN)) {
        if (sx.stx_dio_mem_align == 0) {
            spdlog::debug(
                "volume {}: buffered I/O (the kernel reports no direct I/O for this file)", path_);
            return {};
        }
        dio_mem_align_ = sx.stx_dio_mem_align;
        dio_offset_align_ = sx.stx_dio_offset_align;
        reported = true;
    }
#endif
    if (!reported) {
        // No alignment reported (older kernels, tmpfs): a page for both is safe everywhere.
        dio_mem_align_ = static_cast<std::uint32_t>(::sysconf(_SC_PAGESIZE));
        dio_offset_align_ = dio_mem_align_;
    }
    direct_fd_ = std::move(*dfd);
    spdlog::debug(
        "volume {}: O_DIRECT for aligned requests (memory {}, offset {}{}), buffered for the rest",
        path_, dio_mem_align_, dio_offset_align_, reported ? "" : ", assumed");
    return {};
}

common::Status FileBackend::setup_mapping() {
    struct stat st {};
    if (::fstat(fd_.get(), &st) != 0 || !S_ISREG(st.st_mode) || !on_memory_fs(fd_.get()))
        return {};
    auto m = common::Mmap::map_shared(fd_.get(), size_, 0, PROT_READ | PROT_WRITE);
    if (!m) {
        // Only slower without it.
        spdlog::warn("volume {}: on a memory file system, but mapping it failed ({}); using io_uring",
                     path_, m.error().message);
        return {};
    }
    mapped_ = std::move(*m);
    spdlog::info("volume {}: on a memory file system; reads and writes copy through a mapping",
                 path_);
    return {};
}

common::Status FileBackend::setup_ring() {
    if (auto s = ring_.init(depth_); !s) return s;
    if (int r = io_uring_register_eventfd(ring_.get(), event_.fd()); r < 0)
        return fail(Error{common::ErrorKind::System,
                          fmt::format("io_uring_register_eventfd: {}", std::strerror(-r)), -r});
    if (io_uring_probe* probe = io_uring_get_probe_ring(ring_.get())) {
        async_fallocate_ = io_uring_opcode_supported(probe, IORING_OP_FALLOCATE) != 0;
        io_uring_free_probe(probe);
    }
    if (!async_fallocate_)
        spdlog::debug("volume {}: fallocate runs synchronously (no IORING_OP_FALLOCATE)", path_);
    return {};
}

FileBackend::~FileBackend() {
    if (sqes_in_kernel_ == 0) return;
    (void)io_uring_submit(ring_.get());
    while (sqes_in_kernel_ > 0) {
        io_uring_cqe* cqe = nullptr;
        int r = io_uring_wait_cqe(ring_.get(), &cqe);
        if (r == -EINTR) continue;
        if (r < 0) {
            spdlog::error("volume {}: abandoning {} requests at teardown: {}", path_,
                          sqes_in_kernel_, std::strerror(-r));
            return;
        }
        io_uring_cqe_seen(ring_.get(), cqe);
        --sqes_in_kernel_;
    }
}

bool FileBackend::direct_fits(std::uint64_t offset, std::span<const iovec> iov) const noexcept {
    if (!direct_fd_ || offset % dio_offset_align_ != 0) return false;
    for (const iovec& v : iov) {
        if (reinterpret_cast<std::uintptr_t>(v.iov_base) % dio_mem_align_ != 0) return false;
        if (v.iov_len % dio_offset_align_ != 0) return false;
    }
    return true;
}

common::Status FileBackend::submit(const Request& req) {
    if (auto ok = check_request(req, size_); !ok) return ok;
    if (free_.empty()) return fail(busy_error(depth_));
    const std::uint32_t idx = free_.back();
    free_.pop_back();

    Slot& s = slots_[idx];
    s.op = req.op;
    s.tag = req.tag;
    s.length = req.length;
    s.offset = req.offset;
    s.remaining = req.length;
    s.iov.assign(req.iov.begin(), req.iov.end());
    s.next = 0;
    s.force_buffered = false;
    switch (req.op) {
        case Op::Read:
        case Op::Write:
            s.stage = Stage::Transfer;
            if (mapped()) {
                copy_mapped(idx);
                break;
            }
            if (direct_fd_ && !direct_fits(s.offset, s.iov)) ++buffered_fallbacks_;
            queue_transfer(idx);
            break;
        case Op::Flush:
            s.stage = Stage::Sync;
            io_uring_prep_fsync(next_sqe(idx), fd_.get(), IORING_FSYNC_DATASYNC);
            break;
        case Op::WriteZeroes:
        case Op::Discard:
            start_allocate(idx);
            break;
    }
    if (!options_batch_) flush_submissions();
    if (!ready_.empty()) note_ready();
    return {};
}

// A mapped read or write, done now. A fault part-way fails the request with what was copied
// before it counted as transferred: EIO when reading (the file shrank), ENOSPC when writing (the
// file system could not allocate the page; a shrunken file ends up here too).
void FileBackend::copy_mapped(std::uint32_t idx) {
    Slot& s = slots_[idx];
    const std::span<const std::byte> window(mapped_.data(), mapped_.size());
    for (const iovec& v : s.iov) {
        std::byte* file = mapped_.data() + s.offset;
        const bool ok = s.op == Op::Read ? guarded_copy(v.iov_base, file, v.iov_len, window)
                                         : guarded_copy(file, v.iov_base, v.iov_len, window);
        if (!ok) {
            spdlog::warn("volume {}: {} at {:#x} faulted on the file's mapping (was the file "
                         "truncated, or is its file system full?)",
                         path_, to_string(s.op), s.offset);
            return finish(idx, s.op == Op::Read ? -EIO : -ENOSPC);
        }
        s.offset += v.iov_len;
        s.remaining -= v.iov_len;
    }
    finish(idx, 0);
}

// Makes completion_fd() readable for requests finished without the kernel, once until reap().
void FileBackend::note_ready() {
    if (signalled_) return;
    (void)event_.signal();
    signalled_ = true;
}

io_uring_sqe* FileBackend::next_sqe(std::uint32_t idx) {
    io_uring_sqe* sqe = io_uring_get_sqe(ring_.get());
    if (sqe == nullptr) {
        // One SQE per slot and as many ring entries as slots: this cannot happen.
        spdlog::critical("volume {}: submission ring full with {} of {} slots busy", path_,
                         in_flight(), depth_);
        std::abort();
    }
    io_uring_sqe_set_data64(sqe, idx);
    ++sqes_in_kernel_;
    unsubmitted_ = true;
    ring_signals_ = true;
    return sqe;
}

void FileBackend::queue_transfer(std::uint32_t idx) {
    Slot& s = slots_[idx];
    const std::span<const iovec> rest(s.iov.data() + s.next, s.iov.size() - s.next);
    s.sent_direct = !s.force_buffered && direct_fits(s.offset, rest);
    const int fd = s.sent_direct ? direct_fd_.get() : fd_.get();
    const auto count = static_cast<unsigned>(rest.size());
    io_uring_sqe* sqe = next_sqe(idx);
    if (s.op == Op::Read)
        io_uring_prep_readv(sqe, fd, rest.data(), count, s.offset);
    else
        io_uring_prep_writev(sqe, fd, rest.data(), count, s.offset);
}

void FileBackend::start_allocate(std::uint32_t idx) {
    Slot& s = slots_[idx];
    const bool zeroes = s.op == Op::WriteZeroes;
    if (!(zeroes ? zero_range_ok_ : punch_hole_ok_)) {
        s.stage = Stage::ZeroFill;
        queue_zero_chunk(idx);
        return;
    }
    s.stage = Stage::Allocate;
    // KEEP_SIZE: the range is inside the file, so it only guards against growing it by mistake.
    const int mode = (zeroes ? FALLOC_FL_ZERO_RANGE : FALLOC_FL_PUNCH_HOLE) | FALLOC_FL_KEEP_SIZE;
    if (async_fallocate_) {
        io_uring_prep_fallocate(next_sqe(idx), fd_.get(), mode, static_cast<off_t>(s.offset),
                                static_cast<off_t>(s.length));
        return;
    }
    const int r =
        ::fallocate(fd_.get(), mode, static_cast<off_t>(s.offset), static_cast<off_t>(s.length));
    on_allocate_result(idx, r == 0 ? 0 : -errno);
}

void FileBackend::on_allocate_result(std::uint32_t idx, int res) {
    Slot& s = slots_[idx];
    if (!mode_unsupported(res)) {
        if (res == 0) s.remaining = 0;
        finish(idx, res);
        return;
    }
    const bool zeroes = s.op == Op::WriteZeroes;
    (zeroes ? zero_range_ok_ : punch_hole_ok_) = false;
    spdlog::debug("volume {}: fallocate({}) unsupported ({}); {} writes zeros from now on", path_,
                  zeroes ? "ZERO_RANGE" : "PUNCH_HOLE", std::strerror(-res), to_string(s.op));
    s.stage = Stage::ZeroFill;
    queue_zero_chunk(idx);
}

void FileBackend::queue_zero_chunk(std::uint32_t idx) {
    if (zeros_.size() == 0) {
        auto m = common::Mmap::anonymous(kZeroChunk);
        if (!m) {
            spdlog::warn("volume {}: no zero buffer: {}", path_, m.error().message);
            finish(idx, -ENOMEM);
            return;
        }
        zeros_ = std::move(*m);
    }
    Slot& s = slots_[idx];
    const auto n = static_cast<unsigned>(std::min<std::uint64_t>(s.remaining, kZeroChunk));
    const iovec chunk{zeros_.data(), n};
    s.sent_direct = !s.force_buffered && direct_fits(s.offset, std::span(&chunk, 1));
    io_uring_prep_write(next_sqe(idx), s.sent_direct ? direct_fd_.get() : fd_.get(), zeros_.data(),
                        n, s.offset);
}

// A direct descriptor may still refuse a request the reported alignment allowed (the alignment
// was assumed, or a stacked device is stricter). The request then continues buffered.
bool FileBackend::retry_buffered(std::uint32_t idx, int res) {
    Slot& s = slots_[idx];
    if (res != -EINVAL || !s.sent_direct) return false;
    spdlog::debug("volume {}: O_DIRECT refused {} at {:#x}; continuing buffered", path_,
                  to_string(s.op), s.offset);
    s.force_buffered = true;
    if (s.stage == Stage::Transfer) {
        ++buffered_fallbacks_;
        queue_transfer(idx);
    } else {
        queue_zero_chunk(idx);
    }
    return true;
}

void FileBackend::on_cqe(std::uint32_t idx, int res) {
    Slot& s = slots_[idx];
    switch (s.stage) {
        case Stage::Sync:
            finish(idx, res < 0 ? res : 0);
            return;
        case Stage::Allocate:
            on_allocate_result(idx, res < 0 ? res : 0);
            return;
        case Stage::Transfer:
        case Stage::ZeroFill:
            break;
    }
    if (retry_buffered(idx, res)) return;
    if (res < 0) return finish(idx, res);
    // No progress on a range known to be inside the volume: the file shrank under us.
    if (res == 0) return finish(idx, -EIO);

    auto done = static_cast<std::uint64_t>(res);
    s.offset += done;
    s.remaining -= done;
    if (s.stage == Stage::Transfer) {
        while (done > 0) {
            iovec& v = s.iov[s.next];
            if (done >= v.iov_len) {
                done -= v.iov_len;
                ++s.next;
            } else {
                v.iov_base = static_cast<std::byte*>(v.iov_base) + done;
                v.iov_len -= done;
                done = 0;
            }
        }
    }
    if (s.remaining == 0) return finish(idx, 0);
    if (s.stage == Stage::Transfer)
        queue_transfer(idx);
    else
        queue_zero_chunk(idx);
}

void FileBackend::finish(std::uint32_t idx, int status) {
    Slot& s = slots_[idx];
    s.result = Completion{
        .tag = s.tag,
        .status = status,
        .bytes = s.op == Op::Flush ? 0 : s.length - s.remaining,
    };
    ready_.push_back(idx);
}

void FileBackend::flush_submissions() {
    if (!unsubmitted_) return;
    const int r = io_uring_submit(ring_.get());
    if (r < 0) {
        // The SQEs stay in the ring and go with the next submit or reap.
        spdlog::warn("volume {}: io_uring_submit: {}; will retry", path_, std::strerror(-r));
        return;
    }
    unsubmitted_ = false;
}

std::size_t FileBackend::reap(std::span<Completion> out) {
    // Clearing the eventfd is a system call; skip it when nothing can have raised it. The kernel
    // raises it just after posting a CQE, possibly after this call saw the CQE, so it counts as
    // raised until a clear finds nothing in the kernel.
    if (signalled_ || ring_signals_) {
        (void)event_.consume();
        signalled_ = false;
        ring_signals_ = sqes_in_kernel_ > 0;
    }
    std::size_t n = 0;
    for (;;) {
        while (n < out.size() && !ready_.empty()) {
            const std::uint32_t idx = ready_.front();
            ready_.pop_front();
            out[n++] = slots_[idx].result;
            free_.push_back(idx);
        }
        if (n == out.size()) break;
        io_uring_cqe* cqe = nullptr;
        if (io_uring_peek_cqe(ring_.get(), &cqe) != 0) break;
        const auto idx = static_cast<std::uint32_t>(io_uring_cqe_get_data64(cqe));
        const int res = cqe->res;
        io_uring_cqe_seen(ring_.get(), cqe);
        --sqes_in_kernel_;
        on_cqe(idx, res);
    }
    flush_submissions();
    // Completions left for the next call must keep the fd readable.
    if (!ready_.empty() || io_uring_cq_ready(ring_.get()) > 0) note_ready();
    return n;
}

}  // namespace nitro_card::storage
