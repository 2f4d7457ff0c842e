#include "storage/guarded_copy.hpp"

#include <atomic>
#include <csetjmp>
#include <csignal>
#include <cstring>
#include <mutex>

namespace nitro_card::storage {

namespace {

// What the handler needs to recover one thread's copy.
struct Guard {
    sigjmp_buf resume;
    const std::byte* lo;
    const std::byte* hi;
};

// The thread's copy in progress, or null. Read by the handler on the faulting thread only.
thread_local Guard* t_active = nullptr;

// The disposition found when the handler was installed, for faults that are not ours.
struct PreviousAction {
    struct sigaction action {};
};

PreviousAction& previous() {
    static PreviousAction p;
    return p;
}

void on_sigbus(int sig, siginfo_t* info, void* context) {
    Guard* g = t_active;
    const auto* addr = static_cast<const std::byte*>(info->si_addr);
    if (g != nullptr && addr >= g->lo && addr < g->hi) {
        t_active = nullptr;
        siglongjmp(g->resume, 1);
    }
    const struct sigaction& prev = previous().action;
    if ((prev.sa_flags & SA_SIGINFO) != 0 && prev.sa_sigaction != nullptr) {
        prev.sa_sigaction(sig, info, context);
        return;
    }
    if (prev.sa_handler != SIG_DFL && prev.sa_handler != SIG_IGN && prev.sa_handler != nullptr) {
        prev.sa_handler(sig);
        return;
    }
    // Not ours and nobody else's: restore the default and return, so the faulting instruction
    // runs again and the process ends with SIGBUS as it would have without this handler.
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    ::sigaction(SIGBUS, &dfl, nullptr);
}

void install_handler() {
    static std::once_flag once;
    std::call_once(once, [] {
        struct sigaction sa {};
        sa.sa_sigaction = on_sigbus;
        // NODEFER: the handler leaves by siglongjmp without restoring a signal mask (sigsetjmp
        // with savemask 0 costs no system call), so SIGBUS must not be blocked while it runs.
        sa.sa_flags = SA_SIGINFO | SA_NODEFER;
        sigemptyset(&sa.sa_mask);
        ::sigaction(SIGBUS, &sa, &previous().action);
    });
}

}  // namespace

bool guarded_copy(void* dst, const void* src, std::size_t n,
                  std::span<const std::byte> window) noexcept {
    install_handler();
    // volatile: the guard is read after a siglongjmp back into this frame.
    Guard guard;
    guard.lo = window.data();
    guard.hi = window.data() + window.size();
    Guard* volatile active = &guard;
    if (sigsetjmp(guard.resume, 0) != 0) return false;
    t_active = active;
    // The compiler knows memcpy does not read t_active and would drop the store above as dead;
    // the fences keep both stores where they are, as seen by a handler on this thread.
    std::atomic_signal_fence(std::memory_order_seq_cst);
    std::memcpy(dst, src, n);
    std::atomic_signal_fence(std::memory_order_seq_cst);
    t_active = nullptr;
    return true;
}

}  // namespace nitro_card::storage
