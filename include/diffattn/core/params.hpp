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

/// Serving layouts (variable-length batches, KV caches, paged KV, split-KV decoding), after
/// FlashAttention-2's flash_attn_varlen_func / flash_attn_with_kvcache and FlashInfer's paged
/// layout. Every field is optional; all unset is the dense layout of the header comment.
///
/// Per sequence b < batch: N_b query tokens and S_b keys.
///   cu_seqlens_q [B + 1] (int32, 0 first, non-decreasing): N_b = cu[b + 1] - cu[b], and q1, q2,
///     out (and lambda.logits, and new_k1 ... when appending) are packed along the token axis:
///     token i of sequence b is at (cu_seqlens_q[b] + i) * stride_t, stride_b unused (0);
///     seqlen_q is then max N_b (a bound: N_b <= seqlen_q) and total_q = cu_seqlens_q[B].
///     Without it N_b = seqlen_q for every b, the dense [b, i, h] layout.
///   cu_seqlens_k [B + 1]: the same for k1, k2, v_lo, v_hi (not with a block table); its
///     lengths are the keys of each sequence unless seqused_k says fewer.
///   seqused_k [B]: keys held by sequence b (FlashAttention's cache_seqlens): S_b =
///     seqused_k[b] (+ N_b when appending). At most the capacity of its storage: seqlen_k
///     (dense), its cu_seqlens_k length, or max_pages * page_size (paged).
///   block_table [B, max_pages] (int32, row stride block_table_stride, 0: max_pages): key j of
///     sequence b is in page block_table[b][j / page_size], row j % page_size; k1, k2, v_lo and
///     v_hi are then page pools: stride_b is the stride between pages (num_pages of them),
///     stride_t between the page_size rows of a page, stride_h between KV heads (FlashInfer's
///     NHD pages). Pages may come in any order and be shared between sequences. Any page_size
///     >= 1 on the CPU backends (they gather key rows one by one); cuda::forward reads whole
///     key tiles from one page: page_size a multiple of its key tiles (32 serves all), in its
///     single-pass kernels only (V1 at d <= 64, V2; the two-pass ones say unsupported).
/// S_b is also bounded by seqlen_k (S_b <= seqlen_k: seqlen_k is max S_b, as FlashAttention's
/// max_seqlen_k). Masks are bottom-right aligned per sequence (diag = S_b - N_b), so chunked
/// prefill and speculative decoding (a few query tokens over a cache) need nothing else.
///
/// append_kv: before attending, the N_b new keys of each sequence (new_k1, new_k2, new_v_lo,
/// new_v_hi, packed like the queries: [b, i, g, :], or cu_seqlens_q's tokens) are written
/// into its cache (k1 ... v_hi, which the call then WRITES through their const views) at rows
/// seqused_k[b] ... seqused_k[b] + N_b - 1, and attention sees S_b = seqused_k[b] + N_b keys.
/// Requires seqused_k. (V2: new_k2 and new_v_hi stay null, as k2 and v_hi.)
///
/// Extras (LSE, A, O_2, rstd, mean) of a call with cu_seqlens_q are packed too: row
/// h * total_q + cu_seqlens_q[b] + i of [H, total_q] (and [H, total_q, dv]), FlashAttention's
/// varlen LSE layout; Params::row_index() gives it for every layout.
///
/// num_splits: split-KV decoding, the keys of each (sequence, head, query block) cut into this
/// many parts whose partial softmax states (both components) are merged in a fixed order;
/// 0: the backend's heuristic. Results are reproducible run to run for a fixed value.
///
/// The int32 tables are read by the backend: host memory for the CPU backends, which check
/// them before anything is written (lengths, monotonicity, page indices in [0, num_pages));
/// device memory for CUDA, where they cannot be checked cheaply (see its documentation).
/// The largest SeqParams::num_splits (split-KV parts merged per query block).
inline constexpr int kMaxSplits = 64;

struct SeqParams {
  const std::int32_t* cu_seqlens_q = nullptr;  ///< [B + 1] or null
  const std::int32_t* cu_seqlens_k = nullptr;  ///< [B + 1] or null (not with block_table)
  const std::int32_t* seqused_k = nullptr;     ///< [B] or null
  std::int64_t total_q = 0;  ///< with cu_seqlens_q: cu_seqlens_q[B], the packed query tokens
  std::int64_t total_k = 0;  ///< with cu_seqlens_k: cu_seqlens_k[B], the packed key tokens
  const std::int32_t* block_table = nullptr;  ///< [B, max_pages] page indices or null
  std::int64_t block_table_stride = 0;        ///< elements between rows (0: max_pages)
  std::int64_t max_pages = 0;                 ///< pages per sequence in the table
  std::int64_t page_size = 0;                 ///< key rows per page
  std::int64_t num_pages = 0;                 ///< pages in each pool (k1, k2, v_lo, v_hi)
  bool append_kv = false;                     ///< write new_* into the cache first (see above)
  ConstTensorRef new_k1, new_k2, new_v_lo, new_v_hi;  ///< append_kv: the new keys, as q
  int num_splits = 0;  ///< split-KV parts per query block (0: heuristic)

  bool varlen_q() const { return cu_seqlens_q != nullptr; }
  bool varlen_k() const { return cu_seqlens_k != nullptr; }
  bool paged() const { return block_table != nullptr; }
  /// Any serving feature but num_splits in use.
  bool any() const { return varlen_q() || varlen_k() || seqused_k != nullptr || paged() || append_kv; }
  DIFFATTN_HD std::int64_t table_stride() const { return block_table_stride != 0 ? block_table_stride : max_pages; }

  // per-sequence geometry, host and device (Params' members of the same names pass its sizes)
  /// N_b; seqlen_q when the queries are dense.
  DIFFATTN_HD std::int64_t q_len(std::int64_t b, std::int64_t seqlen_q) const {
    return cu_seqlens_q ? std::int64_t{cu_seqlens_q[b + 1]} - cu_seqlens_q[b] : seqlen_q;
  }
  /// S_b, after any append; seqlen_k when nothing says otherwise.
  DIFFATTN_HD std::int64_t k_len(std::int64_t b, std::int64_t seqlen_q, std::int64_t seqlen_k) const {
    if (seqused_k) return std::int64_t{seqused_k[b]} + (append_kv ? q_len(b, seqlen_q) : 0);
    if (cu_seqlens_k) return std::int64_t{cu_seqlens_k[b + 1]} - cu_seqlens_k[b];
    return seqlen_k;
  }
  /// Element offset of token 0 of sequence b in a query-side view of token stride st, batch stride sb.
  DIFFATTN_HD std::int64_t q_offset(std::int64_t sb, std::int64_t st, std::int64_t b) const {
    return cu_seqlens_q ? std::int64_t{cu_seqlens_q[b]} * st : b * sb;
  }
  /// Element offset of key row j of sequence b in a key-side view (dense, packed or paged).
  DIFFATTN_HD std::int64_t k_offset(std::int64_t sb, std::int64_t st, std::int64_t b, std::int64_t j) const {
    if (block_table) {
      const std::int64_t page = block_table[b * table_stride() + j / page_size];
      return page * sb + (j % page_size) * st;
    }
    if (cu_seqlens_k) return (std::int64_t{cu_seqlens_k[b]} + j) * st;
    return b * sb + j * st;
  }
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
  SeqParams seq;  ///< variable-length, KV-cache, paged and split-KV layouts (all optional)

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

  // ---- per-sequence geometry (SeqParams; host code reads the int32 tables directly)
  /// Query tokens of sequence b (N_b).
  DIFFATTN_HD std::int64_t q_len(std::int64_t b) const { return seq.q_len(b, seqlen_q); }
  /// Keys sequence b attends to (S_b), after any append.
  DIFFATTN_HD std::int64_t k_len(std::int64_t b) const { return seq.k_len(b, seqlen_q, seqlen_k); }
  /// Element offset of token 0 of sequence b in a query-side view (q1, q2, out, logits, new_*).
  DIFFATTN_HD std::int64_t q_offset(const ConstTensorRef& t, std::int64_t b) const { return seq.q_offset(t.stride_b, t.stride_t, b); }
  DIFFATTN_HD std::int64_t q_offset(const TensorRef& t, std::int64_t b) const { return seq.q_offset(t.stride_b, t.stride_t, b); }
  /// Element offset of key row j of sequence b, KV head 0, in a key-side view (k1 ... v_hi):
  /// dense, packed by cu_seqlens_k, or through the block table.
  DIFFATTN_HD std::int64_t k_offset(const ConstTensorRef& t, std::int64_t b, std::int64_t j) const {
    return seq.k_offset(t.stride_b, t.stride_t, b, j);
  }
  /// Row of (b, h, i) in the [B, H, N] extras (LSE, rstd, mean; times dv for A and O_2), or
  /// of [H, total_q] with cu_seqlens_q.
  DIFFATTN_HD std::int64_t row_index(std::int64_t b, std::int64_t h, std::int64_t i) const {
    return seq.cu_seqlens_q ? h * seq.total_q + seq.cu_seqlens_q[b] + i : (b * heads + h) * seqlen_q + i;
  }
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
