// diffattn/cuda/forward.cuh: the CUDA forward (nvcc only).
//
//   diffattn::Status s = diffattn::cuda::forward(params, stream);
//   // or in a workspace of the caller's (the decoding path's partial states; 0 bytes otherwise):
//   std::size_t bytes = diffattn::cuda::forward_workspace_bytes(params);
//   diffattn::Status s = diffattn::cuda::forward(params, workspace, bytes, stream);
//
// Device pointers in params (q1 ... out, the lambda vectors, gamma, beta, extras). Validates
// (nothing is launched or written on error), dispatches to a shipped configuration and
// launches on `stream`; returns the launch status (asynchronous: errors inside the kernel
// surface at the next synchronisation). forward_config<Traits>() is the per-configuration entry
// for users who instantiate their own ForwardTraits (validated the same way).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "diffattn/core/params.hpp"
#include "diffattn/core/status.hpp"
#include "diffattn/core/validate.hpp"
#include "diffattn/cuda/dispatch.hpp"
#include "diffattn/cuda/forward_kernel.hpp"
#include "diffattn/simt/launch.hpp"

DIFFATTN_NAMESPACE_BEGIN
namespace cuda {

namespace detail {
/// The current device's SM count (1 when it cannot be read): the split heuristics' input.
inline int device_sm_count() {
  int dev = 0, sms = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess)
    return 1;
  return sms > 0 ? sms : 1;
}

/// f(workspace, bytes) with `bytes` of device memory allocated and freed in stream order
/// (cudaMallocAsync / cudaFreeAsync; f(nullptr, 0) when bytes is 0). Errors name `what`.
template <class F>
Status with_stream_workspace(std::size_t bytes, cudaStream_t stream, const char* what, F&& f) {
  if (bytes == 0) return f(nullptr, std::size_t{0});
  void* ws = nullptr;
  cudaError_t e = cudaMallocAsync(&ws, bytes, stream);
  if (e != cudaSuccess) return Status::Internal(std::string(what) + " workspace: " + cudaGetErrorString(e));
  const Status s = f(ws, bytes);
  e = cudaFreeAsync(ws, stream);
  if (s.ok() && e != cudaSuccess) return Status::Internal(std::string(what) + " workspace free: " + cudaGetErrorString(e));
  return s;
}

/// SeqParams::append_kv: the new keys into the cache, before the attention in stream order.
inline Status launch_append(const Params& p, cudaStream_t stream) {
  if (!p.seq.append_kv) return Status::Ok();
  const cudaError_t ea = simt::launch_device(append_grid(p), simt::dim3(kAppendThreads), 0, stream, AppendKvKernel{},
                                             make_append_args(p));
  if (ea != cudaSuccess) return Status::Internal(std::string("cuda forward (append_kv) launch: ") + cudaGetErrorString(ea));
  return Status::Ok();
}

/// Launches one configuration of the fused kernel; params must already be valid for it.
template <class Traits>
Status launch_forward(const Params& p, cudaStream_t stream) {
  // 128-row blocks at d >= 64 take up to 135 KiB of shared memory (traits.hpp): more than sm_86
  // and sm_89 parts allow (99 KiB). Say so instead of failing the launch with "invalid argument".
  int dev = 0, optin = 0;
  if (cudaGetDevice(&dev) == cudaSuccess &&
      cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) == cudaSuccess &&
      optin > 0 && Traits::kSmemBytes > optin)
    return Status::Unsupported("cuda forward: head_dim " + std::to_string(Traits::kHeadDim) + " needs " +
                               std::to_string(Traits::kSmemBytes) + " bytes of shared memory per block; this device "
                               "allows " + std::to_string(optin) + " (a 64-row ForwardTraits through forward_config "
                               "fits)");
  Status s = launch_append(p, stream);
  if (!s.ok()) return s;
  const simt::dim3 grid(static_cast<unsigned>((p.seqlen_q + Traits::kBlockM - 1) / Traits::kBlockM),
                        static_cast<unsigned>(p.batch * p.heads));
  const cudaError_t e = simt::launch_device(grid, simt::dim3(Traits::kThreads), Traits::kSmemBytes, stream,
                                            DiffAttnForwardKernel<Traits>{}, make_forward_args(p));
  if (e != cudaSuccess) return Status::Internal(std::string("cuda forward launch: ") + cudaGetErrorString(e));
  return Status::Ok();
}

/// The decoding path of a valid call (plan.use): checks the workspace, then the append, the
/// split kernel and the combine kernel on `stream`.
template <class DT>
Status launch_decode(const Params& p, const DecodePlan& plan, void* workspace, std::size_t workspace_bytes,
                     cudaStream_t stream) {
  if (workspace == nullptr || workspace_bytes < plan.bytes)
    return Status::Invalid("workspace: the cuda forward's decoding path needs " + std::to_string(plan.bytes) +
                           " bytes here (forward_workspace_bytes; got " +
                           std::to_string(workspace == nullptr ? 0 : workspace_bytes) + ")");
  if (reinterpret_cast<std::uintptr_t>(workspace) % 256 != 0)
    return Status::Invalid("workspace: must be 256-byte aligned (cudaMalloc's alignment)");
  Status s = launch_append(p, stream);
  if (!s.ok()) return s;
  return run_decode_steps<DT>(p, plan, workspace, [&](simt::dim3 grid, simt::dim3 block, std::size_t smem, auto kernel,
                                                      const DecodeArgs& a) {
    const cudaError_t e = simt::launch_device(grid, block, smem, stream, kernel, a);
    if (e != cudaSuccess) return Status::Internal(std::string("cuda forward (decoding) launch: ") + cudaGetErrorString(e));
    return Status::Ok();
  });
}
}  // namespace detail

/// Device workspace cuda::forward(p, ...) needs on the current device: 0 where the call runs the
/// fused kernel (or is invalid: forward() then says why); the decoding path's partial states
/// otherwise (splits x B H N x (4 d + 4) floats for DIFF V1).
inline std::size_t forward_workspace_bytes(const Params& p) {
  std::size_t bytes = 0;
  const Status s = validate_and_dispatch(p, caps(), detail::device_sm_count(), [&](auto, const DecodePlan& plan) {
    bytes = plan.use ? plan.bytes : 0;
    return Status::Ok();
  });
  return s.ok() ? bytes : 0;
}

/// One configuration (a user's own ForwardTraits, or a tuning variant): validates like forward()
/// (16-byte aligned bases and strides, which cp.async and the 4-byte output stores need), checks
/// that the params' dtype and head dim are the configuration's, then launches on `stream`.
template <class Traits>
Status forward_config(const Params& p, cudaStream_t stream) {
  BackendCaps c = caps();
  c.head_dims[0] = Traits::kHeadDim;
  for (int i = 1; i < 8; ++i) c.head_dims[i] = 0;
  c.dtype_mask = 1u << static_cast<int>(Traits::kDType);
  Status s = validate(p, c);
  if (!s.ok()) return s;
  Status sup = check_forward_support(p, Traits::kBlockM, Traits::kSinglePass, Traits::kV2, Traits::kBlockN, Traits::kBlockN1);
  if (!sup.ok()) return sup;
  return detail::launch_forward<Traits>(p, stream);
}

/// The CUDA forward in a caller's device workspace of forward_workspace_bytes(p) bytes (256-byte
/// aligned; may be null when that is 0): validate, dispatch, launch on `stream`.
inline Status forward(const Params& p, void* workspace, std::size_t workspace_bytes, cudaStream_t stream = nullptr) {
  return validate_and_dispatch(p, caps(), detail::device_sm_count(), [&](auto traits, const DecodePlan& plan) {
    using Tr = decltype(traits);
    if (plan.use) return detail::launch_decode<DecodeTraitsOf<Tr>>(p, plan, workspace, workspace_bytes, stream);
    return detail::launch_forward<Tr>(p, stream);
  });
}

/// The CUDA forward: validate, dispatch, launch on `stream`; the decoding path's workspace (if
/// the call takes it) allocated and freed in stream order (cudaMallocAsync / cudaFreeAsync).
/// One validation and one plan per call (a decode step is a few microseconds of GPU time).
inline Status forward(const Params& p, cudaStream_t stream = nullptr) {
  return validate_and_dispatch(p, caps(), detail::device_sm_count(), [&](auto traits, const DecodePlan& plan) {
    using Tr = decltype(traits);
    if (!plan.use) return detail::launch_forward<Tr>(p, stream);
    return detail::with_stream_workspace(plan.bytes, stream, "cuda forward", [&](void* ws, std::size_t bytes) {
      return detail::launch_decode<DecodeTraitsOf<Tr>>(p, plan, ws, bytes, stream);
    });
  });
}

}  // namespace cuda
DIFFATTN_NAMESPACE_END
