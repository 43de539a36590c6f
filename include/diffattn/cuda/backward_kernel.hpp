// diffattn/cuda/backward_kernel.hpp: the fused differential-attention backward, written once on
// the simt/ primitives (nvcc compiles it, cuda/backward.cuh launches it; a host compiler runs
// it under the simt emulator, cuda/emulated.hpp, which CI does for every shipped
// configuration). Math: docs/SPEC.md, "Backward".
//
// Four kernels (five without a saved O_2) on one stream, in this order (BackwardPlan says where their buffers lie):
//   1. BwdPrepassKernel, per block of kBlockM query rows of one (b, h): dA through the norm's
//      backward from dout and the forward's saved A, O_2, rstd (mean); the row statistics
//      (base-2 LSE_1, LSE_2, D_1 = <dA, A + lambda O_2>, D_2 = -lambda <dA, O_2>, lambda of the
//      row); dA rounded to the element type for the tensor cores; the block's partial sums of
//      dlambda, dgamma, dbeta (V2: dlogits of each row directly). Rows past N of the last block
//      are written as rows that see nothing (LSE = +inf, dA = 0), so that the main kernel's
//      query tiles need no row bound. It also zeroes the dQ accumulators of its rows.
//   1b. BwdO2DotKernel, only when saved.o2 is null: <dA, O_2> per row from LSE_2 (the sum of
//      P_2 dP_1 over the row's keys), added into D_1, D_2, the dlambda partials and V2's dlogits.
//   2. BwdMainKernel (at d > 64 two or three launches: dV, then the rest), per (split of the key
//      blocks, b, KV group): for each block of kBlockN keys
//      of the split (one warp per 16 keys), K_c and V stay in shared memory while every tile of
//      kBlockM query rows of each head of the group that can see the block streams through
//      (Q_1, Q_2, dA and the row statistics, double-buffered cp.async). Per tile and warp, in the
//      transposed orientation (keys are the rows of every product, so each operand is a direct
//      fragment): S_c^T = K_c Q_c^T, P_c^T = exp2(s S_c^T - LSE_c), dP_1^T = V dA^T (dP_2 =
//      -lambda dP_1: one product), dS_c^T = P_c^T (dP_c^T - D_c), dV += (P_1 - lambda P_2)^T dA,
//      dK_c += dS_c^T Q_c, all in fp32 registers; dS_c^T goes to shared memory, and after one
//      barrier the warps split dQ_c += dS_c K_c (16 rows of one component each) and add it to the
//      fp32 dQ accumulator: with red.global.add (default: one split per key block), or, when
//      BackwardParams::deterministic is set, into the split's own buffer with plain adds (each
//      element belongs to one thread of one block, so the order is fixed). dK_c (times s) and
//      dV of the block are written once, in the element type: the group's heads are summed in
//      registers, in head order. 16-bit operands: P_1 - lambda P_2, dS_c and dA are rounded to
//      the element type before their products (as the forward rounds P), so with f16 they must
//      stay below 65504 in magnitude.
//   3. BwdDqConvertKernel: dQ_c = s x (the splits' accumulators summed in split order), in the
//      element type, into the caller's strided dq1, dq2.
//   4. BwdFinishKernel (one block): dgamma, dbeta and the dlambda sums from the prepass partials
//      in block order, and from dlambda the four vector gradients (V1).
// Every sum but the atomic dQ one has a fixed order: with the deterministic option the gradients
// are bitwise reproducible run to run on a given device (the split count follows the number of
// SMs).
//
// Head dims: every head dim of the forward. At d > 64 the main kernel runs as several launches
// (backward_main_parts: dK_1, dK_2 and dV of 16 keys would hold more fp32 registers per thread
// than there are): part 1 accumulates dV, the others dK_c and dQ_c (both components, or one each
// for V1 at d = 128), each recomputing S_c^T and P. The two-pass forward of those head dims does
// not save O_2; the backward then takes the BwdO2DotKernel path (saved.o2 null).
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>

#include "diffattn/core/dtype.hpp"
#include "diffattn/core/lambda.hpp"
#include "diffattn/core/mask.hpp"
#include "diffattn/core/params.hpp"
#include "diffattn/core/status.hpp"
#include "diffattn/core/validate.hpp"
#include "diffattn/cuda/dispatch.hpp"
#include "diffattn/cuda/detail/tile_loader.hpp"
#include "diffattn/cuda/detail/warp_mma.hpp"
#include "diffattn/simt/atomic.hpp"
#include "diffattn/simt/math.hpp"
#include "diffattn/simt/reduce.hpp"
#include "diffattn/simt/smem.hpp"
#include "diffattn/simt/thread.hpp"
#include "diffattn/simt/warp.hpp"

DIFFATTN_NAMESPACE_BEGIN
namespace cuda {

/// The head dims the CUDA backward is built for: every head dim of the forward (multiples of 16
/// up to 128).
constexpr bool backward_head_dim_supported(int head_dim) { return head_dim <= 128; }

/// Launches of the main kernel (BwdMainKernel's Part): 1 (Part 0: everything) at d <= 64; at
/// d > 64, part 1 accumulates dV and the rest dK_c and dQ_c: 2 launches (Part 1, Part 2: both
/// components) at d = 96 and for V2, 3 (Parts 1, 3, 4: one component each) for V1 at d = 128.
/// One warp's accumulators for its 16 keys are dV (16 x dv) and dK_c (16 x d, two for V1): fp32
/// registers per thread (dv + 2d) / 2 = 128 at d = 64 V1 (one launch fits, 255 registers) and
/// 192 / 256 at d = 96 / 128. Split, part 1 recomputes S_1^T, S_2^T and P: V1 24 N S d FLOPs in
/// place of 20 (docs/SPEC.md), 28 with three launches (dP^T twice). What was measured (ptxas, nvcc
/// 13.0, sm_80 / sm_90): d = 128 V1 in two launches spilled 16 / 12 B in part 2 (dK_1, dK_2: 128
/// registers of accumulators), in three none; V2 in one launch spilled at d = 96 (32 B sm_90) and
/// d = 128 (28 B sm_80), in two none.
constexpr int backward_main_parts(int head_dim, bool v2) { return head_dim <= 64 ? 1 : (!v2 && head_dim > 96 ? 3 : 2); }

/// Keys per block of the main kernel: 64 (4 warps), or 32 (2 warps) for V1 at d > 64, whose K_1, K_2, V (2d) and two stages of Q_1, Q_2, dA tiles would not fit 99 KiB of
/// shared memory at 64 keys (d = 128: 110 KB at 64 keys, 73 KB at 32).
constexpr int default_bwd_block_n(int head_dim, bool v2) { return !v2 && head_dim > 64 ? 32 : 64; }

/// Query rows per tile of the backward's main kernel, from ptxas's register report (nvcc 13.0,
/// sm_80 / sm_90; no GPU has timed it yet). Each warp holds dV (16 x dv) and dK_c (16 x d) of
/// its 16 keys in fp32 registers for the whole block, plus S_1^T, S_2^T and dP^T (16 x BlockM)
/// per tile. d = 64: 16 rows fit (V1 255 / 255 registers, V2 229 / 168), 32 rows spill (V1 88
/// bytes on sm_80, V2 24 on sm_90); d = 32: 32 rows fit (V1 255 / 254, V2 230 / 236), 64 rows
/// spill (V1 136 / 64 bytes).
constexpr int default_bwd_block_m(int head_dim) { return head_dim >= 64 ? 16 : 32; }

/// Configuration of the fused backward.
/// @tparam F        16-bit element format; math is fp32.
/// @tparam HeadDim  d (multiple of 16, at most 64).
/// @tparam V2       DIFF V2 (one K, V of d channels, lambda per row from the logits).
/// @tparam BlockN   keys per block of the main kernel, 16 per warp.
/// @tparam BlockM   query rows per tile streamed past the keys (and rows per prepass block).
template <simt::fmt16 F, int HeadDim, bool V2 = false, int BlockN = default_bwd_block_n(HeadDim, V2),
          int BlockM = default_bwd_block_m(HeadDim)>
struct BackwardTraits {
  static constexpr simt::fmt16 kFmt = F;
  using Elem = std::conditional_t<F == simt::fmt16::f16, half, bfloat16>;
  static constexpr DType kDType = F == simt::fmt16::f16 ? DType::f16 : DType::bf16;
  static constexpr bool kV2 = V2;
  static constexpr int kHeadDim = HeadDim;
  static constexpr int kValueDim = V2 ? HeadDim : 2 * HeadDim;
  static constexpr int kKComps = V2 ? 1 : 2;  // K tiles (and dK accumulators)
  static constexpr int kBlockN = BlockN;
  static constexpr int kBlockM = BlockM;
  static constexpr int kWarps = BlockN / 16;
  static constexpr int kThreads = kWarps * 32;
  static_assert(HeadDim % 16 == 0 && HeadDim >= 16 && backward_head_dim_supported(HeadDim),
                "backward head dim: a multiple of 16 in [16, 128]");
  static_assert(BlockN % 16 == 0 && BlockN >= 32 && BlockN <= 128, "BlockN: 16 keys per warp, 2 to 8 warps");
  static_assert(BlockM % 16 == 0 && BlockM >= 16 && BlockM <= 64, "BlockM: a multiple of 16 rows, at most 64");

  static constexpr int kPad = 8;  // 16 bytes per shared row: conflict-free ldmatrix (as the forward)
  static constexpr int kQStride = kHeadDim + kPad;   // Q_c and K_c rows
  static constexpr int kVStride = kValueDim + kPad;  // V and dA rows
  static constexpr int kDsStride = kBlockM + kPad;   // dS_c^T rows (one per key)
  static constexpr int kStat = 8;                    // floats per row statistic record (32 bytes)

  // shared memory, in 16-bit elements: K_c | V | two stages of (Q_1 | Q_2 | dA | stats) | dS_c^T
  static constexpr int kKTile = kBlockN * kQStride;
  static constexpr int kVTile = kBlockN * kVStride;
  static constexpr int kQTile = kBlockM * kQStride;
  static constexpr int kDaTile = kBlockM * kVStride;
  static constexpr int kStatTile = kBlockM * kStat * 2;  // floats as pairs of elements
  static constexpr int kStageElems = 2 * kQTile + kDaTile + kStatTile;
  static constexpr int kOffK = 0;
  static constexpr int kOffV = kKComps * kKTile;
  static constexpr int kOffStage = kOffV + kVTile;
  static constexpr int kOffDs = kOffStage + 2 * kStageElems;
  static constexpr int kSmemElems = kOffDs + 2 * kBlockN * kDsStride;
  static constexpr int kSmemBytes = kSmemElems * 2;
  static_assert(kSmemBytes <= 99 * 1024, "backward shared memory above 99 KiB (sm_86/89 parts): shrink the tiles");
  static_assert((kOffV * 2) % 16 == 0 && (kOffStage * 2) % 16 == 0 && (kStageElems * 2) % 16 == 0 &&
                    (kOffDs * 2) % 16 == 0 && (kQTile * 2) % 16 == 0 && (kDaTile * 2) % 16 == 0,
                "shared tiles must start 16-byte aligned");

  // fragment counts per warp and tile
  static constexpr int kSTiles = kBlockM / 8;      // n8 tiles of S^T (16 keys x BlockM rows)
  static constexpr int kQKSteps = kHeadDim / 16;   // k-steps of K Q^T
  static constexpr int kDPSteps = kValueDim / 16;  // k-steps of V dA^T
  static constexpr int kMSteps = kBlockM / 16;     // k-steps over rows (dV, dK)
  static constexpr int kNSteps = kBlockN / 16;     // k-steps over keys (dQ)
  static constexpr int kDTiles = kHeadDim / 8;     // n8 tiles of dK_c and dQ_c
  static constexpr int kVTiles = kValueDim / 8;    // n8 tiles of dV
  // dQ work per query tile: (component, 16 rows) tiles, each cut into kDqCols column parts so
  // that every warp has one when there are fewer tiles than warps
  static constexpr int kMainParts = backward_main_parts(HeadDim, V2);
  static constexpr int kDqComps = kMainParts == 3 ? 1 : 2;  // components of one launch's dQ
  static constexpr int kDqRowTiles = kDqComps * (kBlockM / 16);
  static constexpr int kDqColsWant = kWarps > kDqRowTiles ? kWarps / kDqRowTiles : 1;
  // (and into at least ceil(kDTiles / 4) parts: a unit's accumulators stay at 4 n8 tiles, 16
  // registers, beside the 16 x d dK_c ones; it binds only at d > 64, where 8 spilled at d = 96)
  static constexpr int kDqColsFit = kDTiles / kDqColsWant >= 2 ? kDqColsWant : kDTiles / 2;
  static constexpr int kDqCols = kDqColsFit > (kDTiles + 3) / 4 ? kDqColsFit : (kDTiles + 3) / 4;
  static constexpr int kDqTiles = kDqRowTiles * kDqCols;
  static constexpr int kDqNTiles = kDTiles / kDqCols;  // n8 tiles of one dQ work unit
  static_assert(kDTiles % kDqCols == 0 && kDqNTiles % 2 == 0, "dQ column parts of whole n8 tile pairs");
  static_assert(kSTiles % 2 == 0 && kDTiles % 2 == 0 && kVTiles % 2 == 0, "fragments come in pairs of n8 tiles");

  // prepass: one warp per row at a time, 4 warps
  static constexpr int kPreWarps = 4;
  static constexpr int kPreThreads = 32 * kPreWarps;
  static constexpr int kPrePerLane = (kValueDim + 31) / 32;
  static constexpr int kPartFloats = 1 + 2 * kValueDim;  // dlambda, dgamma[dv], dbeta[dv]

  // O_2-less dot kernel (BwdO2DotKernel): 4 warps of 16 query rows, key tiles of kDotKeys;
  // shared: Q_2 and dA of the 64 rows (read once into registers), then two stages of K_2 and V.
  static constexpr int kDotWarps = !V2 && HeadDim > 96 ? 2 : 4;  // d = 128 V1: 64 rows do not fit 99 KiB
  static constexpr int kDotThreads = 32 * kDotWarps;
  static constexpr int kDotRows = 16 * kDotWarps;
  static constexpr int kDotKeys = HeadDim > 64 ? 32 : 64;  // d > 64: 64-key stages do not fit 99 KiB
  static constexpr int kDotNTiles = kDotKeys / 8;
  static constexpr int kDotOffDa = kDotRows * kQStride;
  static constexpr int kDotOffStage = kDotOffDa + kDotRows * kVStride;
  static constexpr int kDotStageElems = kDotKeys * (kQStride + kVStride);
  static constexpr int kDotOffRowDot = kDotOffStage + 2 * kDotStageElems;  // kDotRows floats
  static constexpr int kDotSmemBytes = kDotOffRowDot * 2 + kDotRows * 4;
  static_assert(kDotSmemBytes <= 99 * 1024, "dot kernel shared memory above 99 KiB");
  static_assert(kDotRows % kBlockM == 0, "a dot block covers whole prepass blocks");

  // ---- per-tile instruction counts of the main kernel's query-tile loop (see LoopCounts) ------
  // One warp, one tile of kBlockM query rows (LoopCounts::keys holds the rows per tile here).
  // mma: S_c^T = K_c Q_c^T 2 x kQKSteps x kSTiles, dP^T = V dA^T kDPSteps x kSTiles, dV kMSteps x
  // kVTiles, dK_c 2 x kMSteps x kDTiles, dQ kNSteps x kDqNTiles per work unit (warp 0 has
  // kDqUnits of them). ldmatrix.x4: mma_abt loads one A fragment (this warp's K or V rows, again
  // every tile) and kSTiles / 2 B pairs per k-step; mma_pv kNTiles / 2 per k-step; a dQ unit
  // kNSteps transposed dS_c^T fragments more. exp2: two per score element, 4 kSTiles per thread.
  // V2: S_1^T and S_2^T take the same K A fragments, loaded once per component (identical
  // ldmatrix, same address, no store between): ptxas merges each pair for sm_90 (nvcc 13.0) and
  // keeps both for sm_80, so the count depends on `sm`, the target's SM number (SASS model reading).
  // The SASS model (bench/cuda/sass_model.py, ctest cuda_sass_model) checks them.
  static constexpr int kDqUnits = (kDqTiles + kWarps - 1) / kWarps;
  // `part`: BwdMainKernel's Part: 0 the one launch; 1 dV alone (S_c^T, P, dV); 2 all but dV
  // (S_c^T, dP^T, dS_c, dK_c, dQ_c); 3 and 4 the same for component 1 or 2 alone.
  static constexpr LoopCounts loop_counts(int, int sm = 80, int part = 0) {
    const bool dv = part <= 1, dk = part != 1;
    const int nc = part >= 3 ? 1 : 2;  // components of S^T (and of dS, dK, dQ)
    return LoopCounts{kBlockM,
                      nc * kQKSteps * kSTiles + (dv ? kMSteps * kVTiles : 0) +
                          (dk ? kDPSteps * kSTiles + nc * kMSteps * kDTiles + kDqUnits * kNSteps * kDqNTiles : 0),
                      (kV2 && sm >= 90 ? kQKSteps * (1 + kSTiles) : nc * kQKSteps * (1 + kSTiles / 2)) +
                          (dv ? kMSteps * (kVTiles / 2) : 0) +
                          (dk ? kDPSteps * (1 + kSTiles / 2) + nc * kMSteps * (kDTiles / 2) +
                                    kDqUnits * kNSteps * (1 + kDqNTiles / 2)
                              : 0),
                      nc * 4 * kSTiles};
  }
};

/// Where the backward's buffers lie in its device workspace (bytes from its start), and how the
/// key blocks are split. Built by make_backward_plan (host), read by every kernel.
struct BackwardPlan {
  std::int64_t npad = 0;     ///< seqlen_q rounded up to kBlockM (rows of dA and the statistics)
  std::int64_t nkb = 0;      ///< key blocks of kBlockN
  std::int64_t nsplit = 1;   ///< dQ accumulators (1 with atomics; splits of the key blocks else)
  std::int64_t kb_per_split = 1;
  std::int64_t nblk1 = 0;    ///< prepass blocks (B H npad / kBlockM)
  bool atomic_dq = true;
  std::size_t off_da = 0, off_stat = 0, off_dq = 0, off_part = 0, bytes = 0;
};

/// Everything the four kernels read, by value. Built by make_backward_args().
struct BackwardArgs {
  ConstTensorRef q1, q2, k1, k2, v_lo, v_hi, dout, logits;
  std::int64_t batch, seqlen_q, seqlen_k, heads, n_rep, kv_heads, head_dim;
  float scale, scale_log2, out_scale, lambda_init, eps;
  RowMask mask;
  const float *lq1, *lk1, *lq2, *lk2;
  bool lambda_per_head;
  int norm_kind;
  const float *gamma, *beta;
  const float *lse1, *lse2, *attn, *o2, *rstd, *mean;  // saved
  TensorRef dq1, dq2, dk1, dk2, dv_lo, dv_hi, dlogits;
  float *dlq1, *dlk1, *dlq2, *dlk2, *dgamma, *dbeta;
  BackwardPlan plan;
  std::uint16_t* da;  ///< [B, H, npad, dv] dA in the element type
  float* stat;        ///< [B, H, npad, kStat]: lse1, lse2 (base 2, +inf: sees nothing), D1, D2, lambda
  float* dq;          ///< [nsplit, 2, B, H, N, d] fp32 dQ accumulators
  float* part;        ///< [nblk1, 1 + 2 dv] prepass partial sums
};

template <class Traits>
BackwardPlan make_backward_plan(const Params& p, bool deterministic, int sm_count) {
  using T = Traits;
  BackwardPlan pl;
  pl.npad = (p.seqlen_q + T::kBlockM - 1) / T::kBlockM * T::kBlockM;
  pl.nkb = (p.seqlen_k + T::kBlockN - 1) / T::kBlockN;
  pl.atomic_dq = !deterministic;
  if (deterministic) {
    // about two blocks per SM, each over a run of key blocks with its own dQ buffer, none empty
    // (want >= 1; nkb >= 1 since validation requires S >= 1)
    const std::int64_t groups = p.batch * p.kv_heads;
    const std::int64_t want = (2 * static_cast<std::int64_t>(sm_count > 0 ? sm_count : 1) + groups - 1) / groups;
    const std::int64_t splits = want < pl.nkb ? want : pl.nkb;
    pl.kb_per_split = (pl.nkb + splits - 1) / splits;
    pl.nsplit = (pl.nkb + pl.kb_per_split - 1) / pl.kb_per_split;
  }
  pl.nblk1 = p.batch * p.heads * (pl.npad / T::kBlockM);
  auto align = [](std::size_t n) { return (n + 255) / 256 * 256; };
  const std::size_t rows = static_cast<std::size_t>(p.batch * p.heads * pl.npad);
  std::size_t off = 0;
  pl.off_da = off; off += align(rows * T::kValueDim * 2);
  pl.off_stat = off; off += align(rows * T::kStat * 4);
  pl.off_dq = off;
  off += align(static_cast<std::size_t>(pl.nsplit) * 2 * static_cast<std::size_t>(p.batch * p.heads * p.seqlen_q) *
               T::kHeadDim * 4);
  pl.off_part = off; off += align(static_cast<std::size_t>(pl.nblk1) * T::kPartFloats * 4);
  pl.bytes = off;
  return pl;
}

inline BackwardArgs make_backward_args(const BackwardParams& bp, const BackwardPlan& pl, void* workspace) {
  const Params& p = bp.fwd;
  BackwardArgs a{};
  a.q1 = p.q1; a.q2 = p.q2; a.k1 = p.k1; a.k2 = p.key2(); a.v_lo = p.v_lo; a.v_hi = p.v_hi;
  a.dout = bp.dout; a.logits = p.lambda.logits;
  a.batch = p.batch; a.seqlen_q = p.seqlen_q; a.seqlen_k = p.seqlen_k; a.heads = p.heads;
  a.n_rep = p.n_rep(); a.kv_heads = p.kv_heads; a.head_dim = p.head_dim;
  a.scale = static_cast<float>(p.scale());
  a.scale_log2 = static_cast<float>(p.scale() * 1.4426950408889634);
  a.out_scale = static_cast<float>(p.out_scale());
  a.lambda_init = p.is_v2() ? 0.f : static_cast<float>(p.lambda.lambda_init);
  a.eps = static_cast<float>(p.norm.eps);
  a.mask = make_row_mask(p);
  a.lq1 = static_cast<const float*>(p.lambda.lq1); a.lk1 = static_cast<const float*>(p.lambda.lk1);
  a.lq2 = static_cast<const float*>(p.lambda.lq2); a.lk2 = static_cast<const float*>(p.lambda.lk2);
  a.lambda_per_head = p.lambda.per_head;
  a.norm_kind = static_cast<int>(p.norm_kind());
  a.gamma = static_cast<const float*>(p.norm.gamma);
  a.beta = static_cast<const float*>(p.norm.beta);
  const SavedTensors& s = bp.saved;
  a.lse1 = static_cast<const float*>(s.lse1); a.lse2 = static_cast<const float*>(s.lse2);
  a.attn = static_cast<const float*>(s.attn); a.o2 = static_cast<const float*>(s.o2);
  a.rstd = static_cast<const float*>(s.rstd); a.mean = static_cast<const float*>(s.mean);
  const Gradients& g = bp.grad;
  a.dq1 = g.dq1; a.dq2 = g.dq2; a.dk1 = g.dk1; a.dk2 = g.dk2; a.dv_lo = g.dv_lo; a.dv_hi = g.dv_hi;
  a.dlogits = g.dlogits;
  a.dlq1 = static_cast<float*>(g.dlq1); a.dlk1 = static_cast<float*>(g.dlk1);
  a.dlq2 = static_cast<float*>(g.dlq2); a.dlk2 = static_cast<float*>(g.dlk2);
  a.dgamma = static_cast<float*>(g.dgamma); a.dbeta = static_cast<float*>(g.dbeta);
  a.plan = pl;
  char* w = static_cast<char*>(workspace);
  a.da = reinterpret_cast<std::uint16_t*>(w + pl.off_da);
  a.stat = reinterpret_cast<float*>(w + pl.off_stat);
  a.dq = reinterpret_cast<float*>(w + pl.off_dq);
  a.part = reinterpret_cast<float*>(w + pl.off_part);
  return a;
}

namespace detail {
/// lambda of V1 head h (every thread computes it: 2d multiply-adds).
DIFFATTN_DEVICE float head_lambda(const BackwardArgs& a, std::int64_t h) {
  const std::int64_t off = a.lambda_per_head ? h * a.head_dim : 0;
  return lambda_terms<float>(a.lq1 + off, a.lk1 + off, a.lq2 + off, a.lk2 + off, a.head_dim).value(a.lambda_init);
}
}  // namespace detail

/// 1. Prepass. Grid (npad / kBlockM, B * H); block kPreThreads; shared: kPreWarps x kPartFloats floats.
template <class Traits>
struct BwdPrepassKernel {
  using T = Traits;
  static constexpr simt::fmt16 F = T::kFmt;
  static constexpr int kDv = T::kValueDim, kPL = T::kPrePerLane;

  DIFFATTN_DEVICE void operator()(BackwardArgs a) const {
    const unsigned tid = simt::thread_rank();
    const int lane = static_cast<int>(tid & 31u), warp = static_cast<int>(tid >> 5);
    const std::int64_t rb = simt::block_idx().x, bh = simt::block_idx().y;
    const std::int64_t b = bh / a.heads, h = bh % a.heads;
    const std::int64_t N = a.seqlen_q, npad = a.plan.npad;
    const bool v2 = T::kV2;
    const float lam_head = v2 ? 0.f : detail::head_lambda(a, h);
    const int nk = a.norm_kind;
    float dg[kPL], db[kPL], dlam = 0.f;
    float gam[kPL];
    DIFFATTN_UNROLL
    for (int j = 0; j < kPL; ++j) {
      dg[j] = db[j] = 0.f;
      const int c = lane + 32 * j;
      gam[j] = (a.gamma != nullptr && c < kDv) ? a.gamma[c] : 1.f;
    }
    const float inv_dv = 1.f / static_cast<float>(kDv);
    const float kLog2e = 1.4426950408889634f;
    for (int k = warp; k < T::kBlockM; k += T::kPreWarps) {
      const std::int64_t i = rb * T::kBlockM + k;
      const std::int64_t row = bh * N + i;         // [B, H, N] row of the saved tensors
      const std::int64_t prow = bh * npad + i;     // [B, H, npad] row of the workspace
      std::uint16_t* darow = a.da + prow * kDv;
      float* st = a.stat + prow * T::kStat;
      if (i >= N) {  // padding: a row that sees nothing
        DIFFATTN_UNROLL
        for (int j = 0; j < kPL; ++j) {
          const int c = lane + 32 * j;
          if (c < kDv) darow[c] = 0;
        }
        if (lane < T::kStat) st[lane] = lane < 2 ? INFINITY : 0.f;
        continue;
      }
      const std::uint16_t* dorow = static_cast<const std::uint16_t*>(a.dout.ptr) + b * a.dout.stride_b +
                                   i * a.dout.stride_t + h * a.dout.stride_h;
      const float* arow = a.attn + row * kDv;
      // without a saved O_2, <dA, O_2> is 0 here and BwdO2DotKernel adds it from LSE_2
      const float* o2row = a.o2 != nullptr ? a.o2 + row * kDv : nullptr;
      float dy[kPL], av[kPL], da[kPL];
      DIFFATTN_UNROLL
      for (int j = 0; j < kPL; ++j) {
        const int c = lane + 32 * j;
        const bool in = c < kDv;
        dy[j] = in ? a.out_scale * simt::bits16_to_float<F>(dorow[c]) : 0.f;
        av[j] = in ? arow[c] : 0.f;
      }
      if (nk == static_cast<int>(NormKind::rms)) {
        const float r = a.rstd[row];
        float mga = 0.f;
        DIFFATTN_UNROLL
        for (int j = 0; j < kPL; ++j) {
          dg[j] += dy[j] * av[j] * r;
          mga += dy[j] * gam[j] * av[j];
        }
        mga = simt::warp_allreduce<32>(mga, simt::op_sum{}) * inv_dv;
        DIFFATTN_UNROLL
        for (int j = 0; j < kPL; ++j) da[j] = r * dy[j] * gam[j] - r * r * r * mga * av[j];
      } else if (nk == static_cast<int>(NormKind::group)) {
        const float r = a.rstd[row], mu = a.mean[row];
        float mg = 0.f, mgx = 0.f;
        const int nvalid = kDv;
        DIFFATTN_UNROLL
        for (int j = 0; j < kPL; ++j) {
          const bool in = lane + 32 * j < nvalid;
          const float xh = in ? (av[j] - mu) * r : 0.f, gg = dy[j] * gam[j];
          dg[j] += dy[j] * xh;
          db[j] += dy[j];
          mg += gg;
          mgx += gg * xh;
        }
        mg = simt::warp_allreduce<32>(mg, simt::op_sum{}) * inv_dv;
        mgx = simt::warp_allreduce<32>(mgx, simt::op_sum{}) * inv_dv;
        DIFFATTN_UNROLL
        for (int j = 0; j < kPL; ++j) da[j] = r * (dy[j] * gam[j] - mg - (av[j] - mu) * r * mgx);
      } else {
        DIFFATTN_UNROLL
        for (int j = 0; j < kPL; ++j) da[j] = dy[j];
      }
      float dot = 0.f, daa = 0.f;
      DIFFATTN_UNROLL
      for (int j = 0; j < kPL; ++j) {
        const int c = lane + 32 * j;
        if (c < kDv) {
          if (o2row != nullptr) dot += da[j] * o2row[c];
          daa += da[j] * av[j];
          darow[c] = simt::float_to_bits16<F>(da[j]);
        }
      }
      dot = simt::warp_allreduce<32>(dot, simt::op_sum{});
      daa = simt::warp_allreduce<32>(daa, simt::op_sum{});
      float lam = lam_head;
      if (v2) {
        const float z = static_cast<const float*>(a.logits.ptr)[b * a.logits.stride_b + i * a.logits.stride_t +
                                                                h * a.logits.stride_h];
        lam = 1.f / (1.f + expf(-z));
        if (lane == 0)
          static_cast<float*>(a.dlogits.ptr)[b * a.dlogits.stride_b + i * a.dlogits.stride_t + h * a.dlogits.stride_h] =
              -dot * lam * (1.f - lam);
      } else {
        dlam -= dot;
      }
      if (lane < T::kStat) {
        const float l1 = a.lse1[row], l2 = a.lse2[row];
        const float v[T::kStat] = {l1 > -INFINITY ? l1 * kLog2e : INFINITY, l2 > -INFINITY ? l2 * kLog2e : INFINITY,
                                   daa + lam * dot, -lam * dot, lam, 0.f, 0.f, 0.f};
        float x = v[0];
        DIFFATTN_UNROLL
        for (int e = 1; e < T::kStat; ++e)
          if (lane == e) x = v[e];
        st[lane] = x;
      }
      // this row's dQ accumulators start at zero (every split's)
      const std::int64_t rows_all = a.batch * a.heads * N;
      for (std::int64_t s = 0; s < a.plan.nsplit; ++s)
        for (int c = 0; c < 2; ++c) {
          float* q = a.dq + ((s * 2 + c) * rows_all + row) * a.head_dim;
          for (std::int64_t x = lane; x < a.head_dim; x += 32) q[x] = 0.f;
        }
    }
    // the block's partial sums: lanes hold their channels, warps combine in warp order
    simt::smem_ptr<float> sp = simt::shared_memory<float>();
    DIFFATTN_UNROLL
    for (int j = 0; j < kPL; ++j) {
      const int c = lane + 32 * j;
      if (c < kDv) {
        sp[warp * T::kPartFloats + 1 + c] = dg[j];
        sp[warp * T::kPartFloats + 1 + kDv + c] = db[j];
      }
    }
    if (lane == 0) sp[warp * T::kPartFloats] = dlam;
    simt::syncthreads();
    float* part = a.part + (bh * (npad / T::kBlockM) + rb) * T::kPartFloats;
    for (int e = static_cast<int>(tid); e < T::kPartFloats; e += T::kPreThreads) {
      float s = 0.f;
      for (int w = 0; w < T::kPreWarps; ++w) s += sp[w * T::kPartFloats + e];
      part[e] = s;
    }
  }
};

/// 1b. Without a saved O_2 (BackwardParams::saved.o2 null): <dA_i, O_2,i> = sum over the keys j
/// row i sees of P_2(i, j) dP_1(i, j), with dP_1 = dA V^T, from LSE_2 and the rounded dA of the
/// prepass (the main kernel's operand), in place of the prepass's dot with O_2. Per block of
/// kDotRows query rows of one (b, h), after the prepass: S_2 = Q_2 K_2^T and dP_1 = dA V^T per
/// key tile (Q_2 and dA fragments in registers), the row sums in fp32, reduced over the quad
/// that shares a row. Then D_1 += lambda dot, D_2 = -lambda dot, V2's dlogits, and each
/// prepass block's dlambda partial (-sum of its rows' dots, in row order). 6 N S d more FLOPs
/// than a backward from a saved O_2 (20 N S d): the price of not keeping [B, H, N, dv] fp32.
/// Grid (ceil(npad / kDotRows), B * H); block kDotThreads; shared kDotSmemBytes.
template <class Traits>
struct BwdO2DotKernel {
  using T = Traits;
  static constexpr simt::fmt16 F = T::kFmt;
  using QLoader = detail::TileLoader<T::kDotThreads, T::kDotRows, T::kHeadDim, T::kQStride>;
  using DaLoader = detail::TileLoader<T::kDotThreads, T::kDotRows, T::kValueDim, T::kVStride>;
  using KLoader = detail::TileLoader<T::kDotThreads, T::kDotKeys, T::kHeadDim, T::kQStride>;
  using VLoader = detail::TileLoader<T::kDotThreads, T::kDotKeys, T::kValueDim, T::kVStride, !T::kV2>;

  DIFFATTN_DEVICE void operator()(BackwardArgs a) const {
    using simt::smem_ptr;
    const unsigned tid = simt::thread_rank();
    const unsigned lane = tid & 31u, warp = tid >> 5;
    const int g = static_cast<int>(lane >> 2), t = static_cast<int>(lane & 3u);
    const std::int64_t rb = simt::block_idx().x, bh = simt::block_idx().y;
    const std::int64_t b = bh / a.heads, h = bh % a.heads, kvg = h / a.n_rep;
    const std::int64_t N = a.seqlen_q, S = a.seqlen_k, npad = a.plan.npad;
    const std::int64_t m0 = rb * T::kDotRows;
    const int wrow = static_cast<int>(warp) * 16;

    const smem_ptr<std::uint16_t> smem = simt::shared_memory<std::uint16_t>();
    const smem_ptr<std::uint16_t> sQ = smem, sDa = smem + T::kDotOffDa;
    auto sK = [&](int stage) { return smem + (T::kDotOffStage + stage * T::kDotStageElems); };
    auto sV = [&](int stage) { return smem + (T::kDotOffStage + stage * T::kDotStageElems + T::kDotKeys * T::kQStride); };
    const smem_ptr<float> sRow = (smem + T::kDotOffRowDot).template cast<float>();

    // this block's rows (up to npad: rows in [N, npad) are the prepass's padding, which sees nothing)
    QLoader(detail::head_base(a.q2, b, h) + m0 * a.q2.stride_t, a.q2.stride_t, tid).load(sQ, N - m0);
    DaLoader(a.da + (bh * npad + m0) * T::kValueDim, T::kValueDim, tid).load(sDa, npad - m0);
    simt::cp_async_commit();
    simt::cp_async_wait<0>();
    simt::syncthreads();
    std::uint32_t qf[T::kQKSteps][4], daf[T::kDPSteps][4];
    detail::load_a_frags<T::kQKSteps>(qf, sQ, T::kQStride, wrow, lane);
    detail::load_a_frags<T::kDPSteps>(daf, sDa, T::kVStride, wrow, lane);

    // the two rows of this thread: visible keys [kb, ke), base-2 LSE_2 (+inf: sees nothing)
    std::int64_t kb[2], ke[2];
    float lse2[2], acc[2] = {0.f, 0.f};
    DIFFATTN_UNROLL
    for (int hr = 0; hr < 2; ++hr) {
      const std::int64_t i = m0 + wrow + g + 8 * hr;
      const bool real = i < N;
      kb[hr] = real ? a.mask.key_begin(i) : 0;
      ke[hr] = real ? a.mask.key_end(i) : 0;
      lse2[hr] = real ? a.stat[(bh * npad + i) * T::kStat + 1] : INFINITY;
    }
    // the keys any row of the block sees (key_begin and key_end are nondecreasing in i)
    const std::int64_t i_last = m0 + T::kDotRows - 1 < N - 1 ? m0 + T::kDotRows - 1 : N - 1;
    const std::int64_t k_lo = m0 < N ? a.mask.key_begin(m0) : 0, k_hi = m0 < N ? a.mask.key_end(i_last) : 0;
    const int tb = static_cast<int>(k_lo / T::kDotKeys);
    const int te = k_hi > k_lo ? static_cast<int>((k_hi + T::kDotKeys - 1) / T::kDotKeys) : tb;

    KLoader kl(detail::head_base(a.k2, b, kvg), a.k2.stride_t, tid);
    VLoader vl(detail::head_base(a.v_lo, b, kvg), a.v_lo.stride_t, tid,
               T::kV2 ? nullptr : detail::head_base(a.v_hi, b, kvg));
    kl.skip(tb);
    vl.skip(tb);
    detail::stream_key_tiles(
        tb, te,
        [&](int stage, int nb) {
          const std::int64_t j0 = static_cast<std::int64_t>(nb) * T::kDotKeys;
          kl.load(sK(stage), S - j0);
          vl.load(sV(stage), S - j0);
        },
        [&](int stage, int nb) {
          const std::int64_t j0 = static_cast<std::int64_t>(nb) * T::kDotKeys;
          float sc[T::kDotNTiles][4], dp[T::kDotNTiles][4];
          detail::mma_abt<F, T::kQKSteps, T::kDotNTiles>(
              sc, [&](int kk, std::uint32_t(&out)[4]) { for (int x = 0; x < 4; ++x) out[x] = qf[kk][x]; }, sK(stage),
              T::kQStride, lane);
          detail::mma_abt<F, T::kDPSteps, T::kDotNTiles>(
              dp, [&](int kk, std::uint32_t(&out)[4]) { for (int x = 0; x < 4; ++x) out[x] = daf[kk][x]; }, sV(stage),
              T::kVStride, lane);
          DIFFATTN_UNROLL
          for (int nt = 0; nt < T::kDotNTiles; ++nt)
            DIFFATTN_UNROLL
            for (int e = 0; e < 4; ++e) {
              const int hr = e >> 1;
              const std::int64_t j = j0 + nt * 8 + 2 * t + (e & 1);
              const float p2 = simt::exp2_approx(sc[nt][e] * a.scale_log2 - lse2[hr]);
              if (j >= kb[hr] && j < ke[hr]) acc[hr] += p2 * dp[nt][e];
            }
        });

    DIFFATTN_UNROLL
    for (int hr = 0; hr < 2; ++hr) {
      acc[hr] = simt::warp_allreduce<4>(acc[hr], simt::op_sum{});
      if (t == 0) sRow[wrow + g + 8 * hr] = acc[hr];
    }
    simt::syncthreads();
    const int r = static_cast<int>(tid);
    if (r < T::kDotRows && m0 + r < N) {
      const std::int64_t i = m0 + r;
      float* st = a.stat + (bh * npad + i) * T::kStat;
      const float dot = sRow[r], lam = st[4];
      st[2] += lam * dot;
      st[3] = -lam * dot;
      if (T::kV2)
        static_cast<float*>(a.dlogits.ptr)[b * a.dlogits.stride_b + i * a.dlogits.stride_t + h * a.dlogits.stride_h] =
            -dot * lam * (1.f - lam);
    }
    // V1: each prepass block's dlambda partial, its rows in order
    constexpr int kPreBlocks = T::kDotRows / T::kBlockM;
    if (!T::kV2 && r < kPreBlocks && m0 + r * T::kBlockM < npad) {
      float sum = 0.f;
      for (int k = 0; k < T::kBlockM; ++k)
        if (m0 + r * T::kBlockM + k < N) sum += sRow[r * T::kBlockM + k];
      a.part[(bh * (npad / T::kBlockM) + m0 / T::kBlockM + r) * T::kPartFloats] = -sum;
    }
  }
};

/// 2. Main kernel. Grid (nsplit or nkb, B * Hkv); block kThreads; shared kSmemBytes.
/// Part 0: everything of the header comment in one launch. With Traits::kMainParts > 1, Part 1
/// computes S_c^T, P_c^T and dV alone (no V tile, no dP, no dS, no dQ; grid nkb, one key block per
/// CTA in both dQ modes), then Part 2 everything but dV (kMainParts 2), or Parts 3 and 4 that for
/// component 1 and for component 2 (kMainParts 3: S_c^T, dP^T, dS_c, dK_c, dQ_c).
template <class Traits, int Part = 0>
struct BwdMainKernel {
  using T = Traits;
  static constexpr simt::fmt16 F = T::kFmt;
  static_assert(T::kMainParts == 1 ? Part == 0 : (T::kMainParts == 2 ? Part == 1 || Part == 2 : Part == 1 || Part >= 3) &&
                                                     Part <= 4,
                "Part: 0 (kMainParts 1), 1 and 2 (kMainParts 2), or 1, 3 and 4 (kMainParts 3)");
  static constexpr bool kDv = Part <= 1, kDk = Part != 1;  // what this launch accumulates
  static constexpr int kC0 = Part == 4 ? 1 : 0, kC1 = Part == 3 ? 1 : 2;  // dK / dQ components [kC0, kC1)
  static constexpr bool kNeedP1 = kDv || kC0 == 0, kNeedP2 = kDv || kC1 == 2;  // which S_c^T and P_c^T
  static_assert(!T::kV2 || Part <= 2, "V2 has one K: its dK parts are not split by component");
  // every loader keeps a general form's chunk loop rolled (TileLoader, kRolled: d = 96; K and V
  // rolled too: part 2 of V1 then takes 244 registers for sm_80 instead of 48 B of spills)
  using KLoader = detail::TileLoader<T::kThreads, T::kBlockN, T::kHeadDim, T::kQStride, false, true>;
  using VLoader = detail::TileLoader<T::kThreads, T::kBlockN, T::kValueDim, T::kVStride, !T::kV2, true>;
  using QLoader = detail::TileLoader<T::kThreads, T::kBlockM, T::kHeadDim, T::kQStride, false, true>;
  using DaLoader = detail::TileLoader<T::kThreads, T::kBlockM, T::kValueDim, T::kVStride, false, true>;
  using StatLoader = detail::TileLoader<T::kThreads, T::kBlockM, 2 * T::kStat, 2 * T::kStat, false, true>;

  DIFFATTN_DEVICE void operator()(BackwardArgs a) const {
    using simt::smem_ptr;
    const unsigned tid = simt::thread_rank();
    const unsigned lane = tid & 31u, warp = tid >> 5;
    const int g = static_cast<int>(lane >> 2), t = static_cast<int>(lane & 3u);
    const std::int64_t split = simt::block_idx().x, bg = simt::block_idx().y;
    const std::int64_t b = bg / a.kv_heads, kvg = bg % a.kv_heads;
    const std::int64_t N = a.seqlen_q, S = a.seqlen_k, npad = a.plan.npad;
    const BackwardPlan& pl = a.plan;

    const smem_ptr<std::uint16_t> smem = simt::shared_memory<std::uint16_t>();
    auto sK = [&](int c) { return smem + (T::kOffK + c * T::kKTile); };
    const smem_ptr<std::uint16_t> sV = smem + T::kOffV;
    auto sQ = [&](int stage, int c) { return smem + (T::kOffStage + stage * T::kStageElems + c * T::kQTile); };
    auto sDa = [&](int stage) { return smem + (T::kOffStage + stage * T::kStageElems + 2 * T::kQTile); };
    auto sStat = [&](int stage) {
      return (smem + (T::kOffStage + stage * T::kStageElems + 2 * T::kQTile + T::kDaTile)).template cast<float>();
    };
    auto sDs = [&](int c) { return smem + (T::kOffDs + c * T::kBlockN * T::kDsStride); };

    const int wkey = static_cast<int>(warp) * 16;  // this warp's first key in the block
    const std::int64_t rows_all = a.batch * a.heads * N;

    // part 1 writes nothing but its key block's dV: one block per CTA in either dQ mode
    const std::int64_t kb_per = kDk ? pl.kb_per_split : 1;
    const std::int64_t kb_begin = split * kb_per;
    const std::int64_t kb_end = kb_begin + kb_per < pl.nkb ? kb_begin + kb_per : pl.nkb;
    for (std::int64_t kb = kb_begin; kb < kb_end; ++kb) {
      const std::int64_t j0 = kb * T::kBlockN;
      const std::int64_t j1 = j0 + T::kBlockN < S ? j0 + T::kBlockN : S;
      if (kb != kb_begin) simt::syncthreads();  // every warp is done with the previous block's K, V
      {
        const std::uint16_t* gK[2] = {detail::head_base(a.k1, b, kvg) + j0 * a.k1.stride_t,
                                      detail::head_base(a.k2, b, kvg) + j0 * a.k2.stride_t};
        DIFFATTN_UNROLL
        for (int c = 0; c < T::kKComps; ++c) {
          KLoader kl(gK[c], c == 0 ? a.k1.stride_t : a.k2.stride_t, tid);
          kl.load(sK(c), S - j0);
        }
        if constexpr (kDk) {  // V for dP^T = V dA^T
          VLoader vl(detail::head_base(a.v_lo, b, kvg) + j0 * a.v_lo.stride_t, a.v_lo.stride_t, tid,
                     T::kV2 ? nullptr : detail::head_base(a.v_hi, b, kvg) + j0 * a.v_hi.stride_t);
          vl.load(sV, S - j0);
        }
      }

      // the accumulators this part keeps (an unused one is a single tile, never touched)
      constexpr int kVAcc = kDv ? T::kVTiles : 1, kDAcc = kDk ? T::kDTiles : 1;
      float dv_acc[kVAcc][4];
      constexpr int kKAcc = kDk ? (T::kV2 ? 1 : kC1 - kC0) : 1;  // dK_c of c in [kC0, kC1)
      float dk_acc[kKAcc][kDAcc][4];
      DIFFATTN_UNROLL
      for (int nt = 0; nt < kVAcc; ++nt)
        DIFFATTN_UNROLL
        for (int e = 0; e < 4; ++e) dv_acc[nt][e] = 0.f;
      DIFFATTN_UNROLL
      for (int c = 0; c < kKAcc; ++c)
        DIFFATTN_UNROLL
        for (int nt = 0; nt < kDAcc; ++nt)
          DIFFATTN_UNROLL
          for (int e = 0; e < 4; ++e) dk_acc[c][nt][e] = 0.f;

      // the query rows that can see a key of [j0, j1): key_end(i) > j0 and key_begin(i) < j1 (both
      // nondecreasing in i)
      std::int64_t lo = 0, hi = N;
      while (lo < hi) {
        const std::int64_t mid = lo + (hi - lo) / 2;
        if (a.mask.key_end(mid) > j0) hi = mid; else lo = mid + 1;
      }
      const std::int64_t i_lo = lo;
      hi = N;
      while (lo < hi) {
        const std::int64_t mid = lo + (hi - lo) / 2;
        if (a.mask.key_begin(mid) >= j1) hi = mid; else lo = mid + 1;
      }
      const std::int64_t i_hi = lo;
      const int mb_begin = static_cast<int>(i_lo / T::kBlockM);
      const int mb_end = i_hi > i_lo ? static_cast<int>((i_hi + T::kBlockM - 1) / T::kBlockM) : mb_begin;

      for (std::int64_t r = 0; r < a.n_rep; ++r) {
        const std::int64_t h = kvg * a.n_rep + r;
        const std::int64_t bh = b * a.heads + h;
        const float lam_head = T::kV2 ? 0.f : detail::head_lambda(a, h);
        QLoader ql[2] = {QLoader(detail::head_base(a.q1, b, h), a.q1.stride_t, tid),
                         QLoader(detail::head_base(a.q2, b, h), a.q2.stride_t, tid)};
        DaLoader dal(a.da + bh * npad * T::kValueDim, T::kValueDim, tid);
        StatLoader stl(reinterpret_cast<const std::uint16_t*>(a.stat + bh * npad * T::kStat), 2 * T::kStat, tid);
        ql[0].skip(mb_begin); ql[1].skip(mb_begin); dal.skip(mb_begin); stl.skip(mb_begin);
        if (r != 0) simt::syncthreads();  // the previous head's last tile is read by every warp

        detail::stream_key_tiles(
            mb_begin, mb_end,
            [&](int stage, int mb) {
              const std::int64_t m0 = static_cast<std::int64_t>(mb) * T::kBlockM;
              ql[0].load(sQ(stage, 0), N - m0);
              ql[1].load(sQ(stage, 1), N - m0);
              dal.load(sDa(stage), T::kBlockM);
              stl.load(smem + (T::kOffStage + stage * T::kStageElems + 2 * T::kQTile + T::kDaTile), T::kBlockM);
            },
            [&](int stage, int mb) {
              const std::int64_t m0 = static_cast<std::int64_t>(mb) * T::kBlockM;
              const smem_ptr<float> st = sStat(stage);
              // every (key, row) pair of the tile visible, or per-element masking
              const bool full = m0 + T::kBlockM <= N && j0 + T::kBlockN <= S &&
                                a.mask.key_begin(m0 + T::kBlockM - 1) <= j0 && a.mask.key_end(m0) >= j0 + T::kBlockN;
              // the edge test in 32 bits, relative to the tile (seqlens are below 2^30): key j = j0 + kr
              // and row i = m0 + col are visible iff kr < S - j0, col < N - m0 and j - i lies in the
              // band [diag - left, diag + right] of the mask (RowMask; -1: that side unbounded)
              const int rows_left = static_cast<int>(N - m0 < T::kBlockM ? N - m0 : T::kBlockM);
              const int keys_left = static_cast<int>(S - j0 < T::kBlockN ? S - j0 : T::kBlockN);
              const std::int64_t base_rel = j0 - m0;
              auto clamp32 = [](std::int64_t x) {
                return static_cast<int>(x < -(std::int64_t{1} << 31) + 1 ? -(std::int64_t{1} << 31) + 1
                                        : x > (std::int64_t{1} << 31) - 1 ? (std::int64_t{1} << 31) - 1 : x);
              };
              const int band_lo = a.mask.left < 0 ? -2147483647 : clamp32(a.mask.diag - a.mask.left - base_rel);
              const int band_hi = a.mask.right < 0 ? 2147483647 : clamp32(a.mask.diag + a.mask.right - base_rel);
              const int key_row[2] = {wkey + g, wkey + g + 8};
              // S_c^T = K_c Q_c^T (16 keys x BlockM rows), then P_c^T
              float p[2][T::kSTiles][4];
              DIFFATTN_UNROLL
              for (int c = 0; c < 2; ++c) {
                if (c == 0 ? !kNeedP1 : !kNeedP2) continue;  // (compile-time: c is unrolled)
                const int kc = T::kV2 ? 0 : c;
                detail::mma_abt<F, T::kQKSteps, T::kSTiles>(
                    p[c],
                    [&](int kk, std::uint32_t(&out)[4]) { detail::load_a_frag(out, sK(kc), T::kQStride, wkey, kk, lane); },
                    sQ(stage, c), T::kQStride, lane);
              }
              [[maybe_unused]] float dp[T::kSTiles][4];
              if constexpr (kDk)
                detail::mma_abt<F, T::kDPSteps, T::kSTiles>(
                    dp, [&](int kk, std::uint32_t(&out)[4]) { detail::load_a_frag(out, sV, T::kVStride, wkey, kk, lane); },
                    sDa(stage), T::kVStride, lane);
              [[maybe_unused]] float pt[T::kSTiles][4];  // (P_1 - lambda P_2)^T
              DIFFATTN_UNROLL
              for (int nt = 0; nt < T::kSTiles; ++nt)
                DIFFATTN_UNROLL
                for (int e = 0; e < 4; ++e) {
                  const int col = nt * 8 + 2 * t + (e & 1);
                  const float lse1 = st[col * T::kStat + 0], lse2 = st[col * T::kStat + 1];
                  const float d1 = st[col * T::kStat + 2], d2 = st[col * T::kStat + 3];
                  const float lam = T::kV2 ? static_cast<float>(st[col * T::kStat + 4]) : lam_head;
                  float p1 = kNeedP1 ? simt::exp2_approx(p[0][nt][e] * a.scale_log2 - lse1) : 0.f;
                  float p2 = kNeedP2 ? simt::exp2_approx(p[1][nt][e] * a.scale_log2 - lse2) : 0.f;
                  if (!full) {
                    const int kr = key_row[e >> 1], rel = kr - col;  // (j - i) - (j0 - m0)
                    if (col >= rows_left || kr >= keys_left || rel < band_lo || rel > band_hi) p1 = p2 = 0.f;
                  }
                  if constexpr (kDv) pt[nt][e] = p1 - lam * p2;
                  if constexpr (kDk) {
                    const float dpv = dp[nt][e];
                    p[0][nt][e] = p1 * (dpv - d1);           // dS_1^T
                    p[1][nt][e] = p2 * (-lam * dpv - d2);    // dS_2^T
                  }
                }
              // dV += (P_1 - lambda P_2)^T dA
              if constexpr (kDv) {
                std::uint32_t pa[T::kMSteps][4];
                detail::pack_a_frags<F, T::kMSteps>(pt, pa);
                detail::mma_pv<F, T::kMSteps, T::kVTiles, 1>(dv_acc, pa, dv_acc, pa, sDa(stage), T::kVStride, lane);
              }
              if constexpr (kDk) {  // (the dK / dQ parts' body, to the end of the tile; not re-indented)
              // dK_c += dS_c^T Q_c; dS_c^T to shared memory for dQ
              DIFFATTN_UNROLL
              for (int c = kC0; c < kC1; ++c) {
                std::uint32_t dsa[T::kMSteps][4];
                detail::pack_a_frags<F, T::kMSteps>(p[c], dsa);
                detail::mma_pv<F, T::kMSteps, T::kDTiles, 1>(dk_acc[T::kV2 ? 0 : c - kC0], dsa, dk_acc[0], dsa, sQ(stage, c),
                                                             T::kQStride, lane);
                const smem_ptr<std::uint32_t> ds = sDs(c).template cast<std::uint32_t>();
                DIFFATTN_UNROLL
                for (int kk = 0; kk < T::kMSteps; ++kk) {
                  // A fragment kk: [0] (key g, rows 16kk + 2t..), [1] (key g + 8), [2] (key g, rows + 8), [3]
                  DIFFATTN_UNROLL
                  for (int x = 0; x < 4; ++x) {
                    const int krow = wkey + g + 8 * (x & 1);
                    const int col = kk * 16 + 8 * (x >> 1) + 2 * t;
                    ds[(krow * T::kDsStride + col) / 2] = dsa[kk][x];
                  }
                }
              }
              simt::syncthreads();  // dS_c^T of every warp is in shared memory
              // dQ_c += dS_c K_c: warp w takes (component, 16 rows) tiles w, w + kWarps, ...
              auto dq_unit = [&](int u) {
                const int rt = u / T::kDqCols, cp = u % T::kDqCols;
                const int c = kC0 + rt / (T::kBlockM / 16), r16 = (rt % (T::kBlockM / 16)) * 16;
                const int col0 = cp * T::kDqNTiles * 8;
                std::uint32_t af[T::kNSteps][4];
                DIFFATTN_UNROLL
                for (int ks = 0; ks < T::kNSteps; ++ks) {
                  // the transpose of dS_c^T's 16 x 16 block (keys 16ks.., rows r16..) as an A fragment
                  const int krow = ks * 16 + static_cast<int>(lane % 8) + static_cast<int>(lane / 16) * 8;
                  const int col = r16 + static_cast<int>((lane / 8) % 2) * 8;
                  simt::ldmatrix_x4_trans(af[ks], sDs(c) + (krow * T::kDsStride + col));
                }
                float acc[T::kDqNTiles][4];
                DIFFATTN_UNROLL
                for (int nt = 0; nt < T::kDqNTiles; ++nt)
                  DIFFATTN_UNROLL
                  for (int e = 0; e < 4; ++e) acc[nt][e] = 0.f;
                detail::mma_pv<F, T::kNSteps, T::kDqNTiles, 1>(acc, af, acc, af, sK(T::kV2 ? 0 : c) + col0, T::kQStride,
                                                               lane);
                // the component's accumulator: the split's own with the deterministic option
                float* dq = a.dq + ((pl.atomic_dq ? 0 : split) * 2 + c) * rows_all * a.head_dim;
                DIFFATTN_UNROLL
                for (int hr = 0; hr < 2; ++hr) {
                  const std::int64_t i = m0 + r16 + g + 8 * hr;
                  if (i >= N) continue;
                  float* qrow = dq + (bh * N + i) * a.head_dim + col0;
                  DIFFATTN_UNROLL
                  for (int nt = 0; nt < T::kDqNTiles; ++nt)
                    DIFFATTN_UNROLL
                    for (int e = 0; e < 2; ++e) {
                      const float v = acc[nt][2 * hr + e];
                      float* dst = qrow + nt * 8 + 2 * t + e;
                      if (pl.atomic_dq) simt::atomic_add_f32(dst, v); else *dst += v;
                    }
                }
              };
              // warp w takes units w, w + kWarps, ...: kDqUnits on warp 0, unrolled (ptxas, nvcc 13.0:
              // no spills at d = 96 or 128 once the loaders are rolled; a branch per unit)
              DIFFATTN_UNROLL
              for (int k = 0; k < T::kDqUnits; ++k) {
                const int u = static_cast<int>(warp) + k * T::kWarps;
                if (u < T::kDqTiles) dq_unit(u);
              }
              }  // kDk
            });
      }

      // dK_c = s x acc, dV = acc: this block's keys of (b, kvg), written once
      DIFFATTN_UNROLL
      for (int hr = 0; hr < 2; ++hr) {
        const std::int64_t j = j0 + wkey + g + 8 * hr;
        if (j >= S) continue;
        DIFFATTN_UNROLL
        for (int ci = 0; ci < (kDk ? kKAcc : 0); ++ci) {
          const int c = T::kV2 ? 0 : kC0 + ci;
          const TensorRef& dk = c == 0 ? a.dk1 : a.dk2;
          std::uint16_t* row = static_cast<std::uint16_t*>(dk.ptr) + b * dk.stride_b + j * dk.stride_t + kvg * dk.stride_h;
          DIFFATTN_UNROLL
          for (int nt = 0; nt < kDAcc; ++nt)
            simt::store_global_b32(row + nt * 8 + 2 * t, simt::pack2<F>(a.scale * dk_acc[ci][nt][2 * hr],
                                                                        a.scale * dk_acc[ci][nt][2 * hr + 1]));
        }
        DIFFATTN_UNROLL
        for (int nt = 0; nt < (kDv ? kVAcc : 0); ++nt) {
          const int col = nt * 8 + 2 * t;
          const bool upper = !T::kV2 && col >= T::kHeadDim;
          const TensorRef& dv = upper ? a.dv_hi : a.dv_lo;
          std::uint16_t* row = static_cast<std::uint16_t*>(dv.ptr) + b * dv.stride_b + j * dv.stride_t + kvg * dv.stride_h;
          simt::store_global_b32(row + (upper ? col - T::kHeadDim : col),
                                 simt::pack2<F>(dv_acc[nt][2 * hr], dv_acc[nt][2 * hr + 1]));
        }
      }
    }
  }
};

/// 3. dQ_c = s x sum over splits, in the element type. Grid-stride over (c, b, h, i, x pairs).
template <class Traits>
struct BwdDqConvertKernel {
  using T = Traits;
  DIFFATTN_DEVICE void operator()(BackwardArgs a) const {
    const std::int64_t d = a.head_dim, N = a.seqlen_q;
    const std::int64_t rows_all = a.batch * a.heads * N;
    const std::int64_t pairs = 2 * rows_all * (d / 2);
    const std::int64_t stride = static_cast<std::int64_t>(simt::grid_dim().x) * simt::block_dim().x;
    for (std::int64_t e = static_cast<std::int64_t>(simt::block_idx().x) * simt::block_dim().x + simt::thread_rank();
         e < pairs; e += stride) {
      const std::int64_t x = (e % (d / 2)) * 2, rowc = e / (d / 2);
      const std::int64_t c = rowc / rows_all, row = rowc % rows_all;
      const std::int64_t i = row % N, bh = row / N, b = bh / a.heads, h = bh % a.heads;
      float s0 = 0.f, s1 = 0.f;
      for (std::int64_t s = 0; s < a.plan.nsplit; ++s) {
        const float* q = a.dq + ((s * 2 + c) * rows_all + row) * d + x;
        s0 += q[0];
        s1 += q[1];
      }
      const TensorRef& dq = c == 0 ? a.dq1 : a.dq2;
      std::uint16_t* dst = static_cast<std::uint16_t*>(dq.ptr) + b * dq.stride_b + i * dq.stride_t + h * dq.stride_h + x;
      simt::store_global_b32(dst, simt::pack2<T::kFmt>(a.scale * s0, a.scale * s1));
    }
  }
};

/// 4. dgamma, dbeta, dlambda and the lambda vector gradients (V1) from the prepass partials, in
/// block order. One block of kFinishThreads; shared: heads floats.
template <class Traits>
struct BwdFinishKernel {
  using T = Traits;
  static constexpr int kThreads = 256;
  DIFFATTN_DEVICE void operator()(BackwardArgs a) const {
    const int tid = static_cast<int>(simt::thread_rank());
    const std::int64_t nrb = a.plan.npad / T::kBlockM, H = a.heads, d = a.head_dim;
    constexpr int kDv = T::kValueDim;
    // blocks are ordered (b, h, row block)
    for (int e = tid; e < 2 * kDv; e += kThreads) {
      float* out = e < kDv ? a.dgamma : a.dbeta;
      if (out == nullptr) continue;
      float s = 0.f;
      for (std::int64_t blk = 0; blk < a.plan.nblk1; ++blk) s += a.part[blk * T::kPartFloats + 1 + e];
      out[e % kDv] = s;
    }
    if constexpr (!T::kV2) {
      simt::smem_ptr<float> dl = simt::shared_memory<float>();
      for (std::int64_t h = tid; h < H; h += kThreads) {
        float s = 0.f;
        for (std::int64_t b = 0; b < a.batch; ++b)
          for (std::int64_t rb = 0; rb < nrb; ++rb) s += a.part[((b * H + h) * nrb + rb) * T::kPartFloats];
        dl[h] = s;
      }
      simt::syncthreads();
      const std::int64_t sets = a.lambda_per_head ? H : 1;
      for (std::int64_t e = tid; e < sets * d; e += kThreads) {
        const std::int64_t set = e / d, x = e % d, off = set * d;
        float dlam = 0.f;
        if (a.lambda_per_head) {
          dlam = dl[set];
        } else {
          for (std::int64_t h = 0; h < H; ++h) dlam += dl[h];
        }
        const LambdaTerms<float> lt = lambda_terms<float>(a.lq1 + off, a.lk1 + off, a.lq2 + off, a.lk2 + off, d);
        a.dlq1[off + x] = dlam * lt.e1 * a.lk1[off + x];
        a.dlk1[off + x] = dlam * lt.e1 * a.lq1[off + x];
        a.dlq2[off + x] = -dlam * lt.e2 * a.lk2[off + x];
        a.dlk2[off + x] = -dlam * lt.e2 * a.lq2[off + x];
      }
    }
  }
};

}  // namespace cuda
DIFFATTN_NAMESPACE_END

DIFFATTN_NAMESPACE_BEGIN
namespace cuda {

/// What the CUDA backward accepts: the forward's caps with only the backward's head dims, and
/// it reads the forward's saved tensors.
inline BackendCaps backward_caps() {
  BackendCaps c = caps();
  c.name = "cuda";
  c.backward_needs_saved = true;
  c.backward_o2_optional = true;  // BwdO2DotKernel computes what the prepass reads from it
  int n = 0;
  for (int i = 0; i < 8; ++i) {
    const std::int64_t d = c.head_dims[i];
    c.head_dims[i] = 0;
    if (d > 0 && backward_head_dim_supported(static_cast<int>(d))) c.head_dims[n++] = d;
  }
  return c;
}

namespace detail {
// one entry of the configuration list (a template, so that head dims the backward is not built
// for are never instantiated)
template <simt::fmt16 Fm, int D, class Fn>
void dispatch_backward_one(DType dtype, std::int64_t head_dim, Variant variant, Fn& f, Status& res, bool& done) {
  if constexpr (backward_head_dim_supported(D)) {
    constexpr DType dt = Fm == simt::fmt16::f16 ? DType::f16 : DType::bf16;
    if (done || dtype != dt || head_dim != D) return;
    done = true;
    Status r = variant == Variant::diff_v2 ? f(BackwardTraits<Fm, D, true>{}) : f(BackwardTraits<Fm, D, false>{});
    std::swap(res, r);
  } else {
    (void)dtype, (void)head_dim, (void)variant, (void)f, (void)res, (void)done;
  }
}
}  // namespace detail

/// Calls f(BackwardTraits<fmt, d, V2>{}) for the shipped configuration of (dtype, head_dim,
/// variant), or returns `unsupported` naming what is not built.
template <class Fn>
Status dispatch_backward(DType dtype, std::int64_t head_dim, Variant variant, Fn&& f) {
  if (head_dim > 0 && !backward_head_dim_supported(static_cast<int>(head_dim)))
    return Status::Unsupported("cuda backward: head_dim " + std::to_string(head_dim) +
                               " is not built (multiples of 16 up to 128)");
  Status res = Status::Unsupported(std::string("cuda backward: no configuration built for dtype ") + dtype_name(dtype) +
                                   " and head_dim " + std::to_string(head_dim) +
                                   " (see DIFFATTN_CUDA_FORWARD_CONFIGS / the DIFFATTN_CUDA_HEAD_DIMS option)");
  bool done = false;
#define DIFFATTN_X(fmt, d) detail::dispatch_backward_one<simt::fmt16::fmt, d>(dtype, head_dim, variant, f, res, done);
  DIFFATTN_CUDA_FORWARD_CONFIGS(DIFFATTN_X)
#undef DIFFATTN_X
  return res;
}

/// What validate() cannot check for this kernel.
inline Status check_backward_support(const BackwardParams& bp) {
  const Params& p = bp.fwd;
  if (!p.is_v2() && p.v_lo.stride_t != p.v_hi.stride_t)
    return Status::Unsupported("v_lo, v_hi: the cuda backward needs V's two halves at the same token stride (got " +
                               std::to_string(p.v_lo.stride_t) + " and " + std::to_string(p.v_hi.stride_t) + ")");
  if (p.batch * p.heads > 65535) return Status::Unsupported("batch * heads must be <= 65535 for the cuda backward (grid.y)");
  if (p.seqlen_k / 16 > 2147483647 || p.seqlen_q / 16 > 2147483647)
    return Status::Unsupported("seqlen too large for the cuda backward's grid");
  return Status::Ok();
}

/// The four launches of one configuration, in stream order. `launch(grid, block, smem, kernel,
/// args)` runs one kernel and returns its status (the emulator, or a device launch on a stream).
/// The params must be valid (validate + check_backward_support) and `workspace` hold plan.bytes.
template <class Traits, class Launch>
Status run_backward_steps(const BackwardParams& bp, const BackwardPlan& pl, void* workspace, Launch&& launch) {
  using T = Traits;
  const Params& p = bp.fwd;
  const BackwardArgs a = make_backward_args(bp, pl, workspace);
  {
    const Status s = launch(simt::dim3(static_cast<unsigned>(pl.npad / T::kBlockM), static_cast<unsigned>(p.batch * p.heads)),
                            simt::dim3(T::kPreThreads), static_cast<std::size_t>(T::kPreWarps * T::kPartFloats * 4),
                            BwdPrepassKernel<T>{}, a);
    if (!s.ok()) return s;
  }
  if (a.o2 == nullptr) {
    const std::int64_t gx = (pl.npad + T::kDotRows - 1) / T::kDotRows;
    const Status s = launch(simt::dim3(static_cast<unsigned>(gx), static_cast<unsigned>(p.batch * p.heads)),
                            simt::dim3(T::kDotThreads), static_cast<std::size_t>(T::kDotSmemBytes),
                            BwdO2DotKernel<T>{}, a);
    if (!s.ok()) return s;
  }
  {
    const std::int64_t gx = pl.atomic_dq ? pl.nkb : pl.nsplit;
    const simt::dim3 block(T::kThreads);
    const simt::dim3 grid(static_cast<unsigned>(gx), static_cast<unsigned>(p.batch * p.kv_heads));
    const std::size_t smem = static_cast<std::size_t>(T::kSmemBytes);
    if constexpr (T::kMainParts > 1) {  // dV (one key block per CTA), then dK, dQ
      const Status s1 = launch(simt::dim3(static_cast<unsigned>(pl.nkb), grid.y), block, smem, BwdMainKernel<T, 1>{}, a);
      if (!s1.ok()) return s1;
      if constexpr (T::kMainParts == 2) {
        const Status s2 = launch(grid, block, smem, BwdMainKernel<T, 2>{}, a);
        if (!s2.ok()) return s2;
      } else {
        const Status s3 = launch(grid, block, smem, BwdMainKernel<T, 3>{}, a);
        if (!s3.ok()) return s3;
        const Status s4 = launch(grid, block, smem, BwdMainKernel<T, 4>{}, a);
        if (!s4.ok()) return s4;
      }
    } else {
      const Status s = launch(grid, block, smem, BwdMainKernel<T>{}, a);
      if (!s.ok()) return s;
    }
  }
  {
    const std::int64_t pairs = 2 * p.batch * p.heads * p.seqlen_q * (p.head_dim / 2);
    std::int64_t blocks = (pairs + 255) / 256;
    if (blocks > 65535) blocks = 65535;
    if (blocks < 1) blocks = 1;
    const Status s = launch(simt::dim3(static_cast<unsigned>(blocks)), simt::dim3(256), std::size_t{0},
                            BwdDqConvertKernel<T>{}, a);
    if (!s.ok()) return s;
  }
  const bool need_finish = !p.is_v2() || p.norm.gamma != nullptr || p.norm.beta != nullptr;
  if (!need_finish) return Status::Ok();
  return launch(simt::dim3(1), simt::dim3(BwdFinishKernel<T>::kThreads),
                static_cast<std::size_t>((p.heads > 0 ? p.heads : 1) * 4), BwdFinishKernel<T>{}, a);
}

}  // namespace cuda
DIFFATTN_NAMESPACE_END
