// diffattn/cuda/dispatch.hpp: runtime (element type, head dim) -> compile-time configuration.
//
// The shipped configurations are listed ONCE, in DIFFATTN_CUDA_FORWARD_CONFIGS(X): X(fmt, d)
// for each. CMake may define the macro to a trimmed list (DIFFATTN_CUDA_HEAD_DIMS and
// DIFFATTN_CUDA_DTYPES options); the default is every configuration below. Anything not in the
// list is an explicit `unsupported` error naming what is missing, never a silent no-op.
#pragma once

#include <string>

#include "diffattn/core/params.hpp"
#include "diffattn/core/status.hpp"
#include "diffattn/core/validate.hpp"
#include "diffattn/cuda/decode_kernel.hpp"
#include "diffattn/cuda/traits.hpp"

#ifdef DIFFATTN_CUDA_CONFIG_HEADER
#include DIFFATTN_CUDA_CONFIG_HEADER  // a build's trimmed list (CMake generates it)
#endif
#ifndef DIFFATTN_CUDA_FORWARD_CONFIGS
#define DIFFATTN_CUDA_FORWARD_CONFIGS(X) \
  X(f16, 32) X(f16, 64) X(f16, 96) X(f16, 128) X(bf16, 32) X(bf16, 64) X(bf16, 96) X(bf16, 128)
#endif

/// Tuning variants: candidate configurations beside the shipped ones, built only into the GPU
/// benchmark (CMake option DIFFATTN_CUDA_TUNING) and the SASS model (bench/cuda/sass_model.py),
/// so that one run on a GPU picks the shipped choice per head dim by measurement (f16 compiles to
/// the same instructions as bf16, so bf16 alone is swept). X(fmt, d, BlockM, BlockN, SinglePass,
/// BlockN1) spells ForwardTraits<simt::fmt16::fmt, d, BlockM, BlockN, SinglePass, BlockN1>.
/// Beside the shipped d = 64 (128 rows, 16 keys, single pass) and d = 128 (128 rows, 32 keys,
/// two pass, 32-key pass 1):
///   d = 64:  64-row blocks (two blocks per SM instead of one: more latency hiding, the model
///            cannot see it); 32-key tiles (spills 8 B on sm_90); the two-pass form at 64 keys;
///   d = 128: 64-row blocks with 32- or 16-key pass 2, 64-key pass 1; 128 rows with 16 keys.
#ifndef DIFFATTN_CUDA_FORWARD_VARIANTS
#define DIFFATTN_CUDA_FORWARD_VARIANTS(X)                                                      \
  X(bf16, 64, 64, 16, true, 32) X(bf16, 64, 64, 32, true, 32) X(bf16, 64, 64, 64, false, 64)  \
  X(bf16, 128, 64, 32, false, 32) X(bf16, 128, 64, 16, false, 32) X(bf16, 128, 64, 32, false, 64) \
  X(bf16, 128, 128, 16, false, 32)
#endif

DIFFATTN_NAMESPACE_BEGIN
namespace cuda {

/// What the CUDA forward accepts: f16/bf16 elements, the head dims built, 16-byte aligned
/// pointers and row strides (cp.async moves 16 bytes), lambda vectors in device memory.
inline BackendCaps caps() {
  BackendCaps c;
  c.name = "cuda";
  c.dtype_mask = (1u << static_cast<int>(DType::f16)) | (1u << static_cast<int>(DType::bf16));
  int n = 0;
  auto add = [&](std::int64_t d) {
    for (int i = 0; i < n; ++i)
      if (c.head_dims[i] == d) return;
    if (n < 8) c.head_dims[n++] = d;
  };
#define DIFFATTN_X(fmt, d) add(d);
  DIFFATTN_CUDA_FORWARD_CONFIGS(DIFFATTN_X)
#undef DIFFATTN_X
  c.max_head_dim = 256;
  c.align_bytes = 16;
  c.host_readable = false;
  c.max_seqlen = std::int64_t{1} << 30;  // tile indices and shared offsets are int
  c.serving = true;  // varlen, seqused_k, paged, append, split-KV (decode_kernel.hpp)
  return c;
}

/// Calls f(ForwardTraits<fmt, d>{}) (DIFF V1) or f(ForwardTraitsV2<fmt, d>{}) (DIFF V2) for the
/// shipped configuration of (dtype, head_dim) and returns its status, or `unsupported` naming the
/// configuration that is not built. Every (fmt, d) of the list is built for both variants.
template <class F>
Status dispatch_forward(DType dtype, std::int64_t head_dim, Variant variant, F&& f) {
#define DIFFATTN_X(fmt, d)                                                                         \
  if (dtype == DType::fmt && head_dim == d) {                                                      \
    return variant == Variant::diff_v2 ? f(ForwardTraitsV2<simt::fmt16::fmt, d>{})                  \
                                       : f(ForwardTraits<simt::fmt16::fmt, d>{});                   \
  }
  DIFFATTN_CUDA_FORWARD_CONFIGS(DIFFATTN_X)
#undef DIFFATTN_X
  return Status::Unsupported(std::string("cuda forward: no configuration built for dtype ") +
                             dtype_name(dtype) + " and head_dim " + std::to_string(head_dim) +
                             " (see DIFFATTN_CUDA_FORWARD_CONFIGS / the DIFFATTN_CUDA_HEAD_DIMS option)");
}

/// Checks what validate() cannot: options this kernel does not produce, grid limits. `decode`:
/// the call takes the decoding path (decode_kernel.hpp: every d single pass, O_2, pages of any
/// size, splits), whose limits these are instead of the fused kernel's.
inline Status check_forward_support(const Params& p, std::int64_t block_m, bool single_pass, bool v2,
                                    std::int64_t block_n, std::int64_t block_n1, bool decode = false) {
  if (p.is_v2() != v2)
    return Status::Invalid(std::string("variant: this cuda configuration computes DIFF ") + (v2 ? "V2" : "V1") +
                                   " (ForwardTraits' V2 parameter) but the params ask for DIFF " +
                                   (p.is_v2() ? "V2" : "V1"));
  if (!p.is_v2() && p.v_lo.stride_t != p.v_hi.stride_t && !decode)
    return Status::Unsupported("v_lo, v_hi: the cuda forward needs V's two halves at the same token stride (got " +
                               std::to_string(p.v_lo.stride_t) + " and " + std::to_string(p.v_hi.stride_t) + ")");
  if (p.batch * p.heads > 65535)
    return Status::Unsupported("batch * heads must be <= 65535 for the cuda forward (grid.y)");
  if (decode) {
    if (p.batch * p.kv_heads > 65535)
      return Status::Unsupported("batch * kv_heads must be <= 65535 for the cuda forward's decoding path (grid.z)");
    if ((p.seqlen_q * p.n_rep() + 15) / 16 > 65535)
      return Status::Unsupported("seqlen_q * heads / kv_heads must be <= 1048560 for the cuda forward's decoding "
                                 "path with splits (grid.y)");
    return Status::Ok();
  }
  if (p.extras.o2 != nullptr && !single_pass)
    return Status::Unsupported("extras.o2: this head dim runs the two-pass cuda forward (one accumulator), "
                               "which does not produce O_2");
  // serving layouts: the tables are device memory (not checked here: see SeqParams); what the
  // kernel's tiling needs
  if (p.seq.paged() && !single_pass)
    return Status::Unsupported("seq.block_table: a paged cache is read by the single-pass cuda forward only (V1 at "
                               "d <= 64, V2 at every d); the two-pass kernel of V1 d = " + std::to_string(p.head_dim) +
                               " has no registers left for the per-tile page lookup (253 of 255 without it)");
  if (p.seq.paged() && (p.seq.page_size % block_n != 0 || p.seq.page_size % block_n1 != 0))
    return Status::Unsupported("seq.page_size = " + std::to_string(p.seq.page_size) +
                               ": the cuda forward reads whole key tiles from one page, so pages must hold a multiple of " +
                               std::to_string(block_n) + (block_n1 != block_n ? " and " + std::to_string(block_n1) : std::string()) +
                               " keys for this configuration (any multiple of 32 serves every configuration)");
  if (p.seq.num_splits > 1)
    return Status::Unsupported("seq.num_splits = " + std::to_string(p.seq.num_splits) +
                               ": the fused cuda kernel of a ForwardTraits (forward_config) does not split the keys; "
                               "cuda::forward runs such calls on its decoding path");
  if (p.seq.append_kv && p.batch > 65535)
    return Status::Unsupported("batch must be <= 65535 for the cuda forward's append (grid.y)");
  if ((p.seqlen_q + block_m - 1) / block_m > 2147483647)
    return Status::Unsupported("seqlen_q too large for the cuda forward's grid");
  return Status::Ok();
}

/// The decoding path's configuration beside a fused one (the same element type, d, variant).
template <class Traits>
using DecodeTraitsOf = DecodeTraits<Traits::kFmt, Traits::kHeadDim, Traits::kV2>;

/// The steps every CUDA entry point takes: validate(p, caps), dispatch to the shipped
/// configuration, plan the decoding path (on a device of `sms` SMs), check what validate cannot
/// (check_forward_support), then launch(Traits{}, plan): the fused kernel of Traits, or, where
/// plan.use, the decoding path of DecodeTraitsOf<Traits>. Any failing step returns its status
/// and nothing is launched or written.
template <class Launch>
Status validate_and_dispatch(const Params& p, const BackendCaps& caps, int sms, Launch&& launch) {
  Status s = validate(p, caps);
  if (!s.ok()) return s;
  return dispatch_forward(p.dtype, p.head_dim, p.variant, [&](auto traits) {
    using Tr = decltype(traits);
    const DecodePlan plan = make_decode_plan<DecodeTraitsOf<Tr>>(p, sms);
    Status sup = check_forward_support(p, Tr::kBlockM, Tr::kSinglePass, Tr::kV2, Tr::kBlockN, Tr::kBlockN1, plan.use);
    if (!sup.ok()) return sup;
    return launch(traits, plan);
  });
}

}  // namespace cuda
DIFFATTN_NAMESPACE_END
