// diffattn/cuda/forward_kernel.hpp: the fused differential-attention forward, written once on
// the simt/ primitives. nvcc compiles it to the real instructions (cuda/forward.cuh launches
// it); a host compiler runs it under the simt emulator (cuda/emulated.hpp), which CI does for
// every shipped configuration.
//
// One block: BlockM query rows of one (batch, diff head), 16 rows per warp, over the visible key
// tiles (tiles wholly outside the mask are skipped), in one of the two forms of cuda/traits.hpp
// (Traits::kSinglePass, see cuda/traits.hpp):
//   single pass: per tile, S_c = s Q_c K_c^T (c = 1, 2), online softmax (running max m_c and sum
//     l_c, base-2 domain, lazily rescaled), acc_c = acc_c * exp2(m_old - m_new) + P_c V with each
//     V fragment loaded once for both; in the end A = acc_1 / l_1 - lambda acc_2 / l_2.
//   two pass: pass 1 (Q in registers) computes m_c, l_c from S_c alone; pass 2 recomputes S_c and
//     accumulates (exp2(S_1 - lse_1) - lambda exp2(S_2 - lse_2)) V / L, rounded to 16 bits, into
//     one accumulator, with L = 2^ceil(log2 max(1, |lambda|)) so that the 16-bit P never
//     overflows whatever lambda is (|P| <= 2); the epilogue multiplies by L (exact).
// Built from the device components of cuda/detail/ (tile loader and pipeline, warp fragment
// GEMMs, row softmax, epilogue); the epilogue: the norm, gamma, beta, (1 - lambda_init), the
// 16-bit store, LSE_1, LSE_2 and the requested extras.
//
// DIFF V2 (Traits::kV2, single pass): Q_1 and Q_2 are the two query heads of a pair, both
// against one K tile stream (each K fragment serves both score products) and one V of d channels;
// A = O_1 - sigmoid(z_i) O_2 per row i with z the caller's logits; no norm, no (1 - lambda_init).
//
// Non-finite input: a NaN or Inf in a V row that some rows of a block cannot see (masked, or
// past the end of a ragged key tile is never read: those rows are zero-filled) reaches those
// rows as 0 * Inf = NaN, because P V multiplies whole key tiles; masking gives P = 0 exactly, so
// finite V never leaks. The reference and the CPU kernel skip masked keys instead. Keep V finite.
#pragma once

#include <cmath>
#include <cstdint>

#include "diffattn/core/lambda.hpp"
#include "diffattn/core/mask.hpp"
#include "diffattn/core/params.hpp"
#include "diffattn/core/seq.hpp"
#include "diffattn/cuda/detail/epilogue.hpp"
#include "diffattn/cuda/detail/softmax.hpp"
#include "diffattn/cuda/detail/tile_loader.hpp"
#include "diffattn/cuda/detail/warp_mma.hpp"
#include "diffattn/cuda/traits.hpp"
#include "diffattn/simt/math.hpp"
#include "diffattn/simt/smem.hpp"
#include "diffattn/simt/thread.hpp"

DIFFATTN_NAMESPACE_BEGIN
namespace cuda {

/// Everything the kernel reads, by value (kernel parameter). Built by make_forward_args().
struct ForwardArgs {
  ConstTensorRef q1, q2, k1, k2;
  ConstTensorRef v_lo, v_hi;  ///< V's two halves of d channels (V2: v_lo only)
  ConstTensorRef logits;      ///< V2: lambda logits [B, N, H] fp32
  std::int64_t batch, seqlen_q, seqlen_k, heads, n_rep, head_dim;
  float scale_log2;  ///< softmax scale * log2(e): scores live in the base-2 domain
  RowMask mask;
  const float *lq1, *lk1, *lq2, *lk2;
  bool lambda_per_head;
  float *o2;
  detail::EpilogueArgs ep;  ///< out, the norm, lambda_init and the other extras
  SeqParams seq;            ///< serving layouts: per-sequence lengths, packed tokens, pages
};

inline ForwardArgs make_forward_args(const Params& p) {
  ForwardArgs a{};
  a.q1 = p.q1; a.q2 = p.q2; a.k1 = p.k1; a.k2 = p.key2(); a.v_lo = p.v_lo; a.v_hi = p.v_hi;
  a.logits = p.lambda.logits;
  a.batch = p.batch; a.seqlen_q = p.seqlen_q; a.seqlen_k = p.seqlen_k;
  a.heads = p.heads; a.n_rep = p.n_rep(); a.head_dim = p.head_dim;
  a.scale_log2 = static_cast<float>(p.scale() * 1.4426950408889634);
  a.mask = make_row_mask(p);
  a.lq1 = static_cast<const float*>(p.lambda.lq1);
  a.lk1 = static_cast<const float*>(p.lambda.lk1);
  a.lq2 = static_cast<const float*>(p.lambda.lq2);
  a.lk2 = static_cast<const float*>(p.lambda.lk2);
  a.lambda_per_head = p.lambda.per_head;
  a.o2 = static_cast<float*>(p.extras.o2);
  detail::EpilogueArgs& e = a.ep;
  e.out = p.out;
  e.seqlen_q = p.seqlen_q;
  e.heads = p.heads;
  e.norm_kind = static_cast<int>(p.norm_kind());
  e.eps = static_cast<float>(p.norm.eps);
  e.lambda_init = static_cast<float>(1.0 - p.out_scale());  // the epilogue scales by 1 - this
  e.gamma = static_cast<const float*>(p.norm.gamma);
  e.beta = static_cast<const float*>(p.norm.beta);
  e.lse1 = static_cast<float*>(p.extras.lse1);
  e.lse2 = static_cast<float*>(p.extras.lse2);
  e.attn = static_cast<float*>(p.extras.attn);
  e.rstd = static_cast<float*>(p.extras.rstd);
  e.mean = static_cast<float*>(p.extras.mean);
  a.seq = p.seq;
  return a;
}

/// The row of (b, h, token 0) in the extras' layout ([B, H, N], or [H, total_q] packed).
DIFFATTN_DEVICE std::int64_t extras_row(const ForwardArgs& a, std::int64_t b, std::int64_t h) {
  return a.seq.cu_seqlens_q ? h * a.seq.total_q + a.seq.cu_seqlens_q[b] : (b * a.heads + h) * a.seqlen_q;
}

/// SeqParams::append_kv on the device, before the forward on the same stream: block (i, b)
/// copies the new keys of token i of sequence b (every KV head of new_k1, new_k2, new_v_lo,
/// new_v_hi; V2: the first two views only) to cache row seqused_k[b] + i, bit for bit.
/// Grid: append_grid(p); any block size (kAppendThreads).
struct AppendKvArgs {
  ConstTensorRef cache[4], fresh[4];
  int views = 0;
  std::int64_t kv_heads = 0, head_dim = 0, seqlen_q = 0;
  SeqParams seq;
};
/// The append kernel's launch shape: block (i, b) per new token of each sequence.
inline constexpr unsigned kAppendThreads = 128;
inline simt::dim3 append_grid(const Params& p) {
  return simt::dim3(static_cast<unsigned>(p.seqlen_q), static_cast<unsigned>(p.batch));
}
inline AppendKvArgs make_append_args(const Params& p) {
  AppendKvArgs a;
  const seq_detail::KeyViews kv = seq_detail::key_views(p);
  for (a.views = 0; a.views < kv.n; ++a.views) {
    a.cache[a.views] = *kv.cache[a.views];
    a.fresh[a.views] = *kv.fresh[a.views];
  }
  a.kv_heads = p.kv_heads;
  a.head_dim = p.head_dim;
  a.seqlen_q = p.seqlen_q;
  a.seq = p.seq;
  return a;
}
struct AppendKvKernel {
  DIFFATTN_DEVICE void operator()(AppendKvArgs a) const {
    const std::int64_t i = simt::block_idx().x, b = simt::block_idx().y;
    if (i >= a.seq.q_len(b, a.seqlen_q)) return;
    const std::int64_t j = std::int64_t{a.seq.seqused_k[b]} + i;
    const std::int64_t chunks = a.head_dim / 8;  // 8 elements (16 bytes) each: d is a multiple of 16
    for (int t = 0; t < a.views; ++t) {
      const ConstTensorRef& to = a.cache[t];
      const ConstTensorRef& from = a.fresh[t];
      std::uint16_t* dst = const_cast<std::uint16_t*>(static_cast<const std::uint16_t*>(to.ptr)) +
                           a.seq.k_offset(to.stride_b, to.stride_t, b, j);
      const std::uint16_t* src = static_cast<const std::uint16_t*>(from.ptr) + a.seq.q_offset(from.stride_b, from.stride_t, b) +
                                 i * from.stride_t;
      for (std::int64_t c = simt::thread_rank(); c < a.kv_heads * chunks; c += simt::block_dim().x) {
        const std::int64_t g = c / chunks, x = c % chunks * 8;
        DIFFATTN_UNROLL
        for (int e = 0; e < 8; ++e) dst[g * to.stride_h + x + e] = src[g * from.stride_h + x + e];
      }
    }
  }
};

/// The kernel functor. Grid: (ceil(N / BlockM), B * H); block: kThreads; shared: kSmemBytes.
template <class Traits>
struct DiffAttnForwardKernel {
  using T = Traits;
  static constexpr simt::fmt16 F = T::kFmt;
  static constexpr float kNegInf = -INFINITY;
  using QLoader = detail::TileLoader<T::kThreads, T::kBlockM, T::kHeadDim, T::kQStride>;
  using KLoader = detail::TileLoader<T::kThreads, T::kBlockN, T::kHeadDim, T::kQStride>;
  using K1Loader = detail::TileLoader<T::kThreads, T::kBlockN1, T::kHeadDim, T::kQStride>;
  // V1's V moves as one tile of 2d columns from its two halves (v_lo into channels [0, d), v_hi
  // into [d, 2d)), each its own strided view (HF DiffLlama's V halves are two KV heads): the
  // loader picks a thread's half once (cuda forward requires equal token strides of the halves)
  using VLoader = detail::TileLoader<T::kThreads, T::kBlockN, T::kValueDim, T::kVStride, !T::kV2>;

  DIFFATTN_DEVICE void operator()(ForwardArgs a) const {
    using simt::smem_ptr;
    const unsigned tid = simt::thread_rank();
    const unsigned lane = tid & 31u, warp = tid >> 5;
    const int t = static_cast<int>(lane & 3u);
    const std::int64_t m0 = static_cast<std::int64_t>(simt::block_idx().x) * T::kBlockM;
    const std::int64_t bh = simt::block_idx().y;
    const std::int64_t b = bh / a.heads, h = bh % a.heads, kvg = h / a.n_rep;
    // this sequence's queries and keys (Params::seq; the dense sizes without it): blocks past
    // its queries have nothing to do (the grid covers the longest sequence)
    const SeqParams& sq = a.seq;
    // 32-bit (sequences are below 2^30, caps().max_seqlen): the two-pass d = 128 kernel sits at
    // 253 registers without serving layouts, and two 64-bit lengths live through its key loop
    // spilled (44 B for sm_80)
    const int N = static_cast<int>(sq.q_len(b, a.seqlen_q));
    if (m0 >= N) return;
    const int S = static_cast<int>(sq.k_len(b, a.seqlen_q, a.seqlen_k));
    // the mask bottom-right aligned to this sequence, built where it is used: its window sides
    // stay in the kernel parameters (a local RowMask held 8 more registers through the key loop:
    // the d = 128 two-pass kernel then spilled 52 B for sm_80)
    auto mask = [&] { return RowMask{S, std::int64_t{S} - N, a.mask.left, a.mask.right}; };
    // where this sequence's token 0 (head h) of a query-side view, and key row j of a key-side
    // view (KV head kvg), are: dense, packed, or (keys) through the block table
    auto qbase = [&](const ConstTensorRef& r) {
      return static_cast<const std::uint16_t*>(r.ptr) + sq.q_offset(r.stride_b, r.stride_t, b) + h * r.stride_h;
    };
    auto krow = [&](const ConstTensorRef& r, std::int64_t j) {
      return static_cast<const std::uint16_t*>(r.ptr) + sq.k_offset(r.stride_b, r.stride_t, b, j) + kvg * r.stride_h;
    };
    // row of (h, token 0) of this sequence in the extras (computed after the key loop)
    auto extras_row0 = [&] { return extras_row(a, b, h); };

    const smem_ptr<std::uint16_t> smem = simt::shared_memory<std::uint16_t>();
    const smem_ptr<std::uint16_t> sQ[2] = {smem + T::kOffQ1, smem + T::kOffQ2};
    auto sK = [&](int stage, int c) { return smem + (T::kOffK + (stage * T::kKComps + c) * T::kKTileElems); };
    auto sK1 = [&](int stage, int c) { return smem + (T::kOffK + (stage * 2 + c) * T::kK1TileElems); };
    auto sV = [&](int stage) { return smem + (T::kOffV + stage * T::kVTileElems); };

    // global bases of this (b, kvg): key row 0 (paged: re-sought per tile)
    const std::uint16_t* gK[2] = {krow(a.k1, 0), krow(a.k2, 0)};
    const std::uint16_t* gV[2] = {krow(a.v_lo, 0), T::kV2 ? nullptr : krow(a.v_hi, 0)};

    // V1: lambda, from the four vectors (every thread: 2d multiply-adds, no host synchronisation)
    float lambda = 0.f;
    if constexpr (!T::kV2) {
      const std::int64_t loff = a.lambda_per_head ? h * a.head_dim : 0;
      lambda = lambda_terms<float>(a.lq1 + loff, a.lk1 + loff, a.lq2 + loff, a.lk2 + loff, a.head_dim)
                   .value(a.ep.lambda_init);
    }

    // the key tiles any row of this block can see, and which of them need per-element masking
    const std::int64_t last_row = (m0 + T::kBlockM < N ? m0 + T::kBlockM : N) - 1;
    const std::int64_t key_lo = mask().key_begin(m0), key_hi = mask().key_end(last_row);
    const std::int64_t inner_lo = mask().key_begin(last_row), inner_hi = mask().key_end(m0);
    auto tile_range = [&](int bn, int& nb_begin, int& nb_end) {
      nb_begin = static_cast<int>(key_lo / bn);
      nb_end = key_hi > key_lo ? static_cast<int>((key_hi + bn - 1) / bn) : nb_begin;
    };

    const int wrow = static_cast<int>(warp) * 16;  // this warp's first row in the tile
    // the two rows of this thread (accumulator rows g and g + 8)
    const std::int64_t row_i[2] = {m0 + wrow + static_cast<int>(lane >> 2), m0 + wrow + static_cast<int>(lane >> 2) + 8};

    {  // Q_1, Q_2 of this block: joins the first copy group of the key-tile loop
      QLoader q1(qbase(a.q1) + m0 * a.q1.stride_t, a.q1.stride_t, tid);
      QLoader q2(qbase(a.q2) + m0 * a.q2.stride_t, a.q2.stride_t, tid);
      q1.load(sQ[0], N - m0);
      q2.load(sQ[1], N - m0);
    }

    // S_c (16, kN) of this warp's rows against a key tile at n0, scaled to base 2; masked entries
    // -inf, on tiles that cross a mask edge or the end of the keys only
    auto scale_mask = [&](auto& s, std::int64_t n0) {
      constexpr int kNT = static_cast<int>(sizeof(s) / sizeof(s[0]));
      const bool edge = n0 + kNT * 8 > S || n0 < inner_lo || n0 + kNT * 8 > inner_hi;
      DIFFATTN_UNROLL
      for (int nt = 0; nt < kNT; ++nt)
        DIFFATTN_UNROLL
        for (int e = 0; e < 4; ++e) {
          float x = s[nt][e] * a.scale_log2;
          if (edge) {
            const std::int64_t jj = n0 + nt * 8 + 2 * t + (e & 1);
            if (!mask().visible(row_i[e >> 1], jj)) x = kNegInf;
          }
          s[nt][e] = x;
        }
    };
    // Q fragments read from shared memory per k-step (Q is re-read each tile where registers
    // cannot hold it beside the accumulators)
    auto q_from_smem = [&](int c) {
      return [&, c](int kk, std::uint32_t(&out)[4]) { detail::load_a_frag(out, sQ[c], T::kQStride, wrow, kk, lane); };
    };
    auto scores = [&](float (&s)[T::kSTiles][4], int c, smem_ptr<std::uint16_t> k, int nb) {
      detail::mma_abt<F, T::kQKSteps, T::kSTiles>(s, q_from_smem(c), k, T::kQStride, lane);
      scale_mask(s, static_cast<std::int64_t>(nb) * T::kBlockN);
    };
    KLoader kl[2] = {KLoader(gK[0], a.k1.stride_t, tid), KLoader(gK[1], a.k2.stride_t, tid)};
    VLoader vl(gV[0], a.v_lo.stride_t, tid, gV[1]);

    // the K1, K2, V tiles of the single pass and of pass 2: the visible range, loaders moved to its
    // first tile
    auto kv_tiles = [&](int& nb_begin, int& nb_end) {
      tile_range(T::kBlockN, nb_begin, nb_end);
      DIFFATTN_UNROLL
      for (int c = 0; c < T::kKComps; ++c) kl[c].skip(nb_begin);
      vl.skip(nb_begin);
    };
    auto load_kv = [&](int stage, int nb) {
      const std::int64_t j0 = static_cast<std::int64_t>(nb) * T::kBlockN, rows = S - j0;
      // the tile's rows lie in one page (page_size a multiple of the tile); the single pass only
      // (check_forward_support: the two-pass kernel has no registers to spare for the seek)
      if (T::kSinglePass && sq.block_table != nullptr) {
        kl[0].seek(krow(a.k1, j0));
        if constexpr (T::kKComps > 1) kl[1].seek(krow(a.k2, j0));
        vl.seek(krow(a.v_lo, j0), T::kV2 ? nullptr : krow(a.v_hi, j0));
      }
      DIFFATTN_UNROLL
      for (int c = 0; c < T::kKComps; ++c) kl[c].load(sK(stage, c), rows);
      vl.load(sV(stage), rows);
    };

    float acc[T::kOTiles][4];
    DIFFATTN_UNROLL
    for (int nt = 0; nt < T::kOTiles; ++nt)
      DIFFATTN_UNROLL
      for (int e = 0; e < 4; ++e) acc[nt][e] = 0.f;
    detail::RowSoftmax<T::kSTiles> sm[2];
    float lse[2][2];  // [component][row], base 2, +inf for a fully masked row
    float acc_scale = 1.f;

    if constexpr (T::kSinglePass) {
      // ---- one pass: K1, K2, V tiles once; two online softmaxes, two accumulators ----------
      float acc2[T::kOTiles][4];
      DIFFATTN_UNROLL
      for (int nt = 0; nt < T::kOTiles; ++nt)
        DIFFATTN_UNROLL
        for (int e = 0; e < 4; ++e) acc2[nt][e] = 0.f;
      int nb_begin, nb_end;
      kv_tiles(nb_begin, nb_end);
      detail::stream_key_tiles(
          nb_begin, nb_end,
          load_kv,
          [&](int stage, int nb) {
            float s[2][T::kSTiles][4];
            std::uint32_t p[2][T::kPVSteps][4];
            if constexpr (T::kV2) {  // one K tile, each K fragment for both query heads
              detail::mma_abt2<F, T::kQKSteps, T::kSTiles>(s[0], s[1], q_from_smem(0), q_from_smem(1), sK(stage, 0),
                                                           T::kQStride, lane);
              scale_mask(s[0], static_cast<std::int64_t>(nb) * T::kBlockN);
              scale_mask(s[1], static_cast<std::int64_t>(nb) * T::kBlockN);
            } else {
              scores(s[0], 0, sK(stage, 0), nb);
            }
            sm[0].step(s[0], [&](int r, float f) {
              DIFFATTN_UNROLL
              for (int nt = 0; nt < T::kOTiles; ++nt) { acc[nt][2 * r] *= f; acc[nt][2 * r + 1] *= f; }
            });
            detail::pack_a_frags<F, T::kPVSteps>(s[0], p[0]);
            if constexpr (!T::kV2) scores(s[1], 1, sK(stage, 1), nb);
            sm[1].step(s[1], [&](int r, float f) {
              DIFFATTN_UNROLL
              for (int nt = 0; nt < T::kOTiles; ++nt) { acc2[nt][2 * r] *= f; acc2[nt][2 * r + 1] *= f; }
            });
            detail::pack_a_frags<F, T::kPVSteps>(s[1], p[1]);
            detail::mma_pv<F, T::kPVSteps, T::kOTiles, 2>(acc, p[0], acc2, p[1], sV(stage), T::kVStride, lane);
          });
      DIFFATTN_UNROLL
      for (int c = 0; c < 2; ++c) {
        sm[c].finish();
        DIFFATTN_UNROLL
        for (int r = 0; r < 2; ++r) lse[c][r] = sm[c].lse(r);
      }
      // A = O_1 - lambda O_2 with O_c = acc_c / l_c (0 for a fully masked row), into acc; V2:
      // lambda of the row, sigmoid of its logit
      const std::int64_t row0 = extras_row0();
      DIFFATTN_UNROLL
      for (int r = 0; r < 2; ++r) {
        float lam = lambda;
        if constexpr (T::kV2) {
          if (row_i[r] < N) {
            const float z = static_cast<const float*>(a.logits.ptr)[sq.q_offset(a.logits.stride_b, a.logits.stride_t, b) +
                                                                    row_i[r] * a.logits.stride_t + h * a.logits.stride_h];
            lam = 1.f / (1.f + expf(-z));
          }
        }
        const float inv1 = sm[0].l[r] > 0.f ? 1.f / sm[0].l[r] : 0.f;
        const float inv2 = sm[1].l[r] > 0.f ? 1.f / sm[1].l[r] : 0.f;
        const std::int64_t i = row_i[r];
        DIFFATTN_UNROLL
        for (int nt = 0; nt < T::kOTiles; ++nt)
          DIFFATTN_UNROLL
          for (int e = 0; e < 2; ++e) {
            const float o2 = acc2[nt][2 * r + e] * inv2;
            acc[nt][2 * r + e] = acc[nt][2 * r + e] * inv1 - lam * o2;
            if (a.o2 && i < N) a.o2[(row0 + i) * T::kValueDim + nt * 8 + 2 * t + e] = o2;
          }
      }
    } else {
      // ---- pass 1: row max and sum of both softmaxes, Q in registers, lane-local stats -------
      {
        int nb_begin, nb_end;
        tile_range(T::kBlockN1, nb_begin, nb_end);
        K1Loader k1l[2] = {K1Loader(gK[0], a.k1.stride_t, tid), K1Loader(gK[1], a.k2.stride_t, tid)};
        k1l[0].skip(nb_begin); k1l[1].skip(nb_begin);
        std::uint32_t qf[2][T::kQKSteps][4];
        simt::cp_async_commit();
        simt::cp_async_wait<0>();
        simt::syncthreads();  // Q has landed
        DIFFATTN_UNROLL
        for (int c = 0; c < 2; ++c) detail::load_a_frags<T::kQKSteps>(qf[c], sQ[c], T::kQStride, wrow, lane);
        detail::RowSoftmax<T::kSTiles1> sm1[2];
        detail::stream_key_tiles(
            nb_begin, nb_end,
            [&](int stage, int nb) {
              const std::int64_t rows = S - static_cast<std::int64_t>(nb) * T::kBlockN1;  // (no paged path)
              k1l[0].load(sK1(stage, 0), rows);
              k1l[1].load(sK1(stage, 1), rows);
            },
            [&](int stage, int nb) {
              DIFFATTN_UNROLL
              for (int c = 0; c < 2; ++c) {
                float s[T::kSTiles1][4];
                detail::mma_abt<F, T::kQKSteps, T::kSTiles1>(
                    s, [&](int kk, std::uint32_t(&out)[4]) {
                      DIFFATTN_UNROLL
                      for (int x = 0; x < 4; ++x) out[x] = qf[c][kk][x];
                    },
                    sK1(stage, c), T::kQStride, lane);
                scale_mask(s, static_cast<std::int64_t>(nb) * T::kBlockN1);
                sm1[c].step_local(s);
              }
            });
        DIFFATTN_UNROLL
        for (int c = 0; c < 2; ++c) {
          sm1[c].merge_local();
          sm1[c].finish();
          DIFFATTN_UNROLL
          for (int r = 0; r < 2; ++r) lse[c][r] = sm1[c].lse(r);
        }
      }

      // ---- pass 2: acc = (P_1 - lambda P_2) V / L ------------------------------------------
      // L = 2^e >= max(1, |lambda|): |P_1 - lambda P_2| / L <= 2, so the 16-bit P cannot
      // overflow; folded into the LSEs and lambda (exact), undone in the epilogue
      int e2 = 0;
      if (fabsf(lambda) > 1.f) frexpf(lambda, &e2);
      const float ls = ldexpf(1.f, e2), lambda_s = lambda / ls;
      // P_1 / L = exp2(S_1 - lse_1 - e), lambda P_2 / L = (lambda / L) exp2(S_2 - lse_2)
      const float lse_s[2][2] = {{lse[0][0] + static_cast<float>(e2), lse[0][1] + static_cast<float>(e2)},
                                 {lse[1][0], lse[1][1]}};
      acc_scale = ls;
      int nb_begin, nb_end;
      kv_tiles(nb_begin, nb_end);
      simt::syncthreads();  // pass 1's last tile may still be read by other warps
      detail::stream_key_tiles(
          nb_begin, nb_end,
          load_kv,
          [&](int stage, int nb) {
            float p[T::kSTiles][4], s[T::kSTiles][4];
            scores(s, 0, sK(stage, 0), nb);
            DIFFATTN_UNROLL
            for (int nt = 0; nt < T::kSTiles; ++nt)
              DIFFATTN_UNROLL
              for (int e = 0; e < 4; ++e) p[nt][e] = simt::exp2_approx(s[nt][e] - lse_s[0][e >> 1]);
            scores(s, 1, sK(stage, 1), nb);
            DIFFATTN_UNROLL
            for (int nt = 0; nt < T::kSTiles; ++nt)
              DIFFATTN_UNROLL
              for (int e = 0; e < 4; ++e) p[nt][e] -= lambda_s * simt::exp2_approx(s[nt][e] - lse_s[1][e >> 1]);
            std::uint32_t pa[T::kPVSteps][4];
            detail::pack_a_frags<F, T::kPVSteps>(p, pa);
            detail::mma_pv<F, T::kPVSteps, T::kOTiles, 1>(acc, pa, acc, pa, sV(stage), T::kVStride, lane);
          });
      if (acc_scale != 1.f) {
        DIFFATTN_UNROLL
        for (int nt = 0; nt < T::kOTiles; ++nt)
          DIFFATTN_UNROLL
          for (int e = 0; e < 4; ++e) acc[nt][e] *= acc_scale;
      }
    }

    detail::store_rows<F, T::kOTiles>(a.ep, acc, lse, row_i, N, sq.q_offset(a.ep.out.stride_b, a.ep.out.stride_t, b),
                                      extras_row0(), h, t);
  }
};

}  // namespace cuda
DIFFATTN_NAMESPACE_END
