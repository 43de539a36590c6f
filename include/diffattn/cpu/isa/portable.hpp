// diffattn/cpu/isa/portable.hpp: the tiled CPU forward in portable C++, for any CPU and any
// flags: GCC/Clang vectors of 4 floats (16 bytes: SSE2 on a baseline x86-64, NEON, VSX, ...),
// or plain arrays with other compilers. Compiled with the includer's own flags, it is the path
// of last resort (cpu/isa.hpp chooses it where no ISA-specific path is supported) and a
// reference point for the others.
//
// Micro-tiles of 6 rows x 2 vectors (8 queries): 12 accumulators, 2 operands, 1 broadcast and
// 1 product fit the 16 registers of SSE2 (which has no fused multiply-add: a*b+c is two
// roundings here, one on the other paths; results differ in the last bits).
#pragma once

#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "diffattn/core/config.hpp"
#include "diffattn/core/dtype.hpp"
#include "diffattn/cpu/detail/item.hpp"

DIFFATTN_NAMESPACE_BEGIN
namespace cpu {
namespace detail {
namespace portable {

/// Lanes of one Vec; vectors per micro-tile row.
inline constexpr int kW = 4;
inline constexpr int kTileVecs = 2;

#if defined(__GNUC__) || defined(__clang__)
typedef float F4 __attribute__((vector_size(16)));
typedef std::int32_t I4 __attribute__((vector_size(16)));
/// 4 floats, one 16-byte vector register where the target has them.
struct Vec {
  F4 v;
};
inline Vec vload(const float* p) { Vec r; std::memcpy(&r.v, p, sizeof r.v); return r; }
inline void vstore(float* p, Vec a) { std::memcpy(p, &a.v, sizeof a.v); }
inline Vec vset1(float x) { return {F4{x, x, x, x}}; }
inline Vec vzero() { return vset1(0.0f); }
/// a * b + c
inline Vec vfma(Vec a, Vec b, Vec c) { return {a.v * b.v + c.v}; }
inline Vec vmul(Vec a, Vec b) { return {a.v * b.v}; }
inline Vec vadd(Vec a, Vec b) { return {a.v + b.v}; }
inline Vec vsub(Vec a, Vec b) { return {a.v - b.v}; }
/// Lanes of a where m is all ones, of b where it is zero.
inline F4 select(I4 m, F4 a, F4 b) {
  return reinterpret_cast<F4>((reinterpret_cast<I4>(a) & m) | (reinterpret_cast<I4>(b) & ~m));
}
/// max(a, b); a NaN in b propagates.
inline Vec vmax(Vec a, Vec b) { return {select(a.v > b.v, a.v, b.v)}; }
/// Lanes where x == -inf become 0 (the running max of a row that has seen no key yet).
inline Vec vfinite_or_zero(Vec x) {
  return {select(x.v == vset1(-std::numeric_limits<float>::infinity()).v, vzero().v, x.v)};
}
/// 2^x; exactly 0 for x <= -126.5 (and -inf), +inf above 127.5, NaN for NaN. Relative error
/// about 1e-7 where the result is a normal float.
inline Vec vexp2(Vec x) {
  F4 xc = select(x.v < vset1(-127.0f).v, vset1(-127.0f).v, x.v);  // NaN compares false: kept
  xc = select(xc > vset1(128.0f).v, vset1(128.0f).v, xc);
  // round half away from zero by truncation (no rounding-mode or fast-math assumptions)
  const F4 half_signed = select(xc < vzero().v, vset1(-0.5f).v, vset1(0.5f).v);
  const I4 ni = __builtin_convertvector(xc + half_signed, I4);
  const F4 f = xc - __builtin_convertvector(ni, F4);  // [-0.5, 0.5]
  F4 p = vset1(kExp2C[7]).v;
  for (int k = 6; k >= 0; --k) p = p * f + vset1(kExp2C[k]).v;
  // 2^n from the exponent field: n = -127 gives the bits of +0, n = 128 those of +inf
  const I4 e = (ni + 127) << 23;
  return {p * reinterpret_cast<F4>(e)};
}
/// Lanes i with !(kb[i] <= j < ke[i]) become -inf (kb, ke: 4 int32 each).
inline Vec vmask_keys(Vec s, const std::int32_t* kb, const std::int32_t* ke, std::int32_t j) {
  I4 b, e;
  std::memcpy(&b, kb, sizeof b);
  std::memcpy(&e, ke, sizeof e);
  const I4 jj = {j, j, j, j};
  return {select((b <= jj) & (jj < e), s.v, vset1(-std::numeric_limits<float>::infinity()).v)};
}
#else
/// 4 floats; operations are loops the compiler may vectorise.
struct Vec {
  float v[kW];
};
inline Vec vload(const float* p) { Vec r; std::memcpy(r.v, p, sizeof r.v); return r; }
inline void vstore(float* p, Vec a) { std::memcpy(p, a.v, sizeof a.v); }
inline Vec vset1(float x) { Vec r; for (float& y : r.v) y = x; return r; }
inline Vec vzero() { return vset1(0.0f); }
inline Vec vfma(Vec a, Vec b, Vec c) { for (int i = 0; i < kW; ++i) a.v[i] = a.v[i] * b.v[i] + c.v[i]; return a; }
inline Vec vmul(Vec a, Vec b) { for (int i = 0; i < kW; ++i) a.v[i] *= b.v[i]; return a; }
inline Vec vadd(Vec a, Vec b) { for (int i = 0; i < kW; ++i) a.v[i] += b.v[i]; return a; }
inline Vec vsub(Vec a, Vec b) { for (int i = 0; i < kW; ++i) a.v[i] -= b.v[i]; return a; }
inline Vec vmax(Vec a, Vec b) { for (int i = 0; i < kW; ++i) a.v[i] = a.v[i] > b.v[i] ? a.v[i] : b.v[i]; return a; }
inline Vec vfinite_or_zero(Vec x) {
  for (float& y : x.v) y = y == -std::numeric_limits<float>::infinity() ? 0.0f : y;
  return x;
}
inline Vec vexp2(Vec x) {
  for (float& y : x.v) {
    if (y != y) continue;
    const float xc = y < -127.0f ? -127.0f : y > 128.0f ? 128.0f : y;
    const std::int32_t n = static_cast<std::int32_t>(xc + (xc < 0 ? -0.5f : 0.5f));
    const float f = xc - static_cast<float>(n);
    float p = kExp2C[7];
    for (int k = 6; k >= 0; --k) p = p * f + kExp2C[k];
    const std::int32_t bits = (n + 127) << 23;
    float scale;
    std::memcpy(&scale, &bits, sizeof scale);
    y = p * scale;
  }
  return x;
}
inline Vec vmask_keys(Vec s, const std::int32_t* kb, const std::int32_t* ke, std::int32_t j) {
  for (int i = 0; i < kW; ++i)
    if (!(kb[i] <= j && j < ke[i])) s.v[i] = -std::numeric_limits<float>::infinity();
  return s;
}
#endif

/// Converts n elements to fp32 (exact for half and bfloat16).
template <class Elem>
inline void to_float(const Elem* src, float* dst, std::int64_t n) {
  if constexpr (std::is_same_v<Elem, float>) {
    std::memcpy(dst, src, static_cast<std::size_t>(n) * sizeof(float));
  } else if constexpr (std::is_same_v<Elem, bfloat16>) {
    for (std::int64_t i = 0; i < n; ++i) {  // the upper 16 bits of a float
      std::uint16_t h;
      std::memcpy(&h, src + i, 2);
      const std::uint32_t w = static_cast<std::uint32_t>(h) << 16;
      std::memcpy(dst + i, &w, 4);
    }
  } else {
    for (std::int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(src[i]);
  }
}

#include "diffattn/cpu/detail/algorithm.inl"

}  // namespace portable
}  // namespace detail
}  // namespace cpu
DIFFATTN_NAMESPACE_END
