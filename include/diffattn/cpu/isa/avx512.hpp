// diffattn/cpu/isa/avx512.hpp: the tiled CPU forward for AVX-512 (F, BW), compiled for it in
// any translation unit (cpu/detail/target.hpp) and chosen at run time when the CPU and the OS
// support it (cpu/isa.hpp).
//
// 16 lanes in a zmm register; micro-tiles of 6 rows x 4 vectors (64 queries): 24 accumulators,
// 4 operands and 1 broadcast in the 32 zmm registers. Measured against Eigen on the same
// row-major operands (one 64-query block x 64 keys, d = 64, dv = 128, 1 thread, Sapphire
// Rapids, bench_cpu_forward --benchmark_filter=tile/): these tiles 188 (QK^T) and 185 (PV)
// GFLOP/s, Eigen 125 and 127.
#pragma once

#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "diffattn/core/config.hpp"
#include "diffattn/core/dtype.hpp"
#include "diffattn/cpu/detail/item.hpp"
#include "diffattn/cpu/detail/target.hpp"

#if DIFFATTN_CPU_X86_TARGETS
#include <immintrin.h>

DIFFATTN_CPU_TARGET_BEGIN("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c")
DIFFATTN_NAMESPACE_BEGIN
namespace cpu {
namespace detail {
namespace avx512 {

/// Lanes of one Vec; vectors per micro-tile row.
inline constexpr int kW = 16;
inline constexpr int kTileVecs = 4;

/// 16 floats in one zmm register.
struct Vec {
  __m512 v;
};
// The zero-masking forms with an all-ones mask are the same instructions as the unmasked
// intrinsics, whose GCC 12 definitions trip -Wuninitialized in the includer's code
// (_mm512_undefined_ps, GCC bug 105593): every AVX-512 intrinsic here that has such a
// definition is used in its maskz form.
inline constexpr __mmask16 kAll = 0xFFFF;
inline Vec vload(const float* p) { return {_mm512_loadu_ps(p)}; }
inline void vstore(float* p, Vec a) { _mm512_storeu_ps(p, a.v); }
inline Vec vset1(float x) { return {_mm512_set1_ps(x)}; }
inline Vec vzero() { return {_mm512_setzero_ps()}; }
/// a * b + c
inline Vec vfma(Vec a, Vec b, Vec c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }
inline Vec vmul(Vec a, Vec b) { return {_mm512_mul_ps(a.v, b.v)}; }
inline Vec vadd(Vec a, Vec b) { return {_mm512_add_ps(a.v, b.v)}; }
inline Vec vsub(Vec a, Vec b) { return {_mm512_sub_ps(a.v, b.v)}; }
/// max(a, b); a NaN in b propagates (vmaxps returns its second operand when either is NaN).
inline Vec vmax(Vec a, Vec b) { return {_mm512_maskz_max_ps(kAll, a.v, b.v)}; }
/// Lanes where x == -inf become 0 (the running max of a row that has seen no key yet).
inline Vec vfinite_or_zero(Vec x) {
  const __mmask16 inf = _mm512_cmp_ps_mask(x.v, _mm512_set1_ps(-std::numeric_limits<float>::infinity()), _CMP_EQ_OQ);
  return {_mm512_mask_blend_ps(inf, x.v, _mm512_setzero_ps())};
}
/// 2^x; exactly 0 for x <= -200 (and -inf), NaN for NaN. Relative error about 1e-7.
inline Vec vexp2(Vec x) {
  const __m512 xc = _mm512_maskz_max_ps(kAll, _mm512_set1_ps(-200.0f), x.v);  // NaN in x propagates
  const __m512 n = _mm512_maskz_roundscale_ps(kAll, xc, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(xc, n);  // [-0.5, 0.5]
  __m512 p = _mm512_set1_ps(kExp2C[7]);
  for (int k = 6; k >= 0; --k) p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kExp2C[k]));
  return {_mm512_maskz_scalef_ps(kAll, p, n)};  // p * 2^n, underflows to exactly 0 for n = -200
}
/// Lanes i with !(kb[i] <= j < ke[i]) become -inf (kb, ke: 16 int32 each).
inline Vec vmask_keys(Vec s, const std::int32_t* kb, const std::int32_t* ke, std::int32_t j) {
  const __m512i jj = _mm512_set1_epi32(j);
  const __mmask16 ok = _mm512_cmp_epi32_mask(_mm512_loadu_si512(kb), jj, _MM_CMPINT_LE) &
                       _mm512_cmp_epi32_mask(jj, _mm512_loadu_si512(ke), _MM_CMPINT_LT);
  return {_mm512_mask_blend_ps(ok, _mm512_set1_ps(-std::numeric_limits<float>::infinity()), s.v)};
}

/// Converts n elements to fp32 (exact for half and bfloat16).
template <class Elem>
inline void to_float(const Elem* src, float* dst, std::int64_t n) {
  if constexpr (std::is_same_v<Elem, float>) {
    std::memcpy(dst, src, static_cast<std::size_t>(n) * sizeof(float));
  } else {
    std::int64_t i = 0;
    if constexpr (std::is_same_v<Elem, half>) {
      for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(dst + i, _mm512_maskz_cvtph_ps(kAll, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i))));
    } else if constexpr (std::is_same_v<Elem, bfloat16>) {
      for (; i + 16 <= n; i += 16) {
        const __m512i w = _mm512_maskz_cvtepu16_epi32(kAll, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i)));
        _mm512_storeu_ps(dst + i, _mm512_castsi512_ps(_mm512_maskz_slli_epi32(kAll, w, 16)));
      }
    }
    for (; i < n; ++i) dst[i] = static_cast<float>(src[i]);
  }
}

/// In-register transpose of a 16 x 16 block of 32-bit words.
__attribute__((always_inline)) inline void transpose16(__m512i r[16]) {
  __m512i t[16];
  for (int k = 0; k < 8; ++k) {
    t[2 * k] = _mm512_maskz_unpacklo_epi32(kAll, r[2 * k], r[2 * k + 1]);
    t[2 * k + 1] = _mm512_maskz_unpackhi_epi32(kAll, r[2 * k], r[2 * k + 1]);
  }
  for (int k = 0; k < 4; ++k) {
    r[4 * k + 0] = _mm512_maskz_unpacklo_epi64(0xFF, t[4 * k], t[4 * k + 2]);
    r[4 * k + 1] = _mm512_maskz_unpackhi_epi64(0xFF, t[4 * k], t[4 * k + 2]);
    r[4 * k + 2] = _mm512_maskz_unpacklo_epi64(0xFF, t[4 * k + 1], t[4 * k + 3]);
    r[4 * k + 3] = _mm512_maskz_unpackhi_epi64(0xFF, t[4 * k + 1], t[4 * k + 3]);
  }
  for (int k = 0; k < 4; ++k) {
    t[k] = _mm512_maskz_shuffle_i32x4(kAll, r[k], r[k + 4], 0x88);
    t[k + 4] = _mm512_maskz_shuffle_i32x4(kAll, r[k], r[k + 4], 0xdd);
    t[k + 8] = _mm512_maskz_shuffle_i32x4(kAll, r[k + 8], r[k + 12], 0x88);
    t[k + 12] = _mm512_maskz_shuffle_i32x4(kAll, r[k + 8], r[k + 12], 0xdd);
  }
  for (int k = 0; k < 8; ++k) {
    r[k] = _mm512_maskz_shuffle_i32x4(kAll, t[k], t[k + 8], 0x88);
    r[k + 8] = _mm512_maskz_shuffle_i32x4(kAll, t[k], t[k + 8], 0xdd);
  }
}

#include "diffattn/cpu/detail/algorithm.inl"

}  // namespace avx512
}  // namespace detail
}  // namespace cpu
DIFFATTN_NAMESPACE_END
DIFFATTN_CPU_TARGET_END

#endif  // DIFFATTN_CPU_X86_TARGETS
