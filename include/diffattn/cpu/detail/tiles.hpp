// diffattn/cpu/detail/tiles.hpp: the fp32 GEMM micro-tiles of the tiled CPU forward.
//
// Layouts (the query index i runs along the vector lanes everywhere, so the row-wise softmax
// statistics are vertical vector operations and no transposes or horizontal reductions occur):
//   qt  (d, NV*16)        Q_c of the query block, transposed: qt[x][i] = Q_c[i][x]
//   st  (nj, NV*16)       scores transposed, st[j][i] = <K_c[j], Q_c[i]>, then P_c^T in place
//   ot  (2d, NV*16)       the running output transposed, ot[c][i] = O_c[i][c]
// K_c and V rows are read in place (fp32 input) or from a converted block (f16, bf16): their
// elements are broadcast, so any row stride works.
//
// Tile shapes: MR rows of K (QK^T) or of V^T (PV) by NV vectors of 16 queries: MR = 6, NV = 4
// keeps 24 accumulators + 4 operands + 1 broadcast in the 32 zmm registers.
// Measured against Eigen on the same row-major operands (one 64-query block x 64 keys, d = 64,
// dv = 128, 1 thread, Sapphire Rapids, bench_cpu_forward --benchmark_filter=tile/): these tiles
// 188 (QK^T) and 185 (PV) GFLOP/s, Eigen 125 and 127: Eigen's products do not win at these sizes.
#pragma once

#include <cstdint>

#include "diffattn/core/config.hpp"
#include "diffattn/cpu/detail/simd.hpp"

DIFFATTN_NAMESPACE_BEGIN
namespace cpu {
namespace detail {

/// Rows of a micro-tile (keys for QK^T, value channels for PV).
inline constexpr int kTileRows = 6;

/// st[r][:] = sum_x k[r*ldk + x] * qt[x][:] for r < MR (st and qt have NV*16 columns).
template <int MR, int NV>
inline void qk_tile(const float* k, std::int64_t ldk, const float* qt, int d, float* st) {
  constexpr int ld = NV * kLanes;
  Vec16 acc[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = vzero();
  for (int x = 0; x < d; ++x) {
    Vec16 q[NV];
    for (int v = 0; v < NV; ++v) q[v] = vload(qt + x * ld + v * kLanes);
    for (int r = 0; r < MR; ++r) {
      const Vec16 b = vset1(k[r * ldk + x]);
      for (int v = 0; v < NV; ++v) acc[r][v] = vfma(b, q[v], acc[r][v]);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) vstore(st + r * ld + v * kLanes, acc[r][v]);
}

/// ot[r][:] = alpha * ot[r][:] + sum_{j < nj} v[j*ldv + r] * pt[j][:] for r < MR.
template <int MR, int NV>
inline void pv_tile(const float* vv, std::int64_t ldv, int nj, const float* pt, const Vec16* alpha,
                    float* ot) {
  constexpr int ld = NV * kLanes;
  Vec16 acc[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = vmul(vload(ot + r * ld + v * kLanes), alpha[v]);
  for (int j = 0; j < nj; ++j) {
    Vec16 p[NV];
    for (int v = 0; v < NV; ++v) p[v] = vload(pt + j * ld + v * kLanes);
    for (int r = 0; r < MR; ++r) {
      const Vec16 b = vset1(vv[j * ldv + r]);
      for (int v = 0; v < NV; ++v) acc[r][v] = vfma(b, p[v], acc[r][v]);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) vstore(ot + r * ld + v * kLanes, acc[r][v]);
}

/// st (nj, NV*16) = K rows [0, nj) times qt: full tiles of kTileRows, then the remainder.
template <int NV>
inline void qk_block(const float* k, std::int64_t ldk, int nj, const float* qt, int d, float* st) {
  constexpr int ld = NV * kLanes;
  int j = 0;
  for (; j + kTileRows <= nj; j += kTileRows) qk_tile<kTileRows, NV>(k + j * ldk, ldk, qt, d, st + j * ld);
  switch (nj - j) {
    case 1: qk_tile<1, NV>(k + j * ldk, ldk, qt, d, st + j * ld); break;
    case 2: qk_tile<2, NV>(k + j * ldk, ldk, qt, d, st + j * ld); break;
    case 3: qk_tile<3, NV>(k + j * ldk, ldk, qt, d, st + j * ld); break;
    case 4: qk_tile<4, NV>(k + j * ldk, ldk, qt, d, st + j * ld); break;
    case 5: qk_tile<5, NV>(k + j * ldk, ldk, qt, d, st + j * ld); break;
    default: break;
  }
  static_assert(kTileRows == 6, "qk_block: the remainder switch assumes kTileRows == 6");
}

/// ot (dv, NV*16) = alpha * ot + V^T P^T over keys [0, nj): tiles of kTileRows channels.
template <int NV>
inline void pv_block(const float* vv, std::int64_t ldv, int nj, int dv, const float* pt,
                     const Vec16* alpha, float* ot) {
  constexpr int ld = NV * kLanes;
  int c = 0;
  for (; c + kTileRows <= dv; c += kTileRows) pv_tile<kTileRows, NV>(vv + c, ldv, nj, pt, alpha, ot + c * ld);
  switch (dv - c) {
    case 1: pv_tile<1, NV>(vv + c, ldv, nj, pt, alpha, ot + c * ld); break;
    case 2: pv_tile<2, NV>(vv + c, ldv, nj, pt, alpha, ot + c * ld); break;
    case 3: pv_tile<3, NV>(vv + c, ldv, nj, pt, alpha, ot + c * ld); break;
    case 4: pv_tile<4, NV>(vv + c, ldv, nj, pt, alpha, ot + c * ld); break;
    case 5: pv_tile<5, NV>(vv + c, ldv, nj, pt, alpha, ot + c * ld); break;
    default: break;
  }
}

}  // namespace detail
}  // namespace cpu
DIFFATTN_NAMESPACE_END
