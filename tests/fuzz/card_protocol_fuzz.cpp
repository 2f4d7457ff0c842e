// Fuzzes the card protocol decoder with hostile bytes and a hostile fd count, and the DMA map
// table with arbitrary map/unmap sequences checked against a brute-force model.
//
// Input: byte 0 is the number of fds said to have arrived (no real fds are involved: decoding
// only needs the count); byte 1 selects the limits and the mode; the rest is the message, or
// the table operations. Any crash, sanitizer report or trap is a bug.
//
// In the CMake build (tests/fuzz/CMakeLists.txt, a Clang that can use std::expected) the codec
// is compiled alongside this file. Clang 14 cannot compile libstdc++ 12's <expected> (it lacks
// conditionally trivial special members), so for it this file defines a minimal stand-in and
// compiles the codec into this translation unit, where it sees the stand-in:
//   clang++ -std=c++2b -g -O1 -fsanitize=fuzzer,address,undefined -Icommon/include
//           tests/fuzz/card_protocol_fuzz.cpp -lfmt -o card_protocol_fuzz
#include <version>

#if !defined(__cpp_lib_expected)
#include <type_traits>
#include <utility>
#include <variant>

namespace std {  // NOLINT: stand-in only where the library has none

template <class E>
class unexpected {
public:
    template <class G = E>
    requires(!is_same_v<remove_cvref_t<G>, unexpected> &&
             is_constructible_v<E, G>) constexpr explicit unexpected(G&& e)
        : e_(std::forward<G>(e)) {}
    constexpr E& error() & { return e_; }
    constexpr const E& error() const& { return e_; }
    constexpr E&& error() && { return std::move(e_); }

private:
    E e_;
};
template <class E>
unexpected(E) -> unexpected<E>;

template <class T, class E>
class expected {
public:
    using value_type = T;
    using error_type = E;
    constexpr expected() requires is_default_constructible_v<T> : v_(in_place_index<0>) {}
    template <class U = T>
    requires(!is_same_v<remove_cvref_t<U>, expected> &&
             is_constructible_v<T, U>) constexpr expected(U&& v)
        : v_(in_place_index<0>, std::forward<U>(v)) {}
    template <class G>
    constexpr expected(const unexpected<G>& u) : v_(in_place_index<1>, u.error()) {}
    template <class G>
    constexpr expected(unexpected<G>&& u) : v_(in_place_index<1>, std::move(u).error()) {}

    constexpr bool has_value() const { return v_.index() == 0; }
    constexpr explicit operator bool() const { return has_value(); }
    constexpr T& operator*() & { return *get_if<0>(&v_); }
    constexpr const T& operator*() const& { return *get_if<0>(&v_); }
    constexpr T&& operator*() && { return std::move(*get_if<0>(&v_)); }
    constexpr T* operator->() { return get_if<0>(&v_); }
    constexpr const T* operator->() const { return get_if<0>(&v_); }
    constexpr T& value() & { return get<0>(v_); }
    constexpr const T& value() const& { return get<0>(v_); }
    constexpr E& error() & { return *get_if<1>(&v_); }
    constexpr const E& error() const& { return *get_if<1>(&v_); }
    constexpr E&& error() && { return std::move(*get_if<1>(&v_)); }

private:
    variant<T, E> v_;
};

template <class E>
class expected<void, E> {
public:
    using value_type = void;
    using error_type = E;
    constexpr expected() = default;
    template <class G>
    constexpr expected(const unexpected<G>& u) : e_(in_place_index<1>, u.error()) {}
    template <class G>
    constexpr expected(unexpected<G>&& u) : e_(in_place_index<1>, std::move(u).error()) {}

    constexpr bool has_value() const { return e_.index() == 0; }
    constexpr explicit operator bool() const { return has_value(); }
    constexpr E& error() & { return *get_if<1>(&e_); }
    constexpr const E& error() const& { return *get_if<1>(&e_); }
    constexpr E&& error() && { return std::move(*get_if<1>(&e_)); }

private:
    variant<monostate, E> e_;
};

}  // namespace std
#define CARD_FUZZ_SINGLE_TU 1
#endif

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#if defined(CARD_FUZZ_SINGLE_TU)
#include "../../common/src/card_protocol.cpp"
#else
#include "common/card_protocol.hpp"
#endif

namespace {

using namespace common;
using namespace common::card;

Capabilities limits_for(std::uint8_t sel) {
    Capabilities c;
    if (sel & 1) {  // tight limits, so size and count checks near them get exercised
        c.max_msg_size = 512;
        c.max_msg_fds = 4;
        c.max_data_xfer = 64;
        c.max_dma_maps = 8;
    }
    return c;
}

void fuzz_decode(std::span<const std::byte> bytes, std::size_t fds, const Capabilities& limits) {
    auto m = decode(bytes, fds, limits);
    if (!m) {
        const Error& e = m.error();
        if (e.kind != ErrorKind::Protocol || e.errno_value == 0 || e.message.empty())
            __builtin_trap();
        return;
    }
    // What was accepted fits the limits and survives a round trip unchanged.
    if (bytes.size() > limits.max_msg_size || fds > limits.max_msg_fds) __builtin_trap();
    auto again = encode(*m, fds, limits);
    if (!again) __builtin_trap();
    auto back = decode(*again, fds, limits);
    if (!back || !(*back == *m)) __builtin_trap();
    // Only argsz of requests may differ (it is a lower bound there); the layout may not.
    if (again->size() != bytes.size()) __builtin_trap();

    if (const auto* d = std::get_if<DmaMapRequest>(&m->body)) {
        DmaMapTable t(limits.max_dma_maps);
        if (!t.map(*d)) __builtin_trap();
        if (t.find(d->addr, d->size) == nullptr) __builtin_trap();
        if (t.map(*d)) __builtin_trap();  // the same range again overlaps
        if (!t.unmap(d->addr, d->size) || !t.empty()) __builtin_trap();
    }
    (void)error_reply(*m, EINVAL);
}

// Operations of 3 bytes: kind, start page, page count; checked against a plain list.
void fuzz_table(std::span<const std::byte> ops, std::uint32_t max_maps) {
    struct Range {
        std::uint64_t a, n;
    };
    DmaMapTable t(max_maps);
    std::vector<Range> model;
    for (std::size_t i = 0; i + 3 <= ops.size(); i += 3) {
        const auto kind = std::to_integer<unsigned>(ops[i]) % 3;
        const std::uint64_t a = std::to_integer<std::uint64_t>(ops[i + 1]) * kPageSize;
        const std::uint64_t n = std::to_integer<std::uint64_t>(ops[i + 2]) % 16 * kPageSize;
        if (kind == 0) {
            DmaMapRequest r{kDmaRead, a, GuestAddr(a), n};
            const bool overlap = std::any_of(model.begin(), model.end(), [&](const Range& m) {
                return a < m.a + m.n && m.a < a + n;
            });
            const bool ok = n != 0 && !overlap && model.size() < max_maps;
            if (t.map(r).has_value() != ok) __builtin_trap();
            if (ok) model.push_back({a, n});
        } else if (kind == 1) {
            auto it = std::find_if(model.begin(), model.end(),
                                   [&](const Range& m) { return m.a == a && m.n == n; });
            const bool ok = it != model.end();
            if (t.unmap(GuestAddr(a), n).has_value() != ok) __builtin_trap();
            if (ok) model.erase(it);
        } else {
            const std::uint64_t len = n ? n : 1;
            const bool inside = std::any_of(model.begin(), model.end(), [&](const Range& m) {
                return a >= m.a && a + len <= m.a + m.n;
            });
            if ((t.find(GuestAddr(a), len) != nullptr) != inside) __builtin_trap();
        }
        if (t.size() != model.size()) __builtin_trap();
    }
    auto regions = t.memory_regions();
    for (std::size_t i = 1; i < regions.size(); ++i)
        if (regions[i - 1].base.value() + regions[i - 1].size > regions[i].base.value())
            __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size < 2) return 0;
    const std::size_t fds = data[0];
    const std::uint8_t sel = data[1];
    const auto limits = limits_for(sel);
    std::span<const std::byte> rest(reinterpret_cast<const std::byte*>(data + 2), size - 2);
    if (sel & 2)
        fuzz_table(rest, limits.max_dma_maps);
    else
        fuzz_decode(rest, fds, limits);
    return 0;
}
