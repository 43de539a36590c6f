// diffattn/simt/math.hpp: exp2 and the 16-bit float conversions and packing of fragments.
//
// Conversions round to nearest even on both sides (device: cvt.rn; host: diffattn::half /
// diffattn::bfloat16, i.e. Eigen, which rounds the same way, subnormals included). NaN payloads
// may differ between the two (the device produces canonical NaNs).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "diffattn/simt/config.hpp"
#if DIFFATTN_SIMT_EMULATED
#include "diffattn/core/dtype.hpp"
#include "diffattn/simt/emu/runtime.hpp"
#endif

DIFFATTN_NAMESPACE_BEGIN
namespace simt {

/// 2^x, fast. Device: ex2.approx.ftz.f32 (max relative error about 2^-22, subnormals flushed);
/// host: std::exp2 (correctly rounded in practice). They differ in the last bits: tests of
/// kernels that use it compare with tolerances.
DIFFATTN_DEVICE float exp2_approx(float x) {
#if DIFFATTN_DEVICE_PASS
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#elif DIFFATTN_SIMT_EMULATED
  return std::exp2(x);
#else
  (void)x;
  DIFFATTN_SIMT_HOST_PASS_STUB();
#endif
}

/// float -> 16-bit float bits, round to nearest even (cvt.rn.f16.f32 / cvt.rn.bf16.f32).
template <fmt16 F>
DIFFATTN_DEVICE std::uint16_t float_to_bits16(float x) {
#if DIFFATTN_DEVICE_PASS
  std::uint16_t h;
  if constexpr (F == fmt16::f16) {
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(x));
  } else {
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(x));
  }
  return h;
#elif DIFFATTN_SIMT_EMULATED
  if constexpr (F == fmt16::f16) {
    return Eigen::numext::bit_cast<std::uint16_t>(diffattn::half(x));
  } else {
    return Eigen::numext::bit_cast<std::uint16_t>(diffattn::bfloat16(x));
  }
#else
  (void)x;
  DIFFATTN_SIMT_HOST_PASS_STUB();
#endif
}

/// 16-bit float bits -> float (exact).
template <fmt16 F>
DIFFATTN_DEVICE float bits16_to_float(std::uint16_t h) {
  if constexpr (F == fmt16::bf16) {
    const std::uint32_t w = std::uint32_t{h} << 16;
    float f;
    std::memcpy(&f, &w, 4);
    return f;
  } else {
#if DIFFATTN_DEVICE_PASS
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
#elif DIFFATTN_SIMT_EMULATED
    return static_cast<float>(Eigen::numext::bit_cast<diffattn::half>(h));
#else
    (void)h;
    DIFFATTN_SIMT_HOST_PASS_STUB();
#endif
  }
}

/// Packs two floats into one register of two 16-bit floats: lo in bits 0-15 (the element of
/// lower index), hi in bits 16-31 (cvt.rn.f16x2.f32 / cvt.rn.bf16x2.f32, one instruction).
template <fmt16 F>
DIFFATTN_DEVICE std::uint32_t pack2(float lo, float hi) {
#if DIFFATTN_DEVICE_PASS
  std::uint32_t r;
  if constexpr (F == fmt16::f16) {
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  } else {
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  }
  return r;
#else
  return std::uint32_t{float_to_bits16<F>(lo)} | (std::uint32_t{float_to_bits16<F>(hi)} << 16);
#endif
}

/// Unpacks a register of two 16-bit floats (lo = bits 0-15).
template <fmt16 F>
DIFFATTN_DEVICE void unpack2(std::uint32_t w, float& lo, float& hi) {
  lo = bits16_to_float<F>(static_cast<std::uint16_t>(w & 0xffffu));
  hi = bits16_to_float<F>(static_cast<std::uint16_t>(w >> 16));
}

/// Packs two 16-bit patterns (lo = element of lower index).
DIFFATTN_HD constexpr std::uint32_t pack_bits2(std::uint16_t lo, std::uint16_t hi) {
  return std::uint32_t{lo} | (std::uint32_t{hi} << 16);
}

/// Stores 32 bits (e.g. a pack2 of two 16-bit outputs) at a 4-byte aligned global address
/// (st.global.b32): no reinterpret_cast of 16-bit storage to uint32_t, so no aliasing question.
DIFFATTN_DEVICE void store_global_b32(void* p, std::uint32_t v) {
#if DIFFATTN_DEVICE_PASS
  asm volatile("st.global.b32 [%0], %1;\n" ::"l"(p), "r"(v) : "memory");
#elif DIFFATTN_SIMT_EMULATED
  if (reinterpret_cast<std::uintptr_t>(p) % 4 != 0)
    throw emu::detail::KernelFault{emu::Fault::bad_argument, "st.global.b32 address is not 4-byte aligned"};
  std::memcpy(p, &v, 4);
#else
  (void)p, (void)v;
  DIFFATTN_SIMT_HOST_PASS_STUB();
#endif
}

}  // namespace simt
DIFFATTN_NAMESPACE_END
