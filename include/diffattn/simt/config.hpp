// diffattn/simt/config.hpp: the switch between real instructions and the host emulator, and the
// small index type (dim3) that both sides share.
//
// Three compilation modes reach a simt header:
//   - nvcc's device pass (DIFFATTN_DEVICE_PASS == 1): every primitive is the real instruction;
//   - nvcc's host pass (__CUDACC__ defined, __CUDA_ARCH__ not): the primitives are __device__
//     functions that the host never calls; their bodies are stubs and the emulator is not
//     included at all;
//   - a plain host compiler (g++, clang++): DIFFATTN_SIMT_EMULATED == 1 and every primitive
//     calls the fiber emulator in simt/emu/.
#pragma once

#include <cstdint>

#include "diffattn/core/config.hpp"

#if !defined(__CUDACC__) && !defined(__HIPCC__)
#define DIFFATTN_SIMT_EMULATED 1
#else
#define DIFFATTN_SIMT_EMULATED 0
#endif

// Body of a primitive in nvcc's host pass: never executed (the function is __device__ only).
#define DIFFATTN_SIMT_HOST_PASS_STUB() __builtin_unreachable()

DIFFATTN_NAMESPACE_BEGIN
namespace simt {

/// Thread, block and grid extents and indices (x fastest). Same meaning as CUDA's dim3/uint3;
/// converts implicitly from one unsigned, so `launch(4, 128, ...)` reads like `<<<4, 128>>>`.
struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  constexpr dim3() = default;
  DIFFATTN_HD constexpr dim3(unsigned x_, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}  // NOLINT
  /// x * y * z, as 64 bits (a grid may exceed 2^32 blocks).
  DIFFATTN_HD constexpr std::uint64_t volume() const {
    return std::uint64_t{x} * std::uint64_t{y} * std::uint64_t{z};
  }
  friend DIFFATTN_HD constexpr bool operator==(const dim3& a, const dim3& b) {
    return a.x == b.x && a.y == b.y && a.z == b.z;
  }
  friend DIFFATTN_HD constexpr bool operator!=(const dim3& a, const dim3& b) { return !(a == b); }
};

/// The full-warp mask, for *_sync primitives.
inline constexpr std::uint32_t kFullMask = 0xffffffffu;
/// Threads per warp.
inline constexpr int kWarpSize = 32;

/// The two 16-bit floating formats that tensor cores multiply (fp32 accumulate).
enum class fmt16 : int { f16 = 0, bf16 = 1 };

}  // namespace simt
DIFFATTN_NAMESPACE_END
