// diffattn/core/validate.hpp: the one validation every entry point calls first.
//
// validate(params, caps) returns ok or a status whose message names the argument and the rule
// it breaks. Entry points return that status before touching any output, so a rejected call
// writes nothing. BackendCaps says what the calling backend can do (element types, head dims,
// alignment, whether the lambda vectors can be read on the host).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

#include "diffattn/core/config.hpp"
#include "diffattn/core/dtype.hpp"
#include "diffattn/core/params.hpp"
#include "diffattn/core/status.hpp"

DIFFATTN_NAMESPACE_BEGIN

/// What a backend supports; validate() checks the params against it.
struct BackendCaps {
  const char* name = "reference";
  unsigned dtype_mask = 0xF;         ///< bit (1 << int(DType)) set: that element type is accepted
  std::int64_t head_dims[8] = {};    ///< accepted d; all zero: any d in [1, max_head_dim]
  std::int64_t max_head_dim = 1024;
  std::int64_t align_bytes = 0;      ///< q/k/v/out base pointers and row strides, in bytes
                                     ///< (0: the element size)
  bool host_readable = true;         ///< lambda vectors are host memory: check them for NaN
  std::int64_t max_seqlen = INT64_MAX;  ///< largest N and S the backend's index types allow
  bool backward_needs_saved = false; ///< the backward reads BackwardParams::saved (a fused one)
  bool backward_o2_optional = false; ///< ... but recomputes what it needs of O_2 when saved.o2 is null
  bool serving = false;              ///< takes Params::seq's layouts (varlen, seqused_k, paged, append)

  bool accepts_dtype(DType t) const {
    const int i = static_cast<int>(t);
    return i >= 0 && i < 4 && ((dtype_mask >> i) & 1u) != 0;
  }
  bool accepts_head_dim(std::int64_t d) const {
    if (d < 1 || d > max_head_dim) return false;
    bool any_listed = false;
    for (std::int64_t h : head_dims) {
      if (h != 0) any_listed = true;
      if (h == d) return true;
    }
    return !any_listed;
  }
};

namespace detail {

// Checked int64 arithmetic: false on overflow.
/// The smallest norm.eps accepted: far below what models use (1e-5 to 1e-8), and far above the
/// about 8.6e-78 under which 1/sqrt(eps) overflows fp32 (a fully masked row is A = 0, whose
/// rstd is exactly 1/sqrt(eps): 0 * inf would be NaN).
inline constexpr double kMinNormEps = 1e-30;

/// A value for an error message: 6 significant digits, exponent form when small or large (1e-80,
/// not std::to_string's "0.000000").
inline std::string fmt_g(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.6g", v);
  return buf;
}

inline bool mul_ok(std::int64_t a, std::int64_t b, std::int64_t* r) {
  return !__builtin_mul_overflow(a, b, r);
}
inline bool add_ok(std::int64_t a, std::int64_t b, std::int64_t* r) {
  return !__builtin_add_overflow(a, b, r);
}

/// One strided tensor as validation sees it: dims (b, t, h) with sizes and strides in
/// elements, `channels` contiguous elements of `elem` bytes each.
struct Layout {
  const char* name = "";
  std::uintptr_t addr = 0;
  std::int64_t size[3] = {1, 1, 1};
  std::int64_t stride[3] = {0, 0, 0};
  std::int64_t channels = 1;
  std::int64_t elem = 1;
  bool output = false;
  // filled by extent(): byte range [lo, hi) covered
  std::uintptr_t lo = 0, hi = 0;
};

/// Byte extent of the tensor; false (with message) on negative strides or int64 overflow.
inline Status extent(Layout& L) {
  std::int64_t last = L.channels - 1;  // element offset of the last element
  for (int k = 0; k < 3; ++k) {
    if (L.stride[k] < 0) {
      return Status::Invalid(std::string(L.name) + ": strides must be >= 0 (got " +
                             std::to_string(L.stride[k]) + ")");
    }
    std::int64_t t;
    if (!mul_ok(L.size[k] - 1, L.stride[k], &t) || !add_ok(last, t, &last)) {
      return Status::Invalid(std::string(L.name) + ": sizes times strides overflow int64");
    }
  }
  std::int64_t bytes;
  if (!add_ok(last, 1, &bytes) || !mul_ok(bytes, L.elem, &bytes) ||
      static_cast<std::uint64_t>(bytes) > UINTPTR_MAX - L.addr) {
    return Status::Invalid(std::string(L.name) + ": byte offsets overflow int64");
  }
  L.lo = L.addr;
  L.hi = L.addr + static_cast<std::uintptr_t>(bytes);
  return Status::Ok();
}

/// The dims of size > 1 of a layout, sorted by stride (smallest first).
struct SortedDims {
  int n = 0;
  std::int64_t stride[3], size[3];
};
inline SortedDims sorted_dims(const Layout& L) {
  SortedDims d;
  for (int k = 0; k < 3; ++k)
    if (L.size[k] > 1) { d.stride[d.n] = L.stride[k]; d.size[d.n] = L.size[k]; ++d.n; }
  for (int a = 0; a < d.n; ++a)  // tiny insertion sort by stride
    for (int b = a + 1; b < d.n; ++b)
      if (d.stride[b] < d.stride[a]) { std::swap(d.stride[a], d.stride[b]); std::swap(d.size[a], d.size[b]); }
  return d;
}

/// True if no two elements share an address: each stride (dims of size > 1 sorted by stride) is
/// at least the extent (size - 1) * stride + inner of everything inside it. With `strict`, each
/// stride must instead cover size * stride of the dim inside (the nesting may_overlap's exact
/// rule needs: then everything inside a dim spans less than its stride).
inline bool non_self_overlapping(const Layout& L, bool strict = false) {
  const SortedDims d = sorted_dims(L);
  std::int64_t inner = L.channels;  // extent (in elements) of everything inside this dim
  for (int a = 0; a < d.n; ++a) {
    if (d.stride[a] < inner) return false;
    std::int64_t t;
    if (strict) {
      if (!mul_ok(d.stride[a], d.size[a], &t)) return true;  // extent beyond int64: checked by extent()
    } else if (!mul_ok(d.stride[a], d.size[a] - 1, &t) || !add_ok(t, inner, &t)) {
      return true;
    }
    inner = t;
  }
  return true;
}

/// True if r = sum over dims k <= top of j_k stride_k + e with |j_k| < size_k and |e| < channels:
/// r is the difference of two element offsets of one strictly nested layout. Everything inside
/// dim k spans less than stride_k, so at most two j_k are possible at each level: r / stride_k
/// rounded either way (three candidates are tried, the recursion is 3 levels at most).
inline bool is_offset_difference(std::int64_t r, const SortedDims& d, int top, std::int64_t channels) {
  if (top < 0) return r > -channels && r < channels;
  const std::int64_t j0 = r / d.stride[top];
  for (std::int64_t j = j0 - 1; j <= j0 + 1; ++j) {
    if (j <= -d.size[top] || j >= d.size[top]) continue;
    if (is_offset_difference(r - j * d.stride[top], d, top - 1, channels)) return true;
  }
  return false;
}

/// True if the two tensors may share a byte. Exact when both have the same shape and strides
/// and the strides nest (each covers the dims inside it): the official layout's dq1 and dq2
/// (interleaved, d apart) and the DiffLlama layout's (the two halves of the head axis, H d
/// apart) are disjoint. Conservative (byte ranges intersect) otherwise.
inline bool may_overlap(const Layout& a, const Layout& b) {
  if (a.hi <= b.lo || b.hi <= a.lo) return false;
  bool same = a.elem == b.elem && a.channels == b.channels;
  for (int k = 0; k < 3 && same; ++k)
    same = a.size[k] == b.size[k] && (a.size[k] == 1 || a.stride[k] == b.stride[k]);
  if (!same) return true;
  const std::int64_t delta_bytes = static_cast<std::int64_t>(b.addr) - static_cast<std::int64_t>(a.addr);
  if (delta_bytes % a.elem != 0) return true;
  if (!non_self_overlapping(a, /*strict=*/true)) return true;
  const SortedDims d = sorted_dims(a);
  return is_offset_difference(delta_bytes / a.elem, d, d.n - 1, a.channels);
}

inline Status check_layouts(std::vector<Layout>& all) {
  for (Layout& L : all) {
    Status s = extent(L);
    if (!s.ok()) return s;
  }
  for (const Layout& L : all) {
    if (L.output && !non_self_overlapping(L)) {
      return Status::Invalid(std::string(L.name) +
                             ": strides make elements of this output overlap each other");
    }
  }
  for (std::size_t i = 0; i < all.size(); ++i) {
    for (std::size_t j = 0; j < all.size(); ++j) {
      if (i == j || !all[i].output || (all[j].output && j < i)) continue;
      if (may_overlap(all[i], all[j])) {
        return Status::Invalid(std::string(all[i].name) + " overlaps " +
                               (all[j].output ? "output " : "input ") + all[j].name +
                               ": outputs must not share memory with inputs or other outputs");
      }
    }
  }
  return Status::Ok();
}

inline bool has_nan_or_inf(const void* p, std::int64_t n, bool is_double) {
  for (std::int64_t i = 0; i < n; ++i) {
    const double x = is_double ? static_cast<const double*>(p)[i] : static_cast<const float*>(p)[i];
    if (!std::isfinite(x)) return true;
  }
  return false;
}

/// Checks one strided tensor (null, alignment, strides) and records its layout.
inline Status add_tensor(std::vector<Layout>& layouts, const BackendCaps& caps, DType dtype,
                         std::int64_t batch, const char* name, const void* ptr, std::int64_t sb,
                         std::int64_t st, std::int64_t sh, std::int64_t T, std::int64_t heads,
                         std::int64_t ch, bool output) {
  const std::int64_t esz = static_cast<std::int64_t>(dtype_size(dtype));
  const std::int64_t align = caps.align_bytes > 0 ? caps.align_bytes : esz;
  if (ptr == nullptr) return Status::Invalid(std::string(name) + " is null");
  if (reinterpret_cast<std::uintptr_t>(ptr) % align != 0)
    return Status::Invalid(std::string(name) + " is not aligned to " + std::to_string(align) +
                           " bytes as the " + caps.name + " backend needs");
  const std::int64_t sizes[3] = {batch, T, heads}, strides[3] = {sb, st, sh};
  for (int k = 0; k < 3; ++k) {
    const std::int64_t s2 = strides[k];
    std::int64_t bytes;
    if (s2 < 0)
      return Status::Invalid(std::string(name) + ": strides must be >= 0 (got " + std::to_string(s2) + ")");
    if (sizes[k] > 1 && mul_ok(s2, esz, &bytes) && bytes % align != 0)
      return Status::Invalid(std::string(name) + ": strides must be multiples of " +
                             std::to_string(align / esz) + " elements (" + std::to_string(align) +
                             " bytes) for the " + caps.name + " backend");
  }
  Layout L;
  L.name = name;
  L.addr = reinterpret_cast<std::uintptr_t>(ptr);
  L.size[0] = batch; L.size[1] = T; L.size[2] = heads;
  L.stride[0] = sb; L.stride[1] = st; L.stride[2] = sh;
  L.channels = ch;
  L.elem = esz;
  L.output = output;
  layouts.push_back(L);
  return Status::Ok();
}

/// Records a contiguous side vector (fp32/f64) when present.
inline void add_side(std::vector<Layout>& layouts, const char* name, const void* ptr,
                     std::int64_t n, std::int64_t elem, bool output) {
  if (ptr == nullptr) return;
  Layout L;
  L.name = name;
  L.addr = reinterpret_cast<std::uintptr_t>(ptr);
  L.channels = n;
  L.elem = elem;
  L.output = output;
  layouts.push_back(L);
}

/// Records DIFF V2's strided [B, N, H] lambda logits (one fp32/f64 value per (b, i, h)).
inline Status add_logits(std::vector<Layout>& layouts, const char* name, const ConstTensorRef& t,
                         std::int64_t batch, std::int64_t N, std::int64_t H, std::int64_t elem,
                         bool output) {
  if (t.ptr == nullptr) return Status::Invalid(std::string(name) + " is null");
  if (reinterpret_cast<std::uintptr_t>(t.ptr) % elem != 0)
    return Status::Invalid(std::string(name) + " is not aligned to its element size");
  Layout L;
  L.name = name;
  L.addr = reinterpret_cast<std::uintptr_t>(t.ptr);
  L.size[0] = batch; L.size[1] = N; L.size[2] = H;
  L.stride[0] = t.stride_b; L.stride[1] = t.stride_t; L.stride[2] = t.stride_h;
  L.channels = 1;
  L.elem = elem;
  L.output = output;
  layouts.push_back(L);
  return Status::Ok();
}

/// Shared by forward and backward: sizes, options, inputs; collects layouts of the inputs and
/// of the forward outputs (when `with_forward_outputs`) for the overlap checks.
inline Status validate_common(const Params& p, const BackendCaps& caps, bool with_forward_outputs,
                              std::vector<Layout>& layouts) {
  auto bad = [](const std::string& m) { return Status::Invalid(m); };
  auto sz = [&](const char* name, std::int64_t v) -> Status {
    if (v <= 0) return bad(std::string(name) + " must be > 0 (got " + std::to_string(v) + ")");
    return Status::Ok();
  };
  Status s;
  if (!(s = sz("batch", p.batch)).ok()) return s;
  if (!(s = sz("seqlen_q", p.seqlen_q)).ok()) return s;
  if (!(s = sz("seqlen_k", p.seqlen_k)).ok()) return s;
  if (!(s = sz("heads", p.heads)).ok()) return s;
  if (!(s = sz("kv_heads", p.kv_heads)).ok()) return s;
  if (!(s = sz("head_dim", p.head_dim)).ok()) return s;
  if (p.seqlen_q > caps.max_seqlen || p.seqlen_k > caps.max_seqlen) {
    return Status::Unsupported(std::string("seqlen_q/seqlen_k: the ") + caps.name +
                               " backend supports sequences of at most " + std::to_string(caps.max_seqlen) +
                               " (got N = " + std::to_string(p.seqlen_q) + ", S = " + std::to_string(p.seqlen_k) + ")");
  }
  if (p.heads % p.kv_heads != 0) {
    return bad("heads must be a multiple of kv_heads (heads = " + std::to_string(p.heads) +
               ", kv_heads = " + std::to_string(p.kv_heads) + ")");
  }
  const int dt = static_cast<int>(p.dtype);
  if (dt < 0 || dt > 3) return bad("dtype: unknown element type " + std::to_string(dt));
  if (!caps.accepts_dtype(p.dtype)) {
    return Status::Unsupported(std::string("dtype: the ") + caps.name + " backend does not support " +
                               dtype_name(p.dtype));
  }
  if (!caps.accepts_head_dim(p.head_dim)) {
    std::string list;
    for (std::int64_t h : caps.head_dims)
      if (h) list += (list.empty() ? "" : ", ") + std::to_string(h);
    if (list.empty()) list = "1.." + std::to_string(caps.max_head_dim);
    return Status::Unsupported("head_dim: the " + std::string(caps.name) +
                               " backend does not support d = " + std::to_string(p.head_dim) +
                               " (supported: " + list + ")");
  }
  if (!std::isfinite(p.softmax_scale) || p.softmax_scale < 0) {
    return bad("softmax_scale must be finite and > 0 (0 selects 1/sqrt(head_dim))");
  }

  // mask
  const MaskParams& m = p.mask;
  switch (m.kind) {
    case MaskKind::none:
      if (m.window_left != -1 || m.window_right != -1)
        return bad("mask: window_left/window_right are set but mask.kind is none (use MaskKind::window)");
      break;
    case MaskKind::causal:
      if (m.window_left != -1 || (m.window_right != -1 && m.window_right != 0))
        return bad("mask: causal contradicts window_left/window_right (causal is window (-1, 0); "
                   "use MaskKind::window for a local causal window)");
      break;
    case MaskKind::window:
      if (m.window_left < -1 || m.window_right < -1)
        return bad("mask: window_left and window_right must be >= 0, or -1 for unbounded");
      if (m.window_left == -1 && m.window_right == -1)
        return bad("mask: a window with both sides unbounded is no mask (use MaskKind::none)");
      break;
    default:
      return bad("mask.kind: unknown mask kind " + std::to_string(static_cast<int>(m.kind)));
  }

  const int var = static_cast<int>(p.variant);
  if (var < 0 || var > 1) return bad("variant: unknown variant " + std::to_string(var));
  const bool v2 = p.is_v2();

  // lambda
  const LambdaParams& l = p.lambda;
  const char* lnames[4] = {"lambda.lq1", "lambda.lk1", "lambda.lq2", "lambda.lk2"};
  const void* lptrs[4] = {l.lq1, l.lk1, l.lq2, l.lk2};
  const bool dbl = p.dtype == DType::f64;
  const std::int64_t pelem = dbl ? 8 : 4;
  std::int64_t lam_len = 0, lam_bytes = 0;
  if (v2) {
    for (int i = 0; i < 4; ++i)
      if (lptrs[i] != nullptr)
        return bad(std::string(lnames[i]) + " is set, but DIFF V2 takes lambda from lambda.logits");
    if (l.per_head) return bad("lambda.per_head is set, but DIFF V2 takes lambda per token and head from lambda.logits");
    if (l.lambda_init_set())
      return bad("lambda.lambda_init is set, but DIFF V2 has no lambda_init (no 1 - lambda_init factor): leave it unset");
    if (l.logits.ptr == nullptr) return bad("lambda.logits is null (DIFF V2 needs the [B, N, H] fp32 lambda logits)");
    if (reinterpret_cast<std::uintptr_t>(l.logits.ptr) % pelem != 0)
      return bad("lambda.logits is not aligned to its element size");
  } else {
    if (!l.lambda_init_set())
      return bad("lambda.lambda_init is unset: set the layer's value, lambda_init_for_depth(layer) with the "
                 "0-based layer index for the paper's schedule");
    if (!std::isfinite(l.lambda_init)) return bad("lambda.lambda_init must be finite");
    if (l.logits.ptr != nullptr) return bad("lambda.logits is set, but only DIFF V2 (Variant::diff_v2) reads it");
    if (!mul_ok(l.per_head ? p.heads : 1, p.head_dim, &lam_len) || !mul_ok(lam_len, pelem, &lam_bytes))
      return bad("lambda: heads * head_dim elements of a per-head lambda vector overflow int64");
    for (int i = 0; i < 4; ++i) {
      if (lptrs[i] == nullptr) return bad(std::string(lnames[i]) + " is null");
      if (reinterpret_cast<std::uintptr_t>(lptrs[i]) % pelem != 0)
        return bad(std::string(lnames[i]) + " is not aligned to its element size");
    }
  }

  // norm
  const NormParams& nm = p.norm;
  if (nm.kind != NormKind::unset && nm.kind != NormKind::none && nm.kind != NormKind::rms &&
      nm.kind != NormKind::group)
    return bad("norm.kind: unknown norm kind " + std::to_string(static_cast<int>(nm.kind)));
  if (v2 && nm.kind != NormKind::unset && nm.kind != NormKind::none)
    return bad("norm.kind: DIFF V2 has no per-head norm (leave norm.kind none)");
  if (!v2 && nm.kind == NormKind::unset)
    return bad("norm.kind is unset: NormKind::rms (official; gamma null for no weight, as DiffLlama), "
               "NormKind::group or NormKind::none");
  if (nm.kind != NormKind::none && !(nm.eps >= kMinNormEps && std::isfinite(nm.eps)))
    return bad("norm.eps must be finite and >= 1e-30 (got " + fmt_g(nm.eps) +
               "; below about 1e-77, 1/sqrt(eps) overflows fp32 and a fully masked row would be NaN)");
  if ((nm.kind == NormKind::none || nm.kind == NormKind::unset) && (nm.gamma || nm.beta))
    return bad("norm.gamma/norm.beta are set but norm.kind is none");
  if (nm.kind == NormKind::rms && nm.beta)
    return bad("norm.beta: only NormKind::group has a bias");
  for (const void* w : {nm.gamma, nm.beta})
    if (w && reinterpret_cast<std::uintptr_t>(w) % pelem != 0)
      return bad(std::string(w == nm.gamma ? "norm.gamma" : "norm.beta") +
                 " is not aligned to its element size");

  // serving layouts (Params::seq): sizes here, the tables' contents in check_seq_tables()
  const SeqParams& sq = p.seq;
  if (sq.num_splits < 0 || sq.num_splits > kMaxSplits)
    return bad("seq.num_splits = " + std::to_string(sq.num_splits) + ": must be in [0, " + std::to_string(kMaxSplits) +
               "] (0: the backend's heuristic)");
  if (sq.any() && !caps.serving) {
    const char* what = sq.varlen_q() ? "seq.cu_seqlens_q" : sq.varlen_k() ? "seq.cu_seqlens_k" : sq.paged() ? "seq.block_table"
                     : sq.seqused_k ? "seq.seqused_k" : "seq.append_kv";
    return Status::Unsupported(std::string(what) + ": the " + caps.name +
                               " backend takes the dense layout only (variable-length, KV-cache and paged layouts: "
                               "reference and cpu backends)");
  }
  if (sq.varlen_q() && (sq.total_q < 1 || sq.total_q > INT32_MAX))
    return bad("seq.total_q = " + std::to_string(sq.total_q) + ": with seq.cu_seqlens_q it must be cu_seqlens_q[batch], in [1, 2^31)");
  if (!sq.varlen_q() && sq.total_q != 0) return bad("seq.total_q is set but seq.cu_seqlens_q is null");
  if (sq.varlen_k() && (sq.total_k < 1 || sq.total_k > INT32_MAX))
    return bad("seq.total_k = " + std::to_string(sq.total_k) + ": with seq.cu_seqlens_k it must be cu_seqlens_k[batch], in [1, 2^31)");
  if (!sq.varlen_k() && sq.total_k != 0) return bad("seq.total_k is set but seq.cu_seqlens_k is null");
  // the totals size the packed tensors' extents: checked before them where the tables are readable
  if (caps.host_readable && caps.serving) {
    if (sq.varlen_q() && sq.cu_seqlens_q[p.batch] != sq.total_q)
      return bad("seq.cu_seqlens_q[batch] = " + std::to_string(sq.cu_seqlens_q[p.batch]) + " but seq.total_q = " +
                 std::to_string(sq.total_q));
    if (sq.varlen_k() && sq.cu_seqlens_k[p.batch] != sq.total_k)
      return bad("seq.cu_seqlens_k[batch] = " + std::to_string(sq.cu_seqlens_k[p.batch]) + " but seq.total_k = " +
                 std::to_string(sq.total_k));
  }
  if (sq.paged()) {
    if (sq.varlen_k()) return bad("seq.cu_seqlens_k and seq.block_table are both set: a paged cache takes its lengths from seq.seqused_k");
    if (sq.page_size < 1 || sq.page_size > INT32_MAX) return bad("seq.page_size = " + std::to_string(sq.page_size) + ": must be in [1, 2^31)");
    if (sq.max_pages < 1) return bad("seq.max_pages = " + std::to_string(sq.max_pages) + ": must be >= 1 with seq.block_table");
    if (sq.num_pages < 1) return bad("seq.num_pages = " + std::to_string(sq.num_pages) + ": must be >= 1 with seq.block_table");
    if (sq.block_table_stride != 0 && sq.block_table_stride < sq.max_pages)
      return bad("seq.block_table_stride = " + std::to_string(sq.block_table_stride) + ": must be 0 or >= seq.max_pages (" +
                 std::to_string(sq.max_pages) + ")");
    std::int64_t cap;
    if (!mul_ok(sq.max_pages, sq.page_size, &cap)) return bad("seq.max_pages * seq.page_size overflows int64");
    if (cap < p.seqlen_k)
      return bad("seqlen_k = " + std::to_string(p.seqlen_k) + " is more than a sequence's pages hold (seq.max_pages * seq.page_size = " +
                 std::to_string(cap) + ")");
  } else if (sq.block_table_stride != 0 || sq.max_pages != 0 || sq.page_size != 0 || sq.num_pages != 0) {
    return bad("seq.page_size/max_pages/num_pages/block_table_stride are set but seq.block_table is null");
  }
  if (sq.append_kv && sq.seqused_k == nullptr)
    return bad("seq.append_kv needs seq.seqused_k (the cache lengths before the new keys are appended)");
  if (!sq.append_kv && (sq.new_k1.ptr || sq.new_k2.ptr || sq.new_v_lo.ptr || sq.new_v_hi.ptr))
    return bad("seq.new_k1/new_k2/new_v_lo/new_v_hi are set but seq.append_kv is false");

  // main tensors: query-side views [B, N, heads] (packed: [1, total_q, heads]); key-side views
  // [B, S, G] (packed: [1, total_k, G]; paged: [num_pages, page_size, G])
  const std::int64_t N = p.seqlen_q, S = p.seqlen_k, H = p.heads, G = p.kv_heads, d = p.head_dim;
  const std::int64_t qb = sq.varlen_q() ? 1 : p.batch, qT = sq.varlen_q() ? sq.total_q : N;
  const std::int64_t kb = sq.paged() ? sq.num_pages : sq.varlen_k() ? 1 : p.batch;
  const std::int64_t kT = sq.paged() ? sq.page_size : sq.varlen_k() ? sq.total_k : S;
  auto qin = [&](const char* n, const ConstTensorRef& t, std::int64_t hh, std::int64_t ch) {
    return add_tensor(layouts, caps, p.dtype, qb, n, t.ptr, t.stride_b, t.stride_t, t.stride_h, qT, hh, ch, false);
  };
  // the cache is written when appending: an output for the overlap checks
  auto kin = [&](const char* n, const ConstTensorRef& t, std::int64_t ch) {
    return add_tensor(layouts, caps, p.dtype, kb, n, t.ptr, t.stride_b, t.stride_t, t.stride_h, kT, G, ch,
                      sq.append_kv && with_forward_outputs);
  };
  if (!(s = qin("q1", p.q1, H, d)).ok()) return s;
  if (!(s = qin("q2", p.q2, H, d)).ok()) return s;
  if (!(s = kin("k1", p.k1, d)).ok()) return s;
  const std::int64_t dv = p.value_dim();
  if (v2) {
    if (p.k2.ptr != nullptr) return bad("k2 is set, but in DIFF V2 both query heads of a pair read K through k1: leave k2 null");
    if (p.v_hi.ptr != nullptr) return bad("v_hi is set, but DIFF V2's V has d channels, all in v_lo: leave v_hi null");
  } else if (!(s = kin("k2", p.k2, d)).ok()) {
    return s;
  }
  if (!(s = kin("v_lo", p.v_lo, d)).ok()) return s;
  if (!v2 && !(s = kin("v_hi", p.v_hi, d)).ok()) return s;
  if (sq.append_kv) {
    if (v2 && (sq.new_k2.ptr || sq.new_v_hi.ptr))
      return bad("seq.new_k2/new_v_hi are set, but DIFF V2 has one K and a V of d channels: leave them null");
    if (!(s = qin("seq.new_k1", sq.new_k1, G, d)).ok()) return s;
    if (!v2 && !(s = qin("seq.new_k2", sq.new_k2, G, d)).ok()) return s;
    if (!(s = qin("seq.new_v_lo", sq.new_v_lo, G, d)).ok()) return s;
    if (!v2 && !(s = qin("seq.new_v_hi", sq.new_v_hi, G, d)).ok()) return s;
  }
  if (with_forward_outputs) {
    if (!(s = add_tensor(layouts, caps, p.dtype, qb, "out", p.out.ptr, p.out.stride_b, p.out.stride_t, p.out.stride_h, qT, H, dv, true)).ok())
      return s;
  }
  if (v2 && !(s = add_logits(layouts, "lambda.logits", l.logits, qb, qT, H, pelem, false)).ok()) return s;
  // the int32 tables (inputs)
  add_side(layouts, "seq.cu_seqlens_q", sq.cu_seqlens_q, p.batch + 1, 4, false);
  add_side(layouts, "seq.cu_seqlens_k", sq.cu_seqlens_k, p.batch + 1, 4, false);
  add_side(layouts, "seq.seqused_k", sq.seqused_k, p.batch, 4, false);
  if (sq.paged()) {
    std::int64_t n;
    if (!mul_ok(p.batch - 1, sq.table_stride(), &n) || !add_ok(n, sq.max_pages, &n))
      return bad("seq.block_table: batch * block_table_stride overflows int64");
    add_side(layouts, "seq.block_table", sq.block_table, n, 4, false);
  }
  for (const void* t : {static_cast<const void*>(sq.cu_seqlens_q), static_cast<const void*>(sq.cu_seqlens_k),
                        static_cast<const void*>(sq.seqused_k), static_cast<const void*>(sq.block_table)})
    if (t && reinterpret_cast<std::uintptr_t>(t) % 4 != 0) return bad("seq: an int32 table is not aligned to 4 bytes");
  // side inputs as contiguous vectors (they may alias each other; outputs may not touch them)
  for (int i = 0; i < 4; ++i) add_side(layouts, lnames[i], lptrs[i], lam_len, pelem, false);
  add_side(layouts, "norm.gamma", nm.gamma, 2 * d, pelem, false);
  add_side(layouts, "norm.beta", nm.beta, 2 * d, pelem, false);
  if (with_forward_outputs) {
    std::int64_t rows, elems;
    if (!mul_ok(qb, H, &rows) || !mul_ok(rows, qT, &rows) || !mul_ok(rows, dv, &elems))
      return bad("batch * heads * seqlen_q * value channels overflows int64");
    const ForwardExtras& x = p.extras;
    const char* xn[6] = {"extras.lse1", "extras.lse2", "extras.attn", "extras.o2", "extras.rstd", "extras.mean"};
    void* xp[6] = {x.lse1, x.lse2, x.attn, x.o2, x.rstd, x.mean};
    for (int i = 0; i < 6; ++i) {
      if (xp[i] && reinterpret_cast<std::uintptr_t>(xp[i]) % pelem != 0)
        return bad(std::string(xn[i]) + " is not aligned to its element size");
      add_side(layouts, xn[i], xp[i], (i == 2 || i == 3) ? elems : rows, pelem, true);
    }
  }
  return Status::Ok();
}

/// The values of the host-readable side inputs, read only after every extent has been checked
/// (a size that overflows is rejected before anything is read): the lambda vectors and norm
/// weights are finite, and so are exp(<lq1, lk1>), exp(<lq2, lk2>) and lambda in the math of
/// the backends that take this element type (fp32 for f32, f16 and bf16; double for f64).
inline Status check_side_values(const Params& p, const BackendCaps& caps) {
  if (!caps.host_readable) return Status::Ok();  // device memory: the caller's responsibility
  const bool dbl = p.dtype == DType::f64;
  const LambdaParams& l = p.lambda;
  const std::int64_t heads = l.per_head ? p.heads : 1, d = p.head_dim;
  if (p.is_v2()) {  // sigmoid of any finite logit is in (0, 1): finite is all that is needed
    const char* base = static_cast<const char*>(l.logits.ptr);
    const std::int64_t esz = dbl ? 8 : 4;
    for (std::int64_t b = 0; b < p.batch; ++b)
      for (std::int64_t i = 0, nb = p.q_len(b); i < nb; ++i)
        for (std::int64_t h = 0; h < p.heads; ++h) {
          const std::int64_t off = (p.q_offset(l.logits, b) + i * l.logits.stride_t + h * l.logits.stride_h) * esz;
          if (has_nan_or_inf(base + off, 1, dbl))
            return Status::Invalid("lambda.logits contains NaN or infinity (at b = " + std::to_string(b) +
                                   ", token " + std::to_string(i) + ", head " + std::to_string(h) + ")");
        }
    return Status::Ok();
  }
  const char* lnames[4] = {"lambda.lq1", "lambda.lk1", "lambda.lq2", "lambda.lk2"};
  const void* lptrs[4] = {l.lq1, l.lk1, l.lq2, l.lk2};
  for (int i = 0; i < 4; ++i)
    if (has_nan_or_inf(lptrs[i], heads * d, dbl)) return Status::Invalid(std::string(lnames[i]) + " contains NaN or infinity");
  const double big = dbl ? std::numeric_limits<double>::max() : static_cast<double>(std::numeric_limits<float>::max());
  const double max_exp_arg = std::log(big);  // 88.72 for fp32, 709.78 for double
  auto at = [&](const void* v, std::int64_t i) {
    return dbl ? static_cast<const double*>(v)[i] : static_cast<double>(static_cast<const float*>(v)[i]);
  };
  for (std::int64_t h = 0; h < heads; ++h) {
    double dot[2] = {0, 0};
    for (std::int64_t x = h * d; x < (h + 1) * d; ++x) {
      dot[0] += at(l.lq1, x) * at(l.lk1, x);
      dot[1] += at(l.lq2, x) * at(l.lk2, x);
    }
    for (int c = 0; c < 2; ++c) {
      if (dot[c] > max_exp_arg) {
        return Status::Invalid(std::string("lambda: <") + lnames[2 * c] + ", " + lnames[2 * c + 1] + "> = " + fmt_g(dot[c]) +
                               (l.per_head ? " (head " + std::to_string(h) + ")" : std::string()) +
                               ": its exp overflows " + (dbl ? "double" : "fp32") + " (the dot products must be below " +
                               (dbl ? "709.78" : "88.72") + ")");
      }
    }
    // |lambda| <= 2^40 (fp32) or 2^488 (double): then the sum of A^2 over the 2 d channels of a
    // row of A = O_1 - lambda O_2 stays finite for every |V| <= 65504 (f16's largest value; O_c
    // are averages of V rows) and head_dim <= 1024 (the most any backend takes): |A| < 2^41 2^16,
    // so the sum is below 2^11 2^114 = 2^125 < 2^128 (2^1021 < 2^1024 for double). Past that bound the fp32 norm overflowed to inf/NaN (and the two-pass CUDA
    // form's power-of-two scale of P_1 - lambda P_2 reached 2^128 = inf at |lambda| >= 2^127).
    const double lam = std::exp(dot[0]) - std::exp(dot[1]) + l.lambda_init;
    const double lam_max = dbl ? 0x1p488 : 0x1p40;
    if (!(std::fabs(lam) <= lam_max)) {
      return Status::Invalid(std::string("lambda = exp(<lq1, lk1>) - exp(<lq2, lk2>) + lambda_init = ") + fmt_g(lam) +
                             (l.per_head ? " (head " + std::to_string(h) + ")" : std::string()) +
                             ": |lambda| must be at most " + (dbl ? "2^488" : "2^40 (1.1e12)") +
                             ", beyond which the norm of A = O_1 - lambda O_2 can overflow " + (dbl ? "double" : "fp32"));
    }
  }
  const NormParams& nm = p.norm;
  if (nm.gamma && has_nan_or_inf(nm.gamma, 2 * d, dbl)) return Status::Invalid("norm.gamma contains NaN or infinity");
  if (nm.beta && has_nan_or_inf(nm.beta, 2 * d, dbl)) return Status::Invalid("norm.beta contains NaN or infinity");
  return Status::Ok();
}

/// The contents of Params::seq's int32 tables, when the backend reads host memory: cu_seqlens
/// from 0, non-decreasing, ending at total_q / total_k, lengths at most seqlen_q / seqlen_k;
/// seqused_k (plus the appended tokens) within each sequence's storage and at most seqlen_k;
/// every page a sequence uses in [0, num_pages). O(B + pages) reads; run before anything that
/// indexes by sequence.
inline Status check_seq_tables(const Params& p, const BackendCaps& caps) {
  const SeqParams& sq = p.seq;
  if (!caps.host_readable || !sq.any()) return Status::Ok();
  auto at = [](std::int64_t b) { return " (sequence " + std::to_string(b) + ")"; };
  const std::int64_t B = p.batch;
  // (cu[B] against total_q / total_k: validate_common, before the packed tensors' extents)
  auto check_cu = [&](const std::int32_t* cu, std::int64_t max_len, const char* name, const char* lname) -> Status {
    if (cu[0] != 0) return Status::Invalid(std::string(name) + "[0] = " + std::to_string(cu[0]) + ": must be 0");
    for (std::int64_t b = 0; b < B; ++b) {
      const std::int64_t len = std::int64_t{cu[b + 1]} - cu[b];
      if (len < 0)
        return Status::Invalid(std::string(name) + " is not non-decreasing: " + std::to_string(cu[b + 1]) + " after " +
                               std::to_string(cu[b]) + at(b));
      if (len > max_len)
        return Status::Invalid(std::string(name) + ": a sequence of " + std::to_string(len) + " tokens is longer than " +
                               lname + " = " + std::to_string(max_len) + at(b));
    }
    return Status::Ok();
  };
  Status s;
  if (sq.varlen_q() && !(s = check_cu(sq.cu_seqlens_q, p.seqlen_q, "seq.cu_seqlens_q", "seqlen_q")).ok())
    return s;
  // with seqused_k, cu_seqlens_k gives storage, which may be longer than seqlen_k
  if (sq.varlen_k() && !(s = check_cu(sq.cu_seqlens_k, sq.seqused_k ? INT32_MAX : p.seqlen_k,
                                      "seq.cu_seqlens_k", "seqlen_k")).ok())
    return s;
  for (std::int64_t b = 0; b < B; ++b) {
    const std::int64_t cap = sq.paged() ? sq.max_pages * sq.page_size
                           : sq.varlen_k() ? std::int64_t{sq.cu_seqlens_k[b + 1]} - sq.cu_seqlens_k[b] : p.seqlen_k;
    const char* capname = sq.paged() ? "seq.max_pages * seq.page_size" : sq.varlen_k() ? "its seq.cu_seqlens_k length" : "seqlen_k";
    if (sq.seqused_k) {
      const std::int64_t used = sq.seqused_k[b];
      if (used < 0) return Status::Invalid("seq.seqused_k = " + std::to_string(used) + ": must be >= 0" + at(b));
      const std::int64_t S_b = p.k_len(b);
      if (S_b > cap)
        return Status::Invalid(std::string("seq.seqused_k = ") + std::to_string(used) +
                               (sq.append_kv ? " plus the " + std::to_string(p.q_len(b)) + " appended keys" : std::string()) +
                               " is more than the sequence's storage holds (" + capname + " = " + std::to_string(cap) + ")" + at(b));
      if (S_b > p.seqlen_k)
        return Status::Invalid("seq.seqused_k: sequence " + std::to_string(b) + " attends to " + std::to_string(S_b) +
                               " keys, more than seqlen_k = " + std::to_string(p.seqlen_k) + " (the bound on every S_b)");
    }
    if (sq.paged()) {
      const std::int64_t pages = (p.k_len(b) + sq.page_size - 1) / sq.page_size;
      const std::int32_t* row = sq.block_table + b * sq.table_stride();
      for (std::int64_t k = 0; k < pages; ++k)
        if (row[k] < 0 || row[k] >= sq.num_pages)
          return Status::Invalid("seq.block_table[" + std::to_string(b) + "][" + std::to_string(k) + "] = " +
                                 std::to_string(row[k]) + ": not a page in [0, seq.num_pages = " + std::to_string(sq.num_pages) + ")");
    }
  }
  return Status::Ok();
}

/// The saved row statistics a fused backward divides by or exponentiates: rstd finite and > 0,
/// lse not NaN and not +inf (-inf marks a fully masked row), mean finite. O(B H N) reads.
inline Status check_saved_values(const BackwardParams& bp, const BackendCaps& caps) {
  if (!caps.host_readable) return Status::Ok();
  const Params& p = bp.fwd;
  const std::int64_t rows = p.batch * p.heads * p.seqlen_q;
  const bool dbl = p.dtype == DType::f64;
  auto at = [&](const void* v, std::int64_t i) {
    return dbl ? static_cast<const double*>(v)[i] : static_cast<double>(static_cast<const float*>(v)[i]);
  };
  auto where = [&](std::int64_t r) {
    const std::int64_t i = r % p.seqlen_q, h = r / p.seqlen_q % p.heads, b = r / p.seqlen_q / p.heads;
    return " (at b = " + std::to_string(b) + ", head " + std::to_string(h) + ", row " + std::to_string(i) +
           "): not what a forward of these params saves";
  };
  const SavedTensors& sv = bp.saved;
  for (int c = 0; c < 2; ++c) {
    const void* l = c == 0 ? sv.lse1 : sv.lse2;
    if (!l) continue;
    for (std::int64_t r = 0; r < rows; ++r) {
      const double x = at(l, r);
      if (std::isnan(x) || x == std::numeric_limits<double>::infinity())
        return Status::Invalid(std::string(c == 0 ? "saved.lse1" : "saved.lse2") + " is NaN or +inf" + where(r));
    }
  }
  const NormKind nk = p.norm_kind();
  if (sv.rstd && nk != NormKind::none)
    for (std::int64_t r = 0; r < rows; ++r) {
      const double x = at(sv.rstd, r);
      if (!(x > 0) || !std::isfinite(x)) return Status::Invalid("saved.rstd is not finite and > 0" + where(r));
    }
  if (sv.mean && nk == NormKind::group)
    for (std::int64_t r = 0; r < rows; ++r)
      if (!std::isfinite(at(sv.mean, r))) return Status::Invalid("saved.mean is not finite" + where(r));
  return Status::Ok();
}

}  // namespace detail

/// Checks a forward call. Ok, or a status naming the argument and the rule it breaks.
inline Status validate(const Params& p, const BackendCaps& caps = {}) {
  std::vector<detail::Layout> layouts;
  layouts.reserve(16);
  Status s = detail::validate_common(p, caps, /*with_forward_outputs=*/true, layouts);
  if (!s.ok()) return s;
  if (!(s = detail::check_layouts(layouts)).ok()) return s;
  if (!(s = detail::check_seq_tables(p, caps)).ok()) return s;
  return detail::check_side_values(p, caps);
}

/// Checks a backward call: the forward's inputs, dout, and every gradient output.
inline Status validate(const BackwardParams& bp, const BackendCaps& caps = {}) {
  std::vector<detail::Layout> layouts;
  layouts.reserve(20);
  const Params& p = bp.fwd;
  if (p.seq.any())
    return Status::Unsupported(std::string("fwd.seq: the ") + caps.name +
                               " backward takes the dense layout only (no variable-length, KV-cache or paged layouts)");
  Status s = detail::validate_common(p, caps, /*with_forward_outputs=*/false, layouts);
  if (!s.ok()) return s;
  const std::int64_t pelem = p.dtype == DType::f64 ? 8 : 4;
  const std::int64_t N = p.seqlen_q, S = p.seqlen_k, H = p.heads, G = p.kv_heads, d = p.head_dim;
  auto tensor = [&](const char* name, const auto& t, std::int64_t T, std::int64_t heads,
                    std::int64_t ch, bool output) {
    return detail::add_tensor(layouts, caps, p.dtype, p.batch, name, t.ptr, t.stride_b, t.stride_t,
                              t.stride_h, T, heads, ch, output);
  };
  const Gradients& g = bp.grad;
  const bool v2 = p.is_v2();
  if (!(s = tensor("dout", bp.dout, N, H, p.value_dim(), false)).ok()) return s;
  if (!(s = tensor("grad.dq1", g.dq1, N, H, d, true)).ok()) return s;
  if (!(s = tensor("grad.dq2", g.dq2, N, H, d, true)).ok()) return s;
  if (!(s = tensor("grad.dk1", g.dk1, S, G, d, true)).ok()) return s;
  if (!(s = tensor("grad.dv_lo", g.dv_lo, S, G, d, true)).ok()) return s;
  if (v2) {
    if (g.dk2.ptr != nullptr) return Status::Invalid("grad.dk2 is set, but DIFF V2 has one K: its gradient is grad.dk1");
    if (g.dv_hi.ptr != nullptr) return Status::Invalid("grad.dv_hi is set, but DIFF V2's V has d channels: its gradient is grad.dv_lo");
    if (!(s = detail::add_logits(layouts, "grad.dlogits", g.dlogits, p.batch, N, H, pelem, true)).ok()) return s;
  } else {
    if (!(s = tensor("grad.dk2", g.dk2, S, G, d, true)).ok()) return s;
    if (!(s = tensor("grad.dv_hi", g.dv_hi, S, G, d, true)).ok()) return s;
    if (g.dlogits.ptr != nullptr) return Status::Invalid("grad.dlogits is set, but only DIFF V2 has lambda logits");
  }
  const std::int64_t lam_len = (p.lambda.per_head ? H : 1) * d;
  const char* names[6] = {"grad.dlq1", "grad.dlk1", "grad.dlq2", "grad.dlk2", "grad.dgamma", "grad.dbeta"};
  void* ptrs[6] = {g.dlq1, g.dlk1, g.dlq2, g.dlk2, g.dgamma, g.dbeta};
  const bool needed[6] = {!v2, !v2, !v2, !v2, p.norm.gamma != nullptr, p.norm.beta != nullptr};
  for (int i = 0; i < 6; ++i) {
    if (v2 && ptrs[i] != nullptr && i < 4)
      return Status::Invalid(std::string(names[i]) + " is set, but DIFF V2 has no lambda vectors (its gradient is grad.dlogits)");
    if (needed[i] && ptrs[i] == nullptr)
      return Status::Invalid(std::string(names[i]) + " is null" +
                             (i >= 4 ? std::string(" but the norm has that weight") : std::string()));
    if (ptrs[i] == nullptr) continue;
    if (reinterpret_cast<std::uintptr_t>(ptrs[i]) % pelem != 0)
      return Status::Invalid(std::string(names[i]) + " is not aligned to its element size");
    detail::add_side(layouts, names[i], ptrs[i], i < 4 ? lam_len : 2 * d, pelem, true);
  }
  // the forward's saved tensors (inputs here): required by a fused backward, checked when given
  {
    std::int64_t rows = 0, elems = 0;
    if (!detail::mul_ok(p.batch, H, &rows) || !detail::mul_ok(rows, N, &rows) || !detail::mul_ok(rows, p.value_dim(), &elems))
      return Status::Invalid("batch * heads * seqlen_q * value channels overflows int64");
    const SavedTensors& sv = bp.saved;
    const NormKind nk = p.norm_kind();
    const char* sn[6] = {"saved.lse1", "saved.lse2", "saved.attn", "saved.o2", "saved.rstd", "saved.mean"};
    const void* sp[6] = {sv.lse1, sv.lse2, sv.attn, sv.o2, sv.rstd, sv.mean};
    const char* xn[6] = {"lse1", "lse2", "attn", "o2", "rstd", "mean"};
    const bool need[6] = {true, true, true, !caps.backward_o2_optional, nk == NormKind::rms || nk == NormKind::group, nk == NormKind::group};
    for (int i = 0; i < 6; ++i) {
      if (sp[i] == nullptr) {
        if (caps.backward_needs_saved && need[i])
          return Status::Invalid(std::string(sn[i]) + " is null: the " + caps.name +
                                 " backward reads what the forward saved (set the forward's extras." + xn[i] +
                                 " and pass saved_from(params.extras))");
        continue;
      }
      if (reinterpret_cast<std::uintptr_t>(sp[i]) % pelem != 0)
        return Status::Invalid(std::string(sn[i]) + " is not aligned to its element size");
      detail::add_side(layouts, sn[i], sp[i], (i == 2 || i == 3) ? elems : rows, pelem, false);
    }
  }
  if (!(s = detail::check_layouts(layouts)).ok()) return s;
  if (!(s = detail::check_side_values(p, caps)).ok()) return s;
  return detail::check_saved_values(bp, caps);
}

DIFFATTN_NAMESPACE_END
