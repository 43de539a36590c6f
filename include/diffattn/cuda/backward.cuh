// diffattn/cuda/backward.cuh: the CUDA backward (nvcc only).
//
//   diffattn::BackwardParams bp = ...;            // device pointers; bp.saved from the forward's extras
//   std::size_t bytes = diffattn::cuda::backward_workspace_bytes(bp);
//   diffattn::Status s = diffattn::cuda::backward(bp, workspace, bytes, stream);
//   // or, stream-ordered allocation of the workspace (cudaMallocAsync / cudaFreeAsync):
//   diffattn::Status s = diffattn::cuda::backward(bp, stream);
//
// Validates (nothing is launched or written on error), dispatches to the shipped configuration
// and launches the four kernels of cuda/backward_kernel.hpp on `stream` (asynchronous: errors
// inside a kernel surface at the next synchronisation). With bp.deterministic the key blocks are
// cut into about 2 x SMs / (B x Hkv) splits with a dQ buffer each, summed in split order: the
// gradients are then bitwise reproducible run to run on the same device (the split count, and so
// the bits, follow its SM count). Without it, dQ is accumulated with fp32 atomics.
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "diffattn/core/params.hpp"
#include "diffattn/core/status.hpp"
#include "diffattn/core/validate.hpp"
#include "diffattn/cuda/backward_kernel.hpp"
#include "diffattn/cuda/forward.cuh"  // detail::device_sm_count, with_stream_workspace
#include "diffattn/simt/launch.hpp"

DIFFATTN_NAMESPACE_BEGIN
namespace cuda {

namespace detail {
/// Validation and dispatch shared by the entry points: f(Traits{}, plan) for a valid call.
template <class Fn>
Status with_backward_plan(const BackwardParams& bp, Fn&& f) {
  Status s = validate(bp, backward_caps());
  if (!s.ok()) return s;
  if (!(s = check_backward_support(bp)).ok()) return s;
  return dispatch_backward(bp.fwd.dtype, bp.fwd.head_dim, bp.fwd.variant, [&](auto traits) {
    using Tr = decltype(traits);
    return f(traits, make_backward_plan<Tr>(bp.fwd, bp.deterministic, device_sm_count()));
  });
}
}  // namespace detail

/// Device workspace the backward of `bp` needs on the current device (0 when bp is invalid:
/// backward() then reports why).
inline std::size_t backward_workspace_bytes(const BackwardParams& bp) {
  std::size_t bytes = 0;
  const Status s = detail::with_backward_plan(bp, [&](auto, const BackwardPlan& pl) {
    bytes = pl.bytes;
    return Status::Ok();
  });
  return s.ok() ? bytes : 0;
}

namespace detail {
/// Checks the workspace, then the four launches of one configuration on `stream`.
template <class Traits>
Status launch_backward(const BackwardParams& bp, const BackwardPlan& pl, void* workspace, std::size_t workspace_bytes,
                       cudaStream_t stream) {
  if (workspace == nullptr || workspace_bytes < pl.bytes)
    return Status::Invalid("workspace: the cuda backward needs " + std::to_string(pl.bytes) + " bytes (got " +
                           std::to_string(workspace == nullptr ? 0 : workspace_bytes) + ")");
  if (reinterpret_cast<std::uintptr_t>(workspace) % 256 != 0)
    return Status::Invalid("workspace: must be 256-byte aligned (cudaMalloc's alignment)");
  return run_backward_steps<Traits>(bp, pl, workspace, [&](simt::dim3 grid, simt::dim3 block, std::size_t smem,
                                                          auto kernel, const BackwardArgs& a) {
    const cudaError_t e = simt::launch_device(grid, block, smem, stream, kernel, a);
    if (e != cudaSuccess) return Status::Internal(std::string("cuda backward launch: ") + cudaGetErrorString(e));
    return Status::Ok();
  });
}
}  // namespace detail

/// The CUDA backward on `stream`, in a caller's device workspace of backward_workspace_bytes(bp)
/// (256-byte aligned).
inline Status backward(const BackwardParams& bp, void* workspace, std::size_t workspace_bytes,
                       cudaStream_t stream = nullptr) {
  return detail::with_backward_plan(bp, [&](auto traits, const BackwardPlan& pl) {
    return detail::launch_backward<decltype(traits)>(bp, pl, workspace, workspace_bytes, stream);
  });
}

/// The same, with the workspace allocated and freed in stream order (cudaMallocAsync).
inline Status backward(const BackwardParams& bp, cudaStream_t stream = nullptr) {
  // bytes 0: backward() reports why
  return detail::with_stream_workspace(backward_workspace_bytes(bp), stream, "cuda backward",
                                       [&](void* ws, std::size_t bytes) { return backward(bp, ws, bytes, stream); });
}

/// One configuration (a user's own BackwardTraits): validated like backward() for that
/// configuration's element type and head dim, workspace as make_backward_plan<Traits> says.
template <class Traits>
Status backward_config(const BackwardParams& bp, void* workspace, std::size_t workspace_bytes, cudaStream_t stream) {
  BackendCaps c = backward_caps();
  c.head_dims[0] = Traits::kHeadDim;
  for (int i = 1; i < 8; ++i) c.head_dims[i] = 0;
  c.dtype_mask = 1u << static_cast<int>(Traits::kDType);
  Status s = validate(bp, c);
  if (!s.ok()) return s;
  if (!(s = check_backward_support(bp)).ok()) return s;
  if (bp.fwd.is_v2() != Traits::kV2)
    return Status::Invalid(std::string("variant: this cuda backward configuration is DIFF ") + (Traits::kV2 ? "V2" : "V1"));
  const BackwardPlan pl = make_backward_plan<Traits>(bp.fwd, bp.deterministic, detail::device_sm_count());
  return detail::launch_backward<Traits>(bp, pl, workspace, workspace_bytes, stream);
}

}  // namespace cuda
DIFFATTN_NAMESPACE_END
