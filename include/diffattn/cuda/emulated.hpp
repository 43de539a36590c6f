// diffattn/cuda/emulated.hpp: run the CUDA forward kernel on the host, under the simt emulator.
//
//   Status s = diffattn::cuda::emulated_forward(params);   // host pointers, any machine
//
// The same kernel source that nvcc compiles (cuda/forward_kernel.hpp) runs with every CUDA
// thread as a fiber and every mma/ldmatrix/cp.async emulated and checked (simt/README.md). It is
// slow (tens of MFLOP/s): it is how CI tests the kernels without a GPU, and how a user can
// debug a configuration on a laptop. Results match a GPU up to rounding (exp2 differs).
#pragma once

#include "diffattn/core/params.hpp"
#include "diffattn/core/status.hpp"
#include "diffattn/core/validate.hpp"
#include "diffattn/cuda/dispatch.hpp"
#include "diffattn/cuda/forward_kernel.hpp"
#include "diffattn/simt/emu/runtime.hpp"
#include "diffattn/simt/launch.hpp"

DIFFATTN_NAMESPACE_BEGIN
namespace cuda {

/// The CUDA backend's caps with host-readable side vectors (the emulator runs on host memory).
inline BackendCaps emulated_caps() {
  BackendCaps c = caps();
  c.name = "cuda (emulated)";
  c.host_readable = true;
  return c;
}

/// One configuration under the emulator, without validation (emulated_forward validates).
template <class Traits>
Status emulated_run_forward(const Params& p, simt::emu::LaunchConfig cfg) {
  cfg.grid = simt::dim3(static_cast<unsigned>((p.seqlen_q + Traits::kBlockM - 1) / Traits::kBlockM),
                        static_cast<unsigned>(p.batch * p.heads));
  cfg.block = simt::dim3(Traits::kThreads);
  cfg.smem_bytes = Traits::kSmemBytes;
  const simt::emu::LaunchResult r =
      simt::emu::try_launch(cfg, DiffAttnForwardKernel<Traits>{}, make_forward_args(p));
  if (!r.ok()) return Status::Internal("cuda forward under the emulator: " + r.error.message);
  return Status::Ok();
}

/// The CUDA forward on host memory under the emulator: validates, dispatches, launches.
/// `cfg`: emulator options (schedule, seed, workers); grid, block and shared sizes are set here.
inline Status emulated_forward(const Params& p, simt::emu::LaunchConfig cfg = {}) {
  return validate_and_dispatch(p, emulated_caps(), [&](auto traits) {
    return emulated_run_forward<decltype(traits)>(p, cfg);
  });
}

}  // namespace cuda
DIFFATTN_NAMESPACE_END
