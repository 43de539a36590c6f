// The layout probe: unique integer ids through every ldmatrix, mma and shuffle variant; each
// lane writes what it received. The same kernel runs on a GPU (probe_layouts.cu built by nvcc)
// and under the emulator; both print the same text format (probe_dump), so the GPU's dump can
// be committed as a golden file (tests/simt/golden/) and compared with the emulator bit for bit.
//
// Format: a header line, then one line per (variant, lane): "<variant> <lane> <words>", the
// 32-bit words in hex (f32 results as their bit patterns).
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>

#include "diffattn/simt/simt.hpp"

namespace simt_test {

namespace simt = diffattn::simt;

struct ProbeVariant {
  const char* name;
  int words;  // per lane
};

// Shuffle variants: (mode, arg, width); mode 0 idx (arg = multiplier m: source lane m*lane+1),
// 1 up, 2 down, 3 xor. A function rather than an array so that device code can read it.
struct ShflCase {
  int mode, arg, width;
};
inline constexpr int kNumShfl = 19;
DIFFATTN_HD constexpr ShflCase shfl_case(int i) {
  const ShflCase t[kNumShfl] = {{3, 1, 32}, {3, 2, 32}, {3, 4, 32}, {3, 8, 32}, {3, 16, 32},
                                {3, 1, 4},  {3, 2, 4},  {3, 4, 4},  {3, 8, 16}, {0, 7, 32},
                                {0, 5, 8},  {0, 3, 16}, {2, 1, 32}, {2, 5, 32}, {2, 16, 32},
                                {2, 2, 8},  {1, 1, 32}, {1, 5, 32}, {1, 3, 16}};
  return t[i];
}
inline std::string shfl_name(int i) {
  static const char* modes[] = {"idx_m", "up_", "down_", "xor_"};
  const ShflCase c = shfl_case(i);
  return std::string("shfl_") + modes[c.mode] + std::to_string(c.arg) + "_w" +
         std::to_string(c.width);
}

inline constexpr ProbeVariant kLdmVariants[] = {
    {"ldmatrix_x1", 1},       {"ldmatrix_x2", 2},       {"ldmatrix_x4", 4},
    {"ldmatrix_x1_trans", 1}, {"ldmatrix_x2_trans", 2}, {"ldmatrix_x4_trans", 4},
};
// mma variants, for f16 and bf16 each: A probe (8 words: two mma with B selecting k = n and
// k = n + 8), B probe (4 words: A = identity), C/D probe (4 words).
inline constexpr ProbeVariant kMmaVariants[] = {
    {"mma_f16_a", 8}, {"mma_f16_b", 4}, {"mma_f16_cd", 4},
    {"mma_bf16_a", 8}, {"mma_bf16_b", 4}, {"mma_bf16_cd", 4},
};

/// Words of output per lane, over all variants.
inline constexpr int kProbeWordsPerLane = (1 + 2 + 4) * 2 + 2 * (8 + 4 + 4) + kNumShfl;
inline constexpr int kProbeWords = 32 * kProbeWordsPerLane;

/// Id of element (row, col) of the 32 x 8 matrix stack ldmatrix reads: row in the high byte.
DIFFATTN_HD constexpr std::uint16_t ldm_id(int row, int col) {
  return static_cast<std::uint16_t>(0x100 * row + col + 0x1000);
}
/// Storage slot of stacked row r (rows are stored permuted so that addresses matter).
DIFFATTN_HD constexpr int ldm_slot(int r) { return (5 * r + 3) % 32; }

inline constexpr std::size_t kProbeSmemBytes = 32 * 16;

struct ProbeKernel {
  template <simt::fmt16 F>
  DIFFATTN_DEVICE static void mma_probes(std::uint32_t* out, int lane) {
    // A probe: A element i of this lane = lane * 8 + i; B selects k == n (+ 8 * h).
    std::uint32_t a[4];
    for (int r = 0; r < 4; ++r) {
      a[r] = simt::pack2<F>(static_cast<float>(lane * 8 + 2 * r),
                            static_cast<float>(lane * 8 + 2 * r + 1));
    }
    const float zero[4] = {0.f, 0.f, 0.f, 0.f};
    for (int h = 0; h < 2; ++h) {
      float bv[4];
      for (int i = 0; i < 4; ++i) {
        const simt::frag_coord c = simt::mma_b_coord(lane, i);  // (k, n)
        bv[i] = c.row == c.col + 8 * h ? 1.f : 0.f;
      }
      const std::uint32_t b[2] = {simt::pack2<F>(bv[0], bv[1]), simt::pack2<F>(bv[2], bv[3])};
      float d[4];
      simt::mma_m16n8k16<F>(d, a, b, zero);
      for (int i = 0; i < 4; ++i) std::memcpy(&out[4 * h + i], &d[i], 4);
    }
    out += 8;
    {  // B probe: A = identity, B element i of this lane = lane * 4 + i.
      std::uint32_t ai[4];
      for (int r = 0; r < 4; ++r) {
        float v[2];
        for (int k = 0; k < 2; ++k) {
          const simt::frag_coord c = simt::mma_a_coord(lane, 2 * r + k);
          v[k] = c.row == c.col ? 1.f : 0.f;
        }
        ai[r] = simt::pack2<F>(v[0], v[1]);
      }
      const std::uint32_t b[2] = {
          simt::pack2<F>(static_cast<float>(lane * 4), static_cast<float>(lane * 4 + 1)),
          simt::pack2<F>(static_cast<float>(lane * 4 + 2), static_cast<float>(lane * 4 + 3))};
      float d[4];
      simt::mma_m16n8k16<F>(d, ai, b, zero);
      for (int i = 0; i < 4; ++i) std::memcpy(&out[i], &d[i], 4);
    }
    out += 4;
    {  // C/D probe: A[r][0] = r, A[r][1] = 1, B[0][n] = 8, B[1][n] = n: A*B = 8r + n;
       // C element i of this lane = 1024 * (lane * 4 + i). D = 1024 * c_id + 8 * row + col.
      std::uint32_t ac[4];
      for (int r = 0; r < 4; ++r) {
        float v[2];
        for (int k = 0; k < 2; ++k) {
          const simt::frag_coord c = simt::mma_a_coord(lane, 2 * r + k);
          v[k] = c.col == 0 ? static_cast<float>(c.row) : (c.col == 1 ? 1.f : 0.f);
        }
        ac[r] = simt::pack2<F>(v[0], v[1]);
      }
      float bv[4];
      for (int i = 0; i < 4; ++i) {
        const simt::frag_coord c = simt::mma_b_coord(lane, i);
        bv[i] = c.row == 0 ? 8.f : (c.row == 1 ? static_cast<float>(c.col) : 0.f);
      }
      const std::uint32_t b[2] = {simt::pack2<F>(bv[0], bv[1]), simt::pack2<F>(bv[2], bv[3])};
      float c[4];
      for (int i = 0; i < 4; ++i) c[i] = 1024.f * static_cast<float>(lane * 4 + i);
      float d[4];
      simt::mma_m16n8k16<F>(d, ac, b, c);
      for (int i = 0; i < 4; ++i) std::memcpy(&out[i], &d[i], 4);
    }
  }

  DIFFATTN_DEVICE void operator()(std::uint32_t* result) const {
    const int lane = static_cast<int>(simt::lane_id());
    std::uint32_t* out = result + lane * kProbeWordsPerLane;
    // The 32 x 8 stacked rows of ids, row r stored at slot ldm_slot(r).
    simt::smem_ptr<std::uint16_t> s = simt::shared_memory<std::uint16_t>();
    for (int c = 0; c < 8; ++c) s[ldm_slot(lane) * 8 + c] = ldm_id(lane, c);
    simt::syncwarp();
    // Lane l gives the address of stacked row l: row l % 8 of matrix l / 8.
    simt::smem_ptr<std::uint16_t> row = s + ldm_slot(lane) * 8;
    {
      std::uint32_t r1[1], r2[2], r4[4];
      simt::ldmatrix_x1(r1, row);
      *out++ = r1[0];
      simt::ldmatrix_x2(r2, row);
      for (std::uint32_t w : r2) *out++ = w;
      simt::ldmatrix_x4(r4, row);
      for (std::uint32_t w : r4) *out++ = w;
      simt::ldmatrix_x1_trans(r1, row);
      *out++ = r1[0];
      simt::ldmatrix_x2_trans(r2, row);
      for (std::uint32_t w : r2) *out++ = w;
      simt::ldmatrix_x4_trans(r4, row);
      for (std::uint32_t w : r4) *out++ = w;
    }
    mma_probes<simt::fmt16::f16>(out, lane);
    out += 16;
    mma_probes<simt::fmt16::bf16>(out, lane);
    out += 16;
    const std::uint32_t v = 0xabc00u + static_cast<std::uint32_t>(lane);
    for (int i = 0; i < kNumShfl; ++i) {
      const ShflCase sc = shfl_case(i);
      std::uint32_t r = 0;
      switch (sc.mode) {
        case 0: r = simt::shfl_sync(simt::kFullMask, v, sc.arg * lane + 1, sc.width); break;
        case 1: r = simt::shfl_up_sync(simt::kFullMask, v, static_cast<unsigned>(sc.arg), sc.width); break;
        case 2: r = simt::shfl_down_sync(simt::kFullMask, v, static_cast<unsigned>(sc.arg), sc.width); break;
        default: r = simt::shfl_xor_sync(simt::kFullMask, v, sc.arg, sc.width); break;
      }
      *out++ = r;
    }
  }
};

/// The text dump of a probe result (kProbeWords words, lane-major).
inline std::string probe_dump(const std::uint32_t* result) {
  std::string s = "# diffattn simt layout probe v1: <variant> <lane> <32-bit words in hex>\n";
  char buf[64];
  auto emit = [&](const char* name, int word0, int n) {
    for (int lane = 0; lane < 32; ++lane) {
      s += name;
      std::snprintf(buf, sizeof buf, " %d", lane);
      s += buf;
      for (int i = 0; i < n; ++i) {
        std::snprintf(buf, sizeof buf, " %08x", result[lane * kProbeWordsPerLane + word0 + i]);
        s += buf;
      }
      s += "\n";
    }
  };
  int w = 0;
  for (const ProbeVariant& v : kLdmVariants) {
    emit(v.name, w, v.words);
    w += v.words;
  }
  for (const ProbeVariant& v : kMmaVariants) {
    emit(v.name, w, v.words);
    w += v.words;
  }
  for (int i = 0; i < kNumShfl; ++i) {
    emit(shfl_name(i).c_str(), w, 1);
    w += 1;
  }
  return s;
}

}  // namespace simt_test
