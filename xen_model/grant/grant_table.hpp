// dom0's view of one guest's v1 grant table, and mappings of granted pages (Xen §3.6).
//
// The table lives in guest memory (the Special region the vmm gave in Attach); the guest writes
// it at any time. map() follows what Xen does for a backend's map: read the entry, require
// permit_access, no sub-page, the backend's domid and (for a write) no readonly, then set
// GTF_reading (and GTF_writing) with a compare-and-swap on the entry's flags and domid word, so
// the guest cannot change either between the check and the claim. The frame is read after the
// claim and must name a page of a Ram region: never a Special page (the grant table itself, the
// xenstore ring) and nothing outside guest memory.
//
// A GrantMapping is the claim: while it lives the page may be accessed, and its destruction
// clears the flags again (before the backend posts its response, as Linux frontends require).
// Several live mappings of one ref share the flags through a pin count, as Xen's maptrack does.
//
// Threading: map() and mapping destruction may run on any thread (one mutex for the pin counts).
// The GrantTable must outlive its mappings.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <unordered_map>
#include <vector>

#include "common/error.hpp"
#include "common/guest_memory.hpp"
#include "xen_model/abi/xen_abi.hpp"

namespace xen_model::grant {

class GrantTable;

enum class Access : std::uint8_t { Read, Write };  // what dom0 does to the page

class GrantMapping final {
public:
    GrantMapping() = default;
    GrantMapping(GrantMapping&& o) noexcept;
    GrantMapping& operator=(GrantMapping&& o) noexcept;
    GrantMapping(const GrantMapping&) = delete;
    GrantMapping& operator=(const GrantMapping&) = delete;
    ~GrantMapping() { release(); }

    // The granted page (4096 bytes). Empty for a default-constructed or released mapping.
    [[nodiscard]] std::span<std::byte> page() const noexcept { return page_; }
    [[nodiscard]] common::GuestAddr gpa() const noexcept { return gpa_; }
    [[nodiscard]] std::uint32_t ref() const noexcept { return ref_; }
    [[nodiscard]] bool valid() const noexcept { return table_ != nullptr; }
    // Ends the access now: clears GTF_writing / GTF_reading when this was the last user.
    void release() noexcept;

private:
    friend class GrantTable;
    GrantMapping(GrantTable* t, std::uint32_t ref, Access a, std::span<std::byte> page, common::GuestAddr gpa)
        : table_(t), ref_(ref), access_(a), page_(page), gpa_(gpa) {}
    GrantTable* table_ = nullptr;
    std::uint32_t ref_ = 0;
    Access access_ = Access::Read;
    std::span<std::byte> page_{};
    common::GuestAddr gpa_{};
};

struct GrantStats {
    std::uint64_t maps = 0;
    std::uint64_t refused = 0;
};

class GrantTable final {
public:
    // frames grant-table frames at table_gpa (inside mem); ram are the guest's Ram regions (the
    // only places a granted frame may be). backend_domid is the domid grants must name (dom0).
    [[nodiscard]] static common::Result<std::unique_ptr<GrantTable>> create(
        const common::GuestMemory& mem, common::GuestAddr table_gpa, std::uint32_t frames,
        std::vector<common::MemoryRegion> ram, std::uint16_t backend_domid = abi::kDom0);
    ~GrantTable();
    GrantTable(const GrantTable&) = delete;
    GrantTable& operator=(const GrantTable&) = delete;

    // Claims ref for access. Errors (kind GuestFault, naming the ref and the reason) leave the
    // entry as it was.
    [[nodiscard]] common::Result<GrantMapping> map(std::uint32_t ref, Access access);

    [[nodiscard]] std::uint32_t entries() const noexcept { return entries_; }
    // Refs with a live mapping (for tests and the teardown check).
    [[nodiscard]] std::size_t pinned() const;
    [[nodiscard]] GrantStats stats() const;

private:
    friend class GrantMapping;
    struct Pin {
        std::uint32_t readers = 0;  // every mapping, writers included
        std::uint32_t writers = 0;
    };
    GrantTable(const common::GuestMemory& mem, std::span<std::byte> table, std::vector<common::MemoryRegion> ram,
               std::uint16_t domid);
    void unpin(std::uint32_t ref, Access access) noexcept;
    void unpin_locked(std::uint32_t ref, Access access) noexcept;  // mu_ held
    [[nodiscard]] std::uint32_t* word(std::uint32_t ref) const noexcept;  // flags | domid << 16
    [[nodiscard]] bool in_ram(std::uint64_t gpa) const noexcept;

    const common::GuestMemory& mem_;
    std::span<std::byte> table_;  // GUEST-SHARED: the entries
    std::uint32_t entries_;
    std::vector<common::MemoryRegion> ram_;
    std::uint16_t domid_;
    mutable std::mutex mu_;  // guards pins_ and stats_, and orders flag updates of one ref
    std::unordered_map<std::uint32_t, Pin> pins_;
    GrantStats stats_;
};

}  // namespace xen_model::grant
