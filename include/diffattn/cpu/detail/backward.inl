// diffattn/cpu/detail/backward.inl: the fused backward's tile (cpu/backward.hpp), written once
// over an ISA's vector primitives. NOT a header of its own: algorithm.inl includes it inside
// each ISA's namespace and target region, with the same primitives as the forward.
//
// Layout: the keys of the tile run along the vector lanes (kBlockN = 64 of them, zero-padded),
// so every row statistic the backward needs (L_c, D_c, lambda of a query row) is a broadcast
// scalar and no reduction crosses lanes. Each product is one register-blocked micro-GEMM,
//   C (M x NL lanes) [+]= A (M x K, broadcast from memory, any layout) B (K rows x NL lanes),
// with the operand that carries the output's lanes in rows (K^T, V^T, W, dS_c or K_c packed
// by the caller) and the other broadcast: Q_c and dA row-major for S_c and dPA, transposed
// reads of the same buffers for dK_c^T and dV^T, and dS_c row-major for dQ_c.

/// C[r][0:TV*kW] [+]= sum_{k < K} A(r, k) B[k][0:TV*kW] for r < MR;
/// A(r, k) = a[r * lda + k], or a[k * lda + r] when TRANS.
template <int MR, int TV, bool TRANS, bool ACC>
inline void bw_tile(const float* a, std::int64_t lda, int K, const float* b, std::int64_t ldb, float* c,
                    std::int64_t ldc) {
  Vec acc[MR][TV];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < TV; ++v) acc[r][v] = ACC ? vload(c + r * ldc + v * kW) : vzero();
  for (int k = 0; k < K; ++k) {
    Vec bv[TV];
    for (int v = 0; v < TV; ++v) bv[v] = vload(b + k * ldb + v * kW);
    for (int r = 0; r < MR; ++r) {
      const Vec x = vset1(TRANS ? a[k * lda + r] : a[r * lda + k]);
      for (int v = 0; v < TV; ++v) acc[r][v] = vfma(x, bv[v], acc[r][v]);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < TV; ++v) vstore(c + r * ldc + v * kW, acc[r][v]);
}

/// All M rows of one chunk of TV vectors of lanes: tiles of kTileRows rows, then the remainder.
template <int TV, bool TRANS, bool ACC>
inline void bw_rows(int M, const float* a, std::int64_t lda, int K, const float* b, std::int64_t ldb, float* c,
                    std::int64_t ldc) {
  static_assert(kTileRows == 6, "bw_rows: the remainder switch assumes kTileRows == 6");
  auto arow = [&](int r) { return TRANS ? a + r : a + r * lda; };
  int r = 0;
  for (; r + kTileRows <= M; r += kTileRows) bw_tile<kTileRows, TV, TRANS, ACC>(arow(r), lda, K, b, ldb, c + r * ldc, ldc);
  switch (M - r) {
    case 1: bw_tile<1, TV, TRANS, ACC>(arow(r), lda, K, b, ldb, c + r * ldc, ldc); break;
    case 2: bw_tile<2, TV, TRANS, ACC>(arow(r), lda, K, b, ldb, c + r * ldc, ldc); break;
    case 3: bw_tile<3, TV, TRANS, ACC>(arow(r), lda, K, b, ldb, c + r * ldc, ldc); break;
    case 4: bw_tile<4, TV, TRANS, ACC>(arow(r), lda, K, b, ldb, c + r * ldc, ldc); break;
    case 5: bw_tile<5, TV, TRANS, ACC>(arow(r), lda, K, b, ldb, c + r * ldc, ldc); break;
    default: break;
  }
}

/// C (M x NL) [+]= A (M x K) B (K x NL), NL a multiple of kW; lanes in chunks of kTileVecs
/// vectors, then the narrower rest.
template <bool TRANS, bool ACC>
inline void bw_gemm(int M, int NL, int K, const float* a, std::int64_t lda, const float* b, std::int64_t ldb,
                    float* c, std::int64_t ldc) {
  const int nb = NL / kW;
  int v0 = 0;
  for (; v0 + kTileVecs <= nb; v0 += kTileVecs)
    bw_rows<kTileVecs, TRANS, ACC>(M, a, lda, K, b + v0 * kW, ldb, c + v0 * kW, ldc);
  const int rest = nb - v0;
  if constexpr (kTileVecs > 1) if (rest == 1) bw_rows<1, TRANS, ACC>(M, a, lda, K, b + v0 * kW, ldb, c + v0 * kW, ldc);
  if constexpr (kTileVecs > 2) if (rest == 2) bw_rows<2, TRANS, ACC>(M, a, lda, K, b + v0 * kW, ldb, c + v0 * kW, ldc);
  if constexpr (kTileVecs > 3) if (rest == 3) bw_rows<3, TRANS, ACC>(M, a, lda, K, b + v0 * kW, ldb, c + v0 * kW, ldc);
  static_assert(kTileVecs <= 4, "bw_gemm: remainders handled up to kTileVecs == 4");
}

/// The backward of one tile (BwdTile in cpu/detail/item.hpp).
inline void bwd_tile_impl(const BwdTile& t) {
  constexpr int L = kBlockN;
  const int nr = t.nr, d = t.d, dv = t.dv;
  // lanes that hold keys: the block's, rounded up to whole vectors (the rest of each row is
  // never read: the products below stop there too)
  const int NL = (t.nj + kW - 1) / kW * kW;
  // S_c = Q_c K_c^T
  for (int c = 0; c < 2; ++c) bw_gemm<false, false>(nr, NL, d, t.q[c], t.ldq, t.kt[c], L, t.s[c], L);
  // P_c = exp2(S_c c - L_c); masked keys (and padding lanes) to 0
  const Vec cv = vset1(t.c);
  for (int i = 0; i < nr; ++i) {
    const float* st = t.stat + i * kBwdStat;
    for (int c = 0; c < 2; ++c) {
      float* row = t.s[c] + i * L;
      // a fully masked row has L_c = -inf: its P is 0 (the mask below clears every lane);
      // 0 here keeps exp2 finite on the way
      const Vec nl = vset1(st[c] == -std::numeric_limits<float>::infinity() ? 0.0f : -st[c]);
      for (int v = 0; v < NL; v += kW) vstore(row + v, vexp2(vfma(vload(row + v), cv, nl)));
      if (!t.full) {
        const int lo = t.lo[i], hi = t.hi[i] > lo ? t.hi[i] : lo;
        for (int j = 0; j < lo; ++j) row[j] = 0.0f;
        for (int j = hi; j < NL; ++j) row[j] = 0.0f;
      }
    }
  }
  // dPA = dA V^T (dP_1 = dPA, dP_2 = -lambda dPA: one product for both components)
  bw_gemm<false, false>(nr, NL, dv, t.da, dv, t.vt, L, t.dp, L);
  // W = P_1 - lambda P_2 (into dp), dS_c = s P_c (dP_c - D_c) (into s[c])
  const Vec sv = vset1(t.scale);
  for (int i = 0; i < nr; ++i) {
    const float* st = t.stat + i * kBwdStat;
    const float lam = st[4];
    const Vec nlam = vset1(-lam), nls = vset1(-lam * t.scale), nd1 = vset1(-st[2]), nd2 = vset1(-st[3]);
    float* p1 = t.s[0] + i * L;
    float* p2 = t.s[1] + i * L;
    float* dp = t.dp + i * L;
    for (int v = 0; v < NL; v += kW) {
      const Vec a = vload(p1 + v), b = vload(p2 + v), g = vload(dp + v);
      vstore(dp + v, vfma(b, nlam, a));
      vstore(p1 + v, vmul(a, vfma(g, sv, nd1)));
      vstore(p2 + v, vmul(b, vfma(g, nls, nd2)));
    }
  }
  // dV^T += dA^T W
  bw_gemm<true, true>(dv, NL, nr, t.da, dv, t.dp, L, t.dvt, L);
  for (int c = 0; c < 2; ++c) {
    // dK_c^T += Q_c^T dS_c
    bw_gemm<true, true>(d, NL, nr, t.q[c], t.ldq, t.s[c], L, t.dkt[c], L);
    // dQ_c += dS_c K_c
    bw_gemm<false, true>(nr, t.dpad, t.nj, t.s[c], L, t.kp[c], t.dpad, t.dq[c], t.lddq);
  }
}
