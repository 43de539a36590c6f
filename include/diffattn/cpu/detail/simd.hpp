// diffattn/cpu/detail/simd.hpp: the 16-lane fp32 vector the tiled CPU kernels are written with.
//
// With AVX-512F (compiled with -mavx512f or -march=native on such a machine) a Vec16 is one zmm
// register and every operation is one or two instructions; without it, Vec16 is 16 floats and
// plain loops that the compiler vectorises for whatever ISA it targets (SSE2 on -march=x86-64).
// Both paths compute the same formulas (the exp2 polynomial included), so the portable build is
// tested by the same tests.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "diffattn/core/config.hpp"
#include "diffattn/core/dtype.hpp"

DIFFATTN_NAMESPACE_BEGIN
namespace cpu {
namespace detail {

/// Lanes of one Vec16.
inline constexpr int kLanes = 16;

// exp2(f) for f in [-0.5, 0.5]: Taylor series of e^(f ln2) to degree 7; the truncation error
// is (0.5 ln2)^8 / 8! < 5e-9 relative, below fp32's unit roundoff (6e-8).
inline constexpr float kExp2C[8] = {1.0f,
                                    0.693147180559945f,
                                    0.240226506959101f,
                                    0.0555041086648216f,
                                    0.00961812910762848f,
                                    0.00133335581464284f,
                                    0.000154035303933816f,
                                    1.52527338040598e-05f};

#if defined(__AVX512F__)

/// 16 floats in one zmm register.
struct Vec16 {
  __m512 v;
};
// The zero-masking forms with an all-ones mask are the same instructions as the unmasked
// intrinsics, whose GCC 12 definitions trip -Wuninitialized (_mm512_undefined_ps).
inline constexpr __mmask16 kAll = 0xFFFF;
inline Vec16 vload(const float* p) { return {_mm512_loadu_ps(p)}; }
inline void vstore(float* p, Vec16 a) { _mm512_storeu_ps(p, a.v); }
inline Vec16 vset1(float x) { return {_mm512_set1_ps(x)}; }
inline Vec16 vzero() { return {_mm512_setzero_ps()}; }
/// a * b + c
inline Vec16 vfma(Vec16 a, Vec16 b, Vec16 c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }
inline Vec16 vmul(Vec16 a, Vec16 b) { return {_mm512_mul_ps(a.v, b.v)}; }
inline Vec16 vadd(Vec16 a, Vec16 b) { return {_mm512_add_ps(a.v, b.v)}; }
inline Vec16 vsub(Vec16 a, Vec16 b) { return {_mm512_sub_ps(a.v, b.v)}; }
/// max(a, b); a NaN in b propagates (vmaxps returns its second operand when either is NaN).
inline Vec16 vmax(Vec16 a, Vec16 b) { return {_mm512_maskz_max_ps(kAll, a.v, b.v)}; }
/// Lanes where x == -inf become 0 (the running max of a row that has seen no key yet).
inline Vec16 vfinite_or_zero(Vec16 x) {
  const __mmask16 inf = _mm512_cmp_ps_mask(x.v, _mm512_set1_ps(-std::numeric_limits<float>::infinity()), _CMP_EQ_OQ);
  return {_mm512_mask_blend_ps(inf, x.v, _mm512_setzero_ps())};
}
/// 2^x; exactly 0 for x <= -200 (and -inf), NaN for NaN. Relative error about 1e-7.
inline Vec16 vexp2(Vec16 x) {
  const __m512 xc = _mm512_maskz_max_ps(kAll, _mm512_set1_ps(-200.0f), x.v);  // NaN in x propagates
  const __m512 n = _mm512_maskz_roundscale_ps(kAll, xc, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(xc, n);  // [-0.5, 0.5]
  __m512 p = _mm512_set1_ps(kExp2C[7]);
  for (int k = 6; k >= 0; --k) p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kExp2C[k]));
  return {_mm512_maskz_scalef_ps(kAll, p, n)};  // p * 2^n, underflows to exactly 0 for n = -200
}
/// Lanes i with !(kb[i] <= j < ke[i]) become -inf (kb, ke: 16 int32 each).
inline Vec16 vmask_keys(Vec16 s, const std::int32_t* kb, const std::int32_t* ke, std::int32_t j) {
  const __m512i jj = _mm512_set1_epi32(j);
  const __mmask16 ok = _mm512_cmp_epi32_mask(_mm512_loadu_si512(kb), jj, _MM_CMPINT_LE) &
                       _mm512_cmp_epi32_mask(jj, _mm512_loadu_si512(ke), _MM_CMPINT_LT);
  return {_mm512_mask_blend_ps(ok, _mm512_set1_ps(-std::numeric_limits<float>::infinity()), s.v)};
}
/// Sum of the 16 lanes.
inline float vhsum(Vec16 a) { return _mm512_reduce_add_ps(a.v); }

#else  // portable

/// 16 floats; operations are loops the compiler vectorises for the target ISA.
struct Vec16 {
  float v[kLanes];
};
inline Vec16 vload(const float* p) { Vec16 r; std::memcpy(r.v, p, sizeof r.v); return r; }
inline void vstore(float* p, Vec16 a) { std::memcpy(p, a.v, sizeof a.v); }
inline Vec16 vset1(float x) { Vec16 r; for (int i = 0; i < kLanes; ++i) r.v[i] = x; return r; }
inline Vec16 vzero() { return vset1(0.0f); }
inline Vec16 vfma(Vec16 a, Vec16 b, Vec16 c) {
  Vec16 r;
  for (int i = 0; i < kLanes; ++i) r.v[i] = a.v[i] * b.v[i] + c.v[i];
  return r;
}
inline Vec16 vmul(Vec16 a, Vec16 b) { Vec16 r; for (int i = 0; i < kLanes; ++i) r.v[i] = a.v[i] * b.v[i]; return r; }
inline Vec16 vadd(Vec16 a, Vec16 b) { Vec16 r; for (int i = 0; i < kLanes; ++i) r.v[i] = a.v[i] + b.v[i]; return r; }
inline Vec16 vsub(Vec16 a, Vec16 b) { Vec16 r; for (int i = 0; i < kLanes; ++i) r.v[i] = a.v[i] - b.v[i]; return r; }
inline Vec16 vmax(Vec16 a, Vec16 b) {
  Vec16 r;
  for (int i = 0; i < kLanes; ++i) r.v[i] = (a.v[i] > b.v[i]) ? a.v[i] : b.v[i];  // NaN in b wins
  return r;
}
inline Vec16 vfinite_or_zero(Vec16 x) {
  Vec16 r;
  for (int i = 0; i < kLanes; ++i)
    r.v[i] = x.v[i] == -std::numeric_limits<float>::infinity() ? 0.0f : x.v[i];
  return r;
}
/// Scalar 2^x with the same polynomial as the AVX-512 path.
inline float exp2_scalar(float x) {
  if (x != x) return x;
  if (x < -126.0f) return 0.0f;  // below the normal range: 0 (error < 2^-126)
  if (x > 127.0f) return std::numeric_limits<float>::infinity();
  const float n = std::nearbyint(x);
  const float f = x - n;
  float p = kExp2C[7];
  for (int k = 6; k >= 0; --k) p = p * f + kExp2C[k];
  const std::int32_t bits = (static_cast<std::int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}
inline Vec16 vexp2(Vec16 x) { Vec16 r; for (int i = 0; i < kLanes; ++i) r.v[i] = exp2_scalar(x.v[i]); return r; }
inline Vec16 vmask_keys(Vec16 s, const std::int32_t* kb, const std::int32_t* ke, std::int32_t j) {
  for (int i = 0; i < kLanes; ++i)
    if (!(kb[i] <= j && j < ke[i])) s.v[i] = -std::numeric_limits<float>::infinity();
  return s;
}
inline float vhsum(Vec16 a) { float s = 0; for (int i = 0; i < kLanes; ++i) s += a.v[i]; return s; }

#endif

/// Converts n elements to fp32 (exact for half and bfloat16).
template <class Elem>
inline void to_float(const Elem* src, float* dst, std::int64_t n) {
  std::int64_t i = 0;
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<Elem, half>) {
    for (; i + 16 <= n; i += 16)
      _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i))));
  } else if constexpr (std::is_same_v<Elem, bfloat16>) {
    for (; i + 16 <= n; i += 16) {
      const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i)));
      _mm512_storeu_ps(dst + i, _mm512_castsi512_ps(_mm512_slli_epi32(w, 16)));
    }
  }
#endif
  for (; i < n; ++i) dst[i] = static_cast<float>(src[i]);
}

}  // namespace detail
}  // namespace cpu
DIFFATTN_NAMESPACE_END
