// diffattn/simt/launch.hpp: running a simt kernel: the emulator on the host, <<<>>> under nvcc.
//
// A kernel is written once as a functor whose call operator is DIFFATTN_DEVICE:
//
//   struct Scale {
//     DIFFATTN_DEVICE void operator()(float* x, float s, int n) const {
//       int i = simt::block_idx().x * simt::block_dim().x + simt::thread_idx().x;
//       if (i < n) x[i] *= s;
//     }
//   };
//   // host, g++/clang++:  simt::emu::launch(grid, block, smem_bytes, Scale{}, x, 2.f, n);
//   // nvcc:               simt::launch_device(grid, block, smem_bytes, stream, Scale{}, x, 2.f, n);
#pragma once

#include <cstddef>

#include "diffattn/simt/config.hpp"
#if DIFFATTN_SIMT_EMULATED
#include "diffattn/simt/emu/runtime.hpp"
#endif

#if defined(__CUDACC__)
#include <cuda_runtime.h>

DIFFATTN_NAMESPACE_BEGIN
namespace simt {
namespace detail {
/// The only __global__ function: runs the functor (a copy per thread, as kernel parameters).
template <class K, class... Args>
__global__ void kernel_entry(K kernel, Args... args) {
  kernel(args...);
}
}  // namespace detail

/// kernel<<<grid, block, smem_bytes, stream>>>(args...) for a simt functor. Raises the dynamic
/// shared-memory limit of this instantiation when more than 48 KiB is asked for. Returns the
/// launch error (cudaGetLastError), not the kernel's completion.
template <class K, class... Args>
cudaError_t launch_device(dim3 grid, dim3 block, std::size_t smem_bytes, cudaStream_t stream,
                          K kernel, Args... args) {
  auto* fn = &detail::kernel_entry<K, Args...>;
  if (smem_bytes > 48 * 1024) {
    cudaError_t e = cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(smem_bytes));
    if (e != cudaSuccess) return e;
  }
  fn<<<::dim3(grid.x, grid.y, grid.z), ::dim3(block.x, block.y, block.z), smem_bytes, stream>>>(
      kernel, args...);
  return cudaGetLastError();
}

}  // namespace simt
DIFFATTN_NAMESPACE_END
#endif
