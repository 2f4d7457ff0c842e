// Copies to and from a shared file mapping without dying when the file stops backing it.
//
// A page of a MAP_SHARED file mapping faults with SIGBUS when the file no longer covers it
// (someone truncated the file) or the file system cannot allocate it (a write into a hole of a
// sparse file on a full tmpfs). For a volume that is a failed request, not a reason to take the
// card or dom0 down with every other volume. guarded_copy() turns such a fault, inside the
// window it is told about, into a false return; faults anywhere else keep their usual effect
// (the previous SIGBUS disposition, by default the process ends with a core).
//
// The first call installs a process-wide SIGBUS handler, once. Each call marks the window in a
// thread-local record the handler reads: a signal handler has no other way to find it.
#pragma once

#include <cstddef>
#include <span>

namespace nitro_card::storage {

// Copies n bytes from src to dst. `window` is the mapping whose faults are survivable (src or
// dst lies in it). False when a SIGBUS hit the window; dst then holds a partial copy.
[[nodiscard]] bool guarded_copy(void* dst, const void* src, std::size_t n,
                                std::span<const std::byte> window) noexcept;

}  // namespace nitro_card::storage
