#include "kvm/kvm.hpp"

#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fmt/format.h>
#include <memory>

namespace hypervisor {

using common::Error;
using common::fail;

namespace {

// <linux/kvm.h> declares these structs with a flexible array that C++ compilers size
// differently from C (16 instead of 8 bytes), which changes the ioctl numbers and the offset
// of the entries. The kernel's view: an 8-byte header, entries from offset 8.
constexpr std::size_t kFlexHeader = 8;
constexpr unsigned long kGetSupportedCpuid = _IOWR(KVMIO, 0x05, std::uint64_t);
constexpr unsigned long kSetCpuid2 = _IOW(KVMIO, 0x90, std::uint64_t);
constexpr unsigned long kSetGsiRouting = _IOW(KVMIO, 0x6a, std::uint64_t);

// A buffer holding {u32 count; u32 pad/flags; Entry entries[count]} in the kernel's layout.
template <typename Entry>
struct FlexBuffer {
    explicit FlexBuffer(std::size_t n) : bytes(kFlexHeader + n * sizeof(Entry)) {}
    void set_count(std::uint32_t n) { std::memcpy(bytes.data(), &n, 4); }
    std::uint32_t count() const {
        std::uint32_t n;
        std::memcpy(&n, bytes.data(), 4);
        return n;
    }
    Entry* entries() { return reinterpret_cast<Entry*>(bytes.data() + kFlexHeader); }
    void* data() { return bytes.data(); }
    std::vector<std::byte> bytes;
};

template <typename... A>
int xioctl(int fd, unsigned long req, A... args) {
    int r;
    do {
        r = ::ioctl(fd, req, args...);
    } while (r < 0 && errno == EINTR);
    return r;
}

Status check(int r, std::string_view what) {
    if (r < 0) return fail(Error::from_errno(what));
    return {};
}

}  // namespace

Result<KvmSystem> KvmSystem::open(const std::string& path) {
    auto fd = common::UniqueFd::open(path, O_RDWR);
    if (!fd) {
        auto e = std::move(fd.error());
        e.kind = common::ErrorKind::Unsupported;
        return fail(std::move(e).context("KVM is not available"));
    }
    int version = xioctl(fd->get(), KVM_GET_API_VERSION, 0);
    if (version != KVM_API_VERSION)
        return fail(Error::unsupported(fmt::format("{}: KVM API version {} (need {})", path, version,
                                                   KVM_API_VERSION)));
    for (auto [cap, name] : {std::pair{KVM_CAP_IRQCHIP, "KVM_CAP_IRQCHIP"},
                             std::pair{KVM_CAP_IOEVENTFD, "KVM_CAP_IOEVENTFD"},
                             std::pair{KVM_CAP_IRQFD, "KVM_CAP_IRQFD"},
                             std::pair{KVM_CAP_IRQ_ROUTING, "KVM_CAP_IRQ_ROUTING"},
                             std::pair{KVM_CAP_USER_MEMORY, "KVM_CAP_USER_MEMORY"},
                             std::pair{KVM_CAP_EXT_CPUID, "KVM_CAP_EXT_CPUID"}}) {
        if (xioctl(fd->get(), KVM_CHECK_EXTENSION, cap) <= 0)
            return fail(Error::unsupported(fmt::format("{} lacks {}", path, name)));
    }
    int mmap_size = xioctl(fd->get(), KVM_GET_VCPU_MMAP_SIZE, 0);
    if (mmap_size < static_cast<int>(sizeof(kvm_run)))
        return fail(Error::from_errno("KVM_GET_VCPU_MMAP_SIZE"));
    std::optional<std::string> soft;
    if (std::filesystem::exists("/sys/module/kvm_pvm")) soft = "kvm_pvm";
    return KvmSystem(std::move(*fd), mmap_size, std::move(soft));
}

int KvmSystem::check_extension(long cap) const {
    int r = xioctl(fd_.get(), KVM_CHECK_EXTENSION, cap);
    return r < 0 ? 0 : r;
}

Result<std::vector<kvm_cpuid_entry2>> KvmSystem::supported_cpuid() const {
    for (std::uint32_t n = 64; n <= 4096; n *= 2) {
        FlexBuffer<kvm_cpuid_entry2> buf(n);
        buf.set_count(n);
        if (xioctl(fd_.get(), kGetSupportedCpuid, buf.data()) == 0)
            return std::vector<kvm_cpuid_entry2>(buf.entries(), buf.entries() + buf.count());
        if (errno != E2BIG) return fail(Error::from_errno("KVM_GET_SUPPORTED_CPUID"));
    }
    return fail(Error::unsupported("KVM_GET_SUPPORTED_CPUID: too many entries"));
}

Result<KvmVm> KvmSystem::create_vm() const {
    int fd = xioctl(fd_.get(), KVM_CREATE_VM, 0);
    if (fd < 0) return fail(Error::from_errno("KVM_CREATE_VM"));
    return KvmVm(common::UniqueFd(fd));
}

Status KvmVm::set_user_memory_region(std::uint32_t slot, std::uint64_t gpa, std::uint64_t size,
                                     void* host) {
    kvm_userspace_memory_region r{};
    r.slot = slot;
    r.guest_phys_addr = gpa;
    r.memory_size = size;
    r.userspace_addr = reinterpret_cast<std::uint64_t>(host);
    return check(xioctl(fd_.get(), KVM_SET_USER_MEMORY_REGION, &r),
                 fmt::format("KVM_SET_USER_MEMORY_REGION slot {} at {:#x}+{:#x}", slot, gpa, size));
}

Status KvmVm::create_irqchip() {
    return check(xioctl(fd_.get(), KVM_CREATE_IRQCHIP, 0), "KVM_CREATE_IRQCHIP");
}

Status KvmVm::create_pit() {
    kvm_pit_config cfg{};
    cfg.flags = KVM_PIT_SPEAKER_DUMMY;
    return check(xioctl(fd_.get(), KVM_CREATE_PIT2, &cfg), "KVM_CREATE_PIT2");
}

Status KvmVm::mask_pic() {
    for (std::uint32_t chip : {KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE}) {
        kvm_irqchip c{};
        c.chip_id = chip;
        if (xioctl(fd_.get(), KVM_GET_IRQCHIP, &c) < 0) return fail(Error::from_errno("KVM_GET_IRQCHIP"));
        c.chip.pic.imr = 0xff;
        c.chip.pic.irq_base = chip == KVM_IRQCHIP_PIC_MASTER ? 0x08 : 0x70;
        if (xioctl(fd_.get(), KVM_SET_IRQCHIP, &c) < 0) return fail(Error::from_errno("KVM_SET_IRQCHIP"));
    }
    return {};
}

Status KvmVm::set_tss_addr(std::uint64_t gpa) {
    return check(xioctl(fd_.get(), KVM_SET_TSS_ADDR, static_cast<unsigned long>(gpa)),
                 "KVM_SET_TSS_ADDR");
}

Status KvmVm::set_identity_map_addr(std::uint64_t gpa) {
    std::uint64_t a = gpa;
    return check(xioctl(fd_.get(), KVM_SET_IDENTITY_MAP_ADDR, &a), "KVM_SET_IDENTITY_MAP_ADDR");
}

Status KvmVm::set_gsi_routing(const std::vector<kvm_irq_routing_entry>& entries) {
    FlexBuffer<kvm_irq_routing_entry> buf(entries.size());
    buf.set_count(static_cast<std::uint32_t>(entries.size()));
    std::memcpy(buf.entries(), entries.data(), entries.size() * sizeof(kvm_irq_routing_entry));
    return check(xioctl(fd_.get(), kSetGsiRouting, buf.data()), "KVM_SET_GSI_ROUTING");
}

Status KvmVm::irqfd(int eventfd, std::uint32_t gsi, bool assign) {
    kvm_irqfd f{};
    f.fd = static_cast<std::uint32_t>(eventfd);
    f.gsi = gsi;
    f.flags = assign ? 0 : KVM_IRQFD_FLAG_DEASSIGN;
    return check(xioctl(fd_.get(), KVM_IRQFD, &f), fmt::format("KVM_IRQFD gsi {}", gsi));
}

Status KvmVm::ioeventfd(int eventfd, std::uint64_t addr, std::uint32_t len, bool pio, bool assign,
                        std::optional<std::uint64_t> datamatch) {
    kvm_ioeventfd e{};
    e.fd = eventfd;
    e.addr = addr;
    e.len = len;
    if (pio) e.flags |= KVM_IOEVENTFD_FLAG_PIO;
    if (!assign) e.flags |= KVM_IOEVENTFD_FLAG_DEASSIGN;
    if (datamatch) {
        e.flags |= KVM_IOEVENTFD_FLAG_DATAMATCH;
        e.datamatch = *datamatch;
    }
    return check(xioctl(fd_.get(), KVM_IOEVENTFD, &e),
                 fmt::format("KVM_IOEVENTFD at {:#x}/{}", addr, len));
}

Result<std::uint32_t> KvmVm::tsc_khz() const {
    int r = xioctl(fd_.get(), KVM_GET_TSC_KHZ, 0);
    if (r <= 0) return common::fail(common::Error::from_errno("KVM_GET_TSC_KHZ on the VM"));
    return static_cast<std::uint32_t>(r);
}

Status KvmVm::irq_line(std::uint32_t irq, bool level) {
    kvm_irq_level l{};
    l.irq = irq;
    l.level = level ? 1 : 0;
    return check(xioctl(fd_.get(), KVM_IRQ_LINE, &l), fmt::format("KVM_IRQ_LINE {}", irq));
}

Status KvmVm::signal_msi(std::uint64_t address, std::uint32_t data) {
    kvm_msi m{};
    m.address_lo = static_cast<std::uint32_t>(address);
    m.address_hi = static_cast<std::uint32_t>(address >> 32);
    m.data = data;
    int r = xioctl(fd_.get(), KVM_SIGNAL_MSI, &m);
    if (r < 0) return fail(Error::from_errno("KVM_SIGNAL_MSI"));
    return {};
}

Status KvmVm::enable_user_space_msr() {
    kvm_enable_cap c{};
    c.cap = KVM_CAP_X86_USER_SPACE_MSR;
    c.args[0] = KVM_MSR_EXIT_REASON_FILTER;
    return check(xioctl(fd_.get(), KVM_ENABLE_CAP, &c), "KVM_ENABLE_CAP(KVM_CAP_X86_USER_SPACE_MSR)");
}

Status KvmVm::filter_msr_writes(std::uint32_t index) {
    std::uint8_t bitmap[1] = {0};  // a clear bit denies: the access exits to userspace
    kvm_msr_filter f{};
    f.flags = KVM_MSR_FILTER_DEFAULT_ALLOW;
    f.ranges[0].flags = KVM_MSR_FILTER_WRITE;
    f.ranges[0].nmsrs = 1;
    f.ranges[0].base = index;
    f.ranges[0].bitmap = bitmap;
    return check(xioctl(fd_.get(), KVM_X86_SET_MSR_FILTER, &f), fmt::format("KVM_X86_SET_MSR_FILTER {:#x}", index));
}

Status KvmVm::xen_intercept_hypercalls(std::uint32_t msr) {
    kvm_xen_hvm_config c{};
    c.flags = KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL;
    c.msr = msr;
    return check(xioctl(fd_.get(), KVM_XEN_HVM_CONFIG, &c), "KVM_XEN_HVM_CONFIG");
}

Result<KvmVcpu> KvmVm::create_vcpu(std::uint32_t id, int mmap_size) {
    int fd = xioctl(fd_.get(), KVM_CREATE_VCPU, static_cast<unsigned long>(id));
    if (fd < 0) return fail(Error::from_errno(fmt::format("KVM_CREATE_VCPU {}", id)));
    common::UniqueFd owner(fd);
    auto map = common::Mmap::map_shared(fd, static_cast<std::size_t>(mmap_size), 0,
                                        PROT_READ | PROT_WRITE);
    if (!map) return fail(std::move(map.error()).context(fmt::format("mapping kvm_run of vCPU {}", id)));
    return KvmVcpu(std::move(owner), std::move(*map), id);
}

int KvmVcpu::run() {
    int r = ::ioctl(fd_.get(), KVM_RUN, 0);
    return r < 0 ? -errno : 0;
}

Result<kvm_regs> KvmVcpu::get_regs() const {
    kvm_regs r{};
    if (xioctl(fd_.get(), KVM_GET_REGS, &r) < 0) return fail(Error::from_errno("KVM_GET_REGS"));
    return r;
}

Status KvmVcpu::set_regs(const kvm_regs& r) {
    return check(xioctl(fd_.get(), KVM_SET_REGS, &r), "KVM_SET_REGS");
}

Result<kvm_sregs> KvmVcpu::get_sregs() const {
    kvm_sregs s{};
    if (xioctl(fd_.get(), KVM_GET_SREGS, &s) < 0) return fail(Error::from_errno("KVM_GET_SREGS"));
    return s;
}

Status KvmVcpu::set_sregs(const kvm_sregs& s) {
    return check(xioctl(fd_.get(), KVM_SET_SREGS, &s), "KVM_SET_SREGS");
}

Status KvmVcpu::set_cpuid(const std::vector<kvm_cpuid_entry2>& entries) {
    FlexBuffer<kvm_cpuid_entry2> buf(entries.size());
    buf.set_count(static_cast<std::uint32_t>(entries.size()));
    std::memcpy(buf.entries(), entries.data(), entries.size() * sizeof(kvm_cpuid_entry2));
    return check(xioctl(fd_.get(), kSetCpuid2, buf.data()), "KVM_SET_CPUID2");
}

Status KvmVcpu::set_fpu(const kvm_fpu& f) {
    return check(xioctl(fd_.get(), KVM_SET_FPU, &f), "KVM_SET_FPU");
}

Status KvmVcpu::set_lapic_lint(bool lint0_extint, bool lint1_nmi) {
    kvm_lapic_state s{};
    if (xioctl(fd_.get(), KVM_GET_LAPIC, &s) < 0) return fail(Error::from_errno("KVM_GET_LAPIC"));
    constexpr std::size_t kLvtLint0 = 0x350, kLvtLint1 = 0x360;
    auto set_mode = [&](std::size_t off, std::uint32_t mode) {
        std::uint32_t v;
        std::memcpy(&v, &s.regs[off], 4);
        v = (v & ~0x700u) | (mode << 8);
        std::memcpy(&s.regs[off], &v, 4);
    };
    if (lint0_extint) set_mode(kLvtLint0, 0x7);  // ExtINT: the PIC's output
    if (lint1_nmi) set_mode(kLvtLint1, 0x4);     // NMI
    return check(xioctl(fd_.get(), KVM_SET_LAPIC, &s), "KVM_SET_LAPIC");
}

Result<std::uint64_t> KvmVcpu::translate(std::uint64_t gva) const {
    kvm_translation t{};
    t.linear_address = gva;
    if (xioctl(fd_.get(), KVM_TRANSLATE, &t) < 0) return fail(Error::from_errno("KVM_TRANSLATE"));
    if (!t.valid) return fail(Error::not_found(fmt::format("guest-virtual {:#x} is not mapped", gva)));
    return t.physical_address;
}

}  // namespace hypervisor
