// Work handed to a node's threads as they come free (used by sdcpp_py_winograd.cpp and sdcpp_py_attention.cpp;
// the test hooks drive it from threads of their own). Plain C++: no instruction set of its own.
#pragma once

#include <algorithm>
#include <cstdint>

namespace sdcpp_py_gemm {

// A node's work as units (whole register-tile columns, say) handed to its threads as they come free
// instead of equal shares fixed up front: a thread slowed by anything else on its core (another process, a
// sibling hyperthread, a smaller core) takes fewer. Ranges shrink towards the end (a quarter of what is left
// with two threads) so that the threads finish together. The two counters (next unit, threads done) are
// zero between runs: every thread of the node takes ranges until none is left, and the last one done puts
// them back, before the barrier that ends the node. Without counters (or alone) a thread takes its fixed
// share, units * ith / nth on, in ranges of max_units: for work whose ranges each cost a pass over memory.
class ClaimedRanges {
   public:
    struct Range {
        int64_t u0 = 0, u1 = 0;
        bool empty() const { return u0 >= u1; }
    };
    // counters: two int32 slots the node's threads share (a custom node's op_params past its parameters),
    // or nullptr; units stay below 2^31 (a node's output channels over 6 do).
    ClaimedRanges(int32_t* counters, int ith, int nth, int64_t units, int64_t max_units, int64_t min_units)
        : next_unit_(nth > 1 ? counters : nullptr), nth_(nth), units_(units),
          max_units_(std::max<int64_t>(max_units, 1)), min_units_(std::clamp<int64_t>(min_units, 1, max_units_)),
          fixed_next_(next_unit_ ? 0 : units * ith / nth), fixed_end_(next_unit_ ? 0 : units * (ith + 1) / nth) {}
    Range next() {
        if (next_unit_ == nullptr) {  // this thread's fixed share, no atomics
            const Range range{fixed_next_, std::min(fixed_end_, fixed_next_ + max_units_)};
            fixed_next_ = range.u1;
            return range;
        }
        int32_t start = __atomic_load_n(next_unit_, __ATOMIC_RELAXED);
        for (;;) {
            if (start >= units_) return Range{};
            const int32_t end = static_cast<int32_t>(std::min(units_, start + size_for(units_ - start)));
            if (__atomic_compare_exchange_n(next_unit_, &start, end, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
                return Range{start, end};
            }
        }
    }
    // After this thread's last next() came back empty.
    void finish() {
        if (next_unit_ == nullptr) return;
        int32_t* const done = next_unit_ + 1;
        if (__atomic_add_fetch(done, 1, __ATOMIC_ACQ_REL) == nth_) {
            __atomic_store_n(next_unit_, 0, __ATOMIC_RELAXED);
            __atomic_store_n(done, 0, __ATOMIC_RELAXED);
        }
    }

   private:
    int64_t size_for(int64_t left) const {
        return std::clamp<int64_t>((left + 2 * nth_ - 1) / (2 * nth_), min_units_, max_units_);
    }
    int32_t* next_unit_;
    int nth_;
    int64_t units_, max_units_, min_units_;
    int64_t fixed_next_, fixed_end_;
};

}  // namespace sdcpp_py_gemm
