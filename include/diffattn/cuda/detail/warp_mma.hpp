// diffattn/cuda/detail/warp_mma.hpp: one warp's fragment GEMMs of the attention kernels, on
// shared tiles of 16-bit elements (mma.sync m16n8k16, fp32 accumulators; fragment layouts in
// simt/layout.hpp). A warp owns 16 query rows; `lane` is the caller's lane.
//
//   load_a_frags<kSteps>(q, sQ, stride, row0, lane);                 // Q rows into registers
//   mma_abt<F, kSteps, kNTiles>(s, a_from_regs(q), sK, stride, lane); // S = Q K^T
//   pack_a_frags<F>(s, p);                                            // C fragments -> A
//   mma_pv<F, kSteps, kNTiles>(acc, p, sV, stride, lane);             // acc += P V
#pragma once

#include <cstdint>

#include "diffattn/core/config.hpp"
#include "diffattn/simt/math.hpp"
#include "diffattn/simt/mma.hpp"
#include "diffattn/simt/smem.hpp"

DIFFATTN_NAMESPACE_BEGIN
namespace cuda {
namespace detail {

using simt::smem_ptr;

/// The A fragment (16 x 16) of k-step kk of rows [row0, row0 + 16) of a row-major shared tile.
DIFFATTN_DEVICE void load_a_frag(std::uint32_t (&a)[4], smem_ptr<std::uint16_t> tile, int stride, int row0,
                                 int kk, unsigned lane) {
  simt::ldmatrix_x4(a, tile + ((row0 + static_cast<int>(lane % 16)) * stride + kk * 16 +
                               static_cast<int>(lane / 16) * 8));
}

/// All kSteps A fragments of those rows (for operands kept in registers).
template <int kSteps>
DIFFATTN_DEVICE void load_a_frags(std::uint32_t (&a)[kSteps][4], smem_ptr<std::uint16_t> tile, int stride,
                                  int row0, unsigned lane) {
  DIFFATTN_UNROLL
  for (int kk = 0; kk < kSteps; ++kk) load_a_frag(a[kk], tile, stride, row0, kk, lane);
}

/// c (16 x 8 kNTiles) = A B^T, with B rows [0, 8 kNTiles) of a row-major shared tile (keys x
/// 16 kSteps), and A's fragment of k-step kk given by a_frag(kk, out): from registers, or loaded
/// from shared memory per k-step. c is overwritten.
template <simt::fmt16 F, int kSteps, int kNTiles, class AFrag>
DIFFATTN_DEVICE void mma_abt(float (&c)[kNTiles][4], AFrag&& a_frag, smem_ptr<std::uint16_t> b, int stride,
                             unsigned lane) {
  static_assert(kNTiles % 2 == 0, "B fragments come in pairs of n8 tiles (one ldmatrix.x4)");
  DIFFATTN_UNROLL
  for (int nt = 0; nt < kNTiles; ++nt)
    DIFFATTN_UNROLL
    for (int e = 0; e < 4; ++e) c[nt][e] = 0.f;
  const int j = static_cast<int>(lane / 8);
  DIFFATTN_UNROLL
  for (int kk = 0; kk < kSteps; ++kk) {
    std::uint32_t a[4];
    a_frag(kk, a);
    DIFFATTN_UNROLL
    for (int np = 0; np < kNTiles / 2; ++np) {
      std::uint32_t bk[4];
      simt::ldmatrix_x4(bk, b + ((np * 16 + (j / 2) * 8 + static_cast<int>(lane % 8)) * stride + kk * 16 + (j % 2) * 8));
      const std::uint32_t b0[2] = {bk[0], bk[1]}, b1[2] = {bk[2], bk[3]};
      simt::mma_m16n8k16<F>(c[2 * np], a, b0, c[2 * np]);
      simt::mma_m16n8k16<F>(c[2 * np + 1], a, b1, c[2 * np + 1]);
    }
  }
}

/// c1 = A_1 B^T and c2 = A_2 B^T with one B (DIFF V2: both query heads of a pair against one K
/// tile): each B fragment pair is loaded once for both products. As mma_abt otherwise.
template <simt::fmt16 F, int kSteps, int kNTiles, class AFrag1, class AFrag2>
DIFFATTN_DEVICE void mma_abt2(float (&c1)[kNTiles][4], float (&c2)[kNTiles][4], AFrag1&& a_frag1, AFrag2&& a_frag2,
                              smem_ptr<std::uint16_t> b, int stride, unsigned lane) {
  static_assert(kNTiles % 2 == 0, "B fragments come in pairs of n8 tiles (one ldmatrix.x4)");
  DIFFATTN_UNROLL
  for (int nt = 0; nt < kNTiles; ++nt)
    DIFFATTN_UNROLL
    for (int e = 0; e < 4; ++e) c1[nt][e] = c2[nt][e] = 0.f;
  const int j = static_cast<int>(lane / 8);
  DIFFATTN_UNROLL
  for (int kk = 0; kk < kSteps; ++kk) {
    std::uint32_t a1[4], a2[4];
    a_frag1(kk, a1);
    a_frag2(kk, a2);
    DIFFATTN_UNROLL
    for (int np = 0; np < kNTiles / 2; ++np) {
      std::uint32_t bk[4];
      simt::ldmatrix_x4(bk, b + ((np * 16 + (j / 2) * 8 + static_cast<int>(lane % 8)) * stride + kk * 16 + (j % 2) * 8));
      const std::uint32_t b0[2] = {bk[0], bk[1]}, b1[2] = {bk[2], bk[3]};
      simt::mma_m16n8k16<F>(c1[2 * np], a1, b0, c1[2 * np]);
      simt::mma_m16n8k16<F>(c1[2 * np + 1], a1, b1, c1[2 * np + 1]);
      simt::mma_m16n8k16<F>(c2[2 * np], a2, b0, c2[2 * np]);
      simt::mma_m16n8k16<F>(c2[2 * np + 1], a2, b1, c2[2 * np + 1]);
    }
  }
}

/// The C fragments of n8 tiles 2kk and 2kk + 1 (fp32) as the 16-bit A fragment of k-step kk.
template <simt::fmt16 F, int kSteps>
DIFFATTN_DEVICE void pack_a_frags(const float (&c)[2 * kSteps][4], std::uint32_t (&a)[kSteps][4]) {
  DIFFATTN_UNROLL
  for (int kk = 0; kk < kSteps; ++kk) {
    a[kk][0] = simt::pack2<F>(c[2 * kk][0], c[2 * kk][1]);
    a[kk][1] = simt::pack2<F>(c[2 * kk][2], c[2 * kk][3]);
    a[kk][2] = simt::pack2<F>(c[2 * kk + 1][0], c[2 * kk + 1][1]);
    a[kk][3] = simt::pack2<F>(c[2 * kk + 1][2], c[2 * kk + 1][3]);
  }
}

/// acc_c (16 x 8 kNTiles) += P_c V for c < kAccs (1 or 2), V rows [0, 16 kSteps) of a row-major
/// shared tile (keys x 8 kNTiles) read with ldmatrix.trans. With two products, each V fragment
/// is loaded once and feeds both (the single pass: 24 instead of 32 ldmatrix per 16-key tile at
/// d = 64). acc2 and p2 are unused when kAccs == 1.
template <simt::fmt16 F, int kSteps, int kNTiles, int kAccs, class Acc2, class P2>
DIFFATTN_DEVICE void mma_pv(float (&acc1)[kNTiles][4], const std::uint32_t (&p1)[kSteps][4], Acc2& acc2,
                            const P2& p2, smem_ptr<std::uint16_t> v, int stride, unsigned lane) {
  static_assert(kAccs == 1 || kAccs == 2, "one or two products");
  static_assert(kNTiles % 2 == 0, "V fragments come in pairs of n8 tiles (one ldmatrix.x4.trans)");
  const int j = static_cast<int>(lane / 8);
  DIFFATTN_UNROLL
  for (int kk = 0; kk < kSteps; ++kk) {
    DIFFATTN_UNROLL
    for (int np = 0; np < kNTiles / 2; ++np) {
      std::uint32_t bv[4];
      simt::ldmatrix_x4_trans(bv, v + ((kk * 16 + (j % 2) * 8 + static_cast<int>(lane % 8)) * stride + np * 16 + (j / 2) * 8));
      const std::uint32_t b0[2] = {bv[0], bv[1]}, b1[2] = {bv[2], bv[3]};
      simt::mma_m16n8k16<F>(acc1[2 * np], p1[kk], b0, acc1[2 * np]);
      simt::mma_m16n8k16<F>(acc1[2 * np + 1], p1[kk], b1, acc1[2 * np + 1]);
      if constexpr (kAccs == 2) {
        simt::mma_m16n8k16<F>(acc2[2 * np], p2[kk], b0, acc2[2 * np]);
        simt::mma_m16n8k16<F>(acc2[2 * np + 1], p2[kk], b1, acc2[2 * np + 1]);
      }
    }
  }
}

}  // namespace detail
}  // namespace cuda
DIFFATTN_NAMESPACE_END
