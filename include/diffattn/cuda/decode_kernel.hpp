// diffattn/cuda/decode_kernel.hpp: the CUDA forward's decoding path: a few query tokens per
// sequence against a long (dense, packed or paged) KV cache, split over the keys.
//
// The fused forward (forward_kernel.hpp) gives each block 64 or 128 query rows of ONE head: at
// N = 1 that is one useful row of 128, and each of the n_rep heads of a GQA group reads the
// group's K and V again. Here a block takes the rows of a whole KV group instead: row r of the
// group is (head kvg n_rep + r / N_b, token r % N_b), 16 rows per block (n_rep N_b > 16: more
// row blocks), so each K and V tile is read once for the group's heads and tokens. The blocks of
// one (sequence, group) share its visible key tiles out in `splits` contiguous ranges (split-KV:
// B Hkv blocks alone cannot fill an H100's 132 SMs at B = 16, Hkv = 2), each writing its partial
// softmax states of both components (m_c, l_c and the unnormalised acc_c = sum exp2(s - m_c) V,
// fp32) to a workspace; a combine kernel then merges the splits of each row in split order (the
// same bits run to run on one device: the split count follows its SM count), forms
// A = O_1 - lambda O_2 (V2: lambda = sigmoid(z)) and runs the forward's epilogue (norm, gamma,
// beta, 1 - lambda_init, the 16-bit out, LSEs, the extras, O_2 included) unchanged.
//
// Within a block, the warps share the tile's work by value channels: every warp computes the
// same scores S_c = s Q_c K_c^T of the 16 rows (the same instructions on the same data: the same
// softmax state in every warp, no exchange) and accumulates its own dv / kWarps channels of
// P_1 V and P_2 V. The scores are kWarps times redundant, which a memory-bound loop affords
// (DecodeTraits), and the accumulators stay small at every head dim (V1 d = 128: 2 x 64
// registers), so the single-pass math (K and V read once) serves every d, where the fused
// kernel needs two passes at d = 96 and 128.
//
// Key rows are addressed one by one (a page lookup per row and tile, shared by K_1, K_2 and V's
// halves), so pages may hold any number of rows: 1, 16 (vLLM's default), 17.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>

#include "diffattn/core/lambda.hpp"
#include "diffattn/core/mask.hpp"
#include "diffattn/core/params.hpp"
#include "diffattn/core/status.hpp"
#include "diffattn/cuda/detail/epilogue.hpp"
#include "diffattn/cuda/detail/softmax.hpp"
#include "diffattn/cuda/detail/tile_loader.hpp"
#include "diffattn/cuda/detail/warp_mma.hpp"
#include "diffattn/cuda/forward_kernel.hpp"
#include "diffattn/simt/config.hpp"
#include "diffattn/simt/cp_async.hpp"
#include "diffattn/simt/math.hpp"
#include "diffattn/simt/smem.hpp"
#include "diffattn/simt/thread.hpp"

DIFFATTN_NAMESPACE_BEGIN
namespace cuda {

/// The decoding path's configuration, derived from the fused forward's (element type, d, V2).
///
/// Keys per tile: 16, as the fused single-pass kernels (V1 d = 64, V2 d = 96 and 128), whose P
/// rounding this path then shares. With 64-key tiles (d = 64) the emulated kernel's worst error
/// on A reached 3.7x that of the naive bf16 computation in a random serving case (test_fuzz seed
/// 1000267: 13 tokens, GQA 4:1, 156 keys), and 1.9x in one of 8 seeds of that shape, where
/// 16-key tiles gave the fused kernel's bits (1.1x at most); DESIGN.md's bound is 2x. (Its mean
/// error was the lower one: the tail, not the bulk, grew with the tile.)
/// One stage of K_1, K_2 and V tiles is then 9 KB at d = 64 and 17 KB at d = 128; with Q a block
/// takes 23 / 43 KB of shared memory, and registers set the blocks per SM: 132 and 149 per thread
/// for the V1 split kernel at d = 64 and 128 (ptxas, sm_90; no spills), three blocks of 128
/// threads. By Little's law an H100 SXM needs 3.35 TB/s x ~1 us of DRAM latency / 132 SMs ~ 25 KB
/// of copies in flight per SM to run at its bandwidth (an A100: 1.9 TB/s / 108 ~ 18 KB): three
/// blocks hold 27 KB at d = 64, 51 KB at d = 128, each with one stage in flight. The scores are computed by each of the 4 warps (each accumulates its own
/// dv / 4 value channels): per key 2 x 4 warps x 16 rows x 2d = 256 d multiply-adds, and P V 2 x
/// 16 x 2d = 64 d, 640 d flops per 8 d bytes of K and V (V1): 80 flops per byte, against an
/// H100's ~300 dense 16-bit tensor flops per byte of HBM bandwidth (990 TFLOP/s / 3.35 TB/s): the
/// mma work stays below a third of the memory time. No GPU has timed this path yet
/// (scripts/gpu_check.sh runs its cuda_decode benchmarks beside the fused kernel's).
template <simt::fmt16 F, int HeadDim, bool V2>
struct DecodeTraits {
  static constexpr simt::fmt16 kFmt = F;
  static constexpr DType kDType = F == simt::fmt16::f16 ? DType::f16 : DType::bf16;
  static constexpr bool kV2 = V2;
  static constexpr int kHeadDim = HeadDim;
  static constexpr int kValueDim = V2 ? HeadDim : 2 * HeadDim;
  static constexpr int kKComps = V2 ? 1 : 2;
  static constexpr int kRows = 16;  ///< packed (head, token) rows per block: one mma row block
  static constexpr int kBlockN = 16;
  /// warps split dv into slices of whole pairs of n8 tiles (16 channels): 4 where dv / 16 allows
  static constexpr int kWarps = (kValueDim / 16) % 4 == 0 ? 4 : ((kValueDim / 16) % 2 == 0 ? 2 : 1);
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kCols = kValueDim / kWarps;  ///< value channels per warp
  static constexpr int kOTiles = kCols / 8;
  static constexpr int kQStride = kHeadDim + 8;  // padded rows: conflict-free ldmatrix (traits.hpp)
  static constexpr int kVStride = kValueDim + 8;
  static constexpr int kSTiles = kBlockN / 8;
  static constexpr int kQKSteps = kHeadDim / 16;
  static constexpr int kPVSteps = kBlockN / 16;
  static constexpr int kQTileElems = kRows * kQStride;
  static constexpr int kKTileElems = kBlockN * kQStride;
  static constexpr int kVTileElems = kBlockN * kVStride;
  static constexpr int kOffK = 2 * kQTileElems;
  static constexpr int kOffV = kOffK + 2 * kKComps * kKTileElems;
  static constexpr int kSmemBytes = 2 * (kOffV + 2 * kVTileElems);
  static constexpr int kChunksPerRow = kHeadDim / 8;  ///< 16-byte copies per row of each view
  static_assert(HeadDim % 16 == 0 && kOTiles % 2 == 0, "value slices must be pairs of n8 tiles");
  static_assert(kSmemBytes <= 99 * 1024, "a decoding block must fit sm_86/sm_89's 99 KiB");
};

/// cuda::forward takes the decoding path when a call's query rows per KV group (max N_b x n_rep)
/// are at most this, or when it asks for splits (num_splits > 1): up to four row blocks of 16,
/// each reading the group's tiles, where the fused kernel's blocks of 64 or 128 rows of one head
/// would hold at most 64 useful rows and read each group's tiles n_rep times.
inline constexpr std::int64_t kDecodeMaxGroupRows = 64;

/// Whether cuda::forward(p) runs the decoding path (the fused kernel otherwise).
inline bool takes_decode_path(const Params& p) {
  return p.seq.num_splits > 1 || p.seqlen_q * p.n_rep() <= kDecodeMaxGroupRows;
}

/// The decoding path's launch plan: row blocks per KV group, splits of the key tiles, workspace.
struct DecodePlan {
  bool use = false;         ///< this call takes the decoding path
  int row_blocks = 1;       ///< ceil(max N_b n_rep / 16)
  int splits = 1;           ///< key ranges per (sequence, group)
  std::int64_t rows = 0;    ///< rows of the extras' layout: B H N, or H total_q packed
  std::size_t bytes = 0;    ///< workspace: partial accumulators and (m, l) of every split
};

/// Whether p takes the decoding path, and its plan on a device of `sms` SMs. num_splits = 0: as
/// many splits as bring the blocks to about two per SM, at most one per 256 keys of seqlen_k (the
/// longest sequence: a split's fixed cost, its partial state and its share of the combine, stays
/// small beside its keys), at most kMaxSplits.
template <class DT>
DecodePlan make_decode_plan(const Params& p, int sms) {
  DecodePlan pl;
  const std::int64_t group_rows = p.seqlen_q * p.n_rep();
  pl.use = takes_decode_path(p);
  if (!pl.use) return pl;
  pl.row_blocks = static_cast<int>((group_rows + DT::kRows - 1) / DT::kRows);
  if (p.seq.num_splits > 0) {
    pl.splits = p.seq.num_splits;
  } else {
    const std::int64_t blocks = p.batch * p.kv_heads * pl.row_blocks;
    const std::int64_t tiles = (p.seqlen_k + DT::kBlockN - 1) / DT::kBlockN;
    const std::int64_t want = (2 * static_cast<std::int64_t>(sms) + blocks - 1) / blocks;
    const std::int64_t most = (tiles + 15) / 16;
    std::int64_t s = want < most ? want : most;
    if (s > kMaxSplits) s = kMaxSplits;
    pl.splits = static_cast<int>(s < 1 ? 1 : s);
  }
  pl.rows = p.heads * (p.seq.varlen_q() ? p.seq.total_q : p.batch * p.seqlen_q);
  pl.bytes = static_cast<std::size_t>(pl.splits) * static_cast<std::size_t>(pl.rows) *
             static_cast<std::size_t>(2 * DT::kValueDim + 4) * sizeof(float);
  return pl;
}

/// What the decoding kernels read: the forward's arguments, the plan, the workspace.
struct DecodeArgs {
  ForwardArgs f;
  int splits;
  std::int64_t rows;  ///< DecodePlan::rows
  float* part_o;      ///< [splits][rows][2][dv]: acc_1, acc_2 (unnormalised, relative to m_c)
  float* part_ml;     ///< [splits][rows][2][2]: (m_c, l_c) of component c, base 2
};

inline DecodeArgs make_decode_args(const Params& p, const DecodePlan& pl, void* workspace, int value_dim) {
  DecodeArgs a;
  a.f = make_forward_args(p);
  a.splits = pl.splits;
  a.rows = pl.rows;
  a.part_o = static_cast<float*>(workspace);
  a.part_ml = a.part_o + static_cast<std::int64_t>(pl.splits) * pl.rows * 2 * value_dim;
  return a;
}

/// One split of one row block of one (sequence, KV group). Grid: (splits, row_blocks, B Hkv);
/// block: kThreads; shared: kSmemBytes.
template <class DT>
struct DecodeSplitKernel {
  using T = DT;
  static constexpr simt::fmt16 F = T::kFmt;

  DIFFATTN_DEVICE void operator()(DecodeArgs d) const {
    const ForwardArgs& a = d.f;
    const SeqParams& sq = a.seq;
    const unsigned tid = simt::thread_rank(), lane = tid & 31u, warp = tid >> 5;
    const int t = static_cast<int>(lane & 3u);
    const int split = static_cast<int>(simt::block_idx().x);
    const std::int64_t b = simt::block_idx().z / (a.heads / a.n_rep), kvg = simt::block_idx().z % (a.heads / a.n_rep);
    const int N = static_cast<int>(sq.q_len(b, a.seqlen_q));
    const int S = static_cast<int>(sq.k_len(b, a.seqlen_q, a.seqlen_k));
    const int R = static_cast<int>(a.n_rep) * N;  // this group's rows
    const int r0 = static_cast<int>(simt::block_idx().y) * T::kRows;
    if (r0 >= R) return;  // the grid covers the longest sequence
    const RowMask mask{S, std::int64_t{S} - N, a.mask.left, a.mask.right};
    // tokens of the block's rows: one run of a head's tokens, or (rows of several heads) all
    const int r_last = (r0 + T::kRows < R ? r0 + T::kRows : R) - 1;
    const bool one_head = r0 / N == r_last / N;
    const int i_lo = one_head ? r0 % N : 0, i_hi = one_head ? r_last % N : N - 1;
    const std::int64_t key_lo = mask.key_begin(i_lo), key_hi = mask.key_end(i_hi);
    const std::int64_t inner_lo = mask.key_begin(i_hi), inner_hi = mask.key_end(i_lo);
    const bool ragged_rows = r0 + T::kRows > R;
    // this split's share of the visible tiles: contiguous, in order
    const int nb_first = static_cast<int>(key_lo / T::kBlockN);
    const int nb_total = key_hi > key_lo ? static_cast<int>((key_hi + T::kBlockN - 1) / T::kBlockN) - nb_first : 0;
    const int per = (nb_total + d.splits - 1) / d.splits;
    const int nb_begin = nb_first + (split * per < nb_total ? split * per : nb_total);
    const int nb_end = nb_first + ((split + 1) * per < nb_total ? (split + 1) * per : nb_total);

    const simt::smem_ptr<std::uint16_t> smem = simt::shared_memory<std::uint16_t>();
    const simt::smem_ptr<std::uint16_t> sQ[2] = {smem, smem + T::kQTileElems};
    auto sK = [&](int stage, int c) { return smem + (T::kOffK + (stage * T::kKComps + c) * T::kKTileElems); };
    auto sV = [&](int stage) { return smem + (T::kOffV + stage * T::kVTileElems); };

    // this lane's two rows: group row, its head and token (rows past R: masked, not written)
    int rr[2], hh[2], ii[2];
    DIFFATTN_UNROLL
    for (int r = 0; r < 2; ++r) {
      rr[r] = r0 + static_cast<int>(lane >> 2) + 8 * r;
      hh[r] = static_cast<int>(kvg * a.n_rep) + (rr[r] < R ? rr[r] / N : 0);
      ii[r] = rr[r] < R ? rr[r] % N : 0;
    }

    {  // Q_1, Q_2 of the 16 rows (gathered over heads and tokens; past R zero-filled)
      const ConstTensorRef* qv[2] = {&a.q1, &a.q2};
      for (int c = static_cast<int>(tid); c < T::kRows * T::kChunksPerRow; c += T::kThreads) {
        const int r = c / T::kChunksPerRow, col = (c % T::kChunksPerRow) * 8, g = r0 + r;
        const bool ok = g < R;
        const std::int64_t h = kvg * a.n_rep + (ok ? g / N : 0), i = ok ? g % N : 0;
        DIFFATTN_UNROLL
        for (int q = 0; q < 2; ++q) {
          const std::uint16_t* src = static_cast<const std::uint16_t*>(qv[q]->ptr) +
                                     sq.q_offset(qv[q]->stride_b, qv[q]->stride_t, b) + i * qv[q]->stride_t +
                                     h * qv[q]->stride_h + col;
          simt::cp_async_16_zfill(sQ[q] + (r * T::kQStride + col), src, ok ? 16 : 0);
        }
      }
    }

    // key row j of this (b, kvg) in a key-side view: (page, row in page) once per row, then
    // page * stride_b + row * stride_t per view (dense: page b; packed: cu_seqlens_k[b] + j)
    const std::int64_t ts = sq.table_stride();
    auto load_tile = [&](int stage, int nb) {
      const int j0 = nb * T::kBlockN;
      constexpr int kTotal = T::kBlockN * T::kChunksPerRow;
      // rolled: unrolled, nvcc kept every chunk's 64-bit addresses of the four views live across
      // the key loop (the d = 64 V1 split kernel: 255 registers and 16 B of spills for sm_90)
      DIFFATTN_NO_UNROLL
      for (int it = 0; it < (kTotal + T::kThreads - 1) / T::kThreads; ++it) {
        const int c = static_cast<int>(tid) + it * T::kThreads;
        if (kTotal % T::kThreads != 0 && c >= kTotal) break;
        const int r = c / T::kChunksPerRow, col = (c % T::kChunksPerRow) * 8, j = j0 + r;
        const bool ok = j < S;
        std::int64_t page = b, row = j;
        if (sq.block_table != nullptr) {
          const int ps = static_cast<int>(sq.page_size);
          page = ok ? sq.block_table[b * ts + j / ps] : 0;
          row = j % ps;
        } else if (sq.cu_seqlens_k != nullptr) {
          page = 0;
          row = std::int64_t{sq.cu_seqlens_k[b]} + j;
        }
        auto src = [&](const ConstTensorRef& v) {
          return static_cast<const std::uint16_t*>(v.ptr) + (ok ? page * v.stride_b + row * v.stride_t : 0) +
                 kvg * v.stride_h + col;
        };
        const int bytes = ok ? 16 : 0;  // rows past the keys: zero-filled, nothing read
        simt::cp_async_16_zfill(sK(stage, 0) + (r * T::kQStride + col), src(a.k1), bytes);
        if constexpr (!T::kV2) simt::cp_async_16_zfill(sK(stage, 1) + (r * T::kQStride + col), src(a.k2), bytes);
        simt::cp_async_16_zfill(sV(stage) + (r * T::kVStride + col), src(a.v_lo), bytes);
        if constexpr (!T::kV2)
          simt::cp_async_16_zfill(sV(stage) + (r * T::kVStride + T::kHeadDim + col), src(a.v_hi), bytes);
      }
    };

    auto scale_mask = [&](float (&s)[T::kSTiles][4], int j0) {
      const bool edge = ragged_rows || j0 + T::kBlockN > S || j0 < inner_lo || j0 + T::kBlockN > inner_hi;
      DIFFATTN_UNROLL
      for (int nt = 0; nt < T::kSTiles; ++nt)
        DIFFATTN_UNROLL
        for (int e = 0; e < 4; ++e) {
          float x = s[nt][e] * a.scale_log2;
          if (edge) {
            const int r = e >> 1, j = j0 + nt * 8 + 2 * t + (e & 1);
            if (rr[r] >= R || !mask.visible(ii[r], j)) x = -INFINITY;
          }
          s[nt][e] = x;
        }
    };
    auto q_from_smem = [&](int c) {
      return [&, c](int kk, std::uint32_t(&out)[4]) { detail::load_a_frag(out, sQ[c], T::kQStride, 0, kk, lane); };
    };

    float acc[2][T::kOTiles][4];
    DIFFATTN_UNROLL
    for (int c = 0; c < 2; ++c)
      DIFFATTN_UNROLL
      for (int nt = 0; nt < T::kOTiles; ++nt)
        DIFFATTN_UNROLL
        for (int e = 0; e < 4; ++e) acc[c][nt][e] = 0.f;
    detail::RowSoftmax<T::kSTiles> sm[2];
    detail::stream_key_tiles(nb_begin, nb_end, load_tile, [&](int stage, int nb) {
      std::uint32_t p[2][T::kPVSteps][4];
      // the softmax of component c on its scores, P_c packed for the product
      auto soft = [&](int c, float (&s)[T::kSTiles][4]) {
        scale_mask(s, nb * T::kBlockN);
        sm[c].step(s, [&](int r, float f) {
          DIFFATTN_UNROLL
          for (int nt = 0; nt < T::kOTiles; ++nt) { acc[c][nt][2 * r] *= f; acc[c][nt][2 * r + 1] *= f; }
        });
        detail::pack_a_frags<F, T::kPVSteps>(s, p[c]);
      };
      if constexpr (T::kV2) {  // one K tile: each fragment for both query heads
        float s[2][T::kSTiles][4];
        detail::mma_abt2<F, T::kQKSteps, T::kSTiles>(s[0], s[1], q_from_smem(0), q_from_smem(1), sK(stage, 0),
                                                     T::kQStride, lane);
        soft(0, s[0]);
        soft(1, s[1]);
      } else {  // one component's scores live at a time
        DIFFATTN_UNROLL
        for (int c = 0; c < 2; ++c) {
          float s[T::kSTiles][4];
          detail::mma_abt<F, T::kQKSteps, T::kSTiles>(s, q_from_smem(c), sK(stage, c), T::kQStride, lane);
          soft(c, s);
        }
      }
      detail::mma_pv<F, T::kPVSteps, T::kOTiles, 2>(acc[0], p[0], acc[1], p[1], sV(stage) + static_cast<int>(warp) * T::kCols,
                                                    T::kVStride, lane);
    });

    // the split's state of each valid row: its slice of acc_c, and (warp 0) m_c, l_c
    DIFFATTN_UNROLL
    for (int c = 0; c < 2; ++c) sm[c].finish();
    DIFFATTN_UNROLL
    for (int r = 0; r < 2; ++r) {
      if (rr[r] >= R) continue;
      const std::int64_t row = static_cast<std::int64_t>(split) * d.rows + extras_row(a, b, hh[r]) + ii[r];
      DIFFATTN_UNROLL
      for (int c = 0; c < 2; ++c) {
        float* o = d.part_o + (row * 2 + c) * T::kValueDim + static_cast<int>(warp) * T::kCols;
        DIFFATTN_UNROLL
        for (int nt = 0; nt < T::kOTiles; ++nt) {
          o[nt * 8 + 2 * t] = acc[c][nt][2 * r];
          o[nt * 8 + 2 * t + 1] = acc[c][nt][2 * r + 1];
        }
        if (warp == 0 && t == 0) {
          d.part_ml[(row * 2 + c) * 2] = sm[c].m[r];
          d.part_ml[(row * 2 + c) * 2 + 1] = sm[c].l[r];
        }
      }
    }
  }
};

/// Merges the splits of 16 query rows of one (b, h) in split order and runs the epilogue.
/// Grid: (ceil(N / 16), B H); block: one warp; no shared memory.
template <class DT>
struct DecodeCombineKernel {
  using T = DT;
  static constexpr int kOTiles = T::kValueDim / 8;  // the whole row, as the fused kernel's warps hold it

  DIFFATTN_DEVICE void operator()(DecodeArgs d) const {
    const ForwardArgs& a = d.f;
    const SeqParams& sq = a.seq;
    const unsigned lane = simt::thread_rank() & 31u;
    const int t = static_cast<int>(lane & 3u);
    const std::int64_t m0 = static_cast<std::int64_t>(simt::block_idx().x) * 16;
    const std::int64_t b = simt::block_idx().y / a.heads, h = simt::block_idx().y % a.heads;
    const std::int64_t N = sq.q_len(b, a.seqlen_q);
    if (m0 >= N) return;
    const std::int64_t row0 = extras_row(a, b, h);
    const std::int64_t row_i[2] = {m0 + (lane >> 2), m0 + (lane >> 2) + 8};
    float lambda = 0.f;
    if constexpr (!T::kV2) {
      const std::int64_t loff = a.lambda_per_head ? h * a.head_dim : 0;
      lambda = lambda_terms<float>(a.lq1 + loff, a.lk1 + loff, a.lq2 + loff, a.lk2 + loff, a.head_dim)
                   .value(a.ep.lambda_init);
    }
    float acc[kOTiles][4];
    float lse[2][2];
    DIFFATTN_UNROLL
    for (int r = 0; r < 2; ++r) {
      const std::int64_t i = row_i[r];
      const bool valid = i < N;
      const std::int64_t row = row0 + (valid ? i : 0);
      auto ml = [&](int s, int c, int k) { return d.part_ml[((static_cast<std::int64_t>(s) * d.rows + row) * 2 + c) * 2 + k]; };
      // per component: the largest max of the splits that saw keys, and the merged sum
      float mx[2], inv[2];
      DIFFATTN_UNROLL
      for (int c = 0; c < 2; ++c) {
        float m = -INFINITY, l = 0.f;
        for (int s = 0; valid && s < d.splits; ++s)
          if (ml(s, c, 1) > 0.f) m = fmaxf(m, ml(s, c, 0));
        for (int s = 0; valid && s < d.splits; ++s)
          if (ml(s, c, 1) > 0.f) l += ml(s, c, 1) * exp2f(ml(s, c, 0) - m);
        mx[c] = m;
        inv[c] = l > 0.f ? 1.f / l : 0.f;
        lse[c][r] = l > 0.f ? m + log2f(l) : INFINITY;
      }
      float lam = lambda;
      if constexpr (T::kV2) {
        if (valid) {
          const float z = static_cast<const float*>(a.logits.ptr)[sq.q_offset(a.logits.stride_b, a.logits.stride_t, b) +
                                                                  i * a.logits.stride_t + h * a.logits.stride_h];
          lam = 1.f / (1.f + expf(-z));
        }
      }
      DIFFATTN_UNROLL
      for (int nt = 0; nt < kOTiles; ++nt) acc[nt][2 * r] = acc[nt][2 * r + 1] = 0.f;
      // A = sum_s w1_s acc1_s - lambda sum_s w2_s acc2_s, w_s = exp2(m_s - m) / l (0: no keys)
      for (int s = 0; valid && s < d.splits; ++s) {
        const float w1 = ml(s, 0, 1) > 0.f ? exp2f(ml(s, 0, 0) - mx[0]) * inv[0] : 0.f;
        const float w2 = ml(s, 1, 1) > 0.f ? exp2f(ml(s, 1, 0) - mx[1]) * inv[1] * lam : 0.f;
        const float* o = d.part_o + (static_cast<std::int64_t>(s) * d.rows + row) * 2 * T::kValueDim;
        DIFFATTN_UNROLL
        for (int nt = 0; nt < kOTiles; ++nt)
          DIFFATTN_UNROLL
          for (int e = 0; e < 2; ++e) {
            const int col = nt * 8 + 2 * t + e;
            // weight 0: not read (a split without keys wrote zeros, but 0 * Inf from V is NaN)
            if (w1 != 0.f) acc[nt][2 * r + e] += w1 * o[col];
            if (w2 != 0.f) acc[nt][2 * r + e] -= w2 * o[T::kValueDim + col];
          }
      }
      if (a.o2 != nullptr && valid) {  // O_2 for the backward: its own merge
        for (int nt = 0; nt < kOTiles; ++nt)
          for (int e = 0; e < 2; ++e) {
            const int col = nt * 8 + 2 * t + e;
            float o2 = 0.f;
            for (int s = 0; s < d.splits; ++s)
              if (ml(s, 1, 1) > 0.f)
                o2 += exp2f(ml(s, 1, 0) - mx[1]) * inv[1] *
                      d.part_o[((static_cast<std::int64_t>(s) * d.rows + row) * 2 + 1) * T::kValueDim + col];
            a.o2[(row0 + i) * T::kValueDim + col] = o2;
          }
      }
    }
    detail::store_rows<T::kFmt, kOTiles>(a.ep, acc, lse, row_i, N, sq.q_offset(a.ep.out.stride_b, a.ep.out.stride_t, b),
                                         row0, h, t);
  }
};

/// The decoding path's launches in order (the append first, as the fused path): launch(grid,
/// block, smem, kernel, args) for each, on validated params and a workspace of plan.bytes.
template <class DT, class Launch>
Status run_decode_steps(const Params& p, const DecodePlan& pl, void* workspace, Launch&& launch) {
  const DecodeArgs a = make_decode_args(p, pl, workspace, DT::kValueDim);
  Status s = launch(simt::dim3(static_cast<unsigned>(pl.splits), static_cast<unsigned>(pl.row_blocks),
                               static_cast<unsigned>(p.batch * p.kv_heads)),
                    simt::dim3(DT::kThreads), static_cast<std::size_t>(DT::kSmemBytes), DecodeSplitKernel<DT>{}, a);
  if (!s.ok()) return s;
  return launch(simt::dim3(static_cast<unsigned>((p.seqlen_q + 15) / 16), static_cast<unsigned>(p.batch * p.heads)),
                simt::dim3(32), std::size_t{0}, DecodeCombineKernel<DT>{}, a);
}

}  // namespace cuda
DIFFATTN_NAMESPACE_END
