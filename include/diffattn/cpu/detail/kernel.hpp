// diffattn/cpu/detail/kernel.hpp: one work item of the tiled CPU forward, and its epilogue.
//
// A work item is (batch b, diff head h, query block qb of up to kBlockM rows, key split s).
// It streams the visible key blocks of kBlockN keys once, for both components:
//   S_c^T = K_c Q_c^T            (qk_block, fp32 FMA micro-tiles)
//   online softmax per row       (running max m_c in log2 units, running sum l_c)
//   O_c^T = alpha O_c^T + V^T P_c^T   (pv_block; the rescale by alpha is fused into its load)
// Key blocks no row of the item can see are never visited (the item's key range is the union
// of its rows' ranges); blocks every row sees fully skip the per-element mask.
// The epilogue combines A = O_1/l_1 - lambda O_2/l_2, applies the norm, gamma, beta and
// (1 - lambda_init), and writes out, LSE_1, LSE_2 and the requested extras.
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
#include "diffattn/cpu/detail/simd.hpp"
#include "diffattn/cpu/detail/tiles.hpp"

DIFFATTN_NAMESPACE_BEGIN
namespace cpu {
namespace detail {

/// Query rows per work item (4 vectors of 16 lanes).
inline constexpr int kBlockM = 64;
/// Keys per block of the stream. 64: S^T (16 KiB) and a block of K_1, K_2 (32 KiB at d = 64)
/// stay in L1/L2 next to the O^T accumulators.
inline constexpr int kBlockN = 64;

inline constexpr std::int64_t round16(std::int64_t n) { return (n + 15) / 16 * 16; }

/// Sizes shared by all work items of one call.
struct Geometry {
  std::int64_t d = 0, dv = 0;

  /// Row strides of the packed K_c and V blocks: 16 floats of padding so that rows never sit
  /// 4 KiB apart (the official layout's row strides are multiples of 4 KiB at H = 8). One
  /// packed path serves every element type; it costs nothing measurable against reading fp32
  /// in place (116 vs 118 GFLOP/s, f32, d = 64, N = S = 1024, 1 thread).
  std::int64_t ldk() const { return d + 16; }
  std::int64_t ldv() const { return dv + 16; }
  /// Floats of one softmax/accumulator state (both components).
  std::int64_t state_floats() const { return 2 * round16(dv * kBlockM) + 4 * kBlockM; }
  /// Floats of one thread's scratch (state included).
  std::int64_t thread_floats() const {
    return 2 * round16(d * kBlockM) + kBlockN * kBlockM + state_floats() + 2 * kBlockM + round16(dv) +
           2 * round16(kBlockN * ldk()) + round16(kBlockN * ldv()) + kBlockN / 2 * kBlockM;
  }
};

/// The running state of one work item: for component c, m[c] (kBlockM, log2 units), l[c]
/// (kBlockM), ot[c] (dv, NV*16) transposed accumulator.
struct State {
  float* m[2];
  float* l[2];
  float* ot[2];
  static State at(float* base, const Geometry& g) {
    State s;
    s.ot[0] = base;
    s.ot[1] = base + round16(g.dv * kBlockM);
    float* t = base + 2 * round16(g.dv * kBlockM);
    s.m[0] = t; s.l[0] = t + kBlockM; s.m[1] = t + 2 * kBlockM; s.l[1] = t + 3 * kBlockM;
    return s;
  }
};

/// One thread's scratch, carved from its slice of the workspace.
struct ThreadScratch {
  float* qt[2];          // (d, NV*16) each
  float* st;             // (kBlockN, NV*16)
  float* kbuf[2];        // (kBlockN, ldk) packed (and widened) K_c block
  float* vbuf;           // (kBlockN, ldv) packed V block
  std::uint32_t* pp;     // (kBlockN / 2, kBlockM) bf16 pairs of P^T (AMX path)
  float* arow;           // (dv) one row of A in the epilogue
  std::int32_t* kb;      // (kBlockM) first visible key of each row
  std::int32_t* ke;      // (kBlockM) one past the last visible key
  State state;           // used when the item is not split
  static ThreadScratch at(float* base, const Geometry& g) {
    ThreadScratch t;
    float* p = base;
    t.qt[0] = p; p += round16(g.d * kBlockM);
    t.qt[1] = p; p += round16(g.d * kBlockM);
    t.st = p; p += kBlockN * kBlockM;
    t.state = State::at(p, g); p += g.state_floats();
    t.kb = reinterpret_cast<std::int32_t*>(p); p += kBlockM;
    t.ke = reinterpret_cast<std::int32_t*>(p); p += kBlockM;
    t.arow = p; p += round16(g.dv);
    t.kbuf[0] = p; p += round16(kBlockN * g.ldk());
    t.kbuf[1] = p; p += round16(kBlockN * g.ldk());
    t.vbuf = p; p += round16(kBlockN * g.ldv());
    t.pp = reinterpret_cast<std::uint32_t*>(p);
    return t;
  }
};

/// Everything derived from the params once per call.
struct Ctx {
  const Params* p = nullptr;
  Geometry geo;
  std::int64_t N = 0, S = 0, H = 0, rep = 1;
  float c = 0;  ///< softmax_scale * log2(e): scores in log2 units
  RowMask mask;
  bool masked = false;
  std::int64_t nqb = 0;  ///< query blocks per head
  int nsplit = 1;        ///< key splits per query block
};

/// The key range [lo, hi) of split s of the visible keys of rows [i0, i0 + nr).
inline void item_key_range(const Ctx& cx, std::int64_t i0, std::int64_t nr, int s, std::int64_t* lo,
                           std::int64_t* hi) {
  const std::int64_t a = cx.mask.key_begin(i0), b = std::max(a, cx.mask.key_end(i0 + nr - 1));
  if (cx.nsplit == 1) { *lo = a; *hi = b; return; }
  const std::int64_t blocks = (b - a + kBlockN - 1) / kBlockN;
  const std::int64_t per = (blocks + cx.nsplit - 1) / cx.nsplit * kBlockN;
  *lo = std::min(b, a + s * per);
  *hi = std::min(b, *lo + per);
}

/// The keys one work item visits and where they live, for both the fp32 and the AMX paths.
template <class Elem>
struct ItemKeys {
  std::int64_t lo, hi;               ///< key range [lo, hi) of this item and split
  std::int64_t kb_last, ke_first;    ///< a key block inside [kb_last, ke_first) needs no mask
  const ConstTensorRef* k[2];        ///< K_1, K_2 views (for their token strides)
  const Elem* kbase[2];              ///< K_c of KV group g of batch b, token 0
  const Elem* vbase;                 ///< V of KV group g of batch b, token 0
};

template <class Elem>
inline ItemKeys<Elem> item_keys(const Ctx& cx, std::int64_t b, std::int64_t g, std::int64_t i0,
                                std::int64_t nr, int s) {
  const Params& p = *cx.p;
  ItemKeys<Elem> ik;
  item_key_range(cx, i0, nr, s, &ik.lo, &ik.hi);
  ik.kb_last = cx.mask.key_begin(i0 + nr - 1);
  ik.ke_first = cx.mask.key_end(i0);
  ik.k[0] = &p.k1;
  ik.k[1] = &p.k2;
  for (int c = 0; c < 2; ++c)
    ik.kbase[c] = static_cast<const Elem*>(ik.k[c]->ptr) + b * ik.k[c]->stride_b + g * ik.k[c]->stride_h;
  ik.vbase = static_cast<const Elem*>(p.v.ptr) + b * p.v.stride_b + g * p.v.stride_h;
  return ik;
}

/// The online softmax of one key block for component c: masks st when `full` is false,
/// rescales (m, l), turns st into P^T in place and returns the factors alpha for O.
template <int NV>
inline void online_softmax(const Ctx& cx, float* st, int nj, std::int64_t j0, bool full,
                           const std::int32_t* kb, const std::int32_t* ke, float* m, float* l,
                           Vec16* alpha) {
  constexpr int ld = NV * kLanes;
  const Vec16 cvec = vset1(cx.c);
  for (int v = 0; v < NV; ++v) {
    Vec16 mx = vset1(-std::numeric_limits<float>::infinity());
    for (int j = 0; j < nj; ++j) {
      float* sp = st + j * ld + v * kLanes;
      Vec16 s = vload(sp);
      if (!full) {
        s = vmask_keys(s, kb + v * kLanes, ke + v * kLanes, static_cast<std::int32_t>(j0 + j));
        vstore(sp, s);
      }
      mx = vmax(mx, s);
    }
    const Vec16 m_old = vload(m + v * kLanes);
    const Vec16 m_new = vmax(m_old, vmul(mx, cvec));
    const Vec16 m_use = vfinite_or_zero(m_new);  // a row with no key yet: exponents stay -inf
    alpha[v] = vexp2(vsub(m_old, m_use));
    const Vec16 neg_m = vsub(vzero(), m_use);
    Vec16 sum = vzero();
    for (int j = 0; j < nj; ++j) {
      float* sp = st + j * ld + v * kLanes;
      const Vec16 pj = vexp2(vfma(vload(sp), cvec, neg_m));
      vstore(sp, pj);
      sum = vadd(sum, pj);
    }
    vstore(l + v * kLanes, vfma(vload(l + v * kLanes), alpha[v], sum));
    vstore(m + v * kLanes, m_new);
  }
}

/// Streams the keys of split s for the query block qb of head (b, h) into `state`.
/// Starts a work item: the key range of each query lane (0 for padding lanes) and an empty
/// online-softmax state (max -inf, sum 0, output 0) for both components. Shared by the fp32
/// and the AMX paths.
inline void begin_item(const Ctx& cx, std::int64_t i0, std::int64_t nr, int ld, std::int64_t dv,
                       const ThreadScratch& ts, const State& state) {
  for (int i = 0; i < ld; ++i) {
    const bool real = i < nr;
    ts.kb[i] = real ? static_cast<std::int32_t>(cx.mask.key_begin(i0 + i)) : 0;
    ts.ke[i] = real ? static_cast<std::int32_t>(cx.mask.key_end(i0 + i)) : 0;
  }
  for (int c = 0; c < 2; ++c) {
    for (int i = 0; i < ld; ++i) {
      state.m[c][i] = -std::numeric_limits<float>::infinity();
      state.l[c][i] = 0.0f;
    }
    std::fill(state.ot[c], state.ot[c] + dv * ld, 0.0f);
  }
}

template <class Elem, int NV>
void process_item(const Ctx& cx, std::int64_t b, std::int64_t h, std::int64_t qb, int s,
                  const ThreadScratch& ts, const State& state) {
  constexpr int ld = NV * kLanes;
  const Params& p = *cx.p;
  const std::int64_t d = cx.geo.d, dv = cx.geo.dv;
  const std::int64_t i0 = qb * kBlockM, nr = std::min<std::int64_t>(kBlockM, cx.N - i0);
  const std::int64_t g = h / cx.rep;

  // Q_c^T of the block (zero columns past the last row)
  const ConstTensorRef* qs[2] = {&p.q1, &p.q2};
  for (int c = 0; c < 2; ++c) {
    const Elem* q = static_cast<const Elem*>(qs[c]->ptr) + b * qs[c]->stride_b + h * qs[c]->stride_h;
    float* qt = ts.qt[c];
    for (std::int64_t i = 0; i < ld; ++i) {
      if (i < nr) {
        float* row = ts.arow;  // d <= dv floats of temporary space
        to_float(q + (i0 + i) * qs[c]->stride_t, row, d);
        for (std::int64_t x = 0; x < d; ++x) qt[x * ld + i] = row[x];
      } else {
        for (std::int64_t x = 0; x < d; ++x) qt[x * ld + i] = 0.0f;
      }
    }
  }
  begin_item(cx, i0, nr, ld, dv, ts, state);

  const ItemKeys<Elem> ik = item_keys<Elem>(cx, b, g, i0, nr, s);
  const std::int64_t lo = ik.lo, hi = ik.hi, kb_last = ik.kb_last, ke_first = ik.ke_first;
  const ConstTensorRef* const* ks = ik.k;
  const Elem* const* kbase = ik.kbase;
  const Elem* vbase = ik.vbase;

  Vec16 alpha[NV];
  for (std::int64_t j0 = lo; j0 < hi; j0 += kBlockN) {
    const int nj = static_cast<int>(std::min<std::int64_t>(kBlockN, hi - j0));
    const bool full = !cx.masked || (kb_last <= j0 && ke_first >= j0 + nj);
    const std::int64_t ldk = cx.geo.ldk(), ldv = cx.geo.ldv();
    for (int c = 0; c < 2; ++c)
      for (int j = 0; j < nj; ++j) to_float(kbase[c] + (j0 + j) * ks[c]->stride_t, ts.kbuf[c] + j * ldk, d);
    for (int j = 0; j < nj; ++j) to_float(vbase + (j0 + j) * p.v.stride_t, ts.vbuf + j * ldv, dv);
    for (int c = 0; c < 2; ++c) {
      qk_block<NV>(ts.kbuf[c], ldk, nj, ts.qt[c], static_cast<int>(d), ts.st);
      online_softmax<NV>(cx, ts.st, nj, j0, full, ts.kb, ts.ke, state.m[c], state.l[c], alpha);
      pv_block<NV>(ts.vbuf, ldv, nj, static_cast<int>(dv), ts.st, alpha, state.ot[c]);
    }
  }
}

/// Merges the states of the nsplit key splits of one query block into states[0], in order.
template <int NV>
void merge_splits(const Ctx& cx, State* states) {
  constexpr int ld = NV * kLanes;
  const std::int64_t dv = cx.geo.dv;
  State& t = states[0];
  for (int c = 0; c < 2; ++c) {
    for (int v = 0; v < NV; ++v) {
      Vec16 mx = vload(t.m[c] + v * kLanes);
      for (int s = 1; s < cx.nsplit; ++s) mx = vmax(mx, vload(states[s].m[c] + v * kLanes));
      const Vec16 m_use = vfinite_or_zero(mx);
      Vec16 w[64];
      Vec16 l = vzero();
      for (int s = 0; s < cx.nsplit; ++s) {
        w[s] = vexp2(vsub(vload(states[s].m[c] + v * kLanes), m_use));
        l = vfma(vload(states[s].l[c] + v * kLanes), w[s], l);
      }
      for (std::int64_t ch = 0; ch < dv; ++ch) {
        Vec16 o = vzero();
        for (int s = 0; s < cx.nsplit; ++s) o = vfma(vload(states[s].ot[c] + ch * ld + v * kLanes), w[s], o);
        vstore(t.ot[c] + ch * ld + v * kLanes, o);
      }
      vstore(t.l[c] + v * kLanes, l);
      vstore(t.m[c] + v * kLanes, mx);
    }
  }
}

/// Combines, normalises and writes the rows of one query block from its final state.
template <class Elem>
void epilogue(const Ctx& cx, std::int64_t b, std::int64_t h, std::int64_t qb, int nv, const State& st,
              float* arow) {
  using P = float;
  const Params& p = *cx.p;
  const std::int64_t d = cx.geo.d, dv = cx.geo.dv, ld = nv * kLanes;
  const std::int64_t i0 = qb * kBlockM, nr = std::min<std::int64_t>(kBlockM, cx.N - i0);
  const std::int64_t loff = p.lambda.per_head ? h * d : 0;
  const LambdaTerms<double> lt = lambda_terms<double>(
      static_cast<const P*>(p.lambda.lq1) + loff, static_cast<const P*>(p.lambda.lk1) + loff,
      static_cast<const P*>(p.lambda.lq2) + loff, static_cast<const P*>(p.lambda.lk2) + loff, d);
  const float lambda = static_cast<float>(lt.value(p.lambda.lambda_init));
  const float out_scale = static_cast<float>(p.out_scale());
  const P* gamma = static_cast<const P*>(p.norm.gamma);
  const P* beta = static_cast<const P*>(p.norm.beta);
  const double eps = p.norm.eps;
  const ForwardExtras& x = p.extras;
  const double ln2 = 0.693147180559945309417;
  Elem* out = static_cast<Elem*>(p.out.ptr) + b * p.out.stride_b + h * p.out.stride_h;

  for (std::int64_t i = 0; i < nr; ++i) {
    const float l1 = st.l[0][i], l2 = st.l[1][i];
    const float inv1 = l1 == 0.0f ? 0.0f : 1.0f / l1;  // fully masked row: A = 0 (NaN stays NaN)
    const float inv2 = l2 == 0.0f ? 0.0f : 1.0f / l2;
    const std::int64_t row = (b * cx.H + h) * cx.N + i0 + i;  // [B, H, N]
    float* o2row = x.o2 ? static_cast<P*>(x.o2) + row * dv : nullptr;
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
    if (p.norm.kind == NormKind::rms) {
      rstd = 1.0 / std::sqrt(sumsq / static_cast<double>(dv) + eps);
    } else if (p.norm.kind == NormKind::group) {
      mean = sum / static_cast<double>(dv);
      double var = 0;
      for (std::int64_t ch = 0; ch < dv; ++ch) var += (arow[ch] - mean) * (arow[ch] - mean);
      rstd = 1.0 / std::sqrt(var / static_cast<double>(dv) + eps);
    }
    const float fm = static_cast<float>(mean), fr = static_cast<float>(rstd);
    Elem* orow = out + (i0 + i) * p.out.stride_t;
    for (std::int64_t ch = 0; ch < dv; ++ch) {
      float y = arow[ch];
      if (p.norm.kind == NormKind::rms) {
        y = y * fr * (gamma ? gamma[ch] : 1.0f);
      } else if (p.norm.kind == NormKind::group) {
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
