// xenstored's state: the tree of nodes, watches and transactions, shared by every domain that
// dom0 serves. Paths are absolute here ("/local/domain/1/device/vbd/51712/state"); a guest's
// relative paths are resolved by its Connection before they reach the Store.
//
// Changes to this interface since it was first committed (all additions, nothing removed):
//   - set_perms(): dom0 gives a node an owner and extra readers (see "Permissions" below).
//   - reset_watches(): XS_RESET_WATCHES, drops a domain's watches and transactions.
//   - domain_path(), and the limits kMax*.
//   - watch() and the node operations also accept a guest-relative path (resolved against
//     /local/domain/<caller>/); watch events of a relative watch are reported relative.
//   - the Store holds each watch's sink (a shared_ptr) until unwatch, reset_watches or
//     remove_domain of the watcher.
//
// Permissions (a simplified form of xenstored's): dom0 (caller 0) may do anything. A guest D
//   - reads /local/domain/D and below, /local/domain/0/backend/<type>/D and below (its backends),
//     and any node it owns or that dom0 listed it as a reader of (set_perms; a missing node
//     takes the permissions of its nearest existing ancestor);
//   - writes, makes and removes nodes strictly below /local/domain/D, provided the node (or,
//     when it is created, its nearest existing ancestor below /local/domain/D) is owned by D.
// A node created by dom0 at or below /local/domain/N (N != 0) is owned by N, so the toolstack's
// frontend directories are the guest's; dom0 locks a node (domid, name, store/*) with
// set_perms(owner 0, readers {N}). Other new nodes are owned by their creator.
// Limits per guest (dom0 is not limited): kMaxNodesPerDomain nodes and kMaxBytesPerDomain bytes
// of names and values in any one view (the tree or a transaction's), kMaxTransactionsPerDomain
// open transactions, kMaxWatchesPerDomain watches; quota failures are NoSpc.
//
// Transactions: copy-on-write snapshots of the tree (nodes are shared until written), so reads
// inside one see its own writes. Each node carries the generation of the commit that last
// changed it; a transaction remembers the generation of every node it read or changed (and of
// the nodes it found missing). A transaction that wrote nothing always commits. One that wrote
// commits when all of those nodes are unchanged in the committed tree: its changes are then
// replayed onto it (so one guest's unrelated writes never fail another's transactions);
// otherwise Again (the guest retries). Past 64 KiB of remembered paths a transaction falls back
// to "nothing at all committed since it started".
//
// Threading: one mutex inside; every method may be called from any thread. Watch callbacks
// never run under that mutex: changes queue WatchEvents, and whoever owns the thread that
// serves a watcher drains them (Connection for guests, the dom0 event loop for backends).
#pragma once

#include <cstddef>
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

inline constexpr std::size_t kMaxNodesPerDomain = 1000;
inline constexpr std::size_t kMaxBytesPerDomain = 512 * 1024;
inline constexpr std::size_t kMaxTransactionsPerDomain = 16;
inline constexpr std::size_t kMaxTransactionChanges = 1024;
inline constexpr std::size_t kMaxWatchesPerDomain = 128;
inline constexpr std::size_t kMaxValueSize = 4096;

// "/local/domain/<domid>"
[[nodiscard]] std::string domain_path(DomId domid);

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
    // dom0 only (others get Access): the node must exist.
    [[nodiscard]] XsResult<void> set_perms(DomId caller, TxId tx, std::string_view path, DomId owner,
                                           std::vector<DomId> readers);

    // Transactions: a snapshot view; end(commit=true) fails with Again if anything the
    // transaction read or wrote changed since it started (NoSpc if its changes no longer fit
    // the quota of the committed tree). An unknown id, or another domain's, is NoEnt.
    [[nodiscard]] XsResult<TxId> transaction_start(DomId caller);
    [[nodiscard]] XsResult<void> transaction_end(DomId caller, TxId tx, bool commit);

    // A watch on `path` and everything below it, or on "@releaseDomain"/"@introduceDomain"; fires
    // once at registration. Fires when the node or a descendant is written, made or removed, and
    // when an ancestor is removed (then reporting the watched path). A guest is sent only events
    // for paths it may read. Errors: Inval (bad path, null sink), Exist (same path and token),
    // NoSpc (too many watches).
    [[nodiscard]] XsResult<WatchId> watch(DomId caller, std::string path, std::string token,
                                          std::shared_ptr<WatchSink> sink);
    [[nodiscard]] XsResult<void> unwatch(DomId caller, std::string_view path, std::string_view token);
    void unwatch(WatchId id);
    // XS_RESET_WATCHES: drops every watch and open transaction of `domid`.
    void reset_watches(DomId domid);

    // A guest domain is gone: drop its watches and transactions, and its /local/domain/<id> tree
    // (firing watches on it), then fire "@releaseDomain" watches.
    void remove_domain(DomId domid);

private:
    // write (value set) and mkdir (value null): create the node and its missing parents.
    XsResult<void> put_node(DomId caller, TxId tx, std::string_view path, const std::string_view* value);

    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace xen_model::xenstore
