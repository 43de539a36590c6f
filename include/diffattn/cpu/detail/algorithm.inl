// diffattn/cpu/detail/algorithm.inl: the tiled forward's inner loops, written once over an
// ISA's vector primitives. NOT a header of its own: each file of cpu/isa/ includes it inside
// its namespace (detail::avx2, detail::avx512, ...) and its target region, after defining
//   Vec, kW (lanes), kTileVecs (vectors per micro-tile row), kIsa, and
//   vload vstore vset1 vzero vfma vmul vadd vsub vmax vfinite_or_zero vexp2 vmask_keys
//   to_float<Elem>
// so that everything below is compiled for that ISA and inlined into itself.
//
// Layouts (item.hpp): the query index i runs along the vector lanes everywhere, so the row-wise
// softmax statistics are vertical vector operations and no transposes or horizontal reductions
// occur. An item has LD = NV * 16 query columns, NB = LD / kW vectors per row:
//   qt  (d, LD)     Q_c of the query block, transposed: qt[x][i] = Q_c[i][x]
//   st  (nj, LD)    scores transposed, st[j][i] = <K_c[j], Q_c[i]>, then P_c^T in place
//   ot  (dv, LD)    the running output transposed, ot[c][i] = O_c[i][c]
// K_c and V rows are read from the thread's packed (and widened) block: their elements are
// broadcast, so any row stride works.
//
// Micro-tiles: kTileRows rows of K (QK^T) or of V^T (PV) by TV = min(NB, kTileVecs) vectors of
// queries, the accumulators in registers: kTileRows * TV + TV + 1 registers of the ISA's file.

/// Rows of a micro-tile (keys for QK^T, value channels for PV); every ISA's register file holds
/// kTileRows x kTileVecs accumulators with room for the operands.
inline constexpr int kTileRows = 6;

/// st[r][:TV*kW] = sum_x k[r*ldk + x] * qt[x][:TV*kW] for r < MR (qt and st rows LD apart).
/// With MAX, also colmax[:TV*kW] = max(colmax, max_r st[r][:]) while the sums are in registers
/// (saves the softmax a pass over st for blocks without masked keys).
template <int MR, int TV, int LD, bool MAX>
inline void qk_tile(const float* k, std::int64_t ldk, const float* qt, int d, float* st, float* colmax) {
  Vec acc[MR][TV];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < TV; ++v) acc[r][v] = vzero();
  for (int x = 0; x < d; ++x) {
    Vec q[TV];
    for (int v = 0; v < TV; ++v) q[v] = vload(qt + x * LD + v * kW);
    for (int r = 0; r < MR; ++r) {
      const Vec b = vset1(k[r * ldk + x]);
      for (int v = 0; v < TV; ++v) acc[r][v] = vfma(b, q[v], acc[r][v]);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < TV; ++v) vstore(st + r * LD + v * kW, acc[r][v]);
  if constexpr (MAX) {
    for (int v = 0; v < TV; ++v) {
      Vec m = vload(colmax + v * kW);
      for (int r = 0; r < MR; ++r) m = vmax(m, acc[r][v]);  // a NaN score propagates
      vstore(colmax + v * kW, m);
    }
  }
}

/// ot[r][:TV*kW] = alpha * ot[r][:] + sum_{j < nj} v[j*ldv + r] * pt[j][:] for r < MR.
template <int MR, int TV, int LD>
inline void pv_tile(const float* vv, std::int64_t ldv, int nj, const float* pt, const Vec* alpha,
                    float* ot) {
  Vec acc[MR][TV];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < TV; ++v) acc[r][v] = vmul(vload(ot + r * LD + v * kW), alpha[v]);
  for (int j = 0; j < nj; ++j) {
    Vec p[TV];
    for (int v = 0; v < TV; ++v) p[v] = vload(pt + j * LD + v * kW);
    for (int r = 0; r < MR; ++r) {
      const Vec b = vset1(vv[j * ldv + r]);
      for (int v = 0; v < TV; ++v) acc[r][v] = vfma(b, p[v], acc[r][v]);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < TV; ++v) vstore(ot + r * LD + v * kW, acc[r][v]);
}

/// Vectors per row of an item with NV groups of 16 columns (NB), per micro-tile (TV), and in
/// the last, narrower chunk of columns when TV does not divide NB (REM, 0 if it does).
template <int NV>
struct Cols {
  static constexpr int LD = NV * kColGroup;
  static constexpr int NB = LD / kW;
  static constexpr int TV = NB < kTileVecs ? NB : kTileVecs;
  static constexpr int REM = NB % TV;
  static_assert(kColGroup % kW == 0, "an ISA's lane count must divide kColGroup");
};

/// One chunk of TV vectors of columns, all keys of a block: full tiles of kTileRows keys, then
/// the remainder.
template <int TV, int LD, bool MAX>
inline void qk_chunk(const float* k, std::int64_t ldk, int nj, const float* q, int d, float* s, float* mx) {
  static_assert(kTileRows == 6, "qk_chunk: the remainder switch assumes kTileRows == 6");
  int j = 0;
  for (; j + kTileRows <= nj; j += kTileRows) qk_tile<kTileRows, TV, LD, MAX>(k + j * ldk, ldk, q, d, s + j * LD, mx);
  switch (nj - j) {
    case 1: qk_tile<1, TV, LD, MAX>(k + j * ldk, ldk, q, d, s + j * LD, mx); break;
    case 2: qk_tile<2, TV, LD, MAX>(k + j * ldk, ldk, q, d, s + j * LD, mx); break;
    case 3: qk_tile<3, TV, LD, MAX>(k + j * ldk, ldk, q, d, s + j * LD, mx); break;
    case 4: qk_tile<4, TV, LD, MAX>(k + j * ldk, ldk, q, d, s + j * LD, mx); break;
    case 5: qk_tile<5, TV, LD, MAX>(k + j * ldk, ldk, q, d, s + j * LD, mx); break;
    default: break;
  }
}

/// One chunk of TV vectors of columns, all dv channels: tiles of kTileRows channels.
template <int TV, int LD>
inline void pv_chunk(const float* vv, std::int64_t ldv, int nj, int dv, const float* p, const Vec* a, float* o) {
  int c = 0;
  for (; c + kTileRows <= dv; c += kTileRows) pv_tile<kTileRows, TV, LD>(vv + c, ldv, nj, p, a, o + c * LD);
  switch (dv - c) {
    case 1: pv_tile<1, TV, LD>(vv + c, ldv, nj, p, a, o + c * LD); break;
    case 2: pv_tile<2, TV, LD>(vv + c, ldv, nj, p, a, o + c * LD); break;
    case 3: pv_tile<3, TV, LD>(vv + c, ldv, nj, p, a, o + c * LD); break;
    case 4: pv_tile<4, TV, LD>(vv + c, ldv, nj, p, a, o + c * LD); break;
    case 5: pv_tile<5, TV, LD>(vv + c, ldv, nj, p, a, o + c * LD); break;
    default: break;
  }
}

/// st (nj, LD) = K rows [0, nj) times qt, in column chunks of TV vectors; with MAX also the
/// column maxima colmax (LD), which the caller initialises.
template <int NV, bool MAX = false>
inline void qk_block(const float* k, std::int64_t ldk, int nj, const float* qt, int d, float* st,
                     float* colmax = nullptr) {
  using C = Cols<NV>;
  int c0 = 0;
  for (; c0 + C::TV <= C::NB; c0 += C::TV)
    qk_chunk<C::TV, C::LD, MAX>(k, ldk, nj, qt + c0 * kW, d, st + c0 * kW, colmax + c0 * kW);
  if constexpr (C::REM > 0) qk_chunk<C::REM, C::LD, MAX>(k, ldk, nj, qt + c0 * kW, d, st + c0 * kW, colmax + c0 * kW);
}

/// ot (dv, LD) = alpha * ot + V^T P^T over keys [0, nj), in column chunks of TV vectors.
template <int NV>
inline void pv_block(const float* vv, std::int64_t ldv, int nj, int dv, const float* pt, const Vec* alpha,
                     float* ot) {
  using C = Cols<NV>;
  int c0 = 0;
  for (; c0 + C::TV <= C::NB; c0 += C::TV) pv_chunk<C::TV, C::LD>(vv, ldv, nj, dv, pt + c0 * kW, alpha + c0, ot + c0 * kW);
  if constexpr (C::REM > 0) pv_chunk<C::REM, C::LD>(vv, ldv, nj, dv, pt + c0 * kW, alpha + c0, ot + c0 * kW);
}

/// The online softmax of one key block for component c: masks st when `full` is false,
/// rescales (m, l), turns st into P^T in place and returns the factors alpha (NB vectors) for O.
/// colmax: the column maxima of st when qk_block computed them (full blocks), else nullptr.
template <int NV>
inline void online_softmax(const Ctx& cx, float* st, int nj, std::int64_t j0, bool full,
                           const std::int32_t* kb, const std::int32_t* ke, float* m, float* l,
                           Vec* alpha, const float* colmax = nullptr) {
  using C = Cols<NV>;
  constexpr int LD = C::LD;
  const Vec cvec = vset1(cx.c);
  for (int v = 0; v < C::NB; ++v) {
    Vec mx = vset1(-std::numeric_limits<float>::infinity());
    if (colmax) {
      mx = vload(colmax + v * kW);
    } else {
      for (int j = 0; j < nj; ++j) {
        float* sp = st + j * LD + v * kW;
        Vec s = vload(sp);
        if (!full) {
          s = vmask_keys(s, kb + v * kW, ke + v * kW, static_cast<std::int32_t>(j0 + j));
          vstore(sp, s);
        }
        mx = vmax(mx, s);
      }
    }
    const Vec m_old = vload(m + v * kW);
    const Vec m_new = vmax(m_old, vmul(mx, cvec));
    const Vec m_use = vfinite_or_zero(m_new);  // a row with no key yet: exponents stay -inf
    alpha[v] = vexp2(vsub(m_old, m_use));
    const Vec neg_m = vsub(vzero(), m_use);
    Vec sum = vzero();
    for (int j = 0; j < nj; ++j) {
      float* sp = st + j * LD + v * kW;
      const Vec pj = vexp2(vfma(vload(sp), cvec, neg_m));
      vstore(sp, pj);
      sum = vadd(sum, pj);
    }
    vstore(l + v * kW, vfma(vload(l + v * kW), alpha[v], sum));
    vstore(m + v * kW, m_new);
  }
}

/// Streams the keys of split s for the query block qb of head (b, h) into `state`.
template <class Elem, int NV>
void process_item(const Ctx& cx, std::int64_t b, std::int64_t h, std::int64_t qb, int s,
                  const ThreadScratch& ts, const State& state) {
  constexpr int LD = Cols<NV>::LD;
  const Params& p = *cx.p;
  const std::int64_t d = cx.geo.d, dv = cx.geo.dv;
  const std::int64_t i0 = qb * cx.geo.bm, nr = std::min<std::int64_t>(cx.geo.bm, cx.rows() - i0);
  const std::int64_t g = h / cx.rep;

  // Q_c^T of the block (zero columns past the last row); row v: token v / pack of head h + v % pack
  const ConstTensorRef* qs[2] = {&p.q1, &p.q2};
  for (int c = 0; c < 2; ++c) {
    const Elem* q = static_cast<const Elem*>(qs[c]->ptr) + p.q_offset(*qs[c], b) + h * qs[c]->stride_h;
    float* qt = ts.qt[c];
    for (std::int64_t i = 0; i < LD; ++i) {
      if (i < nr) {
        float* row = ts.arow;  // d <= dv floats of temporary space
        to_float(q + cx.tok(i0 + i) * qs[c]->stride_t + (i0 + i) % cx.pack * qs[c]->stride_h, row, d);
        for (std::int64_t x = 0; x < d; ++x) qt[x * LD + i] = row[x];
      } else {
        for (std::int64_t x = 0; x < d; ++x) qt[x * LD + i] = 0.0f;
      }
    }
  }
  begin_item(cx, i0, nr, LD, dv, ts, state);

  const ItemKeys<Elem> ik = item_keys<Elem>(cx, b, g, i0, nr, s);
  Vec alpha[Cols<NV>::NB];
  alignas(64) float colmax[LD];
  const std::int64_t ldk = cx.geo.ldk(), ldv = cx.geo.ldv();
  const int nk = p.is_v2() ? 1 : 2;  // K blocks to pack: V2's two query heads share one K
  for (std::int64_t j0 = ik.lo; j0 < ik.hi; j0 += kBlockN) {
    const int nj = static_cast<int>(std::min<std::int64_t>(kBlockN, ik.hi - j0));
    const bool full = !cx.masked || (ik.kb_last <= j0 && ik.ke_first >= j0 + nj);
    for (int c = 0; c < nk; ++c)
      for (int j = 0; j < nj; ++j) to_float(ik.krow(c, j0 + j), ts.kbuf[c] + j * ldk, d);
    for (int hv = 0; hv < 2 && ik.vbase[hv]; ++hv)  // V's halves side by side: row j of V is (lo, hi)
      for (int j = 0; j < nj; ++j) to_float(ik.vrow(hv, j0 + j), ts.vbuf + j * ldv + hv * d, d);
    for (int c = 0; c < 2; ++c) {
      const float* kc = ts.kbuf[c < nk ? c : 0];
      if (full) {
        for (int i = 0; i < LD; ++i) colmax[i] = -std::numeric_limits<float>::infinity();
        qk_block<NV, true>(kc, ldk, nj, ts.qt[c], static_cast<int>(d), ts.st, colmax);
      } else {
        qk_block<NV>(kc, ldk, nj, ts.qt[c], static_cast<int>(d), ts.st);
      }
      online_softmax<NV>(cx, ts.st, nj, j0, full, ts.kb, ts.ke, state.m[c], state.l[c], alpha,
                         full ? colmax : nullptr);
      pv_block<NV>(ts.vbuf, ldv, nj, static_cast<int>(dv), ts.st, alpha, state.ot[c]);
    }
  }
}

/// Merges the states of the nsplit key splits of one query block into states[0], in order.
template <int NV>
void merge_splits(const Ctx& cx, State* states) {
  using C = Cols<NV>;
  constexpr int LD = C::LD;
  const std::int64_t dv = cx.geo.dv;
  State& t = states[0];
  for (int c = 0; c < 2; ++c) {
    for (int v = 0; v < C::NB; ++v) {
      Vec mx = vload(t.m[c] + v * kW);
      for (int s = 1; s < cx.nsplit; ++s) mx = vmax(mx, vload(states[s].m[c] + v * kW));
      const Vec m_use = vfinite_or_zero(mx);
      Vec w[64];
      Vec l = vzero();
      for (int s = 0; s < cx.nsplit; ++s) {
        w[s] = vexp2(vsub(vload(states[s].m[c] + v * kW), m_use));
        l = vfma(vload(states[s].l[c] + v * kW), w[s], l);
      }
      for (std::int64_t ch = 0; ch < dv; ++ch) {
        Vec o = vzero();
        for (int s = 0; s < cx.nsplit; ++s) o = vfma(vload(states[s].ot[c] + ch * LD + v * kW), w[s], o);
        vstore(t.ot[c] + ch * LD + v * kW, o);
      }
      vstore(t.l[c] + v * kW, l);
      vstore(t.m[c] + v * kW, mx);
    }
  }
}

#include "diffattn/cpu/detail/backward.inl"

/// The entry points of this ISA (cpu/isa.hpp takes their addresses; nothing outside the ISA's
/// region calls its vector code directly).
struct Entry {
  /// One tile of the fused backward (cpu/backward.hpp).
  static void bwd_tile(const BwdTile& t) { bwd_tile_impl(t); }
  /// One work item with nv groups of 16 query columns (1 to kBlockM / 16).
  template <class Elem>
  static void process(const Ctx& cx, int nv, std::int64_t b, std::int64_t h, std::int64_t qb, int s,
                      const ThreadScratch& ts, const State& st) {
    switch (nv) {
      case 1: process_item<Elem, 1>(cx, b, h, qb, s, ts, st); break;
      case 2: process_item<Elem, 2>(cx, b, h, qb, s, ts, st); break;
      case 3: process_item<Elem, 3>(cx, b, h, qb, s, ts, st); break;
      case 4: process_item<Elem, 4>(cx, b, h, qb, s, ts, st); break;
      case 5: process_item<Elem, 5>(cx, b, h, qb, s, ts, st); break;
      case 6: process_item<Elem, 6>(cx, b, h, qb, s, ts, st); break;
      case 7: process_item<Elem, 7>(cx, b, h, qb, s, ts, st); break;
      default: process_item<Elem, 8>(cx, b, h, qb, s, ts, st); break;
    }
  }
  static_assert(kBlockM == 8 * kColGroup, "Entry: the switches go up to 8 groups of 16 columns");
  static void merge(const Ctx& cx, int nv, State* states) {
    switch (nv) {
      case 1: merge_splits<1>(cx, states); break;
      case 2: merge_splits<2>(cx, states); break;
      case 3: merge_splits<3>(cx, states); break;
      case 4: merge_splits<4>(cx, states); break;
      case 5: merge_splits<5>(cx, states); break;
      case 6: merge_splits<6>(cx, states); break;
      case 7: merge_splits<7>(cx, states); break;
      default: merge_splits<8>(cx, states); break;
    }
  }
  /// Test hooks: the primitives over arrays of n floats (n a multiple of kColGroup).
  static void exp2_n(const float* x, float* y, int n) {
    for (int i = 0; i < n; i += kW) vstore(y + i, vexp2(vload(x + i)));
  }
  static void max_n(const float* a, const float* b, float* y, int n) {
    for (int i = 0; i < n; i += kW) vstore(y + i, vmax(vload(a + i), vload(b + i)));
  }
  static void mask_keys_n(const float* s, const std::int32_t* kb, const std::int32_t* ke, std::int32_t j,
                          float* y, int n) {
    for (int i = 0; i < n; i += kW) vstore(y + i, vmask_keys(vload(s + i), kb + i, ke + i, j));
  }
  /// The two products of one 64-query block (NV = 4) against nj keys, for the tile benchmarks.
  static void qk_block64(const float* k, std::int64_t ldk, int nj, const float* qt, int d, float* st) {
    qk_block<4>(k, ldk, nj, qt, d, st);
  }
  static void pv_block64(const float* vv, std::int64_t ldv, int nj, int dv, const float* pt, float* ot) {
    Vec one[Cols<4>::NB];
    for (Vec& a : one) a = vset1(1.0f);
    pv_block<4>(vv, ldv, nj, dv, pt, one, ot);
  }
  /// Widens n elements (the K/V packing of process_item).
  template <class Elem>
  static void widen_n(const Elem* x, float* y, std::int64_t n) { to_float(x, y, n); }
};
