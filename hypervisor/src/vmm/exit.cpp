#include "vmm/exit.hpp"

#include <algorithm>

namespace hypervisor {

VcpuExit decode_exit(const kvm_run& run, std::size_t mmap_size) {
    switch (run.exit_reason) {
        case KVM_EXIT_IO: {
            std::uint64_t bytes = std::uint64_t{run.io.size} * run.io.count;
            if ((run.io.size != 1 && run.io.size != 2 && run.io.size != 4) || run.io.count == 0 ||
                run.io.data_offset > mmap_size || bytes > mmap_size - run.io.data_offset)
                return UnknownExit{run.exit_reason};
            return PioExit{run.io.port, run.io.size, run.io.direction == KVM_EXIT_IO_OUT, run.io.count,
                           run.io.data_offset};
        }
        case KVM_EXIT_MMIO:
            if (run.mmio.len == 0 || run.mmio.len > 8) return UnknownExit{run.exit_reason};
            return MmioExit{run.mmio.phys_addr, run.mmio.len, run.mmio.is_write != 0};
        case KVM_EXIT_SHUTDOWN:
            return ShutdownExit{};
        case KVM_EXIT_SYSTEM_EVENT:
            return SystemEventExit{run.system_event.type};
        case KVM_EXIT_INTERNAL_ERROR: {
            InternalErrorExit e{run.internal.suberror, run.internal.ndata, {}};
            std::copy_n(run.internal.data, std::min<std::uint32_t>(run.internal.ndata, 4), e.data);
            return e;
        }
        case KVM_EXIT_FAIL_ENTRY:
            return FailEntryExit{run.fail_entry.hardware_entry_failure_reason};
        case KVM_EXIT_HLT:
            return HltExit{};
        case KVM_EXIT_X86_RDMSR:
        case KVM_EXIT_X86_WRMSR:
            return MsrExit{run.msr.index, run.msr.data, run.exit_reason == KVM_EXIT_X86_WRMSR};
        case KVM_EXIT_XEN:
            if (run.xen.type != KVM_EXIT_XEN_HCALL) return UnknownExit{run.exit_reason};
            return XenHcallExit{};
        case KVM_EXIT_INTR:
        case KVM_EXIT_IRQ_WINDOW_OPEN:
            return IgnoredExit{};
        default:
            return UnknownExit{run.exit_reason};
    }
}

}  // namespace hypervisor
