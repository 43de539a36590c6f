// diffattn/cuda/forward.cuh: the CUDA forward (nvcc only).
//
//   diffattn::Status s = diffattn::cuda::forward(params, stream);
//
// Device pointers in params (q1 ... out, the lambda vectors, gamma, beta, extras). Validates
// (nothing is launched or written on error), dispatches to a shipped configuration and
// launches on `stream`; returns the launch status (asynchronous: errors inside the kernel
// surface at the next synchronisation). forward_config<Traits>() is the per-configuration entry
// for users who instantiate their own ForwardTraits (validated the same way).
#pragma once

#include <cuda_runtime.h>

#include "diffattn/core/params.hpp"
#include "diffattn/core/status.hpp"
#include "diffattn/core/validate.hpp"
#include "diffattn/cuda/dispatch.hpp"
#include "diffattn/cuda/forward_kernel.hpp"
#include "diffattn/simt/launch.hpp"

DIFFATTN_NAMESPACE_BEGIN
namespace cuda {

namespace detail {
/// Launches one configuration; params must already be valid for it.
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
  if (p.seq.append_kv) {  // the new keys into the cache first, in stream order
    const cudaError_t ea = simt::launch_device(append_grid(p), simt::dim3(kAppendThreads), 0, stream, AppendKvKernel{},
                                               make_append_args(p));
    if (ea != cudaSuccess) return Status::Internal(std::string("cuda forward (append_kv) launch: ") + cudaGetErrorString(ea));
  }
  const simt::dim3 grid(static_cast<unsigned>((p.seqlen_q + Traits::kBlockM - 1) / Traits::kBlockM),
                        static_cast<unsigned>(p.batch * p.heads));
  const cudaError_t e = simt::launch_device(grid, simt::dim3(Traits::kThreads), Traits::kSmemBytes, stream,
                                            DiffAttnForwardKernel<Traits>{}, make_forward_args(p));
  if (e != cudaSuccess) return Status::Internal(std::string("cuda forward launch: ") + cudaGetErrorString(e));
  return Status::Ok();
}
}  // namespace detail

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

/// The CUDA forward: validate, dispatch, launch on `stream`.
inline Status forward(const Params& p, cudaStream_t stream = nullptr) {
  return validate_and_dispatch(p, caps(), [&](auto traits) {
    return detail::launch_forward<decltype(traits)>(p, stream);
  });
}

}  // namespace cuda
DIFFATTN_NAMESPACE_END
