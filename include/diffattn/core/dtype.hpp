// diffattn/core/dtype.hpp: element types of the tensors diffattn reads and writes.
//
// Storage types are Eigen's half and bfloat16 on the host: 2-byte, trivially copyable, and
// binary-identical to CUDA's __half and __nv_bfloat16 (same bit layout, round-to-nearest-even
// conversions from float), so one buffer can be handed to every backend.
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include <Eigen/Core>

#include "diffattn/core/config.hpp"

DIFFATTN_NAMESPACE_BEGIN

using half = Eigen::half;
using bfloat16 = Eigen::bfloat16;

/// Element type of q, k, v, out (and dout, dq, dk, dv). Math is fp32 in every kernel; f64 is
/// accepted only by the reference backend (for gradient checks in double).
enum class DType : int { f32 = 0, f16 = 1, bf16 = 2, f64 = 3 };

inline constexpr std::size_t dtype_size(DType t) {
  return t == DType::f64 ? 8 : (t == DType::f32 ? 4 : 2);
}

inline constexpr const char* dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "f32";
    case DType::f16: return "f16";
    case DType::bf16: return "bf16";
    case DType::f64: return "f64";
  }
  return "unknown";
}

template <class T> struct dtype_of;
template <> struct dtype_of<float> { static constexpr DType value = DType::f32; };
template <> struct dtype_of<double> { static constexpr DType value = DType::f64; };
template <> struct dtype_of<half> { static constexpr DType value = DType::f16; };
template <> struct dtype_of<bfloat16> { static constexpr DType value = DType::bf16; };
template <class T> inline constexpr DType dtype_of_v = dtype_of<T>::value;

/// Type of the small fp32 side tensors (lambda vectors, gamma, beta, LSE, saved rows and their
/// gradients): float, except double when the elements are double (reference gradient checks).
template <class Elem>
using param_t = std::conditional_t<std::is_same_v<Elem, double>, double, float>;

/// Calls f(T{}) with T the C++ storage type of `t`. Unknown values call on_error().
template <class F>
decltype(auto) visit_dtype(DType t, F&& f) {
  switch (t) {
    case DType::f16: return f(half{});
    case DType::bf16: return f(bfloat16{});
    case DType::f64: return f(double{});
    case DType::f32:
    default: return f(float{});
  }
}

DIFFATTN_NAMESPACE_END
