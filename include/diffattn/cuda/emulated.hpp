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

#include <cstdint>
#include <string>
#include <vector>

#include "diffattn/cuda/backward_kernel.hpp"
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

/// The SM count the emulated forward's decoding path and the emulated backward plan for (the
/// split counts follow it, as on a device).
constexpr int kEmulatedSmCount = 4;

/// SeqParams::append_kv under the emulator, as cuda::forward launches it (before the attention).
inline Status emulated_append(const Params& p, simt::emu::LaunchConfig cfg) {
  if (!p.seq.append_kv) return Status::Ok();
  cfg.grid = append_grid(p);
  cfg.block = simt::dim3(kAppendThreads);
  cfg.smem_bytes = 0;
  const simt::emu::LaunchResult ra = simt::emu::try_launch(cfg, AppendKvKernel{}, make_append_args(p));
  if (!ra.ok()) return Status::Internal("cuda forward (append_kv) under the emulator: " + ra.error.message);
  return Status::Ok();
}

/// One configuration of the fused kernel under the emulator, without validation
/// (emulated_forward validates).
template <class Traits>
Status emulated_run_forward(const Params& p, simt::emu::LaunchConfig cfg) {
  Status s = emulated_append(p, cfg);
  if (!s.ok()) return s;
  cfg.grid = simt::dim3(static_cast<unsigned>((p.seqlen_q + Traits::kBlockM - 1) / Traits::kBlockM),
                        static_cast<unsigned>(p.batch * p.heads));
  cfg.block = simt::dim3(Traits::kThreads);
  cfg.smem_bytes = Traits::kSmemBytes;
  const simt::emu::LaunchResult r =
      simt::emu::try_launch(cfg, DiffAttnForwardKernel<Traits>{}, make_forward_args(p));
  if (!r.ok()) return Status::Internal("cuda forward under the emulator: " + r.error.message);
  return Status::Ok();
}

/// steps(workspace, launch) on a host workspace of `bytes` (256-byte aligned, as cudaMalloc's),
/// with launch(grid, block, smem, kernel, args) running each kernel under the emulator (`cfg`'s
/// options); errors name `what`. The multi-kernel paths' run_*_steps take both.
template <class Steps>
Status with_emulated_launches(std::size_t bytes, const simt::emu::LaunchConfig& cfg, const char* what, Steps&& steps) {
  std::vector<unsigned char> ws(bytes + 256);
  void* base = ws.data() + (256 - reinterpret_cast<std::uintptr_t>(ws.data()) % 256) % 256;
  return steps(base, [&](simt::dim3 grid, simt::dim3 block, std::size_t smem, auto kernel, const auto& args) {
    simt::emu::LaunchConfig c = cfg;
    c.grid = grid;
    c.block = block;
    c.smem_bytes = smem;
    const simt::emu::LaunchResult r = simt::emu::try_launch(c, kernel, args);
    if (!r.ok()) return Status::Internal(std::string(what) + " under the emulator: " + r.error.message);
    return Status::Ok();
  });
}

/// The decoding path (decode_kernel.hpp) of DecodeTraits DT under the emulator, on a host
/// workspace, without validation. `plan`: make_decode_plan<DT>(p, sms) with plan.use.
template <class DT>
Status emulated_run_decode(const Params& p, const DecodePlan& plan, simt::emu::LaunchConfig cfg) {
  Status s = emulated_append(p, cfg);
  if (!s.ok()) return s;
  return with_emulated_launches(plan.bytes, cfg, "cuda forward (decoding)", [&](void* ws, auto&& launch) {
    return run_decode_steps<DT>(p, plan, ws, launch);
  });
}

/// The CUDA forward on host memory under the emulator: validates, dispatches (the fused kernel or
/// the decoding path, planned for kEmulatedSmCount SMs), launches.
/// `cfg`: emulator options (schedule, seed, workers); grid, block and shared sizes are set here.
inline Status emulated_forward(const Params& p, simt::emu::LaunchConfig cfg = {}) {
  return validate_and_dispatch(p, emulated_caps(), kEmulatedSmCount, [&](auto traits, const DecodePlan& plan) {
    using Tr = decltype(traits);
    if (plan.use) return emulated_run_decode<DecodeTraitsOf<Tr>>(p, plan, cfg);
    return emulated_run_forward<Tr>(p, cfg);
  });
}

/// The CUDA backward's caps under the emulator (host-readable side vectors and saved tensors).
inline BackendCaps emulated_backward_caps() {
  BackendCaps c = backward_caps();
  c.name = "cuda (emulated)";
  c.host_readable = true;
  return c;
}

/// The CUDA backward on host memory under the emulator: validates (nothing is written on error),
/// dispatches, and runs the four kernels of cuda/backward_kernel.hpp on a host workspace.
/// `cfg`: emulator options; grid, block and shared sizes are set here per kernel.
inline Status emulated_backward(const BackwardParams& bp, simt::emu::LaunchConfig cfg = {}) {
  Status s = validate(bp, emulated_backward_caps());
  if (!s.ok()) return s;
  if (!(s = check_backward_support(bp)).ok()) return s;
  return dispatch_backward(bp.fwd.dtype, bp.fwd.head_dim, bp.fwd.variant, [&](auto traits) {
    using Tr = decltype(traits);
    const BackwardPlan pl = make_backward_plan<Tr>(bp.fwd, bp.deterministic, kEmulatedSmCount);
    return with_emulated_launches(pl.bytes, cfg, "cuda backward", [&](void* ws, auto&& launch) {
      return run_backward_steps<Tr>(bp, pl, ws, launch);
    });
  });
}

}  // namespace cuda
DIFFATTN_NAMESPACE_END
