// The probe's Xen frontend (xenstore client, blkfront, xen-verify, xen-bench) run as a host
// program against a fake dom0: a xenstore server and a blkback over the same shared pages, on
// their own thread, driven only by the frontend's event-channel sends. Layouts on the fake side
// come from xen_model/abi/xen_abi.hpp, so the probe's C structs are checked against them too.
// The hypercall layer and the CPL0 parts are stand-ins (probe_host_shim.c); the real ones are
// exercised by probe_guest_xen under nitrovm.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <optional>
#include <regex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "probe_host_shim.h"
#include "xen_model/abi/xen_abi.hpp"

namespace abi = xen_model::abi;

namespace {

constexpr std::uint32_t kDomid = 1;
constexpr std::uint32_t kStorePort = 1;

struct FakeOptions {
    bool eagain_once = false;           // the first transaction commit fails with EAGAIN
    std::optional<std::uint64_t> fail_write_sector;  // a write covering it gets BLKIF_RSP_ERROR
    bool bad_response_id = false;       // answer the first request with an id the frontend never used
};

FakeOptions eagain_once() {
    FakeOptions o;
    o.eagain_once = true;
    return o;
}
FakeOptions bad_response_id() {
    FakeOptions o;
    o.bad_response_id = true;
    return o;
}
FakeOptions fail_write_at(std::uint64_t sector) {
    FakeOptions o;
    o.fail_write_sector = sector;
    return o;
}

struct Vbd {
    std::uint32_t vdev = 0;
    std::vector<std::uint8_t> data;
    std::string front, back;
    bool connected = false;
    abi::SringHeader* sring = nullptr;
    std::uint32_t port = 0;
    std::uint32_t req_cons = 0, rsp_prod_pvt = 0;
    std::uint64_t requests = 0, notifies = 0;
};

// A xenstore server and a blkback for domain kDomid, both serviced on one thread per kick.
class FakeDom0 {
public:
    FakeDom0(std::vector<std::uint64_t> sectors, FakeOptions opt) : opt_(opt) {
        for (std::size_t i = 0; i < sectors.size(); ++i) {
            Vbd v;
            v.vdev = abi::xvd_number(static_cast<std::uint32_t>(i));
            v.data.assign(sectors[i] * abi::kSectorSize, 0);
            v.front = fmt("/local/domain/%u/device/vbd/%u", kDomid, v.vdev);
            v.back = fmt("/local/domain/0/backend/vbd/%u/%u", kDomid, v.vdev);
            tree_[v.front + "/backend"] = v.back;
            tree_[v.front + "/backend-id"] = "0";
            tree_[v.front + "/state"] = "1";
            tree_[v.front + "/virtual-device"] = std::to_string(v.vdev);
            tree_[v.front + "/device-type"] = "disk";
            tree_[v.back + "/frontend"] = v.front;
            tree_[v.back + "/sectors"] = std::to_string(sectors[i]);
            tree_[v.back + "/sector-size"] = "512";
            tree_[v.back + "/info"] = "0";
            tree_[v.back + "/feature-flush-cache"] = "1";
            tree_[v.back + "/state"] = "2";
            vbds_.push_back(std::move(v));
        }
        thread_ = std::thread([this] { run(); });
    }
    ~FakeDom0() {
        {
            std::lock_guard l(mu_);
            stop_ = true;
        }
        cv_.notify_all();
        thread_.join();
    }
    FakeDom0(const FakeDom0&) = delete;
    FakeDom0& operator=(const FakeDom0&) = delete;

    void kick(std::uint32_t port) {
        {
            std::lock_guard l(mu_);
            ++kicks_;
            (void)port;
        }
        cv_.notify_all();
    }

    // After the run: the backend's view.
    const std::vector<Vbd>& vbds() const { return vbds_; }
    std::string node(const std::string& path) const {
        auto it = tree_.find(path);
        return it == tree_.end() ? std::string("<none>") : it->second;
    }
    std::uint64_t eagains() const { return eagains_; }
    std::uint64_t flushes() const { return flushes_; }
    std::vector<std::string> problems() const { return problems_; }

private:
    static std::string fmt(const char* f, std::uint32_t a, std::uint32_t b) {
        char buf[128];
        std::snprintf(buf, sizeof buf, f, a, b);
        return buf;
    }

    void run() {
        std::uint64_t seen = 0;
        std::unique_lock l(mu_);
        for (;;) {
            cv_.wait(l, [&] { return stop_ || kicks_ != seen; });
            if (stop_) return;
            seen = kicks_;
            // Drain everything on every kick (xen-abi.md §3.9), then the rings.
            service_store();
            for (auto& v : vbds_) service_ring(v);
        }
    }

    // ---- xenstore ----
    std::string resolve(const std::string& p) const {
        return p.starts_with("/") ? p : "/local/domain/" + std::to_string(kDomid) + "/" + p;
    }

    void reply(std::uint32_t type, std::uint32_t req_id, std::uint32_t tx, const std::string& body) {
        auto* r = reinterpret_cast<abi::XenstoreInterface*>(shim_store_gpa());
        abi::XsMsgHeader h{type, req_id, tx, static_cast<std::uint32_t>(body.size())};
        std::string msg(reinterpret_cast<const char*>(&h), sizeof h);
        msg += body;
        std::uint32_t prod = r->rsp_prod;
        for (char c : msg) {
            // The frontend drains as we go; a full ring waits for it (bounded).
            for (int spin = 0; prod - __atomic_load_n(&r->rsp_cons, __ATOMIC_ACQUIRE) >= abi::kXsRingSize; ++spin) {
                if (spin > 10'000'000) {
                    problems_.push_back("response ring stayed full");
                    return;
                }
                __atomic_store_n(&r->rsp_prod, prod, __ATOMIC_RELEASE);
            }
            r->rsp[prod % abi::kXsRingSize] = c;
            ++prod;
        }
        __atomic_store_n(&r->rsp_prod, prod, __ATOMIC_RELEASE);
    }

    void error(std::uint32_t req_id, std::uint32_t tx, const char* name) {
        reply(static_cast<std::uint32_t>(abi::XsType::Error), req_id, tx, std::string(name) + '\0');
    }

    std::optional<std::string> lookup(std::uint32_t tx, const std::string& path) const {
        if (tx != 0) {
            auto t = txs_.find(tx);
            if (t != txs_.end()) {
                auto it = t->second.find(path);
                if (it != t->second.end()) return it->second;
            }
        }
        auto it = tree_.find(path);
        if (it == tree_.end()) return std::nullopt;
        return it->second;
    }

    void service_store() {
        if (shim_store_gpa() == 0) return;
        auto* r = reinterpret_cast<abi::XenstoreInterface*>(shim_store_gpa());
        std::uint32_t prod = __atomic_load_n(&r->req_prod, __ATOMIC_ACQUIRE);
        std::uint32_t cons = r->req_cons;
        if (prod - cons > abi::kXsRingSize) {
            problems_.push_back("request ring indices out of range");
            return;
        }
        for (; cons != prod; ++cons) inbuf_.push_back(r->req[cons % abi::kXsRingSize]);
        __atomic_store_n(&r->req_cons, cons, __ATOMIC_RELEASE);
        while (inbuf_.size() >= sizeof(abi::XsMsgHeader)) {
            abi::XsMsgHeader h;
            std::memcpy(&h, inbuf_.data(), sizeof h);
            if (h.len > abi::kXsPayloadMax) {
                problems_.push_back("oversized request");
                inbuf_.clear();
                return;
            }
            if (inbuf_.size() < sizeof h + h.len) return;
            std::string body = inbuf_.substr(sizeof h, h.len);
            inbuf_.erase(0, sizeof h + h.len);
            handle(h, body);
        }
    }

    void handle(const abi::XsMsgHeader& h, const std::string& body) {
        using T = abi::XsType;
        auto first = body.substr(0, body.find('\0'));
        std::string path = resolve(first);
        switch (static_cast<T>(h.type)) {
            case T::Read: {
                auto v = lookup(h.tx_id, path);
                if (!v) return error(h.req_id, h.tx_id, "ENOENT");
                return reply(h.type, h.req_id, h.tx_id, *v);
            }
            case T::Write: {
                if (body.find('\0') == std::string::npos) return error(h.req_id, h.tx_id, "EINVAL");
                std::string value = body.substr(first.size() + 1);
                if (h.tx_id != 0) {
                    if (!txs_.contains(h.tx_id)) return error(h.req_id, h.tx_id, "ENOENT");
                    txs_[h.tx_id][path] = value;
                } else {
                    tree_[path] = value;
                    changed(path);
                }
                return reply(h.type, h.req_id, h.tx_id, std::string("OK") + '\0');
            }
            case T::Directory: {
                std::set<std::string> kids;
                std::string prefix = path + "/";
                for (auto it = tree_.lower_bound(prefix); it != tree_.end() && it->first.starts_with(prefix); ++it) {
                    auto rest = it->first.substr(prefix.size());
                    kids.insert(rest.substr(0, rest.find('/')));
                }
                if (kids.empty() && !tree_.contains(path)) return error(h.req_id, h.tx_id, "ENOENT");
                std::string out;
                for (const auto& k : kids) out += k + '\0';
                return reply(h.type, h.req_id, h.tx_id, out);
            }
            case T::TransactionStart: {
                std::uint32_t id = next_tx_++;
                txs_[id] = {};
                return reply(h.type, h.req_id, 0, std::to_string(id) + '\0');
            }
            case T::TransactionEnd: {
                auto t = txs_.find(h.tx_id);
                if (t == txs_.end()) return error(h.req_id, h.tx_id, "ENOENT");
                auto writes = std::move(t->second);
                txs_.erase(t);
                if (first == "T") {
                    if (opt_.eagain_once && eagains_ == 0) {
                        ++eagains_;
                        return error(h.req_id, h.tx_id, "EAGAIN");
                    }
                    for (auto& [k, v] : writes) {
                        tree_[k] = v;
                        changed(k);
                    }
                }
                return reply(h.type, h.req_id, h.tx_id, std::string("OK") + '\0');
            }
            default:
                return error(h.req_id, h.tx_id, "ENOSYS");
        }
    }

    // The backend's reaction to the frontend's state (xen-abi.md §3.10).
    void changed(const std::string& path) {
        for (auto& v : vbds_) {
            if (path != v.front + "/state") continue;
            const std::string& st = tree_[path];
            if (st == "3" && tree_[v.back + "/state"] == "2") connect(v);
            if (st == "5") tree_[v.back + "/state"] = "5";
            if (st == "6") tree_[v.back + "/state"] = "6";
        }
    }

    // The page a grant ref gives domain 0, or nullptr (with a problem noted).
    std::uint8_t* map_grant(std::uint32_t ref, bool write) {
        if (ref < abi::kGrantReservedRefs || ref >= shim_grant_frames() * abi::kGrantEntriesPerFrame) {
            problems_.push_back("grant ref " + std::to_string(ref) + " out of range");
            return nullptr;
        }
        abi::GrantEntryV1 e;
        std::memcpy(&e, reinterpret_cast<const void*>(shim_grant_base() + ref * sizeof e), sizeof e);
        bool ok = (e.flags & abi::kGtfTypeMask) == abi::kGtfPermitAccess && e.domid == abi::kDom0 &&
                  !(write && (e.flags & abi::kGtfReadonly));
        if (!ok) {
            problems_.push_back("grant ref " + std::to_string(ref) + " not usable");
            return nullptr;
        }
        return reinterpret_cast<std::uint8_t*>(std::uint64_t{e.frame} << 12);
    }

    void connect(Vbd& v) {
        auto ring_ref = std::stoul(tree_[v.front + "/ring-ref"]);
        v.port = static_cast<std::uint32_t>(std::stoul(tree_[v.front + "/event-channel"]));
        if (tree_[v.front + "/protocol"] != "x86_64-abi") problems_.push_back("protocol " + tree_[v.front + "/protocol"]);
        auto* page = map_grant(static_cast<std::uint32_t>(ring_ref), true);
        if (page == nullptr) return;
        v.sring = reinterpret_cast<abi::SringHeader*>(page);
        v.connected = true;
        tree_[v.back + "/state"] = "4";
    }

    std::int16_t io(Vbd& v, const abi::BlkifRequest& rq) {
        if (rq.operation == abi::kBlkifOpFlushDiskcache) {
            ++flushes_;
            return rq.nr_segments == 0 ? abi::kBlkifRspOkay : abi::kBlkifRspError;
        }
        if ((rq.operation != abi::kBlkifOpRead && rq.operation != abi::kBlkifOpWrite) || rq.nr_segments == 0 ||
            rq.nr_segments > abi::kBlkifMaxSegments || rq.handle != v.vdev)
            return abi::kBlkifRspError;
        std::uint64_t total = 0;
        for (unsigned i = 0; i < rq.nr_segments; ++i) {
            const auto& s = rq.seg[i];
            if (s.first_sect > s.last_sect || s.last_sect >= abi::kSectorsPerPage) return abi::kBlkifRspError;
            total += s.last_sect - s.first_sect + 1u;
        }
        std::uint64_t sectors = v.data.size() / abi::kSectorSize;
        if (rq.sector_number >= sectors || total > sectors - rq.sector_number) return abi::kBlkifRspError;
        bool to_guest = rq.operation == abi::kBlkifOpRead;
        if (!to_guest && opt_.fail_write_sector && *opt_.fail_write_sector >= rq.sector_number &&
            *opt_.fail_write_sector < rq.sector_number + total)
            return abi::kBlkifRspError;
        std::uint64_t off = rq.sector_number * abi::kSectorSize;
        for (unsigned i = 0; i < rq.nr_segments; ++i) {
            const auto& s = rq.seg[i];
            auto* page = map_grant(s.gref, to_guest);
            if (page == nullptr) return abi::kBlkifRspError;
            std::size_t len = (s.last_sect - s.first_sect + 1u) * std::size_t{abi::kSectorSize};
            std::uint8_t* mem = page + s.first_sect * abi::kSectorSize;
            if (to_guest) std::memcpy(mem, v.data.data() + off, len);
            else std::memcpy(v.data.data() + off, mem, len);
            off += len;
        }
        return abi::kBlkifRspOkay;
    }

    // RING_FINAL_CHECK_FOR_REQUESTS and RING_PUSH_RESPONSES_AND_CHECK_NOTIFY (io/ring.h).
    void service_ring(Vbd& v) {
        if (!v.connected) return;
        auto* slots = reinterpret_cast<std::uint8_t*>(v.sring) + sizeof(abi::SringHeader);
        constexpr std::size_t kSlot = sizeof(abi::BlkifRequest);
        for (;;) {
            std::uint32_t prod = __atomic_load_n(&v.sring->req_prod, __ATOMIC_ACQUIRE);
            if (prod - v.req_cons > abi::kBlkifRingEntries) {
                problems_.push_back("req_prod too far ahead");
                return;
            }
            while (v.req_cons != prod) {
                abi::BlkifRequest rq;
                std::memcpy(&rq, slots + (v.req_cons % abi::kBlkifRingEntries) * kSlot, sizeof rq);
                ++v.req_cons;
                ++v.requests;
                abi::BlkifResponse rsp{};
                rsp.id = rq.id;
                rsp.operation = rq.operation;
                rsp.status = io(v, rq);
                if (opt_.bad_response_id && v.requests == 1) rsp.id = 999;
                std::memcpy(slots + (v.rsp_prod_pvt % abi::kBlkifRingEntries) * kSlot, &rsp, sizeof rsp);
                ++v.rsp_prod_pvt;
            }
            std::uint32_t old = v.sring->rsp_prod;
            __atomic_store_n(&v.sring->rsp_prod, v.rsp_prod_pvt, __ATOMIC_RELEASE);
            __atomic_thread_fence(__ATOMIC_SEQ_CST);
            std::uint32_t event = __atomic_load_n(&v.sring->rsp_event, __ATOMIC_ACQUIRE);
            if (static_cast<std::uint32_t>(v.rsp_prod_pvt - event) < static_cast<std::uint32_t>(v.rsp_prod_pvt - old)) {
                ++v.notifies;
                shim_raise(v.port);
            }
            __atomic_store_n(&v.sring->req_event, v.req_cons + 1, __ATOMIC_RELEASE);
            __atomic_thread_fence(__ATOMIC_SEQ_CST);
            if (__atomic_load_n(&v.sring->req_prod, __ATOMIC_ACQUIRE) == v.req_cons) return;
        }
    }

    FakeOptions opt_;
    std::vector<Vbd> vbds_;
    std::map<std::string, std::string> tree_;
    std::map<std::uint32_t, std::map<std::string, std::string>> txs_;
    std::uint32_t next_tx_ = 1;
    std::string inbuf_;
    std::uint64_t eagains_ = 0, flushes_ = 0;
    std::vector<std::string> problems_;
    std::mutex mu_;
    std::condition_variable cv_;
    std::uint64_t kicks_ = 0;
    bool stop_ = false;
    std::thread thread_;  // last: starts after everything above exists
};

std::atomic<FakeDom0*> g_dom0{nullptr};

// Runs a probe workload with a fake dom0 over disks of the given sizes (in sectors).
struct Run {
    int status = -1;
    std::string log;
};

template <typename F>
Run run_workload(FakeDom0& dom0, F&& workload, std::vector<std::string> args) {
    g_dom0 = &dom0;
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    Run r;
    r.status = workload(static_cast<int>(args.size()), argv.data());
    r.log = shim_log();
    g_dom0 = nullptr;
    if (std::getenv("PROBE_XEN_HOST_LOG") != nullptr) std::fputs(r.log.c_str(), stdout);  // to see the probe's output
    return r;
}

// Blocks (512 bytes) of `data` that do not hold the pattern of disk `disk`, skipping all-zero
// blocks when `allow_zero`.
std::size_t mismatches(const std::vector<std::uint8_t>& data, std::uint64_t disk, bool allow_zero) {
    std::size_t bad = 0;
    for (std::uint64_t k = 0; k < data.size() / 512; ++k) {
        const std::uint8_t* b = data.data() + k * 512;
        if (allow_zero && std::all_of(b, b + 512, [](std::uint8_t c) { return c == 0; })) continue;
        std::uint64_t c, lba;
        std::memcpy(&c, b + 8, 8);
        std::memcpy(&lba, b + 16, 8);
        bool ok = std::memcmp(b, "NVMEPROB", 8) == 0 && c == disk && lba == k;
        for (std::uint32_t w = 6; ok && w < 128; ++w) {
            std::uint32_t v;
            std::memcpy(&v, b + w * 4, 4);
            ok = v == static_cast<std::uint32_t>(k * 0x9E3779B1u + disk * 0x85EBCA6Bu + w);
        }
        if (!ok) ++bad;
    }
    return bad;
}

struct Fresh {
    Fresh() { REQUIRE(shim_reset()); }
};

}  // namespace

extern "C" void fake_dom0_kick(std::uint32_t port) {
    if (auto* d = g_dom0.load()) d->kick(port);
}

TEST_CASE("xen-verify passes on two vbds; the disks hold the pattern; a transaction conflict is retried") {
    Fresh fresh;
    FakeDom0 dom0({8 * 2048, 3 * 2048 + 7}, eagain_once());
    auto r = run_workload(dom0, workload_xen_verify, {"xen-verify"});
    INFO(r.log);
    CHECK(r.status == 0);
    CHECK(r.log.find("xen-verify: disks=2 passed=2") != std::string::npos);
    CHECK(r.log.find("xen-verify: disk 1 edge last_block=ok sub_page_segment=ok partial_segments=ok "
                     "past_end=-1,-1 ok") != std::string::npos);
    CHECK(dom0.eagains() == 1);
    CHECK(dom0.flushes() == 2);
    CHECK(dom0.problems().empty());
    CHECK(mismatches(dom0.vbds()[0].data, 0, false) == 0);
    CHECK(mismatches(dom0.vbds()[1].data, 1, false) == 0);
    for (const auto& v : dom0.vbds()) {
        CHECK(dom0.node(v.front + "/state") == "6");
        CHECK(dom0.node(v.front + "/protocol") == "x86_64-abi");
    }
}

TEST_CASE("xen-verify with irq=1 waits on upcalls and still passes") {
    Fresh fresh;
    FakeDom0 dom0({4 * 2048}, {});
    auto r = run_workload(dom0, workload_xen_verify, {"xen-verify", "irq=1", "--blocks", "3000"});
    INFO(r.log);
    CHECK(r.status == 0);
    std::smatch m;
    REQUIRE(std::regex_search(r.log, m, std::regex(R"(upcalls=(\d+))")));
    CHECK(std::stoull(m[1]) > 0);
    CHECK(dom0.vbds()[0].notifies > 0);
}

TEST_CASE("xen-verify names the disk, block and status of a failed write") {
    Fresh fresh;
    FakeDom0 dom0({2048, 2048}, fail_write_at(1000));
    auto r = run_workload(dom0, workload_xen_verify, {"xen-verify"});
    INFO(r.log);
    CHECK(r.status == 1);
    CHECK(r.log.find("xen-verify: disk 0 FAIL main pass write lba=968 status=-1 (error)") != std::string::npos);
    CHECK(r.log.find("xen-verify: disks=2 passed=0") != std::string::npos);
}

TEST_CASE("a response the frontend never asked for fails the run instead of corrupting it") {
    Fresh fresh;
    FakeDom0 dom0({2048}, bad_response_id());
    auto r = run_workload(dom0, workload_xen_verify, {"xen-verify"});
    INFO(r.log);
    CHECK(r.status == 1);
    CHECK(r.log.find("response with id 999") != std::string::npos);
}

TEST_CASE("xen-bench: a result line per queue depth; writes keep the pattern; notification counts") {
    Fresh fresh;
    FakeDom0 dom0({16 * 2048}, {});
    auto r = run_workload(dom0, workload_xen_bench,
                          {"xen-bench", "rw=randwrite", "bs=8192", "qd=1,32", "seconds=1"});
    INFO(r.log);
    CHECK(r.status == 0);
    std::regex result(R"(result: workload=xen-bench rw=randwrite bs=8192 qd=(\d+) iops=(\d+) mbps=[\d.]+ p50_us=\d+ p99_us=\d+)");
    std::vector<std::string> qds;
    for (std::sregex_iterator it(r.log.begin(), r.log.end(), result), end; it != end; ++it) qds.push_back((*it)[1]);
    CHECK(qds == std::vector<std::string>{"1", "32"});
    std::smatch m;
    REQUIRE(std::regex_search(r.log, m, std::regex(R"(xen-bench: disk 0 ok ios=(\d+) errors=0 .* notify_sent=(\d+) notify_skipped=(\d+))")));
    CHECK(std::stoull(m[1]) > 0);
    CHECK(std::stoull(m[2]) > 0);
    CHECK(mismatches(dom0.vbds()[0].data, 0, true) == 0);
    CHECK(dom0.problems().empty());
}

TEST_CASE("xen-bench with irq=1 and sequential reads") {
    Fresh fresh;
    FakeDom0 dom0({4 * 2048}, {});
    auto r = run_workload(dom0, workload_xen_bench, {"xen-bench", "rw=read", "qd=8", "seconds=1", "irq=1"});
    INFO(r.log);
    CHECK(r.status == 0);
    std::smatch m;
    REQUIRE(std::regex_search(r.log, m, std::regex(R"(xen-bench: disk 0 ok ios=(\d+) .* irq=1 .* upcalls=(\d+))")));
    CHECK(std::stoull(m[2]) > 0);
}

TEST_CASE("bad arguments and a missing hypervisor") {
    Fresh fresh;
    FakeDom0 dom0({2048}, {});
    CHECK(run_workload(dom0, workload_xen_bench, {"xen-bench", "qd=33"}).status == 2);
    CHECK(run_workload(dom0, workload_xen_bench, {"xen-bench", "bs=100"}).status == 2);
    CHECK(run_workload(dom0, workload_xen_bench, {"xen-bench", "disk=1", "seconds=1"}).status == 2);
    CHECK(run_workload(dom0, workload_xen_verify, {"xen-verify", "--blocks", "0"}).status == 2);
    REQUIRE(shim_reset());
    shim_xen_fault f{.no_xen = true};
    shim_set_faults(&f);
    auto r = run_workload(dom0, workload_xen_verify, {"xen-verify"});
    CHECK(r.status == 1);
    CHECK(r.log.find("xen-verify: Xen set-up failed") != std::string::npos);
}
