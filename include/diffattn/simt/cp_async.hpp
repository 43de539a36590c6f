// diffattn/simt/cp_async.hpp: asynchronous 16-byte copies from global to shared memory (sm_80+).
//
//   cp_async_16(dst, src);  ...  cp_async_commit();       // one group per pipeline stage
//   cp_async_wait<1>();  syncthreads();                   // all but the newest group landed
//
// Emulator: the destination is poisoned (filled with 0xFF bytes and marked) from the issue until
// the issuing thread's wait completes its group; the data is copied from `src` at that wait.
// Any shared access to a poisoned byte (by any thread, ldmatrix included) is a
// cp_async_not_waited fault; returning from the kernel with copies in flight is
// cp_async_in_flight_at_exit. The destination must be 16-byte aligned and in bounds, the source
// 16-byte aligned (bad_argument).
#pragma once

#include <cstdint>

#include "diffattn/simt/config.hpp"
#include "diffattn/simt/smem.hpp"
#if DIFFATTN_SIMT_EMULATED
#include "diffattn/simt/emu/runtime.hpp"
#endif

DIFFATTN_NAMESPACE_BEGIN
namespace simt {

/// cp.async.cg.shared.global [dst], [src], 16: copies 16 bytes, bypassing L1.
template <class T>
DIFFATTN_DEVICE void cp_async_16(smem_ptr<T> dst, const void* src) {
#if DIFFATTN_DEVICE_PASS
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst.smem_addr()), "l"(src));
#elif DIFFATTN_SIMT_EMULATED
  auto& f = emu::detail::current("cp.async");
  f.blk->cp_async(&f, dst.byte_offset(), src, 16);
#else
  (void)dst, (void)src;
  DIFFATTN_SIMT_HOST_PASS_STUB();
#endif
}

/// cp.async.cg.shared.global [dst], [src], 16, src_bytes: copies src_bytes (0..16) and zero-fills
/// the rest of the 16 bytes; with src_bytes == 0 nothing is read (tail tiles: pass a valid
/// pointer anyway).
template <class T>
DIFFATTN_DEVICE void cp_async_16_zfill(smem_ptr<T> dst, const void* src, int src_bytes) {
#if DIFFATTN_DEVICE_PASS
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst.smem_addr()),
               "l"(src), "r"(src_bytes));
#elif DIFFATTN_SIMT_EMULATED
  auto& f = emu::detail::current("cp.async");
  f.blk->cp_async(&f, dst.byte_offset(), src, static_cast<std::uint32_t>(src_bytes));
#else
  (void)dst, (void)src, (void)src_bytes;
  DIFFATTN_SIMT_HOST_PASS_STUB();
#endif
}

/// cp.async.commit_group: closes the group of this thread's copies issued since the last commit.
DIFFATTN_DEVICE void cp_async_commit() {
#if DIFFATTN_DEVICE_PASS
  asm volatile("cp.async.commit_group;\n" ::);
#elif DIFFATTN_SIMT_EMULATED
  auto& f = emu::detail::current("cp.async.commit_group");
  f.blk->cp_async_commit(&f);
#else
  DIFFATTN_SIMT_HOST_PASS_STUB();
#endif
}

/// cp.async.wait_group N: waits until at most the N most recent committed groups of this thread
/// are pending. Other threads see the data only after a following barrier.
template <int N>
DIFFATTN_DEVICE void cp_async_wait() {
  static_assert(N >= 0 && N <= 7, "cp.async.wait_group takes 0..7");
#if DIFFATTN_DEVICE_PASS
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#elif DIFFATTN_SIMT_EMULATED
  auto& f = emu::detail::current("cp.async.wait_group");
  f.blk->cp_async_wait(&f, static_cast<std::uint64_t>(N));
#else
  DIFFATTN_SIMT_HOST_PASS_STUB();
#endif
}

/// cp.async.wait_all: commit_group, then wait_group 0.
DIFFATTN_DEVICE void cp_async_wait_all() {
#if DIFFATTN_DEVICE_PASS
  asm volatile("cp.async.wait_all;\n" ::);
#elif DIFFATTN_SIMT_EMULATED
  auto& f = emu::detail::current("cp.async.wait_all");
  f.blk->cp_async_commit(&f);
  f.blk->cp_async_wait(&f, 0);
#else
  DIFFATTN_SIMT_HOST_PASS_STUB();
#endif
}

}  // namespace simt
DIFFATTN_NAMESPACE_END
