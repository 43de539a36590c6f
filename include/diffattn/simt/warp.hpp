// diffattn/simt/warp.hpp: the warp barrier and warp shuffles.
//
// All take a member mask like their CUDA counterparts. Emulator checks (emu/runtime.hpp): the
// mask must include the caller and name only existing, non-exited lanes (bad_argument /
// deadlock); every lane of the mask must call the same primitive with the same mask and width
// (divergent_collective); a lane may only read from a lane inside the mask (bad_argument).
// Values of 4 or 8 bytes (float, int, unsigned, double, ...) are shuffled; 8 bytes as two words.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "diffattn/simt/config.hpp"
#if DIFFATTN_SIMT_EMULATED
#include "diffattn/simt/emu/runtime.hpp"
#endif

DIFFATTN_NAMESPACE_BEGIN
namespace simt {

/// __syncwarp(mask) (bar.warp.sync): the lanes of `mask` wait for each other.
DIFFATTN_DEVICE void syncwarp(std::uint32_t mask = kFullMask) {
#if DIFFATTN_DEVICE_PASS
  __syncwarp(mask);
#elif DIFFATTN_SIMT_EMULATED
  auto& f = emu::detail::current("syncwarp");
  std::uint32_t none = 0;
  f.blk->collective(&f, emu::detail::op_syncwarp, mask, 0, &none, 1,
                    [](emu::detail::WarpSlot&, std::uint32_t) {});
#else
  DIFFATTN_SIMT_HOST_PASS_STUB();
#endif
}

namespace detail {

#if DIFFATTN_SIMT_EMULATED
/// One 32-bit shuffle (PTX shfl.sync semantics with CUDA's width convention).
inline std::uint32_t emu_shfl(std::uint32_t mode, std::uint32_t mask, std::uint32_t value,
                              int arg, int width) {
  auto& f = emu::detail::current("shfl_sync");
  if (width < 1 || width > 32 || (width & (width - 1)) != 0) {
    throw emu::detail::KernelFault{emu::Fault::bad_argument,
                                   "shuffle width " + std::to_string(width) +
                                       " is not a power of two in [1, 32]"};
  }
  const std::uint32_t in[2] = {value, static_cast<std::uint32_t>(arg)};
  const std::uint32_t param = mode | (static_cast<std::uint32_t>(width) << 8);
  const std::uint32_t* out = f.blk->collective(
      &f, emu::detail::op_shfl, mask, param, in, 2,
      [mode, mask, width](emu::detail::WarpSlot& w, std::uint32_t) {
        for (int l = 0; l < 32; ++l) {
          if (!(mask >> l & 1u)) continue;
          const int seg = l & ~(width - 1);
          const int b = static_cast<int>(w.in[l][1]);
          int j = l;
          bool ok = true;
          switch (mode) {
            case emu::detail::shfl_idx: j = seg + (b & (width - 1)); break;
            case emu::detail::shfl_up: j = l - b; ok = j >= seg; break;
            case emu::detail::shfl_down: j = l + b; ok = j < seg + width; break;
            default: j = l ^ b; ok = j >= 0 && j < seg + width; break;
          }
          if (!ok) j = l;
          if (!(mask >> j & 1u)) {
            throw emu::detail::KernelFault{
                emu::Fault::bad_argument,
                "lane " + std::to_string(l) + " of the shuffle reads lane " + std::to_string(j) +
                    ", which is not in the mask " + emu::detail::hex32(mask)};
          }
          w.out[l][0] = w.in[j][0];
        }
      });
  return out[0];
}
#endif

#if DIFFATTN_SIMT_EMULATED
/// vote.sync.any: whether any lane of `mask` passed a nonzero predicate.
inline bool emu_any(std::uint32_t mask, bool pred) {
  auto& f = emu::detail::current("any_sync");
  const std::uint32_t in[1] = {pred ? 1u : 0u};
  const std::uint32_t* out = f.blk->collective(
      &f, emu::detail::op_vote, mask, 0, in, 1, [mask](emu::detail::WarpSlot& w, std::uint32_t) {
        std::uint32_t any = 0;
        for (int l = 0; l < 32; ++l)
          if (mask >> l & 1u) any |= w.in[l][0];
        for (int l = 0; l < 32; ++l)
          if (mask >> l & 1u) w.out[l][0] = any;
      });
  return out[0] != 0;
}
#endif

template <class T>
DIFFATTN_DEVICE T shfl_impl(std::uint32_t mode, std::uint32_t mask, T v, int arg, int width) {
  static_assert(sizeof(T) == 4 || sizeof(T) == 8, "shuffle 4- or 8-byte values");
  static_assert(std::is_trivially_copyable<T>::value, "shuffle trivially copyable values");
  std::uint32_t w[sizeof(T) / 4];
  std::memcpy(w, &v, sizeof(T));
  for (unsigned i = 0; i < sizeof(T) / 4; ++i) {
#if DIFFATTN_DEVICE_PASS
    switch (mode) {
      case 0: w[i] = __shfl_sync(mask, w[i], arg, width); break;
      case 1: w[i] = __shfl_up_sync(mask, w[i], static_cast<unsigned>(arg), width); break;
      case 2: w[i] = __shfl_down_sync(mask, w[i], static_cast<unsigned>(arg), width); break;
      default: w[i] = __shfl_xor_sync(mask, w[i], arg, width); break;
    }
#elif DIFFATTN_SIMT_EMULATED
    w[i] = emu_shfl(mode, mask, w[i], arg, width);
#else
    (void)mode, (void)mask, (void)arg, (void)width;
    DIFFATTN_SIMT_HOST_PASS_STUB();
#endif
  }
  T out;
  std::memcpy(&out, w, sizeof(T));
  return out;
}

}  // namespace detail

/// __shfl_xor_sync (shfl.sync.bfly): the value of lane (lane ^ lane_mask) within segments of
/// `width` lanes; a source beyond the caller's segment yields the caller's own value.
template <class T>
DIFFATTN_DEVICE T shfl_xor_sync(std::uint32_t mask, T v, int lane_mask, int width = kWarpSize) {
  return detail::shfl_impl<T>(3, mask, v, lane_mask, width);
}
/// __shfl_sync (shfl.sync.idx): the value of lane src_lane % width of the caller's segment.
template <class T>
DIFFATTN_DEVICE T shfl_sync(std::uint32_t mask, T v, int src_lane, int width = kWarpSize) {
  return detail::shfl_impl<T>(0, mask, v, src_lane, width);
}
/// __shfl_down_sync (shfl.sync.down): lane + delta, or own value past the segment's end.
template <class T>
DIFFATTN_DEVICE T shfl_down_sync(std::uint32_t mask, T v, unsigned delta, int width = kWarpSize) {
  return detail::shfl_impl<T>(2, mask, v, static_cast<int>(delta), width);
}
/// __shfl_up_sync (shfl.sync.up): lane - delta, or own value before the segment's start.
template <class T>
DIFFATTN_DEVICE T shfl_up_sync(std::uint32_t mask, T v, unsigned delta, int width = kWarpSize) {
  return detail::shfl_impl<T>(1, mask, v, static_cast<int>(delta), width);
}

/// __any_sync (vote.sync.any.pred): true on every lane of `mask` when `pred` holds on any of
/// them. All lanes of `mask` must call it (a warp-uniform branch condition).
DIFFATTN_DEVICE bool any_sync(std::uint32_t mask, bool pred) {
#if DIFFATTN_DEVICE_PASS
  return __any_sync(mask, pred) != 0;
#elif DIFFATTN_SIMT_EMULATED
  return detail::emu_any(mask, pred);
#else
  (void)mask, (void)pred;
  DIFFATTN_SIMT_HOST_PASS_STUB();
  return false;
#endif
}

}  // namespace simt
DIFFATTN_NAMESPACE_END
