// Fragment layouts and shuffle semantics written out independently of the library
// (simt/layout.hpp, emulator), phrased as in the PTX ISA text ("Matrix Fragments for
// mma.m16n8k16 with floating point type", "ldmatrix", "shfl.sync") and the CUDA programming
// guide (__shfl_*_sync with width). Tests compare the emulator with these.
#pragma once

namespace isa {

struct RC {
  int row, col;
};

inline int group_id(int lane) { return lane >> 2; }
inline int thread_in_group(int lane) { return lane % 4; }

// A, .row, f16/bf16: a0..a7 (a pair per .f16x2 register).
inline RC mma_a(int lane, int i) {
  RC p;
  if (i == 0 || i == 1 || i == 4 || i == 5) {
    p.row = group_id(lane);
  } else {
    p.row = group_id(lane) + 8;
  }
  if (i < 4) {
    p.col = thread_in_group(lane) * 2 + (i & 0x1);
  } else {
    p.col = thread_in_group(lane) * 2 + (i & 0x1) + 8;
  }
  return p;
}
// B, .col: b0..b3; row = k, col = n.
inline RC mma_b(int lane, int i) {
  RC p;
  p.row = i < 2 ? thread_in_group(lane) * 2 + (i & 0x1) : thread_in_group(lane) * 2 + (i & 0x1) + 8;
  p.col = group_id(lane);
  return p;
}
// C/D, f32: c0..c3.
inline RC mma_c(int lane, int i) {
  RC p;
  p.row = i < 2 ? group_id(lane) : group_id(lane) + 8;
  p.col = thread_in_group(lane) * 2 + (i & 0x1);
  return p;
}
// ldmatrix .m8n8 .b16: lane receives row lane/4, elements 2*(lane%4) and +1 of each matrix.
inline RC ldm(int lane, int h) { return {lane / 4, 2 * (lane % 4) + h}; }
// .trans: the matrix is transposed on the way: the lane receives column lane/4.
inline RC ldm_trans(int lane, int h) { return {2 * (lane % 4) + h, lane / 4}; }

// Source lane of a shuffle (CUDA semantics), or the caller itself when out of its segment.
inline int shfl_src(int mode, int lane, int arg, int width) {
  const int seg_start = (lane / width) * width;
  switch (mode) {
    case 0: return seg_start + ((arg % width) + width) % width;  // idx
    case 1: return lane % width >= arg ? lane - arg : lane;       // up
    case 2: return lane % width + arg < width ? lane + arg : lane;  // down
    default: {                                                    // xor
      const int src = lane ^ arg;
      return src >= seg_start + width ? lane : src;
    }
  }
}

}  // namespace isa
