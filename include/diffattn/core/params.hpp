// diffattn/core/params.hpp: the one plain parameter struct shared by every backend.
//
// Every tensor is a base pointer plus int64 strides counted in ELEMENTS (not bytes). The last
// (channel) dimension is always contiguous. Index order of the strides:
//
//   q1, q2, out, dq1, dq2, dout    [b, i, h, :]   i < N (queries),  h < H   (diff heads)
//   k1, k2, v, dk1, dk2, dv        [b, j, g, :]   j < S (keys),     g < Hkv (KV groups)
//
// with d channels for q1, q2, k1, k2 and dv = 2d channels for v and out. The official
// interleaved layout of SPEC.md (q [B,N,2H,d], k [B,S,2Hkv,d], v [B,S,Hkv,2d], out [B,N,H,2d])
// is q1 = q, q2 = q + d, head stride 2d: see make_official_params(). Any other layout (split
// Q1/Q2 halves, BHSD, packed QKV) is only other strides; nothing is copied.
//
// The small side tensors (lambda vectors, gamma, beta, LSE, saved rows) are fp32 (double when
// the elements are f64, reference backend only) and contiguous, with the shapes given below.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#include "diffattn/core/config.hpp"
#include "diffattn/core/dtype.hpp"

DIFFATTN_NAMESPACE_BEGIN

/// A read-only strided view: element (b, t, h, c) is at ptr + b*sb + t*st + h*sh + c.
struct ConstTensorRef {
  const void* ptr = nullptr;
  std::int64_t stride_b = 0, stride_t = 0, stride_h = 0;
};
/// A writable strided view, same indexing as ConstTensorRef.
struct TensorRef {
  void* ptr = nullptr;
  std::int64_t stride_b = 0, stride_t = 0, stride_h = 0;
  /// A writable view can always be read: dout, or an output reused as the next call's input.
  operator ConstTensorRef() const { return {ptr, stride_b, stride_t, stride_h}; }
};

enum class MaskKind : int {
  none = 0,    ///< every query sees every key
  causal = 1,  ///< bottom-right aligned: query i sees key j iff j <= i + (S - N)
  window = 2,  ///< sliding window: j in [i + S - N - window_left, i + S - N + window_right]
};

enum class NormKind : int {
  none = 0,   ///< Y = A
  rms = 1,    ///< Y = A * rsqrt(mean(A^2) + eps) * gamma   (official; gamma == nullptr: no weight)
  group = 2,  ///< Y = (A - mean) * rsqrt(var + eps) * gamma + beta  (LayerNorm-style GroupNorm)
};

/// The mask: kind plus window sizes. -1 means unbounded on that side.
struct MaskParams {
  MaskKind kind = MaskKind::none;
  std::int64_t window_left = -1;   ///< window only: keys before the diagonal (-1: unbounded)
  std::int64_t window_right = -1;  ///< window only: keys after the diagonal (-1: unbounded)
};

/// lambda = exp(<lq1, lk1>) - exp(<lq2, lk2>) + lambda_init, computed by the backend (on the
/// device for CUDA, no host synchronisation). Vectors are fp32 of length d, or [H, d] when
/// per_head is set (row h for diff head h).
struct LambdaParams {
  const void* lq1 = nullptr;
  const void* lk1 = nullptr;
  const void* lq2 = nullptr;
  const void* lk2 = nullptr;
  bool per_head = false;
  double lambda_init = 0.8;  ///< use lambda_init_for_depth(depth) for the paper's schedule
};

/// The per-head norm over the 2d channels of each (token, head), then out = (1 - lambda_init) Y.
struct NormParams {
  NormKind kind = NormKind::rms;
  double eps = 1e-5;
  const void* gamma = nullptr;  ///< [2d] shared by all heads; nullptr: no weight (ones)
  const void* beta = nullptr;   ///< [2d], group only; nullptr: no bias (zeros)
};

/// Optional outputs of the forward. Each may be nullptr (not written).
struct ForwardExtras {
  void* lse1 = nullptr;  ///< [B, H, N] logsumexp of each row of S_1 + mask (-inf: fully masked)
  void* lse2 = nullptr;  ///< [B, H, N] the same for S_2
  void* attn = nullptr;  ///< [B, H, N, 2d] A = P_1 V - lambda P_2 V, before the norm
  void* o2 = nullptr;    ///< [B, H, N, 2d] O_2 = P_2 V (with A: all the backward needs)
  void* rstd = nullptr;  ///< [B, H, N] the norm's rsqrt(var + eps) (1 for NormKind::none)
  void* mean = nullptr;  ///< [B, H, N] the group norm's row mean (0 for the other norms)
};

/// Everything a forward call needs. Plain data: copy it, pass it by value to kernels.
struct Params {
  // sizes
  std::int64_t batch = 0;      ///< B
  std::int64_t seqlen_q = 0;   ///< N
  std::int64_t seqlen_k = 0;   ///< S
  std::int64_t heads = 0;      ///< H: diff heads
  std::int64_t kv_heads = 0;   ///< Hkv: KV groups, H % Hkv == 0
  std::int64_t head_dim = 0;   ///< d: head dim of each Q/K component; V and out have 2d

  DType dtype = DType::f32;    ///< element type of q1, q2, k1, k2, v, out
  double softmax_scale = 0.0;  ///< s; 0 means the default 1/sqrt(d)

  ConstTensorRef q1, q2, k1, k2, v;
  TensorRef out;

  MaskParams mask;
  LambdaParams lambda;
  NormParams norm;
  ForwardExtras extras;

  // derived, shared by every backend
  std::int64_t value_dim() const { return 2 * head_dim; }
  std::int64_t n_rep() const { return kv_heads > 0 ? heads / kv_heads : 0; }
  double scale() const {
    return softmax_scale != 0.0 ? softmax_scale : 1.0 / std::sqrt(static_cast<double>(head_dim));
  }
  /// The KV group read by diff head h (flash files of the official code, SPEC.md).
  std::int64_t kv_group(std::int64_t h) const { return h / n_rep(); }
  double out_scale() const { return 1.0 - lambda.lambda_init; }
};

/// Gradients written by a backward call. All required except the side ones marked optional.
/// dq1, dq2, dk1, dk2, dv: element type and strides as q1 ... v. Side gradients: fp32
/// (double for f64), contiguous: dlq1..dlk2 of the lambda vectors' shape ([d] or [H, d]),
/// dgamma and dbeta [2d]. Gradients are overwritten, never accumulated into.
struct Gradients {
  TensorRef dq1, dq2, dk1, dk2, dv;
  void* dlq1 = nullptr;
  void* dlk1 = nullptr;
  void* dlq2 = nullptr;
  void* dlk2 = nullptr;
  void* dgamma = nullptr;  ///< required when norm.gamma is given
  void* dbeta = nullptr;   ///< required when norm.beta is given
};

/// Everything a backward call needs: the forward's params (same inputs), the incoming gradient
/// dout (element type and strides of `out`, which the backward does not read), and the outputs.
struct BackwardParams {
  Params fwd;
  ConstTensorRef dout;
  Gradients grad;
};

/// lambda_init(depth) = 0.8 - 0.6 * exp(-0.3 * depth), depth the 0-based layer index (SPEC.md).
inline double lambda_init_for_depth(int depth) { return 0.8 - 0.6 * std::exp(-0.3 * depth); }

/// Params for the official interleaved layout of SPEC.md, contiguous tensors:
///   q [B, N, 2H, d], k [B, S, 2Hkv, d], v [B, S, Hkv, 2d], out [B, N, H, 2d]
/// (query head 2h + c is component c of diff head h; key head 2g + c is component c of group g).
/// Defaults: no mask, softmax scale 1/sqrt(d), RMSNorm eps 1e-5 without gamma (set
/// p.norm.gamma), lambda vectors unset (set p.lambda.lq1 ... lk2 and lambda_init).
template <class T>
Params make_official_params(std::int64_t B, std::int64_t N, std::int64_t S, std::int64_t H,
                            std::int64_t Hkv, std::int64_t d, const T* q, const T* k, const T* v,
                            T* out) {
  Params p;
  p.batch = B;
  p.seqlen_q = N;
  p.seqlen_k = S;
  p.heads = H;
  p.kv_heads = Hkv;
  p.head_dim = d;
  p.dtype = dtype_of_v<T>;
  // the stride between diff heads is 2d: two query (key) heads of d each
  p.q1 = {q, N * 2 * H * d, 2 * H * d, 2 * d};
  p.q2 = {q == nullptr ? nullptr : q + d, N * 2 * H * d, 2 * H * d, 2 * d};
  p.k1 = {k, S * 2 * Hkv * d, 2 * Hkv * d, 2 * d};
  p.k2 = {k == nullptr ? nullptr : k + d, S * 2 * Hkv * d, 2 * Hkv * d, 2 * d};
  p.v = {v, S * Hkv * 2 * d, Hkv * 2 * d, 2 * d};
  p.out = {out, N * H * 2 * d, H * 2 * d, 2 * d};
  return p;
}

/// Strides of a contiguous [B, T, heads, channels] tensor (BSHD), as (stride_b, stride_t, stride_h).
inline ConstTensorRef bshd(const void* ptr, std::int64_t T, std::int64_t heads, std::int64_t ch) {
  return {ptr, T * heads * ch, heads * ch, ch};
}
inline TensorRef bshd(void* ptr, std::int64_t T, std::int64_t heads, std::int64_t ch) {
  return {ptr, T * heads * ch, heads * ch, ch};
}
/// Strides of a contiguous [B, heads, T, channels] tensor (BHSD).
inline ConstTensorRef bhsd(const void* ptr, std::int64_t T, std::int64_t heads, std::int64_t ch) {
  return {ptr, heads * T * ch, ch, T * ch};
}
inline TensorRef bhsd(void* ptr, std::int64_t T, std::int64_t heads, std::int64_t ch) {
  return {ptr, heads * T * ch, ch, T * ch};
}

DIFFATTN_NAMESPACE_END
