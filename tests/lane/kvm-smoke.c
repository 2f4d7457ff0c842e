/*
 * kvm-smoke: the smallest proof that /dev/kvm can run a guest.
 *
 * One VM, one vCPU, one page of RAM at 0x1000 holding real-mode code:
 *     mov  $42, %al
 *     out  %al, $0xf4        ; exit 1: checked for port 0xF4, value 42
 *     mov  $N, %cx
 * 1:  out  %al, $0xf4        ; N more exits, timed
 *     loop 1b
 *     hlt                    ; checked for KVM_EXIT_HLT
 * Prints one line with the timings; exit status 0 on success.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

enum { kGuestBase = 0x1000, kPageSize = 0x1000, kLoops = 1000 };

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static int fail(const char *what)
{
    fprintf(stderr, "kvm-smoke: FAIL %s: %s\n", what, strerror(errno));
    return 1;
}

static const char *exit_name(uint32_t reason)
{
    switch (reason) {
    case KVM_EXIT_IO: return "IO";
    case KVM_EXIT_HLT: return "HLT";
    case KVM_EXIT_MMIO: return "MMIO";
    case KVM_EXIT_SHUTDOWN: return "SHUTDOWN";
    case KVM_EXIT_FAIL_ENTRY: return "FAIL_ENTRY";
    case KVM_EXIT_INTERNAL_ERROR: return "INTERNAL_ERROR";
    default: return "other";
    }
}

/* True if the last exit is a 1-byte OUT of `value` to port 0xF4. */
static int is_out_f4(const struct kvm_run *run, uint8_t value)
{
    return run->exit_reason == KVM_EXIT_IO && run->io.direction == KVM_EXIT_IO_OUT &&
           run->io.port == 0xf4 && run->io.size == 1 && run->io.count == 1 &&
           *((const uint8_t *)run + run->io.data_offset) == value;
}

int main(void)
{
    const uint8_t code[] = {
        0xb0, 42,                       /* mov $42, %al */
        0xe6, 0xf4,                     /* out %al, $0xf4 */
        0xb9, kLoops & 0xff, kLoops >> 8, /* mov $kLoops, %cx */
        0xe6, 0xf4,                     /* 1: out %al, $0xf4 */
        0xe2, 0xfc,                     /* loop 1b */
        0xf4,                           /* hlt */
    };

    double t0 = now_us();
    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0)
        return fail("open /dev/kvm");
    int api = ioctl(kvm, KVM_GET_API_VERSION, 0);
    if (api != KVM_API_VERSION) {
        fprintf(stderr, "kvm-smoke: FAIL KVM_GET_API_VERSION = %d\n", api);
        return 1;
    }
    int vm = ioctl(kvm, KVM_CREATE_VM, 0);
    if (vm < 0)
        return fail("KVM_CREATE_VM");
    /* Needed for real mode on VMX only; harmless elsewhere. */
    (void)ioctl(vm, KVM_SET_TSS_ADDR, 0xfffbd000UL);

    void *mem = mmap(NULL, kPageSize, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED)
        return fail("mmap guest memory");
    memcpy(mem, code, sizeof code);
    struct kvm_userspace_memory_region region = {
        .slot = 0,
        .guest_phys_addr = kGuestBase,
        .memory_size = kPageSize,
        .userspace_addr = (uint64_t)(uintptr_t)mem,
    };
    if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0)
        return fail("KVM_SET_USER_MEMORY_REGION");

    int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
    if (vcpu < 0)
        return fail("KVM_CREATE_VCPU");
    int run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    if (run_size < (int)sizeof(struct kvm_run))
        return fail("KVM_GET_VCPU_MMAP_SIZE");
    struct kvm_run *run = mmap(NULL, (size_t)run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
    if (run == MAP_FAILED)
        return fail("mmap kvm_run");

    struct kvm_sregs sregs;
    if (ioctl(vcpu, KVM_GET_SREGS, &sregs) < 0)
        return fail("KVM_GET_SREGS");
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0)
        return fail("KVM_SET_SREGS");
    struct kvm_regs regs = {.rip = kGuestBase, .rflags = 0x2};
    if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0)
        return fail("KVM_SET_REGS");
    double t1 = now_us();

    if (ioctl(vcpu, KVM_RUN, 0) < 0)
        return fail("KVM_RUN");
    double t2 = now_us();
    if (!is_out_f4(run, 42)) {
        fprintf(stderr, "kvm-smoke: FAIL first exit is %s (%u), not OUT 42 to 0xf4\n",
                exit_name(run->exit_reason), run->exit_reason);
        return 1;
    }

    for (int i = 0; i < kLoops; i++) {
        if (ioctl(vcpu, KVM_RUN, 0) < 0)
            return fail("KVM_RUN");
        if (!is_out_f4(run, 42)) {
            fprintf(stderr, "kvm-smoke: FAIL exit %d is %s (%u), not OUT 42 to 0xf4\n", i + 2,
                    exit_name(run->exit_reason), run->exit_reason);
            return 1;
        }
    }
    double t3 = now_us();

    if (ioctl(vcpu, KVM_RUN, 0) < 0)
        return fail("KVM_RUN");
    if (run->exit_reason != KVM_EXIT_HLT) {
        fprintf(stderr, "kvm-smoke: FAIL last exit is %s (%u), not HLT\n",
                exit_name(run->exit_reason), run->exit_reason);
        return 1;
    }
    double t4 = now_us();

    printf("kvm-smoke: PASS api=%d out=42 setup_us=%.0f first_run_us=%.0f "
           "io_exits=%d per_exit_us=%.1f total_ms=%.1f\n",
           api, t1 - t0, t2 - t1, kLoops, (t3 - t2) / kLoops, (t4 - t0) / 1e3);
    return 0;
}
