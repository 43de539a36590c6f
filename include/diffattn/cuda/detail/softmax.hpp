// diffattn/cuda/detail/softmax.hpp: online softmax over key tiles for the two rows a thread
// holds in mma C fragments (rows g and g + 8 of the warp's 16; a quad of lanes shares a row).
// Scores are in the base-2 domain (scaled by softmax_scale * log2 e), masked entries -inf.
//
//   RowSoftmax sm;                       // m = -inf, l = 0
//   sm.step(s, [&](int r, float f) {...});  // s := exp2(s - m); rescale callback when m moved
//   sm.finish();  sm.lse(r)              // quad sums, base-2 LSE (+inf for a fully masked row)
#pragma once

#include <cmath>
#include <cstdint>

#include "diffattn/core/config.hpp"
#include "diffattn/simt/math.hpp"
#include "diffattn/simt/reduce.hpp"
#include "diffattn/simt/warp.hpp"

DIFFATTN_NAMESPACE_BEGIN
namespace cuda {
namespace detail {

/// Lazy rescaling threshold (log2): a row's running max moves only when a tile's max exceeds it
/// by more than this, so P = exp2(s - m) <= 2^8 = 256 between moves, far inside f16's 65504
/// (and bf16's range), and the fp32 sums and accumulators keep 2^16 headroom over any row of
/// 2^30 keys... of unit V. Exact: the final normalisation divides by l, accumulated with the same
/// stale max. Gain (SASS model): the rescale of both (16, 2d) accumulators, 128 FMUL per 16-key
/// tile at d = 64 (20% of that loop's instructions), runs only when a max moves.
inline constexpr float kLazyRescaleLog2 = 8.f;

/// The max that exponentials subtract: 0 while a row has seen only masked keys (so that
/// exp2(-inf - m) = 0 instead of exp2(-inf + inf) = NaN).
DIFFATTN_DEVICE float usable_max(float m) { return m == -INFINITY ? 0.f : m; }

template <int kSTiles>
struct RowSoftmax {
  float m[2] = {-INFINITY, -INFINITY};  ///< running max per row (base 2), warp-consistent
  float l[2] = {0.f, 0.f};              ///< this lane's partial sum per row until finish()

  /// One tile, quad-consistent maxima with lazy rescaling (the single pass): the tile's row
  /// maxima (quad all-reduce); if any row of the warp grew by more than kLazyRescaleLog2 (one
  /// warp vote, so the branch is uniform), every row takes its new max, l is rescaled and
  /// rescale(r, factor) is called for each row to rescale the accumulators; then s := exp2(s -
  /// m) and l += the row sums of s.
  template <class Rescale>
  DIFFATTN_DEVICE void step(float (&s)[kSTiles][4], Rescale&& rescale) {
    float mx[2];
    DIFFATTN_UNROLL
    for (int r = 0; r < 2; ++r) {
      float x = -INFINITY;
      DIFFATTN_UNROLL
      for (int nt = 0; nt < kSTiles; ++nt) x = fmaxf(x, fmaxf(s[nt][2 * r], s[nt][2 * r + 1]));
      mx[r] = simt::warp_allreduce<4>(x, simt::op_max{});
    }
    const bool grow = mx[0] > m[0] + kLazyRescaleLog2 || mx[1] > m[1] + kLazyRescaleLog2;
    if (simt::any_sync(simt::kFullMask, grow)) {  // rare after the first tiles
      DIFFATTN_UNROLL
      for (int r = 0; r < 2; ++r) {
        const float m_new = fmaxf(m[r], mx[r]);
        const float f = simt::exp2_approx(m[r] - usable_max(m_new));  // 0 when m was -inf
        l[r] *= f;
        rescale(r, f);
        m[r] = m_new;
      }
    }
    exponentiate(s);
  }

  /// One tile with lane-local maxima and sums, no shuffles (pass 1 of the two-pass form, which has
  /// no accumulator to keep consistent): merge() combines the quad at the end.
  DIFFATTN_DEVICE void step_local(float (&s)[kSTiles][4]) {
    DIFFATTN_UNROLL
    for (int r = 0; r < 2; ++r) {
      float x = m[r];
      DIFFATTN_UNROLL
      for (int nt = 0; nt < kSTiles; ++nt) x = fmaxf(x, fmaxf(s[nt][2 * r], s[nt][2 * r + 1]));
      l[r] *= simt::exp2_approx(m[r] - usable_max(x));
      m[r] = x;
    }
    exponentiate(s);
  }

  /// After step_local(): the quad's maxima and sums of each row, on every lane of the quad.
  DIFFATTN_DEVICE void merge_local() {
    DIFFATTN_UNROLL
    for (int r = 0; r < 2; ++r) {
      const float mq = simt::warp_allreduce<4>(m[r], simt::op_max{});
      l[r] *= simt::exp2_approx(m[r] - usable_max(mq));  // l is 0 where m is -inf
      m[r] = mq;
    }
  }

  /// The row sums over the quad (call once, after the last step).
  DIFFATTN_DEVICE void finish() {
    DIFFATTN_UNROLL
    for (int r = 0; r < 2; ++r) l[r] = simt::warp_allreduce<4>(l[r], simt::op_sum{});
  }

  /// Base-2 log-sum-exp of row r after finish(); +inf for a fully masked row, so that
  /// exp2(s - lse) = 0 for every key of it.
  DIFFATTN_DEVICE float lse(int r) const { return l[r] > 0.f ? m[r] + log2f(l[r]) : INFINITY; }

 private:
  DIFFATTN_DEVICE void exponentiate(float (&s)[kSTiles][4]) {
    DIFFATTN_UNROLL
    for (int r = 0; r < 2; ++r) {
      const float mu = usable_max(m[r]);
      float sum = 0.f;
      DIFFATTN_UNROLL
      for (int nt = 0; nt < kSTiles; ++nt) {
        s[nt][2 * r] = simt::exp2_approx(s[nt][2 * r] - mu);
        s[nt][2 * r + 1] = simt::exp2_approx(s[nt][2 * r + 1] - mu);
        sum += s[nt][2 * r] + s[nt][2 * r + 1];
      }
      l[r] += sum;
    }
  }
};

}  // namespace detail
}  // namespace cuda
DIFFATTN_NAMESPACE_END
