// diffattn/cuda/detail/epilogue.hpp: the forward's epilogue for one warp's 16 rows of A (the
// (16, dv) fp32 accumulator in C fragments; a quad of lanes holds a whole row of dv channels):
// the norm, gamma, beta, (1 - lambda_init), the 16-bit store of out, LSE_1, LSE_2 and the extras.
#pragma once

#include <cmath>
#include <cstdint>

#include "diffattn/core/config.hpp"
#include "diffattn/core/params.hpp"
#include "diffattn/simt/math.hpp"
#include "diffattn/simt/reduce.hpp"

DIFFATTN_NAMESPACE_BEGIN
namespace cuda {
namespace detail {

/// Where the epilogue writes and what it applies (a slice of the kernel's arguments).
struct EpilogueArgs {
  TensorRef out;
  std::int64_t seqlen_q, heads;
  int norm_kind;  ///< NormKind
  float eps, lambda_init;
  const float *gamma, *beta;
  float *lse1, *lse2, *attn, *rstd, *mean;
};

/// Writes the rows row_i[r] (r = 0, 1: this lane's rows g and g + 8) of (b, h): acc holds A,
/// lse2[c][r] the base-2 LSE of component c (+inf for a fully masked row). Rows at or past
/// seqlen_q (a ragged last query tile) are computed but not stored. `t`: lane % 4.
template <simt::fmt16 F, int kOTiles>
DIFFATTN_DEVICE void store_rows(const EpilogueArgs& a, const float (&acc)[kOTiles][4], const float (&lse2)[2][2],
                                const std::int64_t (&row_i)[2], std::int64_t N, std::int64_t out_off,
                                std::int64_t row0, std::int64_t h, int t) {
  // N: this sequence's query rows; out_off: element offset of its token 0 in out; row0: the row
  // of its (h, token 0) in the extras ([B, H, N], or [H, total_q] packed)
  constexpr int kValueDim = kOTiles * 8;
  const float inv_dv = 1.f / static_cast<float>(kValueDim);
  const float out_scale = 1.f - a.lambda_init;
  DIFFATTN_UNROLL
  for (int r = 0; r < 2; ++r) {
    const std::int64_t i = row_i[r];
    float mean = 0.f, rstd = 1.f;
    // the shuffles below are reached by every lane (before the ragged-row exit)
    if (a.norm_kind == static_cast<int>(NormKind::rms)) {
      float ss = 0.f;
      DIFFATTN_UNROLL
      for (int nt = 0; nt < kOTiles; ++nt) ss += acc[nt][2 * r] * acc[nt][2 * r] + acc[nt][2 * r + 1] * acc[nt][2 * r + 1];
      ss = simt::warp_allreduce<4>(ss, simt::op_sum{});
      rstd = 1.f / sqrtf(ss * inv_dv + a.eps);
    } else if (a.norm_kind == static_cast<int>(NormKind::group)) {
      float sm = 0.f;
      DIFFATTN_UNROLL
      for (int nt = 0; nt < kOTiles; ++nt) sm += acc[nt][2 * r] + acc[nt][2 * r + 1];
      mean = simt::warp_allreduce<4>(sm, simt::op_sum{}) * inv_dv;
      float ss = 0.f;
      DIFFATTN_UNROLL
      for (int nt = 0; nt < kOTiles; ++nt) {
        const float d0 = acc[nt][2 * r] - mean, d1 = acc[nt][2 * r + 1] - mean;
        ss += d0 * d0 + d1 * d1;
      }
      ss = simt::warp_allreduce<4>(ss, simt::op_sum{});
      rstd = 1.f / sqrtf(ss * inv_dv + a.eps);
    }
    if (i >= N) continue;  // ragged last query tile: computed, not stored
    std::uint16_t* orow = static_cast<std::uint16_t*>(a.out.ptr) + out_off + i * a.out.stride_t + h * a.out.stride_h;
    DIFFATTN_UNROLL
    for (int nt = 0; nt < kOTiles; ++nt) {
      const int col = nt * 8 + 2 * t;
      float y[2];
      DIFFATTN_UNROLL
      for (int e = 0; e < 2; ++e) {
        const float av = acc[nt][2 * r + e];
        float yy = (av - mean) * rstd;
        if (a.norm_kind != static_cast<int>(NormKind::none) && a.gamma) yy *= a.gamma[col + e];
        if (a.norm_kind == static_cast<int>(NormKind::group) && a.beta) yy += a.beta[col + e];
        y[e] = out_scale * yy;
        if (a.attn) a.attn[(row0 + i) * kValueDim + col + e] = av;
      }
      // 4-byte aligned: validate() requires 16-byte aligned bases and strides of out
      simt::store_global_b32(orow + col, simt::pack2<F>(y[0], y[1]));
    }
    if (t == 0) {
      constexpr float kLn2 = 0.6931471805599453f;
      if (a.lse1) a.lse1[row0 + i] = lse2[0][r] < INFINITY ? lse2[0][r] * kLn2 : -INFINITY;
      if (a.lse2) a.lse2[row0 + i] = lse2[1][r] < INFINITY ? lse2[1][r] * kLn2 : -INFINITY;
      if (a.rstd) a.rstd[row0 + i] = rstd;
      if (a.mean) a.mean[row0 + i] = mean;
    }
  }
}

}  // namespace detail
}  // namespace cuda
DIFFATTN_NAMESPACE_END
