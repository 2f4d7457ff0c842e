#include "common/fd.hpp"

#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>

namespace common {

void UniqueFd::reset(int fd) noexcept {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
}

Result<UniqueFd> UniqueFd::open(const std::string& path, int flags, unsigned mode) {
    int fd = ::open(path.c_str(), flags | O_CLOEXEC, mode);
    if (fd < 0) return fail(Error::from_errno(fmt::format("open {}", path)));
    return UniqueFd(fd);
}

Result<EventFd> EventFd::create(bool nonblocking) {
    int fd = ::eventfd(0, EFD_CLOEXEC | (nonblocking ? EFD_NONBLOCK : 0));
    if (fd < 0) return fail(Error::from_errno("eventfd"));
    return EventFd(UniqueFd(fd));
}

Status EventFd::signal(std::uint64_t n) const {
    if (::write(fd_.get(), &n, sizeof n) != static_cast<ssize_t>(sizeof n))
        return fail(Error::from_errno("eventfd write"));
    return {};
}

Result<std::uint64_t> EventFd::consume() const {
    std::uint64_t v = 0;
    ssize_t r = ::read(fd_.get(), &v, sizeof v);
    if (r == static_cast<ssize_t>(sizeof v)) return v;
    if (r < 0 && errno == EAGAIN) return std::uint64_t{0};
    return fail(Error::from_errno("eventfd read"));
}

Result<MemFd> MemFd::create(const std::string& name, std::uint64_t size) {
    int fd = ::memfd_create(name.c_str(), MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0) return fail(Error::from_errno(fmt::format("memfd_create {}", name)));
    UniqueFd owner(fd);
    if (::ftruncate(fd, static_cast<off_t>(size)) != 0)
        return fail(Error::from_errno(fmt::format("sizing memfd {} to {} bytes", name, size)));
    // The size is part of the contract with other processes: forbid changing it.
    (void)::fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW);
    return MemFd(std::move(owner), size);
}

Result<MemFd> MemFd::adopt(UniqueFd fd) {
    struct stat st{};
    if (::fstat(fd.get(), &st) != 0) return fail(Error::from_errno("fstat on received memfd"));
    return MemFd(std::move(fd), static_cast<std::uint64_t>(st.st_size));
}

Mmap& Mmap::operator=(Mmap&& o) noexcept {
    if (this != &o) {
        if (addr_) ::munmap(addr_, len_);
        addr_ = std::exchange(o.addr_, nullptr);
        len_ = std::exchange(o.len_, 0);
    }
    return *this;
}

Mmap::~Mmap() {
    if (addr_) ::munmap(addr_, len_);
}

Result<Mmap> Mmap::map_shared(int fd, std::size_t len, std::uint64_t offset, int prot) {
    void* p = ::mmap(nullptr, len, prot, MAP_SHARED, fd, static_cast<off_t>(offset));
    if (p == MAP_FAILED)
        return fail(Error::from_errno(fmt::format("mmap {} bytes at offset {:#x}", len, offset)));
    return Mmap(p, len);
}

Result<Mmap> Mmap::map_file(int fd, std::size_t len) {
    void* p = ::mmap(nullptr, len, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) return fail(Error::from_errno(fmt::format("mmap of a {}-byte file", len)));
    return Mmap(p, len);
}

Result<Mmap> Mmap::anonymous(std::size_t len) {
    void* p = ::mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return fail(Error::from_errno(fmt::format("anonymous mmap of {} bytes", len)));
    return Mmap(p, len);
}

}  // namespace common
