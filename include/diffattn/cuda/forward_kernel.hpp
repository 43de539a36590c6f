// diffattn/cuda/forward_kernel.hpp: the fused differential-attention forward, written once on
// the simt/ primitives. nvcc compiles it to the real instructions (cuda/forward.cuh launches
// it); a host compiler runs it under the simt emulator (cuda/emulated.hpp), which CI does for
// every shipped configuration.
//
// One block: BlockM query rows of one (batch, diff head), 16 rows per warp, over the visible key
// tiles (tiles wholly outside the mask are skipped), in one of the two forms of DESIGN.md
// (Traits::kSinglePass, see cuda/traits.hpp):
//   single pass: per tile, S_c = s Q_c K_c^T (c = 1, 2), online softmax (running max m_c and sum
//     l_c, base-2 domain), acc_c = acc_c * exp2(m_old - m_new) + P_c V; in the end
//     A = acc_1 / l_1 - lambda acc_2 / l_2.
//   two pass: pass 1 computes m_c, l_c from S_c alone; pass 2 recomputes S_c and accumulates
//     (exp2(S_1 - lse_1) - lambda exp2(S_2 - lse_2)) V, rounded to 16 bits, into one accumulator.
// Epilogue (whole rows of 2d channels per quad of lanes): the norm, gamma, beta,
// (1 - lambda_init), the 16-bit store, LSE_1, LSE_2 and the requested extras.
#pragma once

#include <cmath>
#include <cstdint>

#include "diffattn/core/lambda.hpp"
#include "diffattn/core/mask.hpp"
#include "diffattn/core/params.hpp"
#include "diffattn/cuda/traits.hpp"
#include "diffattn/simt/cp_async.hpp"
#include "diffattn/simt/math.hpp"
#include "diffattn/simt/mma.hpp"
#include "diffattn/simt/reduce.hpp"
#include "diffattn/simt/smem.hpp"
#include "diffattn/simt/thread.hpp"
#include "diffattn/simt/warp.hpp"

DIFFATTN_NAMESPACE_BEGIN
namespace cuda {

/// Everything the kernel reads, by value (kernel parameter). Built by make_forward_args().
struct ForwardArgs {
  ConstTensorRef q1, q2, k1, k2, v;
  TensorRef out;
  std::int64_t batch, seqlen_q, seqlen_k, heads, n_rep, head_dim;
  float scale_log2;  ///< softmax scale * log2(e): scores live in the base-2 domain
  RowMask mask;
  const float *lq1, *lk1, *lq2, *lk2;
  bool lambda_per_head;
  float lambda_init;
  int norm_kind;  ///< NormKind
  float eps;
  const float *gamma, *beta;
  float *lse1, *lse2, *attn, *o2, *rstd, *mean;
};

inline ForwardArgs make_forward_args(const Params& p) {
  ForwardArgs a{};
  a.q1 = p.q1; a.q2 = p.q2; a.k1 = p.k1; a.k2 = p.k2; a.v = p.v; a.out = p.out;
  a.batch = p.batch; a.seqlen_q = p.seqlen_q; a.seqlen_k = p.seqlen_k;
  a.heads = p.heads; a.n_rep = p.n_rep(); a.head_dim = p.head_dim;
  a.scale_log2 = static_cast<float>(p.scale() * 1.4426950408889634);
  a.mask = make_row_mask(p);
  a.lq1 = static_cast<const float*>(p.lambda.lq1);
  a.lk1 = static_cast<const float*>(p.lambda.lk1);
  a.lq2 = static_cast<const float*>(p.lambda.lq2);
  a.lk2 = static_cast<const float*>(p.lambda.lk2);
  a.lambda_per_head = p.lambda.per_head;
  a.lambda_init = static_cast<float>(p.lambda.lambda_init);
  a.norm_kind = static_cast<int>(p.norm.kind);
  a.eps = static_cast<float>(p.norm.eps);
  a.gamma = static_cast<const float*>(p.norm.gamma);
  a.beta = static_cast<const float*>(p.norm.beta);
  a.lse1 = static_cast<float*>(p.extras.lse1);
  a.lse2 = static_cast<float*>(p.extras.lse2);
  a.attn = static_cast<float*>(p.extras.attn);
  a.o2 = static_cast<float*>(p.extras.o2);
  a.rstd = static_cast<float*>(p.extras.rstd);
  a.mean = static_cast<float*>(p.extras.mean);
  return a;
}

namespace detail {

/// Issues 16-byte cp.async copies of `rows` rows of `cols` 16-bit elements from a strided
/// global tile into a shared tile of row stride `sstride`; rows at or past `valid_rows` are
/// zero-filled (ragged last tiles). Called by all kThreads threads.
template <int kThreads, int kCols>
DIFFATTN_DEVICE void load_tile(simt::smem_ptr<std::uint16_t> dst, int sstride,
                               const std::uint16_t* src, std::int64_t gstride, int rows,
                               std::int64_t valid_rows, unsigned tid) {
  constexpr int kChunksPerRow = kCols / 8;
  const int chunks = rows * kChunksPerRow;
  for (int c = static_cast<int>(tid); c < chunks; c += kThreads) {
    const int r = c / kChunksPerRow, col = (c % kChunksPerRow) * 8;
    const bool ok = r < valid_rows;
    const std::uint16_t* s = ok ? src + r * gstride + col : src;
    simt::cp_async_16_zfill(dst + (r * sstride + col), s, ok ? 16 : 0);
  }
}

}  // namespace detail

/// The kernel functor. Grid: (ceil(N / BlockM), B * H); block: kThreads; shared: kSmemBytes.
template <class Traits>
struct DiffAttnForwardKernel {
  using T = Traits;
  static constexpr float kNegInf = -INFINITY;

  DIFFATTN_DEVICE void operator()(ForwardArgs a) const {
    using simt::block_idx, simt::cp_async_commit, simt::cp_async_wait, simt::exp2_approx,
        simt::ldmatrix_x4, simt::ldmatrix_x4_trans, simt::mma_m16n8k16, simt::op_max, simt::op_sum,
        simt::pack2, simt::shared_memory, simt::smem_ptr, simt::syncthreads, simt::thread_rank,
        simt::warp_allreduce;
    const unsigned tid = thread_rank();
    const unsigned lane = tid & 31u, warp = tid >> 5;
    const int g = static_cast<int>(lane >> 2), t = static_cast<int>(lane & 3u);
    const std::int64_t m0 = static_cast<std::int64_t>(block_idx().x) * T::kBlockM;
    const std::int64_t bh = block_idx().y;
    const std::int64_t b = bh / a.heads, h = bh % a.heads, kvg = h / a.n_rep;
    const std::int64_t N = a.seqlen_q, S = a.seqlen_k;

    smem_ptr<std::uint16_t> smem = shared_memory<std::uint16_t>();
    const smem_ptr<std::uint16_t> sQ[2] = {smem + T::kOffQ1, smem + T::kOffQ2};
    auto sK = [&](int stage, int c) { return smem + (T::kOffK + (stage * 2 + c) * T::kKTileElems); };
    auto sV = [&](int stage) { return smem + (T::kOffV + stage * T::kVTileElems); };

    // global bases of this (b, h) / (b, kvg)
    auto base = [](const ConstTensorRef& r, std::int64_t bb, std::int64_t hh) {
      return static_cast<const std::uint16_t*>(r.ptr) + bb * r.stride_b + hh * r.stride_h;
    };
    const std::uint16_t* gQ[2] = {base(a.q1, b, h) + m0 * a.q1.stride_t, base(a.q2, b, h) + m0 * a.q2.stride_t};
    const std::uint16_t* gK[2] = {base(a.k1, b, kvg), base(a.k2, b, kvg)};
    const std::uint16_t* gV = base(a.v, b, kvg);
    const std::int64_t q_rows = N - m0;  // valid rows of this query tile

    // lambda, from the four vectors (every thread: 2d multiply-adds, no host synchronisation)
    const std::int64_t loff = a.lambda_per_head ? h * a.head_dim : 0;
    const float lambda = lambda_terms<float>(a.lq1 + loff, a.lk1 + loff, a.lq2 + loff, a.lk2 + loff,
                                             a.head_dim).value(a.lambda_init);

    // the key tiles any row of this block can see
    const std::int64_t last_row = (m0 + T::kBlockM < N ? m0 + T::kBlockM : N) - 1;
    const std::int64_t key_lo = a.mask.key_begin(m0), key_hi = a.mask.key_end(last_row);
    const int nb_begin = static_cast<int>(key_lo / T::kBlockN);
    const int nb_end = key_hi > key_lo ? static_cast<int>((key_hi + T::kBlockN - 1) / T::kBlockN) : nb_begin;

    const int wrow = static_cast<int>(warp) * 16;  // this warp's first row in the tile
    // the two rows of this thread (accumulator rows g and g + 8)
    const std::int64_t row_i[2] = {m0 + wrow + g, m0 + wrow + g + 8};

    auto load_q = [&]() {
      DIFFATTN_UNROLL
      for (int c = 0; c < 2; ++c)
        detail::load_tile<T::kThreads, T::kHeadDim>(sQ[c], T::kQStride, gQ[c], c == 0 ? a.q1.stride_t : a.q2.stride_t,
                                                    T::kBlockM, q_rows, tid);
    };
    auto load_k = [&](int stage, int nb) {
      const std::int64_t n0 = static_cast<std::int64_t>(nb) * T::kBlockN;
      DIFFATTN_UNROLL
      for (int c = 0; c < 2; ++c) {
        const ConstTensorRef& kr = c == 0 ? a.k1 : a.k2;
        detail::load_tile<T::kThreads, T::kHeadDim>(sK(stage, c), T::kQStride, gK[c] + n0 * kr.stride_t,
                                                    kr.stride_t, T::kBlockN, S - n0, tid);
      }
    };
    auto load_v = [&](int stage, int nb) {
      const std::int64_t n0 = static_cast<std::int64_t>(nb) * T::kBlockN;
      detail::load_tile<T::kThreads, T::kValueDim>(sV(stage), T::kVStride, gV + n0 * a.v.stride_t, a.v.stride_t,
                                                   T::kBlockN, S - n0, tid);
    };

    // S_c of this warp's 16 rows against key tile nb, scaled to base 2 and masked: (16, BlockN)
    // as kSTiles C fragments.
    auto scores = [&](float (&s)[T::kSTiles][4], int c, int stage, int nb) {
      DIFFATTN_UNROLL
      for (int nt = 0; nt < T::kSTiles; ++nt)
        DIFFATTN_UNROLL
        for (int e = 0; e < 4; ++e) s[nt][e] = 0.f;
      const smem_ptr<std::uint16_t> q = sQ[c], k = sK(stage, c);
      DIFFATTN_UNROLL
      for (int kk = 0; kk < T::kQKSteps; ++kk) {
        std::uint32_t aq[4];
        ldmatrix_x4(aq, q + ((wrow + static_cast<int>(lane % 16)) * T::kQStride + kk * 16 + static_cast<int>(lane / 16) * 8));
        DIFFATTN_UNROLL
        for (int np = 0; np < T::kSTiles / 2; ++np) {
          std::uint32_t bk[4];
          const int j = static_cast<int>(lane / 8);
          ldmatrix_x4(bk, k + ((np * 16 + (j / 2) * 8 + static_cast<int>(lane % 8)) * T::kQStride + kk * 16 + (j % 2) * 8));
          const std::uint32_t b0[2] = {bk[0], bk[1]}, b1[2] = {bk[2], bk[3]};
          mma_m16n8k16<T::kFmt>(s[2 * np], aq, b0, s[2 * np]);
          mma_m16n8k16<T::kFmt>(s[2 * np + 1], aq, b1, s[2 * np + 1]);
        }
      }
      const std::int64_t n0 = static_cast<std::int64_t>(nb) * T::kBlockN;
      // per-element masking only on tiles that cross a mask edge or the end of the keys
      const bool edge = n0 + T::kBlockN > S || n0 < a.mask.key_begin(last_row) ||
                        n0 + T::kBlockN > a.mask.key_end(m0);
      DIFFATTN_UNROLL
      for (int nt = 0; nt < T::kSTiles; ++nt)
        DIFFATTN_UNROLL
        for (int e = 0; e < 4; ++e) {
          float x = s[nt][e] * a.scale_log2;
          if (edge) {
            const std::int64_t i = row_i[e >> 1], jj = n0 + nt * 8 + 2 * t + (e & 1);
            if (!a.mask.visible(i, jj)) x = kNegInf;
          }
          s[nt][e] = x;
        }
    };

    // acc: (16, dv) per warp: A in the epilogue. Single pass: P_1 V here and P_2 V in acc2.
    float acc[T::kOTiles][4], acc2[T::kSinglePass ? T::kOTiles : 1][4];
    DIFFATTN_UNROLL
    for (int nt = 0; nt < T::kOTiles; ++nt)
      DIFFATTN_UNROLL
      for (int e = 0; e < 4; ++e) acc[nt][e] = 0.f;
    float m[2][2], l[2][2], lse[2][2];  // [component][row]: running max, sum, base-2 LSE
    DIFFATTN_UNROLL
    for (int c = 0; c < 2; ++c)
      DIFFATTN_UNROLL
      for (int r = 0; r < 2; ++r) { m[c][r] = kNegInf; l[c][r] = 0.f; }

    // acc_out += P V for the 16-bit P given as C fragments (16, BlockN) of this warp
    auto pv = [&](float (&acc_out)[T::kOTiles][4], const float (&p)[T::kSTiles][4], int stage) {
      const smem_ptr<std::uint16_t> vt = sV(stage);
      DIFFATTN_UNROLL
      for (int kk = 0; kk < T::kPVSteps; ++kk) {
        // the C fragments of n8 tiles 2kk and 2kk+1 are the A fragment of k-step kk
        const std::uint32_t ap[4] = {pack2<T::kFmt>(p[2 * kk][0], p[2 * kk][1]),
                                     pack2<T::kFmt>(p[2 * kk][2], p[2 * kk][3]),
                                     pack2<T::kFmt>(p[2 * kk + 1][0], p[2 * kk + 1][1]),
                                     pack2<T::kFmt>(p[2 * kk + 1][2], p[2 * kk + 1][3])};
        const int j = static_cast<int>(lane / 8);
        DIFFATTN_UNROLL
        for (int np = 0; np < T::kOTiles / 2; ++np) {
          std::uint32_t bv[4];
          ldmatrix_x4_trans(bv, vt + ((kk * 16 + (j % 2) * 8 + static_cast<int>(lane % 8)) * T::kVStride + np * 16 + (j / 2) * 8));
          const std::uint32_t b0[2] = {bv[0], bv[1]}, b1[2] = {bv[2], bv[3]};
          mma_m16n8k16<T::kFmt>(acc_out[2 * np], ap, b0, acc_out[2 * np]);
          mma_m16n8k16<T::kFmt>(acc_out[2 * np + 1], ap, b1, acc_out[2 * np + 1]);
        }
      }
    };
    // online softmax step of component c on scores s (base 2, masked): updates m, this lane's
    // partial l, rescales `o` by exp2(m_old - m_new) (if given) and turns s into exp2(s - m)
    auto online_step = [&](float (&s)[T::kSTiles][4], int c, float (*o)[4]) {
      DIFFATTN_UNROLL
      for (int r = 0; r < 2; ++r) {
        float mx = kNegInf;
        DIFFATTN_UNROLL
        for (int nt = 0; nt < T::kSTiles; ++nt) mx = fmaxf(mx, fmaxf(s[nt][2 * r], s[nt][2 * r + 1]));
        mx = warp_allreduce<4>(mx, op_max{});
        const float m_new = fmaxf(m[c][r], mx);
        const float m_use = m_new == kNegInf ? 0.f : m_new;  // all masked so far: keep 0 terms
        const float rescale = exp2_approx(m[c][r] - m_use);   // 0 when m was -inf
        float sum = 0.f;
        DIFFATTN_UNROLL
        for (int nt = 0; nt < T::kSTiles; ++nt) {
          s[nt][2 * r] = exp2_approx(s[nt][2 * r] - m_use);
          s[nt][2 * r + 1] = exp2_approx(s[nt][2 * r + 1] - m_use);
          sum += s[nt][2 * r] + s[nt][2 * r + 1];
        }
        l[c][r] = l[c][r] * rescale + sum;  // this lane's partial sum
        m[c][r] = m_new;
        if (o != nullptr) {
          DIFFATTN_UNROLL
          for (int nt = 0; nt < T::kOTiles; ++nt) { o[nt][2 * r] *= rescale; o[nt][2 * r + 1] *= rescale; }
        }
      }
    };
    // base-2 LSE of the finished rows; +inf for a fully masked row (so that exp2(s - lse) = 0)
    auto finish_rows = [&]() {
      DIFFATTN_UNROLL
      for (int c = 0; c < 2; ++c)
        DIFFATTN_UNROLL
        for (int r = 0; r < 2; ++r) {
          l[c][r] = warp_allreduce<4>(l[c][r], op_sum{});
          lse[c][r] = l[c][r] > 0.f ? m[c][r] + log2f(l[c][r]) : INFINITY;
        }
    };

    // Streams the visible key tiles through the double-buffered pipeline: tile nb + 1 is fetched
    // (cp.async) while body(stage, nb) computes on tile nb. K1 and K2 always, V if with_v. Any
    // copies issued before the call (Q) join the first group.
    auto stream_tiles = [&](bool with_v, auto&& body) {
      if (nb_begin < nb_end) {
        load_k(0, nb_begin);
        if (with_v) load_v(0, nb_begin);
      }
      cp_async_commit();
      for (int nb = nb_begin; nb < nb_end; ++nb) {
        const int stage = (nb - nb_begin) & 1;
        if (nb + 1 < nb_end) {
          load_k(stage ^ 1, nb + 1);
          if (with_v) load_v(stage ^ 1, nb + 1);
        }
        cp_async_commit();  // possibly empty: keeps wait<1> meaning "tile nb has landed"
        cp_async_wait<1>();
        syncthreads();
        body(stage, nb);
        syncthreads();  // the stage is refilled by the next iteration's prefetch
      }
      cp_async_wait<0>();
    };

    if constexpr (T::kSinglePass) {
      // ---- one pass: K1, K2, V tiles once; two online softmaxes, two accumulators ----------
      DIFFATTN_UNROLL
      for (int nt = 0; nt < T::kOTiles; ++nt)
        DIFFATTN_UNROLL
        for (int e = 0; e < 4; ++e) acc2[nt][e] = 0.f;
      load_q();
      stream_tiles(/*with_v=*/true, [&](int stage, int nb) {
        float s[T::kSTiles][4];
        scores(s, 0, stage, nb);
        online_step(s, 0, acc);
        pv(acc, s, stage);
        scores(s, 1, stage, nb);
        online_step(s, 1, acc2);
        pv(acc2, s, stage);
      });
      finish_rows();
      // A = O_1 - lambda O_2 with O_c = acc_c / l_c (0 for a fully masked row), into acc
      DIFFATTN_UNROLL
      for (int r = 0; r < 2; ++r) {
        const float inv1 = l[0][r] > 0.f ? 1.f / l[0][r] : 0.f, inv2 = l[1][r] > 0.f ? 1.f / l[1][r] : 0.f;
        const std::int64_t i = row_i[r];
        const std::int64_t row0 = (b * a.heads + h) * N;
        DIFFATTN_UNROLL
        for (int nt = 0; nt < T::kOTiles; ++nt)
          DIFFATTN_UNROLL
          for (int e = 0; e < 2; ++e) {
            const float o2 = acc2[nt][2 * r + e] * inv2;
            acc[nt][2 * r + e] = acc[nt][2 * r + e] * inv1 - lambda * o2;
            if (a.o2 && i < N) a.o2[(row0 + i) * T::kValueDim + nt * 8 + 2 * t + e] = o2;
          }
      }
    } else {
      // ---- pass 1: row max and sum of both softmaxes --------------------------------------
      load_q();
      stream_tiles(/*with_v=*/false, [&](int stage, int nb) {
        DIFFATTN_UNROLL
        for (int c = 0; c < 2; ++c) {
          float s[T::kSTiles][4];
          scores(s, c, stage, nb);
          online_step(s, c, nullptr);
        }
      });
      finish_rows();

      // ---- pass 2: acc = (P_1 - lambda P_2) V ---------------------------------------------
      syncthreads();  // pass 1's last tile may still be read by other warps
      stream_tiles(/*with_v=*/true, [&](int stage, int nb) {
        float p[T::kSTiles][4];
        float s[T::kSTiles][4];
        scores(s, 0, stage, nb);
        DIFFATTN_UNROLL
        for (int nt = 0; nt < T::kSTiles; ++nt)
          DIFFATTN_UNROLL
          for (int e = 0; e < 4; ++e) p[nt][e] = exp2_approx(s[nt][e] - lse[0][e >> 1]);
        scores(s, 1, stage, nb);
        DIFFATTN_UNROLL
        for (int nt = 0; nt < T::kSTiles; ++nt)
          DIFFATTN_UNROLL
          for (int e = 0; e < 4; ++e) p[nt][e] -= lambda * exp2_approx(s[nt][e] - lse[1][e >> 1]);
        pv(acc, p, stage);
      });
    }

    // ---- epilogue: norm, gamma, beta, (1 - lambda_init), stores ---------------------------------
    const float inv_dv = 1.f / static_cast<float>(T::kValueDim);
    const float out_scale = 1.f - a.lambda_init;
    const std::int64_t row0 = (b * a.heads + h) * N;  // row of (b, h, 0) in [B, H, N] extras
    DIFFATTN_UNROLL
    for (int r = 0; r < 2; ++r) {
      const std::int64_t i = row_i[r];
      float mean = 0.f, rstd = 1.f;
      if (a.norm_kind == static_cast<int>(NormKind::rms)) {
        float ss = 0.f;
        DIFFATTN_UNROLL
        for (int nt = 0; nt < T::kOTiles; ++nt) ss += acc[nt][2 * r] * acc[nt][2 * r] + acc[nt][2 * r + 1] * acc[nt][2 * r + 1];
        ss = warp_allreduce<4>(ss, op_sum{});
        rstd = 1.f / sqrtf(ss * inv_dv + a.eps);
      } else if (a.norm_kind == static_cast<int>(NormKind::group)) {
        float sm = 0.f;
        DIFFATTN_UNROLL
        for (int nt = 0; nt < T::kOTiles; ++nt) sm += acc[nt][2 * r] + acc[nt][2 * r + 1];
        mean = warp_allreduce<4>(sm, op_sum{}) * inv_dv;
        float ss = 0.f;
        DIFFATTN_UNROLL
        for (int nt = 0; nt < T::kOTiles; ++nt) {
          const float d0 = acc[nt][2 * r] - mean, d1 = acc[nt][2 * r + 1] - mean;
          ss += d0 * d0 + d1 * d1;
        }
        ss = warp_allreduce<4>(ss, op_sum{});
        rstd = 1.f / sqrtf(ss * inv_dv + a.eps);
      }
      if (i >= N) continue;  // ragged last query tile: computed, not stored
      std::uint16_t* orow = static_cast<std::uint16_t*>(a.out.ptr) + b * a.out.stride_b + i * a.out.stride_t + h * a.out.stride_h;
      DIFFATTN_UNROLL
      for (int nt = 0; nt < T::kOTiles; ++nt) {
        const int col = nt * 8 + 2 * t;
        float y[2];
        DIFFATTN_UNROLL
        for (int e = 0; e < 2; ++e) {
          const float av = acc[nt][2 * r + e];
          float yy = (av - mean) * rstd;
          if (a.norm_kind != static_cast<int>(NormKind::none) && a.gamma) yy *= a.gamma[col + e];
          if (a.norm_kind == static_cast<int>(NormKind::group) && a.beta) yy += a.beta[col + e];
          y[e] = out_scale * yy;
          if (a.attn) a.attn[(row0 + i) * T::kValueDim + col + e] = av;
        }
        *reinterpret_cast<std::uint32_t*>(orow + col) = pack2<T::kFmt>(y[0], y[1]);
      }
      if (t == 0) {
        constexpr float kLn2 = 0.6931471805599453f;
        if (a.lse1) a.lse1[row0 + i] = l[0][r] > 0.f ? lse[0][r] * kLn2 : kNegInf;
        if (a.lse2) a.lse2[row0 + i] = l[1][r] > 0.f ? lse[1][r] * kLn2 : kNegInf;
        if (a.rstd) a.rstd[row0 + i] = rstd;
        if (a.mean) a.mean[row0 + i] = mean;
      }
    }
  }
};

}  // namespace cuda
DIFFATTN_NAMESPACE_END
