// An instance's EBS limits as the card (or dom0) enforces them: IOPS and bandwidth, each a peak
// bucket (the type's maximum) and a sustained bucket (the baseline, with burst credits worth
// 30 minutes at the maximum, as EC2 documents for types quoted as baseline/maximum). Instance-store
// volumes have no EBS limits but the device's own read and write IOPS.
#pragma once

#include <algorithm>
#include <optional>

#include "../config.hpp"
#include "../token_bucket.hpp"

namespace hostsim {

class InstanceLimits final {
public:
    explicit InstanceLimits(const InstanceConfig& c)
        : iops_peak_(make_peak(c.limits && c.volume == Volume::Ebs ? c.type.ebs_iops_max : 0, 1)),
          iops_sustained_(make_sustained(c, c.type.ebs_iops_base, c.type.ebs_iops_max)),
          bw_peak_(make_peak(c.limits && c.volume == Volume::Ebs ? bytes_per_s(c.type.ebs_mbps_max) : 0,
                             1u << 20)),
          bw_sustained_(make_sustained(c, bytes_per_s(c.type.ebs_mbps_base),
                                       bytes_per_s(c.type.ebs_mbps_max))),
          store_read_(make_peak(c.volume == Volume::InstanceStore ? c.type.store_read_iops : 0, 1)),
          store_write_(make_peak(c.volume == Volume::InstanceStore ? c.type.store_write_iops : 0, 1)) {}

    // Admission time of an I/O of `bytes` arriving at `now`, in arrival order (FIFO: an I/O never
    // overtakes an earlier one of the same instance). Takes the tokens.
    Ps admit(Ps now, std::uint32_t bytes, bool write) {
        Ps t = std::max(now, last_admit_);
        TokenBucket& store = write ? store_write_ : store_read_;
        t = std::max(t, store.available_at(t, 1));
        t = std::max(t, iops_peak_.available_at(t, 1));
        t = std::max(t, iops_sustained_.available_at(t, 1));
        t = std::max(t, bw_peak_.available_at(t, bytes));
        t = std::max(t, bw_sustained_.available_at(t, bytes));
        store.take(t, 1);
        iops_peak_.take(t, 1);
        iops_sustained_.take(t, 1);
        bw_peak_.take(t, bytes);
        bw_sustained_.take(t, bytes);
        last_admit_ = t;
        return t;
    }

private:
    static std::uint64_t bytes_per_s(double mbps) { return static_cast<std::uint64_t>(mbps * 1e6 / 8.0); }
    static TokenBucket make_peak(std::uint64_t rate, std::uint64_t min_depth) {
        const std::uint64_t depth = std::max(rate / 100, min_depth);  // 10 ms at the maximum rate
        return TokenBucket(rate, depth, depth);
    }
    static TokenBucket make_sustained(const InstanceConfig& c, std::uint64_t base, std::uint64_t max) {
        if (!c.limits || c.volume != Volume::Ebs || base == 0 || base >= max) return TokenBucket(0, 1, 0);
        const std::uint64_t depth = (max - base) * 1800;
        return TokenBucket(base, depth, c.burst_credits ? depth : 0);
    }

    TokenBucket iops_peak_, iops_sustained_, bw_peak_, bw_sustained_;
    TokenBucket store_read_, store_write_;  // the local NVMe device's own capacity
    Ps last_admit_ = 0;
};

}  // namespace hostsim
