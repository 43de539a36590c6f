// diffattn/cpu/isa/neon.hpp: the tiled CPU forward for aarch64 NEON (Advanced SIMD is part of
// the aarch64 baseline, so no target region is needed): Graviton, Grace, Ampere, Apple.
//
// 4 lanes in a q register; the register file has 32 of them, so micro-tiles are 6 rows x 4
// vectors (16 queries): 24 accumulators, 4 operands and 1 broadcast. Tested in CI under
// qemu-user (correctness only: no aarch64 machine has measured its speed yet).
#pragma once

#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "diffattn/core/config.hpp"
#include "diffattn/core/dtype.hpp"
#include "diffattn/cpu/detail/item.hpp"
#include "diffattn/cpu/detail/target.hpp"

#if DIFFATTN_CPU_NEON
#include <arm_neon.h>

DIFFATTN_NAMESPACE_BEGIN
namespace cpu {
namespace detail {
namespace neon {

/// Lanes of one Vec; vectors per micro-tile row.
inline constexpr int kW = 4;
inline constexpr int kTileVecs = 4;

/// 4 floats in one q register.
struct Vec {
  float32x4_t v;
};
inline Vec vload(const float* p) { return {vld1q_f32(p)}; }
inline void vstore(float* p, Vec a) { vst1q_f32(p, a.v); }
inline Vec vset1(float x) { return {vdupq_n_f32(x)}; }
inline Vec vzero() { return {vdupq_n_f32(0.0f)}; }
/// a * b + c (fused)
inline Vec vfma(Vec a, Vec b, Vec c) { return {vfmaq_f32(c.v, a.v, b.v)}; }
inline Vec vmul(Vec a, Vec b) { return {vmulq_f32(a.v, b.v)}; }
inline Vec vadd(Vec a, Vec b) { return {vaddq_f32(a.v, b.v)}; }
inline Vec vsub(Vec a, Vec b) { return {vsubq_f32(a.v, b.v)}; }
/// max(a, b); a NaN in either propagates (fmax).
inline Vec vmax(Vec a, Vec b) { return {vmaxq_f32(a.v, b.v)}; }
/// Lanes where x == -inf become 0 (the running max of a row that has seen no key yet).
inline Vec vfinite_or_zero(Vec x) {
  const uint32x4_t inf = vceqq_f32(x.v, vdupq_n_f32(-std::numeric_limits<float>::infinity()));
  return {vbslq_f32(inf, vdupq_n_f32(0.0f), x.v)};
}
/// 2^x; exactly 0 for x <= -126.5 (and -inf), +inf above 127.5, NaN for NaN. Relative error
/// about 1e-7 where the result is a normal float.
inline Vec vexp2(Vec x) {
  float32x4_t xc = vmaxq_f32(x.v, vdupq_n_f32(-127.0f));  // fmax: NaN propagates
  xc = vminq_f32(xc, vdupq_n_f32(128.0f));
  const float32x4_t n = vrndnq_f32(xc);
  const float32x4_t f = vsubq_f32(xc, n);  // [-0.5, 0.5]
  float32x4_t p = vdupq_n_f32(kExp2C[7]);
  for (int k = 6; k >= 0; --k) p = vfmaq_f32(vdupq_n_f32(kExp2C[k]), p, f);
  // 2^n from the exponent field: n = -127 gives the bits of +0, n = 128 those of +inf
  const int32x4_t e = vshlq_n_s32(vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127)), 23);
  return {vmulq_f32(p, vreinterpretq_f32_s32(e))};
}
/// Lanes i with !(kb[i] <= j < ke[i]) become -inf (kb, ke: 4 int32 each).
inline Vec vmask_keys(Vec s, const std::int32_t* kb, const std::int32_t* ke, std::int32_t j) {
  const int32x4_t jj = vdupq_n_s32(j);
  const uint32x4_t ok = vandq_u32(vcleq_s32(vld1q_s32(kb), jj), vcltq_s32(jj, vld1q_s32(ke)));
  return {vbslq_f32(ok, s.v, vdupq_n_f32(-std::numeric_limits<float>::infinity()))};
}

/// Converts n elements to fp32 (exact for half and bfloat16).
template <class Elem>
inline void to_float(const Elem* src, float* dst, std::int64_t n) {
  if constexpr (std::is_same_v<Elem, float>) {
    std::memcpy(dst, src, static_cast<std::size_t>(n) * sizeof(float));
  } else {
    std::int64_t i = 0;
    if constexpr (std::is_same_v<Elem, half>) {
      for (; i + 4 <= n; i += 4)
        vst1q_f32(dst + i, vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(reinterpret_cast<const std::uint16_t*>(src + i)))));
    } else if constexpr (std::is_same_v<Elem, bfloat16>) {
      for (; i + 4 <= n; i += 4)
        vst1q_f32(dst + i, vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(reinterpret_cast<const std::uint16_t*>(src + i)), 16)));
    }
    for (; i < n; ++i) dst[i] = static_cast<float>(src[i]);
  }
}

#include "diffattn/cpu/detail/algorithm.inl"

}  // namespace neon
}  // namespace detail
}  // namespace cpu
DIFFATTN_NAMESPACE_END

#endif  // DIFFATTN_CPU_NEON
