// diffattn/simt/reduce.hpp: warp and block all-reductions built on shuffles.
//
// Components take their thread rank and scratch storage as arguments (CUB's TempStorage style),
// so they do not assume a block shape.
#pragma once

#include <cstdint>

#include "diffattn/simt/config.hpp"
#include "diffattn/simt/smem.hpp"
#include "diffattn/simt/thread.hpp"
#include "diffattn/simt/warp.hpp"

DIFFATTN_NAMESPACE_BEGIN
namespace simt {

/// a + b.
struct op_sum {
  template <class T>
  DIFFATTN_HD T operator()(T a, T b) const { return a + b; }
};
/// The larger of a and b; a NaN operand is dropped (the other is returned), as fmaxf does, so
/// that a reduction that mixes op_max and fmaxf gives every lane the same result.
struct op_max {
  template <class T>
  DIFFATTN_HD T operator()(T a, T b) const { return (a > b || b != b) ? a : b; }
};

/// All-reduce over each group of kLanes consecutive lanes (kLanes a power of two <= 32) by an
/// xor butterfly: every lane of the group gets op over the group. kLanes = 4 reduces the quad
/// that shares an mma row (the row max/sum of online softmax). `mask`: the calling lanes.
template <int kLanes = kWarpSize, class T, class Op>
DIFFATTN_DEVICE T warp_allreduce(T v, Op op, std::uint32_t mask = kFullMask) {
  static_assert(kLanes >= 1 && kLanes <= 32 && (kLanes & (kLanes - 1)) == 0,
                "kLanes must be a power of two in [1, 32]");
  for (int offset = kLanes / 2; offset > 0; offset /= 2) {
    v = op(v, shfl_xor_sync(mask, v, offset));
  }
  return v;
}

/// All-reduce over a block of exactly kWarps * 32 threads: every thread gets op over all.
/// `scratch`: kWarps elements of shared memory, reusable once this returns (it ends with a
/// barrier). Every thread of the block must call it.
template <int kWarps, class T, class Op>
DIFFATTN_DEVICE T block_allreduce(T v, Op op, smem_ptr<T> scratch, unsigned rank) {
  static_assert(kWarps >= 1 && kWarps <= 32, "a block has 1 to 32 warps");
  v = warp_allreduce<kWarpSize>(v, op);
  if ((rank & 31u) == 0) scratch[rank >> 5] = v;
  syncthreads();
  T r = scratch[0];
  for (int w = 1; w < kWarps; ++w) r = op(r, T(scratch[w]));
  syncthreads();
  return r;
}

}  // namespace simt
DIFFATTN_NAMESPACE_END
