// diffattn/simt/atomic.hpp: global-memory atomics of the kernels.
//
//   simt::atomic_add_f32(p, v);   // *p += v, atomically (no value returned)
//
// Device: red.global.add.f32 (the reduction form: nothing is returned, the SM does not wait).
// Emulator: blocks run on several OS threads, so the host form is a real atomic (a
// compare-and-swap loop on the float's bits, GCC/Clang __atomic builtins). The order in which
// concurrent additions land is not fixed on either side: sums of them are not bitwise
// reproducible (the CUDA backward's deterministic option avoids them).
#pragma once

#include <cstdint>
#include <cstring>

#include "diffattn/simt/config.hpp"
#if DIFFATTN_SIMT_EMULATED
#include "diffattn/simt/emu/runtime.hpp"
#endif

DIFFATTN_NAMESPACE_BEGIN
namespace simt {

/// *p += v atomically, p a 4-byte aligned float in global memory.
DIFFATTN_DEVICE void atomic_add_f32(float* p, float v) {
#if DIFFATTN_DEVICE_PASS
  asm volatile("red.global.add.f32 [%0], %1;\n" ::"l"(p), "f"(v) : "memory");
#elif DIFFATTN_SIMT_EMULATED
  if (reinterpret_cast<std::uintptr_t>(p) % 4 != 0)
    throw emu::detail::KernelFault{emu::Fault::bad_argument, "red.global.add.f32 address is not 4-byte aligned"};
  auto* w = reinterpret_cast<std::uint32_t*>(p);
  std::uint32_t old = __atomic_load_n(w, __ATOMIC_RELAXED), next;
  do {
    float f;
    std::memcpy(&f, &old, 4);
    f += v;
    std::memcpy(&next, &f, 4);
  } while (!__atomic_compare_exchange_n(w, &old, next, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
#else
  (void)p, (void)v;
  DIFFATTN_SIMT_HOST_PASS_STUB();
#endif
}

}  // namespace simt
DIFFATTN_NAMESPACE_END
