// diffattn/core/params.hpp: the one plain parameter struct shared by every backend.
//
// Every tensor is a base pointer plus int64 strides counted in ELEMENTS (not bytes). The last
// (channel) dimension is always contiguous. Index order of the strides:
//
//   q1, q2, out, dq1, dq2, dout          [b, i, h, :]   i < N (queries),  h < H   (diff heads)
//   k1, k2, v_lo, v_hi, dk1, dk2, dv_*   [b, j, g, :]   j < S (keys),     g < Hkv (KV groups)
//
// with d channels for q1, q2, k1, k2, v_lo and v_hi, and dv = 2d channels for out (DIFF V1).
// V is two views of d channels each, the lower (v_lo) and upper (v_hi) half of the 2d output
// channels, so that a V whose halves lie at different addresses (HF DiffLlama) needs no copy;
// Params::set_v() takes a V of 2d contiguous channels (the official code's). The official
// interleaved layout of docs/SPEC.md (q [B,N,2H,d], k [B,S,2Hkv,d], v [B,S,Hkv,2d], out [B,N,H,2d])
// is q1 = q, q2 = q + d, head stride 2d: see make_official_params(); make_diffllama_params()
// builds the DiffLlama layout. Any other layout (split Q1/Q2 halves, BHSD, packed QKV) is only
// other strides; nothing is copied.
//
// DIFF V2 (Variant::diff_v2) uses the same struct: q1/q2 are the two query heads of a pair,
// k1 the shared KV head (k2 null), v_lo its V of d channels (v_hi null), out [b, i, h, :d],
// lambda per (b, i, h) from fp32 logits (lambda.logits); no norm, no (1 - lambda_init).
//
// The small side tensors (lambda vectors, gamma, beta, LSE, saved rows) are fp32 (double when
// the elements are f64, reference backend only) and contiguous, with the shapes given below.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

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

/// Which differential attention is computed (docs/SPEC.md).
enum class Variant : int {
  diff_v1 = 0,  ///< DIFF Transformer (ICLR 2025): V and out of 2d channels, lambda from four
                ///< learned vectors and lambda_init, per-head norm, out scaled by 1 - lambda_init
  diff_v2 = 1,  ///< DIFF Transformer V2 (2026): V and out of d channels, out = O_1 - sigmoid(z) O_2
                ///< with z = lambda.logits[b, i, h], K shared by both query heads, no norm
};

enum class MaskKind : int {
  none = 0,    ///< every query sees every key
  causal = 1,  ///< bottom-right aligned: query i sees key j iff j <= i + (S - N)
  window = 2,  ///< sliding window: j in [i + S - N - window_left, i + S - N + window_right]
};

enum class NormKind : int {
  unset = -1, ///< the default: rejected for DIFF V1 (say which norm the model has); V2: none
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

/// DIFF V1: lambda = exp(<lq1, lk1>) - exp(<lq2, lk2>) + lambda_init, computed by the backend
/// (on the device for CUDA, no host synchronisation). Vectors are fp32 of length d, or [H, d]
/// when per_head is set (row h for diff head h). lambda_init has no default: a model's value
/// depends on the layer (lambda_init_for_depth(layer)), and a wrong one is a wrong answer, so
/// validation rejects it unset.
/// DIFF V2: lambda[b, i, h] = sigmoid(logits[b, i, h]), logits a strided fp32 view [B, N, H]
/// (strides in elements, as the other tensors; double for f64); the vectors and lambda_init
/// stay unset.
struct LambdaParams {
  const void* lq1 = nullptr;
  const void* lk1 = nullptr;
  const void* lq2 = nullptr;
  const void* lk2 = nullptr;
  bool per_head = false;
  double lambda_init = std::numeric_limits<double>::quiet_NaN();  ///< unset (NaN) until set
  ConstTensorRef logits{};  ///< DIFF V2 only: [B, N, H] fp32, stride_h of the heads
  bool lambda_init_set() const { return !std::isnan(lambda_init); }
};

/// The per-head norm over the 2d channels of each (token, head), then out = (1 - lambda_init) Y.
struct NormParams {
  NormKind kind = NormKind::unset;  ///< no default: the model's norm must be named
  double eps = 1e-5;
  const void* gamma = nullptr;  ///< [2d] shared by all heads; nullptr: no weight (ones)
  const void* beta = nullptr;   ///< [2d], group only; nullptr: no bias (zeros)
};

/// Optional outputs of the forward. Each may be nullptr (not written).
struct ForwardExtras {
  void* lse1 = nullptr;  ///< [B, H, N] logsumexp of each row of S_1 + mask (-inf: fully masked)
  void* lse2 = nullptr;  ///< [B, H, N] the same for S_2
  void* attn = nullptr;  ///< [B, H, N, dv] A = P_1 V - lambda P_2 V, before the norm
  void* o2 = nullptr;    ///< [B, H, N, dv] O_2 = P_2 V (with A: all the backward needs)
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

  DType dtype = DType::f32;    ///< element type of q1, q2, k1, k2, v_lo, v_hi, out
  double softmax_scale = 0.0;  ///< s; 0 means the default 1/sqrt(d)
  Variant variant = Variant::diff_v1;

  ConstTensorRef q1, q2, k1, k2;
  ConstTensorRef v_lo;  ///< V's channels [0, d): out channels [0, d) (V2: all of V)
  ConstTensorRef v_hi;  ///< V's channels [d, 2d): out channels [d, 2d) (V2: null)
  TensorRef out;

  MaskParams mask;
  LambdaParams lambda;
  NormParams norm;
  ForwardExtras extras;

  /// Sets v_lo and v_hi from one V of 2d contiguous channels per (b, j, g) (the official
  /// layout). dtype and head_dim must be set first.
  void set_v(ConstTensorRef v) {
    v_lo = v;
    v_hi = v;
    if (v.ptr != nullptr)
      v_hi.ptr = static_cast<const char*>(v.ptr) + head_dim * static_cast<std::int64_t>(dtype_size(dtype));
  }

  // derived, shared by every backend
  bool is_v2() const { return variant == Variant::diff_v2; }
  /// Channels of V and of out per head: 2d (V1), d (V2).
  std::int64_t value_dim() const { return is_v2() ? head_dim : 2 * head_dim; }
  std::int64_t n_rep() const { return kv_heads > 0 ? heads / kv_heads : 0; }
  double scale() const {
    return softmax_scale != 0.0 ? softmax_scale : 1.0 / std::sqrt(static_cast<double>(head_dim));
  }
  /// The KV group read by diff head h (flash files of the official code, docs/SPEC.md).
  std::int64_t kv_group(std::int64_t h) const { return h / n_rep(); }
  /// The factor on the normalised output: 1 - lambda_init (V1), 1 (V2).
  double out_scale() const { return is_v2() ? 1.0 : 1.0 - lambda.lambda_init; }
  /// The effective norm: V2 has none; V1 the one set.
  NormKind norm_kind() const { return is_v2() ? NormKind::none : norm.kind; }
  /// The view K_2 is read through: k2 (V1), k1 (V2: one K for both query heads).
  const ConstTensorRef& key2() const { return is_v2() ? k1 : k2; }
};

/// Gradients written by a backward call. All required except the side ones marked optional.
/// dq1, dq2, dk1, dk2, dv_lo, dv_hi: element type and strides as q1 ... v_hi. Side gradients:
/// fp32 (double for f64), contiguous: dlq1..dlk2 of the lambda vectors' shape ([d] or [H, d]),
/// dgamma and dbeta [2d]. Gradients are overwritten, never accumulated into.
/// DIFF V2: dk1 is the gradient of the shared K (dk2 null), dv_lo of V (dv_hi null), and
/// dlogits ([B, N, H], strided as lambda.logits) replaces the four vector gradients.
struct Gradients {
  TensorRef dq1, dq2, dk1, dk2;
  TensorRef dv_lo, dv_hi;
  TensorRef dlogits;  ///< V2 only
  void* dlq1 = nullptr;
  void* dlk1 = nullptr;
  void* dlq2 = nullptr;
  void* dlk2 = nullptr;
  void* dgamma = nullptr;  ///< required when norm.gamma is given
  void* dbeta = nullptr;   ///< required when norm.beta is given
};

/// What the forward saved for the backward: the ForwardExtras of the forward call that made
/// `out` (same params, same inputs), read only. Shapes as ForwardExtras ([B, H, N] rows and
/// [B, H, N, dv] rows, fp32 (double for f64), contiguous). The fused backward (cpu::backward)
/// needs lse1, lse2, attn and o2, plus rstd for NormKind::rms and group and mean for group;
/// the reference backward recomputes everything and accepts them unset (it checks their
/// layout when they are given). saved_from(p.extras) makes one from the forward's extras.
struct SavedTensors {
  const void* lse1 = nullptr;  ///< [B, H, N] logsumexp of S_1 + mask (natural log, -inf: fully masked)
  const void* lse2 = nullptr;  ///< [B, H, N] the same for S_2
  const void* attn = nullptr;  ///< [B, H, N, dv] A = P_1 V - lambda P_2 V (before the norm)
  const void* o2 = nullptr;    ///< [B, H, N, dv] O_2 = P_2 V
  const void* rstd = nullptr;  ///< [B, H, N] the norm's rsqrt(var + eps)
  const void* mean = nullptr;  ///< [B, H, N] the group norm's row mean
};
/// The extras a forward wrote, as the saved tensors of its backward.
inline SavedTensors saved_from(const ForwardExtras& x) {
  return {x.lse1, x.lse2, x.attn, x.o2, x.rstd, x.mean};
}

/// Everything a backward call needs: the forward's params (same inputs), the incoming gradient
/// dout (element type and strides of `out`, which the backward does not read), the forward's
/// saved tensors, and the outputs.
struct BackwardParams {
  Params fwd;
  ConstTensorRef dout;
  SavedTensors saved;
  Gradients grad;
  /// Bitwise reproducible gradients run to run. The CPU backends always are (no atomics: for
  /// a fixed thread count, and cpu::backward for every thread count when B * Hkv >= 4 x
  /// threads), whatever this says; a GPU backward that accumulates dQ with atomics by default
  /// reduces per-split buffers in a fixed order instead when it is set.
  bool deterministic = false;
  /// Sets grad.dv_lo and grad.dv_hi from one dV of 2d contiguous channels (as Params::set_v).
  void set_dv(TensorRef dv) {
    grad.dv_lo = dv;
    grad.dv_hi = dv;
    if (dv.ptr != nullptr)
      grad.dv_hi.ptr = static_cast<char*>(dv.ptr) + fwd.head_dim * static_cast<std::int64_t>(dtype_size(fwd.dtype));
  }
};

/// lambda_init(depth) = 0.8 - 0.6 * exp(-0.3 * depth), depth the 0-based layer index (docs/SPEC.md).
inline double lambda_init_for_depth(int depth) { return 0.8 - 0.6 * std::exp(-0.3 * depth); }

/// Params for the official interleaved layout of docs/SPEC.md, contiguous tensors:
///   q [B, N, 2H, d], k [B, S, 2Hkv, d], v [B, S, Hkv, 2d], out [B, N, H, 2d]
/// (query head 2h + c is component c of diff head h; key head 2g + c is component c of group g).
/// Defaults: no mask, softmax scale 1/sqrt(d). Still to set: p.norm (kind, gamma; eps is
/// 1e-5 as the official RMSNorm's) and p.lambda (lq1 ... lk2 and lambda_init).
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
  p.set_v({v, S * Hkv * 2 * d, Hkv * 2 * d, 2 * d});
  p.out = {out, N * H * 2 * d, H * 2 * d, 2 * d};
  return p;
}

/// Params for the Hugging Face transformers port (DiffLlamaAttention), contiguous tensors as it
/// holds them after its projections, before its transposes:
///   q [B, N, Hq, d], k and v [B, S, Hkvq, d], out [B, N, Hq / 2, 2d]
/// with Hq query heads and Hkvq KV heads of dim d each (Hkvq even, Hq % Hkvq == 0, n_rep =
/// Hq / Hkvq). DiffLlama repeats the KV heads n_rep times, splits the query heads and the
/// repeated KV heads in halves along the head axis, and concatenates V's two halves along
/// channels. So diff head i < H = Hq / 2 takes q1 = query head i, q2 = query head i + H,
/// k1 = KV head i / n_rep, k2 = KV head i / n_rep + Hkvq / 2, and its 2d-channel V is KV heads
/// i / n_rep (channels [0, d)) and i / n_rep + Hkvq / 2 (channels [d, 2d)). In this library's
/// terms: H diff heads over Hkv = Hkvq / 2 KV groups. Its RMSNorm has no weight: set
/// p.norm.kind = NormKind::rms with gamma null, and p.lambda as the layer's.
template <class T>
Params make_diffllama_params(std::int64_t B, std::int64_t N, std::int64_t S, std::int64_t Hq,
                             std::int64_t Hkvq, std::int64_t d, const T* q, const T* k,
                             const T* v, T* out) {
  Params p;
  p.batch = B;
  p.seqlen_q = N;
  p.seqlen_k = S;
  p.heads = Hq / 2;
  p.kv_heads = Hkvq / 2;
  p.head_dim = d;
  p.dtype = dtype_of_v<T>;
  const std::int64_t H = Hq / 2, G = Hkvq / 2;
  auto off = [](const T* t, std::int64_t n) { return t == nullptr ? nullptr : t + n; };
  p.q1 = {q, N * Hq * d, Hq * d, d};
  p.q2 = {off(q, H * d), N * Hq * d, Hq * d, d};
  p.k1 = {k, S * Hkvq * d, Hkvq * d, d};
  p.k2 = {off(k, G * d), S * Hkvq * d, Hkvq * d, d};
  p.v_lo = {v, S * Hkvq * d, Hkvq * d, d};
  p.v_hi = {off(v, G * d), S * Hkvq * d, Hkvq * d, d};
  p.out = {out, N * H * 2 * d, H * 2 * d, 2 * d};
  return p;
}

/// Params for DIFF Transformer V2 (microsoft/unilm Diff-Transformer-V2), contiguous tensors:
///   q [B, N, 2H, d], k and v [B, S, Hkv, d], lambda logits [B, N, H] fp32, out [B, N, H, d]
/// with H output heads (query heads 2h and 2h + 1 form pair h), Hkv KV heads, H % Hkv == 0 (so
/// both heads of a pair lie in one GQA group: KV head h / (H / Hkv)).
/// out_h = softmax(s q_{2h} K^T) V - sigmoid(logits_h) softmax(s q_{2h+1} K^T) V.
template <class T>
Params make_diff_v2_params(std::int64_t B, std::int64_t N, std::int64_t S, std::int64_t H,
                           std::int64_t Hkv, std::int64_t d, const T* q, const T* k, const T* v,
                           const param_t<T>* lambda_logits, T* out) {
  // sizes and the interleaved query pairs as the official layout's; K, V, out of d channels
  Params p = make_official_params<T>(B, N, S, H, Hkv, d, q, nullptr, nullptr, nullptr);
  p.variant = Variant::diff_v2;
  p.k1 = {k, S * Hkv * d, Hkv * d, d};
  p.k2 = {};
  p.v_lo = {v, S * Hkv * d, Hkv * d, d};
  p.v_hi = {};
  p.out = {out, N * H * d, H * d, d};
  p.lambda.logits = {lambda_logits, N * H, H, 1};
  p.norm.kind = NormKind::none;
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
