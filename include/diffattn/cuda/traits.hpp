// diffattn/cuda/traits.hpp: one traits struct per forward-kernel configuration.
//
// Every size the kernel uses is derived here and checked with static_asserts that say what to
// change. Tile sizes come from one constexpr function (default_block_n) that both the
// instantiation list and the runtime dispatch use, so they cannot drift.
#pragma once

#include <cstdint>
#include <type_traits>

#include "diffattn/core/config.hpp"
#include "diffattn/core/dtype.hpp"
#include "diffattn/simt/config.hpp"

DIFFATTN_NAMESPACE_BEGIN
namespace cuda {

/// Single pass (two online softmaxes, two (16, 2d) fp32 accumulators per warp: reads K and V
/// once, two exponentials per score pair) where the registers allow it, else two passes (one
/// accumulator; K read twice, four exponentials). Chosen by ptxas's register report for sm_80
/// and sm_90 (nvcc 13.0; no GPU was available to time both): d <= 64 fits the single pass
/// without spills (d = 64: two accumulators of 64 registers each), d = 96 and 128 do not.
constexpr bool default_single_pass(int head_dim) { return head_dim <= 64; }

// The tile sizes below are set by the SASS model (bench/cuda/sass_model.py, results in
// bench/results/sass_model.md): per configuration it counts one warp's instructions per key tile
// in the machine code and bounds the throughput by the busiest SM unit, for an H100 SXM and an
// A100 (bf16, N = S = 8192, no mask; nvcc 13.0). Candidates that spill are out. A GPU run of
// bench_cuda_forward with DIFFATTN_CUDA_TUNING (scripts/gpu_check.sh) is to confirm or replace
// them: until one has run, these are the model's choices, not measurements.

/// Query rows per block (16 per warp). 128 rows (8 warps) where the model gains: every warp still
/// reads all of K and V from shared memory, but each block's cp.async traffic (and its L2 -> SM
/// traffic) serves twice the rows. d = 64: 457 TF (H100) / 288 (A100) against 424 / 267 with 64
/// rows; d = 96: 383 / 241 against 349 / 220; d = 128: 383 / 241 against 349 / 220 (32-key pass 2
/// in both). d = 32 stays at 64 rows (issue-bound: 435 TF against 426 with 128 rows). One block of
/// 8 warps at up to 255 registers fills the register file (65280 of 65536), the same 8 warps per
/// SM as two 4-warp blocks.
constexpr int default_block_m(int head_dim) { return head_dim >= 64 ? 128 : 64; }

/// Keys per tile (of pass 2 in the two-pass form), from the model and the register report
/// (sm_80 / sm_90):
///   single pass, d = 32: 32 keys (first kernel's report: 174 / 172 registers, no spill);
///   single pass, d = 64: 16 keys (222 / 225 registers at 128 rows). 32 keys bounds higher (495
///            TF) but needs 255 registers and spills on sm_90 (8 B stores, 28 B loads).
///   two pass, d = 96: 32 keys;
///   two pass, d = 128: 32 keys (255 / 255 registers, no spill since the tile loader stopped
///            holding 64-bit addresses): Q is re-read per 32 keys instead of 16, pass 2's
///            ldmatrix per 16 keys 48 -> 40; 16 keys: 339 TF instead of 383 at 128 rows.
constexpr int default_block_n(int head_dim) {
  return head_dim <= 32 ? 32 : (head_dim <= 64 ? 16 : 32);
}

/// What one warp must execute per key tile of one key-tile loop, from the kernel's arithmetic:
/// tensor-core mma.sync (m16n8k16), ldmatrix.x4, and ex2 (MUFU) warp instructions. The SASS
/// model (bench/cuda/sass_model.py) counts the same three in the machine code of each loop's
/// steady-state path, and its ctest (label cuda-model) fails when they differ.
struct LoopCounts {
  int keys;  ///< keys per tile of this loop
  int hmma, ldsm, mufu;
};

/// Keys per tile of pass 1 of the two-pass form. Pass 1 keeps Q_1 and Q_2 in registers (no
/// accumulator is live there: 64 registers at d = 128), so its shared reads are K alone, the same
/// per key at any tile size; larger tiles only spread the per-tile fixed work (barrier, wait,
/// loop) over more keys. 32 keys keeps the pass-1 K buffers (2 stages x 2 components) within the
/// pass-2 K and V buffers they share at d = 128: 69 KiB per block, three blocks per sm_90 SM and
/// two per sm_80 SM; 64 keys would need 102 KiB, one block per sm_80 SM.
constexpr int default_block_n1(int head_dim) { return head_dim <= 128 ? 32 : 16; }

/// Keys per tile of the DIFF V2 kernel (always the single pass: its two accumulators are
/// (16, d), half of V1's, so d = 128 holds what V1's d = 64 holds). d = 128 and 96: 16 keys, as
/// V1's d = 64, whose accumulator registers they match or undercut; d <= 64: 32 keys, as V1's
/// d = 32 (two (16, 64) accumulators at most: 32 registers each). The SASS model reports these
/// configurations beside V1's (bench/results/sass_model.md).
constexpr int v2_block_n(int head_dim) { return head_dim <= 64 ? 32 : 16; }

/// Configuration of the fused forward.
///
/// @tparam F        16-bit input format (simt::fmt16::f16 or bf16); math is fp32.
/// @tparam HeadDim  d, the head dim of each Q/K component; V and out have 2d. Multiple of 16.
/// @tparam BlockM   query rows per block: 16 per warp. Default default_block_m(d).
/// @tparam BlockN   keys per tile (of pass 2 in the two-pass form). Default default_block_n(d).
/// @tparam SinglePass  the form. true: one stream of K1, K2, V tiles, two online
///   softmaxes and two accumulators P_1 V, P_2 V combined with lambda in the epilogue (also
///   yields O_2 for the backward). false: pass 1 streams K1, K2 for the row max and sum of both
///   softmaxes; pass 2 streams K1, K2, V again and accumulates (P_1 - lambda P_2) V into ONE
///   accumulator (half the registers; K read twice, four exponentials per score pair; no O_2).
///   Default default_single_pass(d).
/// @tparam BlockN1  keys per tile of pass 1 (two-pass form only). Default default_block_n1(d).
/// @tparam V2       DIFF V2 (Variant::diff_v2): both query heads of a pair against one K and V
///   tile stream (each K fragment loaded once for Q_1 K^T and Q_2 K^T), V and out of d channels,
///   lambda per row from the logits, no norm. Single pass only. See ForwardTraitsV2.
template <simt::fmt16 F, int HeadDim, int BlockM = default_block_m(HeadDim), int BlockN = default_block_n(HeadDim),
          bool SinglePass = default_single_pass(HeadDim), int BlockN1 = default_block_n1(HeadDim), bool V2 = false>
struct ForwardTraits {
  static constexpr bool kSinglePass = SinglePass;
  static constexpr bool kV2 = V2;
  static_assert(!V2 || SinglePass, "the DIFF V2 kernel is single pass");
  static constexpr simt::fmt16 kFmt = F;
  using Elem = std::conditional_t<F == simt::fmt16::f16, half, bfloat16>;
  static constexpr DType kDType = F == simt::fmt16::f16 ? DType::f16 : DType::bf16;

  static constexpr int kHeadDim = HeadDim;        // d
  static constexpr int kValueDim = V2 ? HeadDim : 2 * HeadDim;  // dv
  static constexpr int kKComps = V2 ? 1 : 2;      // K tiles per stage: K_1, K_2 (V2: one K)
  static constexpr int kBlockM = BlockM;
  static constexpr int kBlockN = BlockN;
  static constexpr int kBlockN1 = SinglePass ? BlockN : BlockN1;
  static constexpr int kWarps = BlockM / 16;
  static constexpr int kThreads = kWarps * 32;

  static_assert(HeadDim % 16 == 0, "head dim must be a multiple of 16 (the mma k-step)");
  static_assert(HeadDim >= 16 && HeadDim <= 256, "head dim must be in [16, 256]");
  static_assert(BlockM % 16 == 0 && BlockM >= 16 && BlockM <= 256,
                "BlockM must be 16 rows per warp, 1 to 16 warps");
  static_assert(BlockN % 16 == 0 && BlockN >= 16 && kBlockN1 % 16 == 0 && kBlockN1 >= 16,
                "BlockN and BlockN1 must be multiples of 16 (the P V k-step, and K fragments come in pairs)");

  // One 16-byte cp.async moves 8 elements; rows are padded by 8 elements (16 bytes) so that the
  // 8 row addresses of one ldmatrix 8x8 fall in 8 different 16-byte bank groups (row strides of
  // 144, 272, 528 bytes are 16 mod 128: conflict-free, per the SASS reading).
  static constexpr int kElemsPerChunk = 8;
  static constexpr int kPad = 8;
  static constexpr int kQStride = kHeadDim + kPad;   // elements per shared row of Q1/Q2/K1/K2
  static constexpr int kVStride = kValueDim + kPad;  // elements per shared row of V
  static_assert(kHeadDim % kElemsPerChunk == 0, "head dim must be a multiple of 8 (16-byte loads)");
  static_assert((kQStride * 2) % 16 == 0 && (kVStride * 2) % 16 == 0,
                "shared rows must stay 16-byte aligned for cp.async and ldmatrix");

  static constexpr int kStages = 2;  // double-buffered K/V tiles
  // shared memory (elements of 2 bytes): Q1 | Q2 | then either pass 2 / the single pass:
  // K[stage][comp] | V[stage], or, over the same bytes, pass 1: K[stage][comp] of BlockN1 rows
  static constexpr int kQTileElems = kBlockM * kQStride;
  static constexpr int kKTileElems = kBlockN * kQStride;
  static constexpr int kK1TileElems = kBlockN1 * kQStride;
  static constexpr int kVTileElems = kBlockN * kVStride;
  static constexpr int kOffQ1 = 0;
  static constexpr int kOffQ2 = kQTileElems;
  static constexpr int kOffK = 2 * kQTileElems;
  static constexpr int kOffV = kOffK + kStages * kKComps * kKTileElems;
  static constexpr int kMainElems = kStages * kKComps * kKTileElems + kStages * kVTileElems;
  static constexpr int kPass1Elems = SinglePass ? 0 : kStages * 2 * kK1TileElems;
  static constexpr int kSmemElems = kOffK + (kMainElems > kPass1Elems ? kMainElems : kPass1Elems);
  static constexpr int kSmemBytes = kSmemElems * 2;
  static_assert(kSmemBytes <= 163 * 1024, "shared memory exceeds sm_80's 163 KiB: shrink BlockN");

  // fragment counts per warp
  static constexpr int kSTiles = kBlockN / 8;      // n8 tiles of one S row block (16, BlockN)
  static constexpr int kSTiles1 = kBlockN1 / 8;    // the same in pass 1
  static constexpr int kQKSteps = kHeadDim / 16;   // k16 steps of Q K^T
  static constexpr int kPVSteps = kBlockN / 16;    // k16 steps of P V
  static constexpr int kOTiles = kValueDim / 8;    // n8 tiles of the accumulator (16, dv)
  static_assert(kOTiles % 2 == 0, "V fragments are loaded in pairs of n8 tiles");

  // ---- per-tile instruction counts of each key-tile loop (see LoopCounts) --------------------
  // Q K^T of one component: kQKSteps x kSTiles mma; ldmatrix: per k-step one Q fragment (none in
  // pass 1, where Q stays in registers) and kSTiles / 2 K fragment pairs. P V: kPVSteps x kOTiles
  // mma and kOTiles / 2 V fragment pairs per k-step, loaded once for both products in the single
  // pass. exp2: 4 kSTiles scores per thread and component; pass 1 adds 2 rescale factors per
  // component and tile (lane-local maxima move often); the single pass rescales lazily, in a
  // branch off the steady-state path.
  static constexpr int kQKHmma = kQKSteps * kSTiles;
  static constexpr int kQKLdsm = kQKSteps * (1 + kSTiles / 2);
  static constexpr int kPVHmma = kPVSteps * kOTiles;
  static constexpr int kPVLdsm = kPVSteps * (kOTiles / 2);
  static constexpr int kLoops = SinglePass ? 1 : 2;  ///< key-tile loops, in program order
  // V2: one K fragment pair per k-step serves both Q_1 K^T and Q_2 K^T
  static constexpr int kQKLdsmV2 = kQKSteps * (2 + kSTiles / 2);
  static constexpr LoopCounts loop_counts(int loop) {
    return V2 ? LoopCounts{kBlockN, 2 * kQKHmma + 2 * kPVHmma, kQKLdsmV2 + kPVLdsm, 2 * 4 * kSTiles}
           : SinglePass ? LoopCounts{kBlockN, 2 * kQKHmma + 2 * kPVHmma, 2 * kQKLdsm + kPVLdsm, 2 * 4 * kSTiles}
           : loop == 0 ? LoopCounts{kBlockN1, 2 * kQKSteps * kSTiles1, 2 * kQKSteps * (kSTiles1 / 2),
                                    2 * (4 * kSTiles1 + 2)}
                       : LoopCounts{kBlockN, 2 * kQKHmma + kPVHmma, 2 * kQKLdsm + kPVLdsm, 2 * 4 * kSTiles};
  }
};

/// The DIFF V2 configuration of (F, d): single pass, v2_block_n(d) keys per tile.
template <simt::fmt16 F, int HeadDim, int BlockM = default_block_m(HeadDim), int BlockN = v2_block_n(HeadDim)>
using ForwardTraitsV2 = ForwardTraits<F, HeadDim, BlockM, BlockN, true, BlockN, true>;

}  // namespace cuda
DIFFATTN_NAMESPACE_END
