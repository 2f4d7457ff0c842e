#include "xen_model/xenstore/store.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <charconv>
#include <map>
#include <mutex>
#include <optional>
#include <utility>

#include "xen_model/xenstore/wire.hpp"

namespace xen_model::xenstore {

std::string domain_path(DomId domid) { return "/local/domain/" + std::to_string(domid); }

namespace {

// Bytes a node costs its owner beyond its name and value (node, map entry, shared_ptr block).
constexpr std::size_t kNodeOverhead = 64;

struct Node;
using NodePtr = std::shared_ptr<const Node>;

// Nodes are immutable once shared: a change copies the path from the root down to the node
// (the copy-on-write that lets a transaction keep its snapshot while the tree moves on).
struct Node {
    std::string value;
    DomId owner = 0;
    std::vector<DomId> readers;
    std::map<std::string, NodePtr, std::less<>> children;
    // The commit that last changed this node's value, permissions or set of children (a
    // transaction's own changes carry kTxStamp). Transactions compare these at commit.
    std::uint64_t gen = 0;
};

constexpr std::uint64_t kTxStamp = ~std::uint64_t{0};
constexpr std::uint64_t kAbsent = 0;  // gens of existing nodes start at 1
constexpr std::uint64_t kExists = ~std::uint64_t{0} - 1;

struct Usage {
    std::size_t nodes = 0;
    std::size_t bytes = 0;
};

// One consistent view: the committed tree, or a transaction's.
struct Tree {
    NodePtr root;
    std::map<DomId, Usage> usage;  // per owner
};

using Comps = std::vector<std::string_view>;

// "/a/b" -> {"a", "b"}; "/" -> {}. The path has passed valid_absolute_path.
Comps split(std::string_view abs) {
    Comps out;
    std::size_t pos = 1;
    while (pos < abs.size()) {
        std::size_t end = abs.find('/', pos);
        if (end == std::string_view::npos) end = abs.size();
        out.push_back(abs.substr(pos, end - pos));
        pos = end + 1;
    }
    return out;
}

std::string join(const Comps& c, std::size_t depth) {
    if (depth == 0) return "/";
    std::string s;
    for (std::size_t i = 0; i < depth; ++i) {
        s.push_back('/');
        s.append(c[i]);
    }
    return s;
}

bool is_domid(std::string_view s, DomId d) { return s == std::to_string(d); }

// The N of /local/domain/N[/...], if the path lies there.
std::optional<DomId> domain_of(const Comps& c) {
    if (c.size() < 3 || c[0] != "local" || c[1] != "domain") return std::nullopt;
    const std::string_view s = c[2];
    if (s.empty() || s.size() > 5 || (s.size() > 1 && s.front() == '0')) return std::nullopt;
    DomId v = 0;
    auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (ec != std::errc{} || p != s.data() + s.size()) return std::nullopt;
    return v;
}

// p == base or p below base.
bool under(std::string_view p, std::string_view base) {
    if (base == "/") return true;
    return p == base || (p.size() > base.size() && p.starts_with(base) && p[base.size()] == '/');
}

// The existing nodes from the root along `c`: result[d] is the node at depth d.
std::vector<const Node*> chain(const Tree& t, const Comps& c) {
    std::vector<const Node*> out{t.root.get()};
    for (auto comp : c) {
        const auto& kids = out.back()->children;
        auto it = kids.find(comp);
        if (it == kids.end()) break;
        out.push_back(it->second.get());
    }
    return out;
}

std::size_t cost(std::string_view name, std::size_t value_size) { return name.size() + value_size + kNodeOverhead; }

bool may_read(DomId d, const Comps& c, const Tree& t) {
    if (d == 0) return true;
    if (c.size() >= 3 && c[0] == "local" && c[1] == "domain" && is_domid(c[2], d)) return true;
    if (c.size() >= 6 && c[0] == "local" && c[1] == "domain" && c[2] == "0" && c[3] == "backend" &&
        is_domid(c[5], d))
        return true;
    const Node* n = chain(t, c).back();
    return n->owner == d || std::ranges::find(n->readers, d) != n->readers.end();
}

bool may_write(DomId d, const Comps& c, const Tree& t) {
    if (d == 0) return true;
    if (c.size() < 4 || c[0] != "local" || c[1] != "domain" || !is_domid(c[2], d)) return false;
    auto ch = chain(t, c);
    const std::size_t depth = ch.size() - 1;  // of the nearest existing node
    return depth <= 3 || ch.back()->owner == d;
}

DomId default_owner(DomId caller, const Comps& c, std::size_t depth) {
    if (caller != 0) return caller;
    if (depth < 3) return 0;
    auto dom = domain_of(Comps(c.begin(), c.begin() + static_cast<std::ptrdiff_t>(depth)));
    return dom.value_or(0);
}

class UsageDelta {
public:
    void add(DomId o, std::size_t nodes, std::size_t bytes) {
        auto& e = d_[o];
        e.nodes_add += nodes;
        e.bytes_add += bytes;
    }
    void sub(DomId o, std::size_t nodes, std::size_t bytes) {
        auto& e = d_[o];
        e.nodes_sub += nodes;
        e.bytes_sub += bytes;
    }
    // Growth past a guest's limits fails; dom0 is not limited.
    [[nodiscard]] bool fits(const Tree& t) const {
        for (const auto& [o, e] : d_) {
            if (o == 0) continue;
            Usage u;
            if (auto it = t.usage.find(o); it != t.usage.end()) u = it->second;
            if (e.nodes_add > e.nodes_sub && u.nodes + e.nodes_add - e.nodes_sub > kMaxNodesPerDomain) return false;
            if (e.bytes_add > e.bytes_sub && u.bytes + e.bytes_add - e.bytes_sub > kMaxBytesPerDomain) return false;
        }
        return true;
    }
    void apply(Tree& t) const {
        for (const auto& [o, e] : d_) {
            auto& u = t.usage[o];
            u.nodes = u.nodes + e.nodes_add - std::min(u.nodes + e.nodes_add, e.nodes_sub);
            u.bytes = u.bytes + e.bytes_add - std::min(u.bytes + e.bytes_add, e.bytes_sub);
            if (u.nodes == 0 && u.bytes == 0) t.usage.erase(o);
        }
    }

private:
    struct Entry {
        std::size_t nodes_add = 0, nodes_sub = 0, bytes_add = 0, bytes_sub = 0;
    };
    std::map<DomId, Entry> d_;
};

// Replaces the node at depth c.size() with `leaf` (nullptr removes it), copying its ancestors;
// missing ancestors (below the existing chain `ch`) are created empty with default owners. A
// node whose set of children changes is stamped.
void rebuild(Tree& t, const Comps& c, const std::vector<const Node*>& ch, DomId caller, NodePtr leaf,
             std::uint64_t stamp) {
    NodePtr child = std::move(leaf);
    for (std::size_t d = c.size(); d-- > 0;) {
        std::shared_ptr<Node> parent;
        if (d < ch.size()) {
            parent = std::make_shared<Node>(*ch[d]);
        } else {
            parent = std::make_shared<Node>();
            parent->owner = default_owner(caller, c, d);
        }
        if (d + 1 >= ch.size()) parent->gen = stamp;
        if (child) {
            parent->children.insert_or_assign(std::string(c[d]), std::move(child));
        } else {
            auto it = parent->children.find(c[d]);
            if (it != parent->children.end()) parent->children.erase(it);
        }
        child = std::move(parent);
    }
    t.root = std::move(child);
}

// WRITE (value set) and MKDIR (value null). Returns whether anything changed.
XsResult<bool> put(Tree& t, const Comps& c, DomId caller, const std::string_view* value, std::uint64_t stamp) {
    auto ch = chain(t, c);
    const std::size_t n = c.size();
    const bool exists = ch.size() == n + 1;
    if (exists && value == nullptr) return false;  // mkdir of an existing node
    UsageDelta delta;
    for (std::size_t d = ch.size(); d <= n; ++d) {
        const std::size_t vs = (d == n && value != nullptr) ? value->size() : 0;
        delta.add(default_owner(caller, c, d), 1, cost(c[d - 1], vs));
    }
    if (exists) {
        const Node* old = ch.back();
        delta.add(old->owner, 0, value->size());
        delta.sub(old->owner, 0, old->value.size());
    }
    if (!delta.fits(t)) return std::unexpected(XsError::NoSpc);
    std::shared_ptr<Node> leaf;
    if (exists) {
        leaf = std::make_shared<Node>(*ch.back());
    } else {
        leaf = std::make_shared<Node>();
        leaf->owner = default_owner(caller, c, n);
    }
    if (value != nullptr) leaf->value.assign(value->data(), value->size());
    leaf->gen = stamp;
    if (n == 0) {
        t.root = std::move(leaf);
    } else {
        rebuild(t, c, ch, caller, std::move(leaf), stamp);
    }
    delta.apply(t);
    return true;
}

// RM. Returns whether anything changed (a missing node under an existing parent is no change).
XsResult<bool> remove(Tree& t, const Comps& c, DomId caller, std::uint64_t stamp) {
    if (c.empty()) return std::unexpected(XsError::Inval);
    auto ch = chain(t, c);
    if (ch.size() == c.size()) return false;
    if (ch.size() < c.size()) return std::unexpected(XsError::NoEnt);
    UsageDelta delta;
    // Every node of the subtree, each counted against its owner. Iterative: depth is bounded by
    // the path limit, but a stack keeps it off the call stack anyway.
    std::vector<std::pair<std::string_view, const Node*>> stack{{c.back(), ch.back()}};
    while (!stack.empty()) {
        auto [name, node] = stack.back();
        stack.pop_back();
        delta.sub(node->owner, 1, cost(name, node->value.size()));
        for (const auto& [k, v] : node->children) stack.emplace_back(k, v.get());
    }
    ch.pop_back();
    rebuild(t, c, ch, caller, nullptr, stamp);
    delta.apply(t);
    return true;
}

XsResult<void> perms(Tree& t, const Comps& c, DomId owner, std::vector<DomId> readers, std::uint64_t stamp) {
    auto ch = chain(t, c);
    if (ch.size() != c.size() + 1) return std::unexpected(XsError::NoEnt);
    const Node* old = ch.back();
    auto leaf = std::make_shared<Node>(*old);
    leaf->owner = owner;
    leaf->readers = std::move(readers);
    leaf->gen = stamp;
    const std::size_t bytes = cost(c.empty() ? std::string_view{} : c.back(), old->value.size());
    UsageDelta delta;
    delta.sub(old->owner, 1, bytes);
    delta.add(owner, 1, bytes);
    if (c.empty()) {
        t.root = std::move(leaf);
    } else {
        ch.pop_back();
        rebuild(t, c, ch, 0, std::move(leaf), stamp);
    }
    delta.apply(t);
    return {};
}

struct Watch {
    DomId owner = 0;
    std::string path;  // as registered (maybe relative)
    std::string abs;   // resolved, or the special name
    std::string token;
    std::shared_ptr<WatchSink> sink;
};

struct Change {
    std::string abs;
    bool removed = false;
};

// A transaction's change, replayed onto the committed tree at commit.
struct Op {
    enum class Kind { Write, Mkdir, Rm, Perms };
    Kind kind = Kind::Write;
    DomId caller = 0;
    std::string path;
    std::string value;
    DomId owner = 0;
    std::vector<DomId> readers;
};

// Bytes of paths a transaction remembers having seen; past that it falls back to "nothing at
// all may have been committed since the start".
constexpr std::size_t kMaxSeenBytes = 64 * 1024;

struct Tx {
    DomId owner = 0;
    std::uint64_t start_gen = 0;
    NodePtr base;  // the snapshot it started from (never changed)
    Tree tree;     // the snapshot with the transaction's own changes
    std::vector<Op> ops;
    // What the transaction's outcome depends on, path by path: the node's gen in the snapshot
    // when it read the node, kAbsent when it found (or made) it missing, kExists when only the
    // node's existence mattered (the parent of a node it made or removed, a node it overwrote).
    std::map<std::string, std::uint64_t, std::less<>> seen;
    std::size_t seen_bytes = 0;
    bool coarse = false;

    void note_one(const Comps& c, std::size_t depth, bool exact) {
        if (coarse) return;
        Tree b{base, {}};
        auto ch = chain(b, Comps(c.begin(), c.begin() + static_cast<std::ptrdiff_t>(depth)));
        const std::uint64_t g = ch.size() == depth + 1 ? ch.back()->gen : kAbsent;
        const std::uint64_t v = (exact || g == kAbsent) ? g : kExists;
        std::string p = join(c, depth);
        if (auto it = seen.find(p); it != seen.end()) {
            if (it->second == kExists && exact) it->second = g;  // a read after a write: the stronger
            return;
        }
        seen_bytes += p.size() + 48;
        if (seen_bytes > kMaxSeenBytes) {
            coarse = true;
            seen.clear();
            return;
        }
        seen.emplace(std::move(p), v);
    }
    // A read or directory listing of the node at c.
    void note_read(const Comps& c) { note_one(c, c.size(), true); }
    // Before a change at c: the nearest existing ancestor down to the node (and the parent of a
    // node removed) must still exist, or still be missing, at commit.
    void note_change(const Comps& c, bool removing) {
        const std::size_t existing = chain(tree, c).size() - 1;
        std::size_t from = std::min(existing, c.size());
        if (removing && from == c.size() && from > 0) --from;
        for (std::size_t d = from; d <= c.size(); ++d) note_one(c, d, false);
    }
};

using Posts = std::vector<std::pair<std::shared_ptr<WatchSink>, WatchEvent>>;

void deliver(Posts& posts) {
    for (auto& [sink, ev] : posts) sink->post(std::move(ev));
}

}  // namespace

struct Store::Impl {
    std::mutex mu;
    Tree tree;
    std::uint64_t gen = 0;  // committed changes so far
    TxId next_tx = 1;
    WatchId next_watch = 1;
    std::map<TxId, Tx> txs;
    std::map<WatchId, Watch> watches;

    // Absolute form of a caller's path; relative paths are below its /local/domain/<id>.
    static XsResult<std::string> resolve(DomId caller, std::string_view path) {
        if (!wire::valid_path(path)) return std::unexpected(XsError::Inval);
        if (path.front() == '/') return std::string(path);
        std::string abs = domain_path(caller) + "/" + std::string(path);
        if (abs.size() > abi::kXsAbsPathMax) return std::unexpected(XsError::Inval);
        return abs;
    }

    XsResult<Tree*> view(DomId caller, TxId tx) {
        if (tx == 0) return &tree;
        auto it = txs.find(tx);
        if (it == txs.end() || it->second.owner != caller) return std::unexpected(XsError::NoEnt);
        return &it->second.tree;
    }

    std::string report(const Watch& w, std::string_view abs) const {
        if (!w.path.empty() && w.path.front() != '/') {
            const std::string home = domain_path(w.owner) + "/";
            if (abs.starts_with(home)) return std::string(abs.substr(home.size()));
        }
        return std::string(abs);
    }

    // Events a committed change raises, checked against the committed tree.
    void collect(const Change& c, Posts& out) const {
        for (const auto& [id, w] : watches) {
            if (wire::is_special_path(w.abs)) continue;
            std::string_view ev;
            if (under(c.abs, w.abs)) {
                ev = c.abs;
            } else if (c.removed && under(w.abs, c.abs)) {
                ev = w.abs;
            } else {
                continue;
            }
            if (w.owner != 0 && !may_read(w.owner, split(ev), tree)) continue;
            out.emplace_back(w.sink, WatchEvent{report(w, ev), w.token});
        }
    }

    // The gen a change in view `tx` stamps on the nodes it touches.
    std::uint64_t stamp(TxId tx) const { return tx == 0 ? gen + 1 : kTxStamp; }

    // A change made in view `tx`: fired now, or kept for the commit.
    void record(TxId tx, Op op, Posts& out) {
        if (tx == 0) {
            ++gen;
            if (op.kind != Op::Kind::Perms) collect(Change{std::move(op.path), op.kind == Op::Kind::Rm}, out);
            return;
        }
        txs.at(tx).ops.push_back(std::move(op));
    }

    // Room for one more change in a transaction, and its snapshot noted (before the change).
    XsResult<void> before_change(TxId tx, const Comps& c, bool removing) {
        if (tx == 0) return {};
        Tx& t = txs.at(tx);
        if (t.ops.size() >= kMaxTransactionChanges) return std::unexpected(XsError::NoSpc);
        t.note_change(c, removing);
        return {};
    }
    void before_read(TxId tx, const Comps& c) {
        if (tx != 0) txs.at(tx).note_read(c);
    }

    std::uint64_t committed_gen(std::string_view path) const {
        auto c = split(path);
        auto ch = chain(tree, c);
        return ch.size() == c.size() + 1 ? ch.back()->gen : kAbsent;
    }

    // Replays a transaction onto the committed tree when nothing it saw has changed since.
    XsResult<void> commit(Tx& t, Posts& out) {
        if (t.coarse) {
            if (t.start_gen != gen) return std::unexpected(XsError::Again);
        } else {
            for (const auto& [p, g] : t.seen) {
                const std::uint64_t now = committed_gen(p);
                if (g == kExists ? now == kAbsent : now != g) return std::unexpected(XsError::Again);
            }
        }
        Tree next = tree;
        const std::uint64_t st = gen + 1;
        for (const Op& op : t.ops) {
            auto c = split(op.path);
            XsResult<void> r;
            switch (op.kind) {
                case Op::Kind::Write: {
                    const std::string_view v = op.value;
                    auto p = put(next, c, op.caller, &v, st);
                    if (!p) r = std::unexpected(p.error());
                    break;
                }
                case Op::Kind::Mkdir: {
                    auto p = put(next, c, op.caller, nullptr, st);
                    if (!p) r = std::unexpected(p.error());
                    break;
                }
                case Op::Kind::Rm: {
                    auto p = remove(next, c, op.caller, st);
                    if (!p) r = std::unexpected(p.error());
                    break;
                }
                case Op::Kind::Perms: r = perms(next, c, op.owner, op.readers, st); break;
            }
            if (!r) return r;  // a quota the committed tree no longer has room for
        }
        tree = std::move(next);
        ++gen;
        for (const Op& op : t.ops) {
            if (op.kind != Op::Kind::Perms) collect(Change{op.path, op.kind == Op::Kind::Rm}, out);
        }
        return {};
    }

    void drop_domain_state(DomId d) {
        std::erase_if(watches, [d](const auto& kv) { return kv.second.owner == d; });
        std::erase_if(txs, [d](const auto& kv) { return kv.second.owner == d; });
    }
};

Store::Store() : impl_(std::make_unique<Impl>()) {
    auto root = std::make_shared<Node>();
    root->gen = 1;
    impl_->tree.root = std::move(root);
    impl_->gen = 1;
    static constexpr std::string_view kInit[] = {"/local", "/local/domain", "/tool"};
    for (auto p : kInit) {
        auto c = split(p);
        (void)put(impl_->tree, c, 0, nullptr, 1);
    }
}

Store::~Store() = default;

XsResult<std::string> Store::read(DomId caller, TxId tx, std::string_view path) {
    std::lock_guard lk(impl_->mu);
    auto abs = Impl::resolve(caller, path);
    if (!abs) return std::unexpected(abs.error());
    auto t = impl_->view(caller, tx);
    if (!t) return std::unexpected(t.error());
    auto c = split(*abs);
    if (!may_read(caller, c, **t)) return std::unexpected(XsError::Access);
    impl_->before_read(tx, c);
    auto ch = chain(**t, c);
    if (ch.size() != c.size() + 1) return std::unexpected(XsError::NoEnt);
    return ch.back()->value;
}

XsResult<std::vector<std::string>> Store::directory(DomId caller, TxId tx, std::string_view path) {
    std::lock_guard lk(impl_->mu);
    auto abs = Impl::resolve(caller, path);
    if (!abs) return std::unexpected(abs.error());
    auto t = impl_->view(caller, tx);
    if (!t) return std::unexpected(t.error());
    auto c = split(*abs);
    if (!may_read(caller, c, **t)) return std::unexpected(XsError::Access);
    impl_->before_read(tx, c);
    auto ch = chain(**t, c);
    if (ch.size() != c.size() + 1) return std::unexpected(XsError::NoEnt);
    std::vector<std::string> out;
    out.reserve(ch.back()->children.size());
    for (const auto& [k, v] : ch.back()->children) out.push_back(k);
    return out;
}

XsResult<void> Store::write(DomId caller, TxId tx, std::string_view path, std::string_view value) {
    if (value.size() > kMaxValueSize) return std::unexpected(XsError::TooBig);
    return put_node(caller, tx, path, &value);
}

XsResult<void> Store::mkdir(DomId caller, TxId tx, std::string_view path) {
    return put_node(caller, tx, path, nullptr);
}

XsResult<void> Store::put_node(DomId caller, TxId tx, std::string_view path, const std::string_view* value) {
    Posts posts;
    {
        std::lock_guard lk(impl_->mu);
        auto abs = Impl::resolve(caller, path);
        if (!abs) return std::unexpected(abs.error());
        auto t = impl_->view(caller, tx);
        if (!t) return std::unexpected(t.error());
        auto c = split(*abs);
        if (!may_write(caller, c, **t)) return std::unexpected(XsError::Access);
        if (auto r = impl_->before_change(tx, c, false); !r) return r;
        auto changed = put(**t, c, caller, value, impl_->stamp(tx));
        if (!changed) return std::unexpected(changed.error());
        // A write fires watches even when the value stays the same; a mkdir of an existing
        // node changes nothing.
        if (value)
            impl_->record(tx, Op{Op::Kind::Write, caller, std::move(*abs), std::string(*value), 0, {}}, posts);
        else if (*changed)
            impl_->record(tx, Op{Op::Kind::Mkdir, caller, std::move(*abs), {}, 0, {}}, posts);
    }
    deliver(posts);
    return {};
}

XsResult<void> Store::rm(DomId caller, TxId tx, std::string_view path) {
    Posts posts;
    {
        std::lock_guard lk(impl_->mu);
        auto abs = Impl::resolve(caller, path);
        if (!abs) return std::unexpected(abs.error());
        auto t = impl_->view(caller, tx);
        if (!t) return std::unexpected(t.error());
        auto c = split(*abs);
        if (!may_write(caller, c, **t)) return std::unexpected(XsError::Access);
        if (c.empty()) return std::unexpected(XsError::Inval);
        if (auto r = impl_->before_change(tx, c, true); !r) return r;
        auto changed = remove(**t, c, caller, impl_->stamp(tx));
        if (!changed) return std::unexpected(changed.error());
        if (*changed) impl_->record(tx, Op{Op::Kind::Rm, caller, std::move(*abs), {}, 0, {}}, posts);
    }
    deliver(posts);
    return {};
}

XsResult<void> Store::set_perms(DomId caller, TxId tx, std::string_view path, DomId owner,
                                std::vector<DomId> readers) {
    if (caller != 0) return std::unexpected(XsError::Access);
    std::lock_guard lk(impl_->mu);
    auto abs = Impl::resolve(caller, path);
    if (!abs) return std::unexpected(abs.error());
    auto t = impl_->view(caller, tx);
    if (!t) return std::unexpected(t.error());
    auto c = split(*abs);
    if (auto r = impl_->before_change(tx, c, false); !r) return r;
    if (auto r = perms(**t, c, owner, readers, impl_->stamp(tx)); !r) return r;
    Posts none;  // no watch fires for a permission change
    impl_->record(tx, Op{Op::Kind::Perms, caller, std::move(*abs), {}, owner, std::move(readers)}, none);
    return {};
}

XsResult<TxId> Store::transaction_start(DomId caller) {
    std::lock_guard lk(impl_->mu);
    if (caller != 0) {
        auto open = std::ranges::count_if(impl_->txs, [caller](const auto& kv) { return kv.second.owner == caller; });
        if (static_cast<std::size_t>(open) >= kMaxTransactionsPerDomain) return std::unexpected(XsError::NoSpc);
    }
    TxId id = impl_->next_tx++;
    while (id == 0 || impl_->txs.contains(id)) id = impl_->next_tx++;
    Tx t;
    t.owner = caller;
    t.start_gen = impl_->gen;
    t.base = impl_->tree.root;
    t.tree = impl_->tree;
    impl_->txs.emplace(id, std::move(t));
    return id;
}

XsResult<void> Store::transaction_end(DomId caller, TxId tx, bool commit) {
    Posts posts;
    {
        std::lock_guard lk(impl_->mu);
        auto it = impl_->txs.find(tx);
        if (tx == 0 || it == impl_->txs.end() || it->second.owner != caller) return std::unexpected(XsError::NoEnt);
        Tx t = std::move(it->second);
        impl_->txs.erase(it);
        // A transaction that only read saw one consistent snapshot: nothing to check.
        if (!commit || t.ops.empty()) return {};
        if (auto r = impl_->commit(t, posts); !r) return r;
    }
    deliver(posts);
    return {};
}

XsResult<WatchId> Store::watch(DomId caller, std::string path, std::string token, std::shared_ptr<WatchSink> sink) {
    if (!sink) return std::unexpected(XsError::Inval);
    WatchId id = 0;
    {
        std::lock_guard lk(impl_->mu);
        std::string abs;
        if (wire::is_special_path(path)) {
            abs = path;
        } else {
            auto r = Impl::resolve(caller, path);
            if (!r) return std::unexpected(r.error());
            abs = std::move(*r);
        }
        std::size_t mine = 0;
        for (const auto& [wid, w] : impl_->watches) {
            if (w.owner != caller) continue;
            ++mine;
            if (w.path == path && w.token == token) return std::unexpected(XsError::Exist);
        }
        if (caller != 0 && mine >= kMaxWatchesPerDomain) return std::unexpected(XsError::NoSpc);
        id = impl_->next_watch++;
        impl_->watches.emplace(id, Watch{caller, path, std::move(abs), token, sink});
    }
    // xenstored fires every new watch once, whether or not the node exists.
    sink->post(WatchEvent{std::move(path), std::move(token)});
    return id;
}

XsResult<void> Store::unwatch(DomId caller, std::string_view path, std::string_view token) {
    std::lock_guard lk(impl_->mu);
    auto n = std::erase_if(impl_->watches, [&](const auto& kv) {
        const Watch& w = kv.second;
        return w.owner == caller && w.path == path && w.token == token;
    });
    if (n == 0) return std::unexpected(XsError::NoEnt);
    return {};
}

void Store::unwatch(WatchId id) {
    std::lock_guard lk(impl_->mu);
    impl_->watches.erase(id);
}

void Store::reset_watches(DomId domid) {
    std::lock_guard lk(impl_->mu);
    impl_->drop_domain_state(domid);
}

void Store::remove_domain(DomId domid) {
    if (domid == 0) return;
    Posts posts;
    {
        std::lock_guard lk(impl_->mu);
        impl_->drop_domain_state(domid);
        std::string home = domain_path(domid);
        auto c = split(home);
        auto removed = remove(impl_->tree, c, 0, impl_->gen + 1);
        if (removed && *removed) {
            ++impl_->gen;
            impl_->collect(Change{home, true}, posts);
        }
        for (const auto& [id, w] : impl_->watches) {
            if (w.abs == "@releaseDomain") posts.emplace_back(w.sink, WatchEvent{w.path, w.token});
        }
    }
    spdlog::debug("xenstore: domain {} removed", domid);
    deliver(posts);
}

}  // namespace xen_model::xenstore
