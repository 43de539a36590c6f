// diffattn/simt/thread.hpp: thread and block indices and sizes, dynamic shared memory, and the
// block barrier.
//
// Host (emulator): each call reads the running fiber; called outside simt::emu::launch they throw
// emu::Error (outside_kernel).
#pragma once

#include <cstddef>
#include <cstdint>

#include "diffattn/simt/config.hpp"
#include "diffattn/simt/smem.hpp"
#if DIFFATTN_SIMT_EMULATED
#include "diffattn/simt/emu/runtime.hpp"
#endif

DIFFATTN_NAMESPACE_BEGIN
namespace simt {

/// threadIdx.
DIFFATTN_DEVICE dim3 thread_idx() {
#if DIFFATTN_DEVICE_PASS
  return dim3(threadIdx.x, threadIdx.y, threadIdx.z);
#elif DIFFATTN_SIMT_EMULATED
  return emu::detail::current("thread_idx").idx;
#else
  DIFFATTN_SIMT_HOST_PASS_STUB();
#endif
}

/// blockIdx.
DIFFATTN_DEVICE dim3 block_idx() {
#if DIFFATTN_DEVICE_PASS
  return dim3(blockIdx.x, blockIdx.y, blockIdx.z);
#elif DIFFATTN_SIMT_EMULATED
  return emu::detail::current("block_idx").blk->block_idx();
#else
  DIFFATTN_SIMT_HOST_PASS_STUB();
#endif
}

/// blockDim.
DIFFATTN_DEVICE dim3 block_dim() {
#if DIFFATTN_DEVICE_PASS
  return dim3(blockDim.x, blockDim.y, blockDim.z);
#elif DIFFATTN_SIMT_EMULATED
  return emu::detail::current("block_dim").blk->params().block;
#else
  DIFFATTN_SIMT_HOST_PASS_STUB();
#endif
}

/// gridDim.
DIFFATTN_DEVICE dim3 grid_dim() {
#if DIFFATTN_DEVICE_PASS
  return dim3(gridDim.x, gridDim.y, gridDim.z);
#elif DIFFATTN_SIMT_EMULATED
  return emu::detail::current("grid_dim").blk->params().grid;
#else
  DIFFATTN_SIMT_HOST_PASS_STUB();
#endif
}

/// Linear index of the thread in its block: x + X * (y + Y * z). Warps are consecutive ranks.
DIFFATTN_DEVICE unsigned thread_rank() {
#if DIFFATTN_DEVICE_PASS
  return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
#elif DIFFATTN_SIMT_EMULATED
  return emu::detail::current("thread_rank").tid;
#else
  DIFFATTN_SIMT_HOST_PASS_STUB();
#endif
}

/// Lane in the warp, 0..31 (%laneid).
DIFFATTN_DEVICE unsigned lane_id() {
#if DIFFATTN_DEVICE_PASS
  unsigned l;
  asm("mov.u32 %0, %%laneid;" : "=r"(l));
  return l;
#elif DIFFATTN_SIMT_EMULATED
  return emu::detail::current("lane_id").tid & 31u;
#else
  DIFFATTN_SIMT_HOST_PASS_STUB();
#endif
}

/// Warp index in the block: thread_rank() / 32 (not the hardware's %warpid).
DIFFATTN_DEVICE unsigned warp_id() { return thread_rank() >> 5; }

/// __syncthreads() (bar.sync 0). Emulator: every thread of the block must arrive; a thread that
/// exited before or exits while others wait is a deadlock fault.
DIFFATTN_DEVICE void syncthreads() {
#if DIFFATTN_DEVICE_PASS
  __syncthreads();
#elif DIFFATTN_SIMT_EMULATED
  auto& f = emu::detail::current("syncthreads");
  f.blk->syncthreads(&f);
#else
  DIFFATTN_SIMT_HOST_PASS_STUB();
#endif
}

/// The block's dynamic shared memory (extern __shared__, 128-byte aligned) as T, at offset 0.
/// There is no static __shared__ in simt kernels: carve everything from this buffer, whose size
/// is the launch's shared-memory argument.
template <class T>
DIFFATTN_DEVICE smem_ptr<T> shared_memory() {
#if DIFFATTN_DEVICE_PASS
  extern __shared__ __align__(128) unsigned char diffattn_simt_dynamic_smem[];
  return smem_ptr<T>(reinterpret_cast<T*>(diffattn_simt_dynamic_smem));
#elif DIFFATTN_SIMT_EMULATED
  (void)emu::detail::current("shared_memory");
  return smem_ptr<T>(std::int64_t{0});
#else
  DIFFATTN_SIMT_HOST_PASS_STUB();
#endif
}

/// Bytes of dynamic shared memory of this launch (%dynamic_smem_size).
DIFFATTN_DEVICE unsigned shared_memory_bytes() {
#if DIFFATTN_DEVICE_PASS
  unsigned n;
  asm("mov.u32 %0, %%dynamic_smem_size;" : "=r"(n));
  return n;
#elif DIFFATTN_SIMT_EMULATED
  return static_cast<unsigned>(emu::detail::current("shared_memory_bytes").blk->params().smem_bytes);
#else
  DIFFATTN_SIMT_HOST_PASS_STUB();
#endif
}

}  // namespace simt
DIFFATTN_NAMESPACE_END
