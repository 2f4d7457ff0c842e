// One module's calendar: actions due at simulated times, run by a single SC_METHOD. Modules keep
// their many in-flight requests here instead of one SystemC process each, which keeps a 48-tenant
// host at a few SystemC activations per I/O. Same-time actions run in the order they were added.
#pragma once

#include <systemc>

#include <functional>
#include <queue>
#include <vector>

#include "../units.hpp"

namespace hostsim {

class Timeline final : public sc_core::sc_module {
public:
    using Action = std::function<void()>;

    SC_HAS_PROCESS(Timeline);
    explicit Timeline(const sc_core::sc_module_name& name) : sc_core::sc_module(name) {
        SC_METHOD(fire);
        sensitive << event_;
        dont_initialize();
    }

    static Ps now() { return static_cast<Ps>(sc_core::sc_time_stamp().value()); }

    // Runs `action` at time t (>= now). Actions due now run in this delta cycle if the calendar
    // is being drained, else in the next one.
    void at(Ps t, Action action) {
        std::uint32_t slot;
        if (free_.empty()) {
            slot = static_cast<std::uint32_t>(actions_.size());
            actions_.push_back(std::move(action));
        } else {
            slot = free_.back();
            free_.pop_back();
            actions_[slot] = std::move(action);
        }
        queue_.push(Entry{t, seq_++, slot});
        arm();
    }
    void after(Ps delay, Action action) { at(now() + delay, std::move(action)); }

private:
    struct Entry {
        Ps t;
        std::uint64_t seq;
        std::uint32_t slot;  // index into actions_ (the heap moves only these 24 bytes)
        bool operator>(const Entry& o) const { return t != o.t ? t > o.t : seq > o.seq; }
    };

    void arm() {
        if (firing_ || queue_.empty()) return;
        const Ps t = queue_.top().t;
        if (t >= armed_) return;
        armed_ = t;
        event_.cancel();
        const Ps n = now();
        event_.notify(sc_core::sc_time::from_value(static_cast<sc_dt::uint64>(t > n ? t - n : 0)));
    }

    void fire() {
        firing_ = true;
        armed_ = kNever;
        const Ps n = now();
        while (!queue_.empty() && queue_.top().t <= n) {
            const std::uint32_t slot = queue_.top().slot;
            queue_.pop();
            Action a = std::move(actions_[slot]);
            free_.push_back(slot);
            a();
        }
        firing_ = false;
        arm();
    }

    std::priority_queue<Entry, std::vector<Entry>, std::greater<>> queue_;
    std::vector<Action> actions_;
    std::vector<std::uint32_t> free_;
    std::uint64_t seq_ = 0;
    Ps armed_ = kNever;
    bool firing_ = false;
    sc_core::sc_event event_;
};

}  // namespace hostsim
