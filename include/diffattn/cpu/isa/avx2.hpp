// diffattn/cpu/isa/avx2.hpp: the tiled CPU forward for AVX2 + FMA (+ F16C for half), compiled
// for it in any translation unit (cpu/detail/target.hpp) and chosen at run time when the CPU
// supports it (cpu/isa.hpp): AMD Zen 1 to 3, Intel from Haswell, client parts without AVX-512.
//
// 8 lanes in a ymm register; the register file has 16 of them, so micro-tiles are 6 rows x 2
// vectors (16 queries): 12 accumulators, 2 operands and 1 broadcast (15 registers; the
// classic 6x16 sgemm kernel shape). Each step of a tile is 12 FMAs against 8 loads (2 vectors
// and 6 broadcasts), within the 2 loads per FMA pair that Zen and Intel cores issue.
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

DIFFATTN_CPU_TARGET_BEGIN("avx2,fma,f16c")
DIFFATTN_NAMESPACE_BEGIN
namespace cpu {
namespace detail {
namespace avx2 {

/// Lanes of one Vec; vectors per micro-tile row.
inline constexpr int kW = 8;
inline constexpr int kTileVecs = 2;

/// 8 floats in one ymm register.
struct Vec {
  __m256 v;
};
inline Vec vload(const float* p) { return {_mm256_loadu_ps(p)}; }
inline void vstore(float* p, Vec a) { _mm256_storeu_ps(p, a.v); }
inline Vec vset1(float x) { return {_mm256_set1_ps(x)}; }
inline Vec vzero() { return {_mm256_setzero_ps()}; }
/// a * b + c
inline Vec vfma(Vec a, Vec b, Vec c) { return {_mm256_fmadd_ps(a.v, b.v, c.v)}; }
inline Vec vmul(Vec a, Vec b) { return {_mm256_mul_ps(a.v, b.v)}; }
inline Vec vadd(Vec a, Vec b) { return {_mm256_add_ps(a.v, b.v)}; }
inline Vec vsub(Vec a, Vec b) { return {_mm256_sub_ps(a.v, b.v)}; }
/// max(a, b); a NaN in b propagates (vmaxps returns its second operand when either is NaN).
inline Vec vmax(Vec a, Vec b) { return {_mm256_max_ps(a.v, b.v)}; }
/// Lanes where x == -inf become 0 (the running max of a row that has seen no key yet).
inline Vec vfinite_or_zero(Vec x) {
  const __m256 inf = _mm256_cmp_ps(x.v, _mm256_set1_ps(-std::numeric_limits<float>::infinity()), _CMP_EQ_OQ);
  return {_mm256_andnot_ps(inf, x.v)};
}
/// 2^x; exactly 0 for x <= -126.5 (and -inf), +inf above 127.5, NaN for NaN. Relative error
/// about 1e-7 where the result is a normal float.
inline Vec vexp2(Vec x) {
  // clamp to [-127, 128] (vmaxps/vminps return their second operand for a NaN: x's NaN stays)
  __m256 xc = _mm256_max_ps(_mm256_set1_ps(-127.0f), x.v);
  xc = _mm256_min_ps(_mm256_set1_ps(128.0f), xc);
  const __m256 n = _mm256_round_ps(xc, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256 f = _mm256_sub_ps(xc, n);  // [-0.5, 0.5]
  __m256 p = _mm256_set1_ps(kExp2C[7]);
  for (int k = 6; k >= 0; --k) p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(kExp2C[k]));
  // 2^n from the exponent field: n = -127 gives the bits of +0, n = 128 those of +inf
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return {_mm256_mul_ps(p, _mm256_castsi256_ps(e))};
}
/// Lanes i with !(kb[i] <= j < ke[i]) become -inf (kb, ke: 8 int32 each).
inline Vec vmask_keys(Vec s, const std::int32_t* kb, const std::int32_t* ke, std::int32_t j) {
  const __m256i jj = _mm256_set1_epi32(j);
  const __m256i before = _mm256_cmpgt_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(kb)), jj);
  const __m256i inside = _mm256_cmpgt_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(ke)), jj);
  const __m256 ok = _mm256_castsi256_ps(_mm256_andnot_si256(before, inside));
  return {_mm256_blendv_ps(_mm256_set1_ps(-std::numeric_limits<float>::infinity()), s.v, ok)};
}

/// Converts n elements to fp32 (exact for half and bfloat16).
template <class Elem>
inline void to_float(const Elem* src, float* dst, std::int64_t n) {
  if constexpr (std::is_same_v<Elem, float>) {
    std::memcpy(dst, src, static_cast<std::size_t>(n) * sizeof(float));
  } else {
    std::int64_t i = 0;
    if constexpr (std::is_same_v<Elem, half>) {
      for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
    } else if constexpr (std::is_same_v<Elem, bfloat16>) {
      for (; i + 8 <= n; i += 8) {
        const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i)));
        _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(_mm256_slli_epi32(w, 16)));
      }
    }
    for (; i < n; ++i) dst[i] = static_cast<float>(src[i]);
  }
}

#include "diffattn/cpu/detail/algorithm.inl"

}  // namespace avx2
}  // namespace detail
}  // namespace cpu
DIFFATTN_NAMESPACE_END
DIFFATTN_CPU_TARGET_END

#endif  // DIFFATTN_CPU_X86_TARGETS
