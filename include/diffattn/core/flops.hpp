// diffattn/core/flops.hpp: the FLOP counts every throughput figure uses (docs/SPEC.md).
//
// Forward, per diff head and visible (query, key) pair: the two Q_c K_c^T products cost
// 2 * 2d and the two P_c V products 2 * (2 * 2d): 12 d in all, 12 N S d without a mask. Masked
// pairs are not counted (causal with N = S is about half), whether a kernel computes them or not.
// Backward, per pair, the least work (docs/SPEC.md): recompute Q_c K_c^T (4d), dP_1 = dA V^T
// once (dP_2 = -lambda dP_1: 4d), dV = (P_1 - lambda P_2)^T dA (4d), dQ_c (4d), dK_c (4d): 20 d,
// 5/3 of the forward (FlashAttention counts 2.5x its forward for ordinary attention).
// DIFF V2 (V of d channels): forward 2 * 2d + 2 * 2d = 8 d per pair; backward Q_c K^T (4d),
// dP_1 (2d), dV (2d), dQ_c (4d), dK (4d): 16 d. Softmax, lambda and the norm are O(N d) and
// not counted.
#pragma once

#include <cstdint>

#include "diffattn/core/config.hpp"
#include "diffattn/core/mask.hpp"
#include "diffattn/core/params.hpp"

DIFFATTN_NAMESPACE_BEGIN

inline double forward_flops(const Params& p) {
  const double pairs = static_cast<double>(visible_pairs(make_row_mask(p), p.seqlen_q));
  return (p.is_v2() ? 8.0 : 12.0) * static_cast<double>(p.head_dim) * pairs * static_cast<double>(p.batch * p.heads);
}

inline double backward_flops(const Params& p) {
  const double pairs = static_cast<double>(visible_pairs(make_row_mask(p), p.seqlen_q));
  return (p.is_v2() ? 16.0 : 20.0) * static_cast<double>(p.head_dim) * pairs * static_cast<double>(p.batch * p.heads);
}

DIFFATTN_NAMESPACE_END
