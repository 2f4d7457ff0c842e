// xenstored's state: the tree of nodes, watches and transactions, shared by every domain that
// dom0 serves. Paths are absolute here ("/local/domain/1/device/vbd/51712/state"); a guest's
// relative paths are resolved by its Connection before they reach the Store.
//
// Threading: one mutex inside; every method may be called from any thread. Watch callbacks
// never run under that mutex: changes queue WatchEvents, and whoever owns the thread that
// serves a watcher drains them (Connection for guests, the dom0 event loop for backends).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/error.hpp"

namespace xen_model::xenstore {

using DomId = std::uint32_t;
using TxId = std::uint32_t;      // 0 = no transaction
using WatchId = std::uint64_t;

// Errors a request can end with, named as xenstored names them on the wire ("ENOENT", ...).
enum class XsError { NoEnt, Inval, Access, Exist, IsDir, NoSpc, Again, Busy, Perm, NoSys, TooBig, Io };
[[nodiscard]] std::string_view to_wire(XsError e) noexcept;
template <typename T>
using XsResult = std::expected<T, XsError>;

struct WatchEvent {
    std::string path;   // the changed node, as the watcher registered it (relative stays relative)
    std::string token;
};

// Who receives a watch's events: a guest Connection or an in-process backend.
class WatchSink {
public:
    virtual ~WatchSink() = default;
    // Called under no lock, possibly from the thread that changed the tree: queue and wake.
    virtual void post(WatchEvent ev) = 0;
};

class Store final {
public:
    Store();
    ~Store();
    Store(const Store&) = delete;
    Store& operator=(const Store&) = delete;

    // Node operations on behalf of `caller` (0 = dom0, may do anything). Guests may read their
    // own subtree and what dom0 made readable for them, and write only under
    // /local/domain/<caller>/. tx 0 = outside a transaction.
    [[nodiscard]] XsResult<std::string> read(DomId caller, TxId tx, std::string_view path);
    [[nodiscard]] XsResult<void> write(DomId caller, TxId tx, std::string_view path, std::string_view value);
    [[nodiscard]] XsResult<void> mkdir(DomId caller, TxId tx, std::string_view path);
    [[nodiscard]] XsResult<void> rm(DomId caller, TxId tx, std::string_view path);
    [[nodiscard]] XsResult<std::vector<std::string>> directory(DomId caller, TxId tx, std::string_view path);

    // Transactions: a snapshot view; end(commit=true) fails with Again if anything the
    // transaction read or wrote changed since it started.
    [[nodiscard]] XsResult<TxId> transaction_start(DomId caller);
    [[nodiscard]] XsResult<void> transaction_end(DomId caller, TxId tx, bool commit);

    // A watch on `path` and everything below it; fires once at registration.
    [[nodiscard]] XsResult<WatchId> watch(DomId caller, std::string path, std::string token,
                                          std::shared_ptr<WatchSink> sink);
    [[nodiscard]] XsResult<void> unwatch(DomId caller, std::string_view path, std::string_view token);
    void unwatch(WatchId id);

    // A guest domain is gone: drop its watches and transactions, and its /local/domain/<id> tree.
    void remove_domain(DomId domid);

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace xen_model::xenstore
