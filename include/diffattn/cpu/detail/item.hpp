// diffattn/cpu/detail/item.hpp: what every ISA path of the tiled CPU forward shares: the
// geometry of a work item, its scratch and running state, its key range, and its epilogue.
//
// A work item is (batch b, diff head h, query block qb of up to Geometry::bm rows, key split s).
// It streams the visible key blocks of kBlockN keys once, for both components
// (cpu/detail/algorithm.inl, compiled once per instruction set):
//   S_c^T = K_c Q_c^T            (qk_block, fp32 FMA micro-tiles)
//   online softmax per row       (running max m_c in log2 units, running sum l_c)
//   O_c^T = alpha O_c^T + V^T P_c^T   (pv_block; the rescale by alpha is fused into its load)
// Key blocks no row of the item can see are never visited (the item's key range is the union
// of its rows' ranges); blocks every row sees fully skip the per-element mask.
// The epilogue (here, plain C++: O(N dv) work against the O(N S d) of the products) combines
// A = O_1/l_1 - lambda O_2/l_2, applies the norm, gamma, beta and (1 - lambda_init), and
// writes out, LSE_1, LSE_2 and the requested extras.
//
// The queries of an item run along the vector lanes of every ISA (qt, st and ot are
// transposed), padded to a multiple of kColGroup = 16 columns: the template parameter NV of the
// ISA code is that number of 16-column groups (1 to bm / 16).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "diffattn/core/config.hpp"
#include "diffattn/core/dtype.hpp"
#include "diffattn/core/lambda.hpp"
#include "diffattn/core/mask.hpp"
#include "diffattn/core/params.hpp"

DIFFATTN_NAMESPACE_BEGIN
namespace cpu {
namespace detail {

// exp2(f) for f in [-0.5, 0.5]: Taylor series of e^(f ln2) to degree 7; the truncation error
// is (0.5 ln2)^8 / 8! < 5e-9 relative, below fp32's unit roundoff (6e-8). Every ISA's vexp2
// evaluates this polynomial (Horner, fused multiply-adds where the ISA has them).
inline constexpr float kExp2C[8] = {1.0f,
                                    0.693147180559945f,
                                    0.240226506959101f,
                                    0.0555041086648216f,
                                    0.00961812910762848f,
                                    0.00133335581464284f,
                                    0.000154035303933816f,
                                    1.52527338040598e-05f};

/// Query columns of an item are padded to a multiple of this (every ISA's lane count divides it).
inline constexpr int kColGroup = 16;
/// Query rows per work item, Geometry::bm: 128 (8 groups of 16 columns) on the FMA paths, so
/// that each packed block of K_1, K_2 and V serves 128 queries: 7% faster than 64 rows (AVX2,
/// Zen 2, f32, N = S = 2048, d = 64 and 128, one thread, alternating runs), as the copy of
/// the key block (strided rows, a page each in the official layout) is paid half as often.
/// The AMX path keeps 64 (its four accumulator tiles cover 64 queries).
inline constexpr int kBlockM = 128;
inline constexpr int kBlockMAmx = 64;
/// The AMX path runs bfloat16 products on tiles of 32 elements of k: d a multiple of 32.
inline constexpr bool amx_head_dim(std::int64_t d) { return d % 32 == 0; }
/// Keys per block of the stream. 64: S^T (16 KiB) and a block of K_1, K_2 (32 KiB at d = 64)
/// stay in L1/L2 next to the O^T accumulators.
inline constexpr int kBlockN = 64;
/// Decode items: a sequence whose rows (query tokens x packed heads, Ctx::rows) number at most
/// this runs, on paths with bfloat16 dot products (cpu/isa/avx512bf16.hpp), with its keys along
/// the vector lanes instead of its queries (cpu::bf16_rounds_p says when).
inline constexpr int kDecodeRows = 16;
/// True when a bfloat16 sequence of `rows` rows (Ctx::rows) with head dim d runs as decode items
/// on the paths that have them.
inline constexpr bool decode_shape(std::int64_t d, std::int64_t rows) { return d % 32 == 0 && rows <= kDecodeRows; }

inline constexpr std::int64_t round16(std::int64_t n) { return (n + 15) / 16 * 16; }

/// Sizes shared by all work items of one call.
struct Geometry {
  std::int64_t d = 0, dv = 0;
  std::int64_t bm = kBlockM;  ///< query rows per work item (kBlockM or kBlockMAmx)

  /// Row strides of the packed K_c and V blocks: 16 floats of padding so that rows never sit
  /// 4 KiB apart (the official layout's row strides are multiples of 4 KiB at H = 8). One
  /// packed path serves every element type; it costs nothing measurable against reading fp32
  /// in place (116 vs 118 GFLOP/s, f32, d = 64, N = S = 1024, 1 thread).
  std::int64_t ldk() const { return d + 16; }
  std::int64_t ldv() const { return dv + 16; }
  /// Floats of one softmax/accumulator state (both components).
  std::int64_t state_floats() const { return 2 * round16(dv * bm) + 4 * bm; }
  /// Floats of one thread's scratch (state included).
  std::int64_t thread_floats() const {
    return 2 * round16(d * bm) + kBlockN * bm + state_floats() + 2 * bm + round16(dv) +
           2 * round16(kBlockN * ldk()) + round16(kBlockN * ldv()) + kBlockN / 2 * bm;
  }
};

/// The running state of one work item: for component c, m[c] (bm, log2 units), l[c]
/// (bm), ot[c] (dv, NV*16) transposed accumulator.
struct State {
  float* m[2];
  float* l[2];
  float* ot[2];
  static State at(float* base, const Geometry& g) {
    State s;
    s.ot[0] = base;
    s.ot[1] = base + round16(g.dv * g.bm);
    float* t = base + 2 * round16(g.dv * g.bm);
    s.m[0] = t; s.l[0] = t + g.bm; s.m[1] = t + 2 * g.bm; s.l[1] = t + 3 * g.bm;
    return s;
  }
};

/// One thread's scratch, carved from its slice of the workspace.
struct ThreadScratch {
  float* qt[2];          // (d, NV*16) each
  float* st;             // (kBlockN, NV*16)
  float* kbuf[2];        // (kBlockN, ldk) packed (and widened) K_c block
  float* vbuf;           // (kBlockN, ldv) packed V block
  std::uint32_t* pp;     // (kBlockN / 2, bm) bf16 pairs of P^T (AMX path)
  float* arow;           // (dv) one row of A in the epilogue
  std::int32_t* kb;      // (bm) first visible key of each row
  std::int32_t* ke;      // (bm) one past the last visible key
  State state;           // used when the item is not split
  static ThreadScratch at(float* base, const Geometry& g) {
    ThreadScratch t;
    float* p = base;
    t.qt[0] = p; p += round16(g.d * g.bm);
    t.qt[1] = p; p += round16(g.d * g.bm);
    t.st = p; p += kBlockN * g.bm;
    t.state = State::at(p, g); p += g.state_floats();
    t.kb = reinterpret_cast<std::int32_t*>(p); p += g.bm;
    t.ke = reinterpret_cast<std::int32_t*>(p); p += g.bm;
    t.arow = p; p += round16(g.dv);
    t.kbuf[0] = p; p += round16(kBlockN * g.ldk());
    t.kbuf[1] = p; p += round16(kBlockN * g.ldk());
    t.vbuf = p; p += round16(kBlockN * g.ldv());
    t.pp = reinterpret_cast<std::uint32_t*>(p);
    return t;
  }
};

/// One tile of the fused backward (cpu/backward.hpp): up to kBwdBlockM query rows of one head
/// against one block of up to kBlockN keys (the block's keys run along the vector lanes, padded
/// to kBlockN with zeros). cpu/detail/backward.inl computes, for this tile,
///   P_c = exp2(S_c c - L_c) (masked), dPA = dA V^T, W = P_1 - lambda P_2,
///   dS_1 = s P_1 (dPA - D_1), dS_2 = s P_2 (-lambda dPA - D_2),
///   dV^T += dA^T W, dK_c^T += Q_c^T dS_c, dQ_c += dS_c K_c
/// with dK^T, dV^T and dQ accumulated in fp32 buffers the caller owns.
inline constexpr int kBwdBlockM = 64;
/// Per query row, the floats the backward's tiles read: L_1, L_2 (lse in log2 units, -inf:
/// fully masked), s D_1, s D_2 (the row dot products, times the softmax scale), lambda.
inline constexpr int kBwdStat = 5;
struct BwdTile {
  int nr = 0, nj = 0;          ///< query rows, keys of the tile
  int d = 0, dv = 0, dpad = 0; ///< channels of Q/K, of V, and K's packed row stride (lanes of dQ)
  bool full = false;           ///< every row sees every key of the block: no mask
  const std::int32_t* lo = nullptr;  ///< !full: first visible key of each row, relative to the block
  const std::int32_t* hi = nullptr;  ///< !full: one past the last
  const float* q[2] = {};      ///< Q_c rows (nr x d), row stride ldq
  std::int64_t ldq = 0;
  const float* da = nullptr;   ///< dA rows (nr x dv), row stride dv
  const float* stat = nullptr; ///< kBwdStat floats per row
  const float* kp[2] = {};     ///< K_c rows (nj x dpad, zero past d)
  const float* kt[2] = {};     ///< K_c^T (d x kBlockN, zero past nj)
  const float* vt = nullptr;   ///< V^T (dv x kBlockN, zero past nj)
  float* dkt[2] = {};          ///< dK_c^T accumulators (d x kBlockN); V2: both the same
  float* dvt = nullptr;        ///< dV^T accumulator (dv x kBlockN)
  float* dq[2] = {};           ///< dQ_c accumulator rows (nr x dpad), row stride lddq
  std::int64_t lddq = 0;
  float* s[2] = {};            ///< scratch: S_c, then P_c, then dS_c (kBwdBlockM x kBlockN)
  float* dp = nullptr;         ///< scratch: dPA, then W
  float c = 0;                 ///< softmax scale * log2(e)
  float scale = 0;             ///< softmax scale
};

/// Everything derived from the params once per call.
struct Ctx {
  const Params* p = nullptr;
  Geometry geo;
  std::int64_t N = 0, S = 0, H = 0, rep = 1;
  float c = 0;  ///< softmax_scale * log2(e): scores in log2 units
  RowMask mask;
  bool masked = false;
  std::int64_t nqb = 0;  ///< query blocks per head (the most of any sequence)
  int nsplit = 1;        ///< key splits per query block
  /// Query heads per work item: 1, or n_rep when the heads of a GQA group are packed into the
  /// rows of one item (decoding: few query tokens, so that each K and V block is packed and read
  /// once for the whole group). An item's row v is token v / pack of head h0 + v % pack, h0 the
  /// item's first head; its rows are N_b * pack.
  std::int64_t pack = 1;
  std::int64_t tok(std::int64_t v) const { return v / pack; }
  std::int64_t rows() const { return N * pack; }

  /// This context for sequence b: its own N_b, S_b and mask (Params::seq), the same one
  /// when the call has no serving layout.
  Ctx for_sequence(std::int64_t b) const {
    if (!p->seq.any()) return *this;
    Ctx c = *this;
    c.N = p->q_len(b);
    c.S = p->k_len(b);
    c.mask = make_row_mask(*p, c.N, c.S);
    return c;
  }
};

/// The key range [lo, hi) of split s of the visible keys of rows [i0, i0 + nr).
inline void item_key_range(const Ctx& cx, std::int64_t i0, std::int64_t nr, int s, std::int64_t* lo,
                           std::int64_t* hi) {
  const std::int64_t a = cx.mask.key_begin(cx.tok(i0)), b = std::max(a, cx.mask.key_end(cx.tok(i0 + nr - 1)));
  if (cx.nsplit == 1) { *lo = a; *hi = b; return; }
  const std::int64_t blocks = (b - a + kBlockN - 1) / kBlockN;
  const std::int64_t per = (blocks + cx.nsplit - 1) / cx.nsplit * kBlockN;
  *lo = std::min(b, a + s * per);
  *hi = std::min(b, *lo + per);
}

/// The keys one work item visits and where they live, for both the fp32 and the AMX paths.
/// Key rows are addressed through Params::k_offset (dense, packed by cu_seqlens_k, or paged:
/// one page lookup per row), so every path gathers paged caches as it packs a key block.
template <class Elem>
struct ItemKeys {
  std::int64_t lo, hi;               ///< key range [lo, hi) of this item and split
  std::int64_t kb_last, ke_first;    ///< a key block inside [kb_last, ke_first) needs no mask
  const Params* p;
  std::int64_t b;                    ///< the sequence
  const ConstTensorRef* k[2];        ///< K_1, K_2 views
  const ConstTensorRef* v[2];        ///< V's halves (channels [0, d), [d, 2d)); V2: v[1] null
  const Elem* kbase[2];              ///< K_c of KV group g (its head offset only)
  const Elem* vbase[2];              ///< V's halves of group g; V2: vbase[1] null (V has d channels)
  /// Row j (key index of the sequence) of K_c and of V's half hv.
  const Elem* krow(int c, std::int64_t j) const { return kbase[c] + p->k_offset(*k[c], b, j); }
  const Elem* vrow(int hv, std::int64_t j) const { return vbase[hv] + p->k_offset(*v[hv], b, j); }
  /// Rows [j0, j0 + n) of K_c, of V's half hv, into rows[0, n): one Params::k_offset per page
  /// crossed (per row it would divide by the page size once per key).
  void krows(int c, std::int64_t j0, int n, const Elem** rows) const {
    each_row(*k[c], kbase[c], j0, n, [&](int j, const Elem* r) { rows[j] = r; });
  }
  void vrows(int hv, std::int64_t j0, int n, const Elem** rows) const {
    each_row(*v[hv], vbase[hv], j0, n, [&](int j, const Elem* r) { rows[j] = r; });
  }
  /// f(j, row) for rows [j0, j0 + n) of the view t (base: its KV group's head offset), in order.
  template <class F>
  void each_row(const ConstTensorRef& t, const Elem* base, std::int64_t j0, int n, F&& f) const {
    // page k holds rows [k ps, (k + 1) ps); unpaged rows are one run
    const std::int64_t ps = p->seq.page_size;
    for (int j = 0; j < n;) {
      const int run = p->seq.block_table ? static_cast<int>(std::min<std::int64_t>(n - j, ps - (j0 + j) % ps)) : n - j;
      const Elem* r = base + p->k_offset(t, b, j0 + j);
      for (int i = 0; i < run; ++i) f(j + i, r + i * t.stride_t);
      j += run;
    }
  }
};

template <class Elem>
inline ItemKeys<Elem> item_keys(const Ctx& cx, std::int64_t b, std::int64_t g, std::int64_t i0,
                                std::int64_t nr, int s) {
  const Params& p = *cx.p;
  ItemKeys<Elem> ik;
  item_key_range(cx, i0, nr, s, &ik.lo, &ik.hi);
  ik.kb_last = cx.mask.key_begin(cx.tok(i0 + nr - 1));
  ik.ke_first = cx.mask.key_end(cx.tok(i0));
  ik.p = &p;
  ik.b = b;
  ik.k[0] = &p.k1;
  ik.k[1] = &p.key2();
  for (int c = 0; c < 2; ++c) ik.kbase[c] = static_cast<const Elem*>(ik.k[c]->ptr) + g * ik.k[c]->stride_h;
  ik.v[0] = &p.v_lo;
  ik.v[1] = p.is_v2() ? nullptr : &p.v_hi;
  for (int c = 0; c < 2; ++c)
    ik.vbase[c] = ik.v[c] ? static_cast<const Elem*>(ik.v[c]->ptr) + g * ik.v[c]->stride_h : nullptr;
  return ik;
}

/// Starts a work item: the key range of each query lane (0 for padding lanes) and an empty
/// online-softmax state (max -inf, sum 0, output 0) for both components. Shared by the fp32
/// and the AMX paths.
inline void begin_item(const Ctx& cx, std::int64_t i0, std::int64_t nr, int ld, std::int64_t dv,
                       const ThreadScratch& ts, const State& state) {
  for (int i = 0; i < ld; ++i) {
    const bool real = i < nr;
    ts.kb[i] = real ? static_cast<std::int32_t>(cx.mask.key_begin(cx.tok(i0 + i))) : 0;
    ts.ke[i] = real ? static_cast<std::int32_t>(cx.mask.key_end(cx.tok(i0 + i))) : 0;
  }
  for (int c = 0; c < 2; ++c) {
    for (int i = 0; i < ld; ++i) {
      state.m[c][i] = -std::numeric_limits<float>::infinity();
      state.l[c][i] = 0.0f;
    }
    std::fill(state.ot[c], state.ot[c] + dv * ld, 0.0f);
  }
}

/// Combines, normalises and writes the rows of one query block from its final state.
template <class Elem>
void epilogue(const Ctx& cx, std::int64_t b, std::int64_t h, std::int64_t qb, int nv, const State& st,
              float* arow) {
  using P = float;
  const Params& p = *cx.p;
  const std::int64_t d = cx.geo.d, dv = cx.geo.dv, ld = nv * kColGroup;
  const std::int64_t i0 = qb * cx.geo.bm, nr = std::min<std::int64_t>(cx.geo.bm, cx.rows() - i0);
  // V1: one lambda per head (of the pack heads of the item); V2: lambda of each row, sigmoid of its logit
  float lambdas[kBlockM] = {};
  const P* logits = nullptr;
  if (p.is_v2()) {
    logits = static_cast<const P*>(p.lambda.logits.ptr) + p.q_offset(p.lambda.logits, b);
  } else {
    for (std::int64_t k = 0; k < cx.pack && k < kBlockM; ++k) {
      const std::int64_t loff = p.lambda.per_head ? (h + k) * d : 0;
      const LambdaTerms<double> lt = lambda_terms<double>(
          static_cast<const P*>(p.lambda.lq1) + loff, static_cast<const P*>(p.lambda.lk1) + loff,
          static_cast<const P*>(p.lambda.lq2) + loff, static_cast<const P*>(p.lambda.lk2) + loff, d);
      lambdas[k] = static_cast<float>(lt.value(p.lambda.lambda_init));
    }
  }
  const NormKind norm = p.norm_kind();
  const float out_scale = static_cast<float>(p.out_scale());
  const P* gamma = static_cast<const P*>(p.norm.gamma);
  const P* beta = static_cast<const P*>(p.norm.beta);
  const double eps = p.norm.eps;
  const ForwardExtras& x = p.extras;
  const double ln2 = 0.693147180559945309417;
  Elem* out = static_cast<Elem*>(p.out.ptr) + p.q_offset(p.out, b);

  for (std::int64_t i = 0; i < nr; ++i) {
    const float l1 = st.l[0][i], l2 = st.l[1][i];
    const float inv1 = l1 == 0.0f ? 0.0f : 1.0f / l1;  // fully masked row: A = 0 (NaN stays NaN)
    const float inv2 = l2 == 0.0f ? 0.0f : 1.0f / l2;
    const std::int64_t tok = cx.tok(i0 + i), hk = (i0 + i) % cx.pack, hh = h + hk;  // this row's token and head
    const std::int64_t row = p.row_index(b, hh, tok);  // [B, H, N] (varlen: [H, total_q])
    float* o2row = x.o2 ? static_cast<P*>(x.o2) + row * dv : nullptr;
    float lambda = lambdas[hk];
    if (logits)
      lambda = static_cast<float>(1.0 / (1.0 + std::exp(-static_cast<double>(
                                                    logits[tok * p.lambda.logits.stride_t + hh * p.lambda.logits.stride_h]))));
    double sum = 0, sumsq = 0;
    for (std::int64_t ch = 0; ch < dv; ++ch) {
      const float o2 = st.ot[1][ch * ld + i] * inv2;
      const float a = st.ot[0][ch * ld + i] * inv1 - lambda * o2;
      arow[ch] = a;
      sum += a;
      sumsq += static_cast<double>(a) * a;
      if (o2row) o2row[ch] = o2;
    }
    double mean = 0, rstd = 1;
    if (norm == NormKind::rms) {
      rstd = 1.0 / std::sqrt(sumsq / static_cast<double>(dv) + eps);
    } else if (norm == NormKind::group) {
      mean = sum / static_cast<double>(dv);
      double var = 0;
      for (std::int64_t ch = 0; ch < dv; ++ch) var += (arow[ch] - mean) * (arow[ch] - mean);
      rstd = 1.0 / std::sqrt(var / static_cast<double>(dv) + eps);
    }
    const float fm = static_cast<float>(mean), fr = static_cast<float>(rstd);
    Elem* orow = out + tok * p.out.stride_t + hh * p.out.stride_h;
    for (std::int64_t ch = 0; ch < dv; ++ch) {
      float y = arow[ch];
      if (norm == NormKind::rms) {
        y = y * fr * (gamma ? gamma[ch] : 1.0f);
      } else if (norm == NormKind::group) {
        y = (y - fm) * fr * (gamma ? gamma[ch] : 1.0f) + (beta ? beta[ch] : 0.0f);
      }
      orow[ch] = Elem(out_scale * y);
    }
    if (x.attn) std::copy(arow, arow + dv, static_cast<P*>(x.attn) + row * dv);
    if (x.rstd) static_cast<P*>(x.rstd)[row] = fr;
    if (x.mean) static_cast<P*>(x.mean)[row] = fm;
    P* lses[2] = {static_cast<P*>(x.lse1), static_cast<P*>(x.lse2)};
    for (int c = 0; c < 2; ++c) {
      if (!lses[c]) continue;
      const float lc = st.l[c][i];
      lses[c][row] = lc == 0.0f ? -std::numeric_limits<float>::infinity()
                                : static_cast<float>((static_cast<double>(st.m[c][i]) + std::log2(static_cast<double>(lc))) * ln2);
    }
  }
}

}  // namespace detail
}  // namespace cpu
DIFFATTN_NAMESPACE_END
