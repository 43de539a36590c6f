// diffattn/simt/mma.hpp: ldmatrix and mma.sync m16n8k16 on fragments.
//
// Fragment layouts: simt/layout.hpp. A fragment of 16-bit elements packs two per uint32_t, the
// element of lower index in the lower 16 bits.
//
//   uint32_t a[4], b[2];  float acc[4] = {};
//   simt::ldmatrix_x4(a, sA + row_of_lane * kLdA + col0);   // 16 x 16 A tile, row-major smem
//   simt::ldmatrix_x2(b, sB + n_of_lane * kLdB + k0);       // B stored [n][k]
//   simt::ldmatrix_x2_trans(b, sBt + k_of_lane * kLdBt + n0); // B stored [k][n]
//   simt::mma_m16n8k16_f16f32(acc, a, b, acc);
//
// Emulator checks: all 32 lanes must call the same variant (divergent_collective; a partial warp
// is bad_argument); each used row address must be in bounds, 16-byte aligned and not a pending
// cp.async target. The emulated mma multiplies exactly (products of f16/bf16 are exact in f32)
// and sums the 16 products and c in double, rounding once to f32; tensor cores accumulate in an
// undocumented order with truncation, so results of non-integer data may differ in the last
// bits: compare floating results with tolerances.
#pragma once

#include <cstdint>
#include <cstring>

#include "diffattn/simt/config.hpp"
#include "diffattn/simt/layout.hpp"
#include "diffattn/simt/smem.hpp"
#if DIFFATTN_SIMT_EMULATED
#include "diffattn/simt/emu/runtime.hpp"
#endif

DIFFATTN_NAMESPACE_BEGIN
namespace simt {
namespace detail {

#if DIFFATTN_SIMT_EMULATED
template <int N, bool Trans>
inline void emu_ldmatrix(std::uint32_t (&r)[N], std::int64_t off) {
  auto& f = emu::detail::current("ldmatrix");
  std::uint32_t in[2];
  std::memcpy(in, &off, sizeof off);
  const std::uint32_t param = static_cast<std::uint32_t>(N) | (Trans ? 8u : 0u);
  emu::detail::BlockRunner* blk = f.blk;
  const std::uint32_t* out = blk->collective(
      &f, emu::detail::op_ldmatrix, kFullMask, param, in, 2,
      [blk](emu::detail::WarpSlot& w, std::uint32_t) {
        const unsigned char* rows[N * 8];
        for (int j = 0; j < N; ++j) {
          for (int r = 0; r < 8; ++r) {
            const int lane = ldmatrix_row_provider(j, r);
            std::int64_t a;
            std::memcpy(&a, w.in[lane], sizeof a);
            const std::string what = "ldmatrix row address of lane " + std::to_string(lane);
            rows[j * 8 + r] = blk->smem_check(a, 16, 16, false, what.c_str());
          }
        }
        for (int l = 0; l < 32; ++l) {
          for (int j = 0; j < N; ++j) {
            std::uint16_t h[2];
            for (int k = 0; k < 2; ++k) {
              const frag_coord c = Trans ? ldmatrix_trans_coord(l, k) : ldmatrix_coord(l, k);
              std::memcpy(&h[k], rows[j * 8 + c.row] + 2 * c.col, 2);
            }
            w.out[l][j] = std::uint32_t{h[0]} | (std::uint32_t{h[1]} << 16);
          }
        }
      });
  for (int j = 0; j < N; ++j) r[j] = out[j];
}

inline void emu_mma(int fmt, float (&d)[4], const std::uint32_t (&a)[4],
                    const std::uint32_t (&b)[2], const float (&c)[4]) {
  auto& f = emu::detail::current("mma.sync");
  std::uint32_t in[10];
  std::memcpy(in, a, 16);
  std::memcpy(in + 4, b, 8);
  std::memcpy(in + 6, c, 16);
  const std::uint32_t* out = f.blk->collective(
      &f, emu::detail::op_mma, kFullMask, static_cast<std::uint32_t>(fmt), in, 10,
      [fmt](emu::detail::WarpSlot& w, std::uint32_t) {
        float A[16][16], B[16][8], C[16][8];
        for (int l = 0; l < 32; ++l) {
          for (int i = 0; i < 8; ++i) {
            const frag_coord p = mma_a_coord(l, i);
            A[p.row][p.col] = emu::detail::unpack16(w.in[l][i / 2], i % 2, fmt);
          }
          for (int i = 0; i < 4; ++i) {
            const frag_coord p = mma_b_coord(l, i);
            B[p.row][p.col] = emu::detail::unpack16(w.in[l][4 + i / 2], i % 2, fmt);
          }
          for (int i = 0; i < 4; ++i) {
            const frag_coord p = mma_c_coord(l, i);
            std::memcpy(&C[p.row][p.col], &w.in[l][6 + i], 4);
          }
        }
        for (int l = 0; l < 32; ++l) {
          for (int i = 0; i < 4; ++i) {
            const frag_coord p = mma_c_coord(l, i);
            double s = C[p.row][p.col];
            for (int k = 0; k < 16; ++k) s += double(A[p.row][k]) * double(B[k][p.col]);
            const float v = static_cast<float>(s);
            std::memcpy(&w.out[l][i], &v, 4);
          }
        }
      });
  std::memcpy(d, out, 16);
}
#endif

}  // namespace detail

// ---- ldmatrix.sync.aligned.m8n8{.x1,.x2,.x4}{,.trans}.shared.b16 ---------------------------
// `row` is this lane's row address: lanes 8j..8j+7 give rows 0..7 of matrix j (lanes beyond
// 8 * N are ignored but must still call). Register j of lane l receives matrix j's
// row l/4, columns 2(l%4), 2(l%4)+1 (.trans: rows 2(l%4), 2(l%4)+1 of column l/4).

#if DIFFATTN_DEVICE_PASS
#define DIFFATTN_SIMT_LDMATRIX(N, TRANS, REGS, ...)                                     \
  asm volatile("ldmatrix.sync.aligned.m8n8.x" #N TRANS ".shared.b16 " REGS ", [%" #N "];\n" \
               : __VA_ARGS__                                                             \
               : "r"(detail::smem_operand(row)))
#endif

/// ldmatrix .x1: one 8 x 8 matrix (rows from lanes 0-7).
template <class T>
DIFFATTN_DEVICE void ldmatrix_x1(std::uint32_t (&r)[1], smem_ptr<T> row) {
#if DIFFATTN_DEVICE_PASS
  DIFFATTN_SIMT_LDMATRIX(1, "", "{%0}", "=r"(r[0]));
#elif DIFFATTN_SIMT_EMULATED
  detail::emu_ldmatrix<1, false>(r, row.byte_offset());
#else
  (void)r, (void)row;
  DIFFATTN_SIMT_HOST_PASS_STUB();
#endif
}
/// ldmatrix .x2: two matrices (rows from lanes 0-15).
template <class T>
DIFFATTN_DEVICE void ldmatrix_x2(std::uint32_t (&r)[2], smem_ptr<T> row) {
#if DIFFATTN_DEVICE_PASS
  DIFFATTN_SIMT_LDMATRIX(2, "", "{%0, %1}", "=r"(r[0]), "=r"(r[1]));
#elif DIFFATTN_SIMT_EMULATED
  detail::emu_ldmatrix<2, false>(r, row.byte_offset());
#else
  (void)r, (void)row;
  DIFFATTN_SIMT_HOST_PASS_STUB();
#endif
}
/// ldmatrix .x4: four matrices (rows from all 32 lanes), e.g. a whole 16 x 16 A fragment.
template <class T>
DIFFATTN_DEVICE void ldmatrix_x4(std::uint32_t (&r)[4], smem_ptr<T> row) {
#if DIFFATTN_DEVICE_PASS
  DIFFATTN_SIMT_LDMATRIX(4, "", "{%0, %1, %2, %3}", "=r"(r[0]), "=r"(r[1]), "=r"(r[2]),
                         "=r"(r[3]));
#elif DIFFATTN_SIMT_EMULATED
  detail::emu_ldmatrix<4, false>(r, row.byte_offset());
#else
  (void)r, (void)row;
  DIFFATTN_SIMT_HOST_PASS_STUB();
#endif
}
/// ldmatrix .x1 .trans.
template <class T>
DIFFATTN_DEVICE void ldmatrix_x1_trans(std::uint32_t (&r)[1], smem_ptr<T> row) {
#if DIFFATTN_DEVICE_PASS
  DIFFATTN_SIMT_LDMATRIX(1, ".trans", "{%0}", "=r"(r[0]));
#elif DIFFATTN_SIMT_EMULATED
  detail::emu_ldmatrix<1, true>(r, row.byte_offset());
#else
  (void)r, (void)row;
  DIFFATTN_SIMT_HOST_PASS_STUB();
#endif
}
/// ldmatrix .x2 .trans, e.g. a B fragment from a [k][n] tile.
template <class T>
DIFFATTN_DEVICE void ldmatrix_x2_trans(std::uint32_t (&r)[2], smem_ptr<T> row) {
#if DIFFATTN_DEVICE_PASS
  DIFFATTN_SIMT_LDMATRIX(2, ".trans", "{%0, %1}", "=r"(r[0]), "=r"(r[1]));
#elif DIFFATTN_SIMT_EMULATED
  detail::emu_ldmatrix<2, true>(r, row.byte_offset());
#else
  (void)r, (void)row;
  DIFFATTN_SIMT_HOST_PASS_STUB();
#endif
}
/// ldmatrix .x4 .trans.
template <class T>
DIFFATTN_DEVICE void ldmatrix_x4_trans(std::uint32_t (&r)[4], smem_ptr<T> row) {
#if DIFFATTN_DEVICE_PASS
  DIFFATTN_SIMT_LDMATRIX(4, ".trans", "{%0, %1, %2, %3}", "=r"(r[0]), "=r"(r[1]), "=r"(r[2]),
                         "=r"(r[3]));
#elif DIFFATTN_SIMT_EMULATED
  detail::emu_ldmatrix<4, true>(r, row.byte_offset());
#else
  (void)r, (void)row;
  DIFFATTN_SIMT_HOST_PASS_STUB();
#endif
}

#if DIFFATTN_DEVICE_PASS
#undef DIFFATTN_SIMT_LDMATRIX
#endif

// ---- mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32 ------------------------

/// d = a * b + c, A 16 x 16 f16 (row), B 16 x 8 f16 (col), C/D 16 x 8 f32. d may alias c.
DIFFATTN_DEVICE void mma_m16n8k16_f16f32(float (&d)[4], const std::uint32_t (&a)[4],
                                         const std::uint32_t (&b)[2], const float (&c)[4]) {
#if DIFFATTN_DEVICE_PASS
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%10, %11, %12, %13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]),
        "f"(c[2]), "f"(c[3]));
#elif DIFFATTN_SIMT_EMULATED
  detail::emu_mma(0, d, a, b, c);
#else
  (void)d, (void)a, (void)b, (void)c;
  DIFFATTN_SIMT_HOST_PASS_STUB();
#endif
}

/// d = a * b + c with bf16 A and B (as mma_m16n8k16_f16f32).
DIFFATTN_DEVICE void mma_m16n8k16_bf16f32(float (&d)[4], const std::uint32_t (&a)[4],
                                          const std::uint32_t (&b)[2], const float (&c)[4]) {
#if DIFFATTN_DEVICE_PASS
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%10, %11, %12, %13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]),
        "f"(c[2]), "f"(c[3]));
#elif DIFFATTN_SIMT_EMULATED
  detail::emu_mma(1, d, a, b, c);
#else
  (void)d, (void)a, (void)b, (void)c;
  DIFFATTN_SIMT_HOST_PASS_STUB();
#endif
}

/// mma m16n8k16 with the 16-bit format as a template parameter.
template <fmt16 F>
DIFFATTN_DEVICE void mma_m16n8k16(float (&d)[4], const std::uint32_t (&a)[4],
                                  const std::uint32_t (&b)[2], const float (&c)[4]) {
  if constexpr (F == fmt16::f16) {
    mma_m16n8k16_f16f32(d, a, b, c);
  } else {
    mma_m16n8k16_bf16f32(d, a, b, c);
  }
}

}  // namespace simt
DIFFATTN_NAMESPACE_END
