// diffattn/simt/layout.hpp: which matrix element each lane holds in each fragment register.
//
// From the PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating point type" and
// "Warp-level matrix load instruction: ldmatrix". g = lane >> 2 (groupID), t = lane % 4
// (threadID_in_group). A 32-bit register holds two 16-bit elements; the lower 16 bits hold the
// element of lower index i (f16 and bf16 alike). Element index i counts 16-bit halves across the
// registers: element i lives in register i / 2, half i % 2.
//
// These functions are what kernels use to place fragments (epilogue stores, masking by
// coordinate) and what the emulator uses to compute mma. The tests check them against formulas
// written independently from the ISA text, and the layout probe checks the emulator against
// dumps taken on a GPU (tests/simt/golden/).
#pragma once

#include "diffattn/simt/config.hpp"

DIFFATTN_NAMESPACE_BEGIN
namespace simt {

/// Row and column of a fragment element.
struct frag_coord {
  int row;
  int col;
};

/// A operand of mma.m16n8k16 (16 x 16, row-major "row"): element i in [0, 8) of a0..a3.
DIFFATTN_HD constexpr frag_coord mma_a_coord(int lane, int i) {
  return {(lane >> 2) + 8 * ((i >> 1) & 1), 2 * (lane & 3) + (i & 1) + 8 * (i >= 4 ? 1 : 0)};
}
/// B operand of mma.m16n8k16 (16 x 8, K x N, "col"): element i in [0, 4) of b0..b1.
/// row = k, col = n.
DIFFATTN_HD constexpr frag_coord mma_b_coord(int lane, int i) {
  return {2 * (lane & 3) + (i & 1) + 8 * (i >= 2 ? 1 : 0), lane >> 2};
}
/// C and D (16 x 8, f32): element i in [0, 4) of c0..c3 (one f32 per register).
DIFFATTN_HD constexpr frag_coord mma_c_coord(int lane, int i) {
  return {(lane >> 2) + 8 * (i >= 2 ? 1 : 0), 2 * (lane & 3) + (i & 1)};
}

/// ldmatrix .m8n8 .b16, matrix j (register j): the lane whose row address supplies row r of
/// matrix j is 8 * j + r.
DIFFATTN_HD constexpr int ldmatrix_row_provider(int j, int r) { return 8 * j + r; }
/// ldmatrix .m8n8 .b16 without .trans: half h in [0, 2) of the register a lane receives holds
/// element (row, col) of the 8 x 8 matrix as stored (row = the row address index).
DIFFATTN_HD constexpr frag_coord ldmatrix_coord(int lane, int h) {
  return {lane >> 2, 2 * (lane & 3) + h};
}
/// ldmatrix .m8n8 .trans .b16: half h of the register holds stored element (row, col) =
/// (2 * (lane % 4) + h, lane / 4), i.e. the lane gets column lane / 4.
DIFFATTN_HD constexpr frag_coord ldmatrix_trans_coord(int lane, int h) {
  return {2 * (lane & 3) + h, lane >> 2};
}

}  // namespace simt
DIFFATTN_NAMESPACE_END
