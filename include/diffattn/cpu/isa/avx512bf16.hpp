// diffattn/cpu/isa/avx512bf16.hpp: the avx512bf16 path: AVX-512 with AVX512_BF16 (AMD Zen 4
// on, Intel Cooper Lake), compiled for it in any translation unit (cpu/detail/target.hpp) and
// chosen at run time where the CPU has it but no AMX (cpu/isa.hpp). Everything runs the avx512
// path's code except bfloat16 decode items: a sequence of at most kDecodeRows = 16 rows (query
// tokens x the packed heads of a GQA group, cpu/detail/item.hpp) with d a multiple of 32. Those
// run here with the keys along the vector lanes instead of the queries:
//
//   S_c (rows x 16 keys)  = Q_c K_c^T   vdpbf16ps: a pair of Q_c's channels broadcast, times
//                                       K_c^T as 16 key lanes of channel pairs (a 32-bit
//                                       transpose of the key rows, shared by every row)
//   online softmax per row, the row max reduced across lanes once per block of 64 keys
//   O_c (rows x dv)      += P_c V       vdpbf16ps: a pair of keys of P_c broadcast, times two
//                                       rows of V interleaved by 16-bit words (vpunpck[lh]wd)
//
// Why: a decode item has 1 to 16 rows (one token of each head of a group), so the avx512
// path, with the queries along the lanes, fills at most 16 lanes whatever the row count and
// spends 384 fp32 FMAs per key (d = 64) on 1 to 16 rows; here a key costs 12 dot-product
// instructions per row (d = 64, both components), each 32 multiply-adds. On Zen 4 vdpbf16ps
// zmm issues at the FMA's rate (both 1 per cycle per core, measured at 3.6 GHz), so the
// products take 2x fewer instructions than fp32 FMAs on full lanes; on Sapphire Rapids it runs
// at half the FMA rate (cpu/isa/amx.hpp), where the amx path serves bfloat16 instead.
//
// Rounding: P is rounded to bfloat16 for P V, as on the amx path (cpu::bf16_rounds_p says
// which sequences). vdpbf16ps treats bfloat16 denormal inputs as zero and flushes denormal
// results (|x| < 2^-126): Q and K entries below 1.2e-38 count as 0.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "diffattn/core/config.hpp"
#include "diffattn/core/dtype.hpp"
#include "diffattn/cpu/detail/item.hpp"
#include "diffattn/cpu/detail/target.hpp"
#include "diffattn/cpu/isa/avx512.hpp"

#if DIFFATTN_CPU_X86_TARGETS
#include <immintrin.h>

DIFFATTN_CPU_TARGET_BEGIN("avx512bf16,avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c")
DIFFATTN_NAMESPACE_BEGIN
namespace cpu {
namespace detail {
namespace avx512bf16 {

using avx512::kAll;
using avx512::transpose16;
using avx512::Vec;

/// Rows per pass of the products: 8 rows x 2 components = 16 accumulators per key or channel vector.
inline constexpr int kRowGroup = 8;
/// Vectors of 16 keys per block of kBlockN keys; pairs of keys per block.
inline constexpr int kKeyVecs = kBlockN / 16;
inline constexpr int kKeyPairs = kBlockN / 2;

inline __m512bh as_bh(__m512i x) { return reinterpret_cast<__m512bh>(x); }

// Reductions across the 16 lanes in a fixed order (GCC 12's _mm512_reduce_* trip
// -Wmaybe-uninitialized through _mm256_undefined_pd, GCC bug 105593).
inline __m128 fold16(__m512 x, bool add) {
  const __m256 lo = _mm512_maskz_extractf32x8_ps(0xFF, x, 0), hi = _mm512_maskz_extractf32x8_ps(0xFF, x, 1);
  const __m256 a = add ? _mm256_add_ps(lo, hi) : _mm256_max_ps(lo, hi);
  const __m128 b0 = _mm256_castps256_ps128(a), b1 = _mm256_extractf128_ps(a, 1);
  const __m128 b = add ? _mm_add_ps(b0, b1) : _mm_max_ps(b0, b1);
  const __m128 c = add ? _mm_add_ps(b, _mm_movehl_ps(b, b)) : _mm_max_ps(b, _mm_movehl_ps(b, b));
  return add ? _mm_add_ss(c, _mm_movehdup_ps(c)) : _mm_max_ss(c, _mm_movehdup_ps(c));
}
inline float hsum(__m512 x) { return _mm_cvtss_f32(fold16(x, true)); }
inline float hmax(__m512 x) { return _mm_cvtss_f32(fold16(x, false)); }

/// A decode item's scratch, carved from the thread's (ThreadScratch, Geometry::bm = kBlockM):
/// each piece fits the slice named in brackets for every d <= 256 and dv <= 2d.
struct DecodeScratch {
  std::uint32_t* qd;     ///< [2][kDecodeRows][d/2] Q_c's rows as bf16 pairs of channels (qt[0])
  std::uint32_t* kt[2];  ///< [kKeyVecs][d/2][16] K_c^T of the block, key lanes (kbuf[c])
  float* s;              ///< [2][kDecodeRows][kBlockN] scores (st)
  float* lsum;           ///< [2][kDecodeRows][16] running sums, per lane (st, after s)
  std::uint32_t* pb;     ///< [2][kDecodeRows][kKeyPairs] P_c as bf16 pairs of keys (pp)
  std::uint32_t* vi;     ///< [kKeyPairs][dv/16][16] V rows interleaved in pairs of keys (vbuf)
  float* o;              ///< [2][kDecodeRows][dv] accumulators, channels as perm_channel (qt[1])
  static DecodeScratch at(const ThreadScratch& ts) {
    DecodeScratch x;
    x.qd = reinterpret_cast<std::uint32_t*>(ts.qt[0]);
    x.kt[0] = reinterpret_cast<std::uint32_t*>(ts.kbuf[0]);
    x.kt[1] = reinterpret_cast<std::uint32_t*>(ts.kbuf[1]);
    x.s = ts.st;
    x.lsum = ts.st + 2 * kDecodeRows * kBlockN;
    x.pb = ts.pp;
    x.vi = reinterpret_cast<std::uint32_t*>(ts.vbuf);
    x.o = ts.qt[1];
    return x;
  }
};
static_assert(2 * kDecodeRows * (kBlockN + 16) <= kBlockN * kBlockM, "DecodeScratch: s and lsum fit st");
static_assert(2 * kDecodeRows * kKeyPairs <= kBlockN / 2 * kBlockM, "DecodeScratch: pb fits pp");

/// Cache lines to prefetch, issued a few at a time from inside the product loops so that the
/// next block's rows stream in while this one computes (a burst of hundreds of prefetches
/// stalls on the miss buffers, or is dropped, and the loads of the next block wait anyway).
struct Prefetch {
  const char* const* p = nullptr;
  const char* const* end = nullptr;
  void step() {
    for (int i = 0; i < 2 && p < end; ++i, ++p) _mm_prefetch(*p, _MM_HINT_T1);
  }
  void rest() { while (p < end) step(); }
};

/// The channel held by lane t of accumulator vector cv: vpunpck[lh]wd interleave within
/// 128-bit lanes, so vector 2q (low words) holds channels 32q + 8(t/4) + t%4 and vector 2q + 1
/// (high words) those plus 4.
inline int perm_channel(int cv, int t) { return 32 * (cv / 2) + 8 * (t / 4) + 4 * (cv % 2) + t % 4; }

/// kt (kKeyVecs x d/2 x 16) = the block's key rows [0, nj) transposed as 32-bit pairs of
/// channels, zero lanes past nj.
inline void transpose_keys(const bfloat16* const* rows, int nj, int d, std::uint32_t* kt) {
  const int hd = d / 2;
  for (int kv = 0; kv < kKeyVecs; ++kv)
    for (int q = 0; q < d / 32; ++q) {
      __m512i r[16];
      for (int t = 0; t < 16; ++t) {
        const int j = 16 * kv + t;
        r[t] = j < nj ? _mm512_loadu_si512(rows[j] + 32 * q) : _mm512_setzero_si512();
      }
      transpose16(r);  // r[t]: the pair of channels 16q + t of 16 keys
      for (int t = 0; t < 16; ++t) _mm512_storeu_si512(kt + (kv * hd + 16 * q + t) * 16, r[t]);
    }
}

/// vi[k][cv0 + ..] = rows 2k and 2k + 1 (zero past nj) of one half of V (d channels),
/// interleaved by 16-bit words: vectors cv0 .. cv0 + d/16 of the ncv of each key pair.
inline void interleave_values(const bfloat16* const* rows, int nj, int d, int cv0, int ncv, std::uint32_t* vi) {
  constexpr __mmask32 all = 0xFFFFFFFFu;
  for (int k = 0; 2 * k < nj; ++k) {
    const bfloat16* a = rows[2 * k];
    const bfloat16* b = 2 * k + 1 < nj ? rows[2 * k + 1] : nullptr;
    for (int q = 0; q < d / 32; ++q) {
      const __m512i x = _mm512_loadu_si512(a + 32 * q);
      const __m512i y = b ? _mm512_loadu_si512(b + 32 * q) : _mm512_setzero_si512();
      std::uint32_t* dst = vi + (k * ncv + cv0 + 2 * q) * 16;
      _mm512_storeu_si512(dst, _mm512_maskz_unpacklo_epi16(all, x, y));
      _mm512_storeu_si512(dst + 16, _mm512_maskz_unpackhi_epi16(all, x, y));
    }
  }
}

/// Scores of RG rows against KV vectors of 16 keys, both components:
/// s[c][r * kBlockN + 16 v + t] = sum_p qd[c][r * hd + p] . kt[c][(v * hd + p) * 16 + t].
template <int RG, int KV>
inline void qk_rows(const std::uint32_t* const qd[2], int hd, const std::uint32_t* const kt[2], float* const s[2]) {
  __m512 acc[2][RG][KV];
  for (int c = 0; c < 2; ++c)
    for (int r = 0; r < RG; ++r)
      for (int v = 0; v < KV; ++v) acc[c][r][v] = _mm512_setzero_ps();
  for (int p = 0; p < hd; ++p)
    for (int c = 0; c < 2; ++c) {
      __m512bh k[KV];
      for (int v = 0; v < KV; ++v) k[v] = as_bh(_mm512_loadu_si512(kt[c] + (v * hd + p) * 16));
      for (int r = 0; r < RG; ++r) {
        const __m512bh q = as_bh(_mm512_set1_epi32(static_cast<int>(qd[c][r * hd + p])));
        for (int v = 0; v < KV; ++v) acc[c][r][v] = _mm512_dpbf16_ps(acc[c][r][v], k[v], q);
      }
    }
  for (int c = 0; c < 2; ++c)
    for (int r = 0; r < RG; ++r)
      for (int v = 0; v < KV; ++v) _mm512_storeu_ps(s[c] + r * kBlockN + 16 * v, acc[c][r][v]);
}

/// O of RG rows, both components, over np pairs of keys, CV channel vectors at a time:
/// o[c][r * dv + ..] = alpha[c][r] o[c][r * dv + ..] + sum_k pb[c][r * kKeyPairs + k] . vi[k][..].
template <int RG, int CV>
inline void pv_rows(int np, int ncv, const std::uint32_t* const pb[2], const std::uint32_t* vi, const float* const alpha[2],
                    float* const o[2], Prefetch& pf) {
  const int dv = 16 * ncv;
  for (int cv0 = 0; cv0 < ncv; cv0 += CV) {
    __m512 acc[2][RG][CV];
    for (int c = 0; c < 2; ++c)
      for (int r = 0; r < RG; ++r) {
        const __m512 a = _mm512_set1_ps(alpha[c][r]);
        for (int i = 0; i < CV; ++i) acc[c][r][i] = _mm512_mul_ps(_mm512_loadu_ps(o[c] + r * dv + (cv0 + i) * 16), a);
      }
    for (int k = 0; k < np; ++k) {
      pf.step();
      __m512bh v[CV];
      for (int i = 0; i < CV; ++i) v[i] = as_bh(_mm512_loadu_si512(vi + (k * ncv + cv0 + i) * 16));
      for (int c = 0; c < 2; ++c)
        for (int r = 0; r < RG; ++r) {
          const __m512bh p = as_bh(_mm512_set1_epi32(static_cast<int>(pb[c][r * kKeyPairs + k])));
          for (int i = 0; i < CV; ++i) acc[c][r][i] = _mm512_dpbf16_ps(acc[c][r][i], v[i], p);
        }
    }
    for (int c = 0; c < 2; ++c)
      for (int r = 0; r < RG; ++r)
        for (int i = 0; i < CV; ++i) _mm512_storeu_ps(o[c] + r * dv + (cv0 + i) * 16, acc[c][r][i]);
  }
}

/// Both products for one group of RG rows (row g0 of the item on): the key vectors in steps
/// of KV and the channel vectors in steps of CV that keep 16 accumulators in registers.
template <int RG>
struct Group {
  static constexpr int KV = RG <= 2 ? 4 : RG <= 4 ? 2 : 1;
  static constexpr int CV = RG == 1 ? 8 : RG == 2 ? 4 : RG <= 4 ? 2 : 1;
  static void qk(const std::uint32_t* const qd[2], int hd, const std::uint32_t* const kt[2], float* const s[2]) {
    for (int v0 = 0; v0 < kKeyVecs; v0 += KV) {
      const std::uint32_t* k[2] = {kt[0] + v0 * hd * 16, kt[1] + v0 * hd * 16};
      float* sv[2] = {s[0] + 16 * v0, s[1] + 16 * v0};
      qk_rows<RG, KV>(qd, hd, k, sv);
    }
  }
  static void pv(int np, int ncv, const std::uint32_t* const pb[2], const std::uint32_t* vi, const float* const alpha[2],
                 float* const o[2], Prefetch& pf) {
    if constexpr (CV >= 8) if (ncv % 8 == 0) return pv_rows<RG, 8>(np, ncv, pb, vi, alpha, o, pf);
    if constexpr (CV >= 4) if (ncv % 4 == 0) return pv_rows<RG, 4>(np, ncv, pb, vi, alpha, o, pf);
    if constexpr (CV >= 2) if (ncv % 2 == 0) return pv_rows<RG, 2>(np, ncv, pb, vi, alpha, o, pf);
    pv_rows<RG, 1>(np, ncv, pb, vi, alpha, o, pf);
  }
};
static_assert(kRowGroup == 8, "the row-group switches below go up to 8");

template <class F>
inline void with_group(int rg, F&& f) {
  switch (rg) {
    case 1: f(Group<1>{}); break;
    case 2: f(Group<2>{}); break;
    case 3: f(Group<3>{}); break;
    case 4: f(Group<4>{}); break;
    case 5: f(Group<5>{}); break;
    case 6: f(Group<6>{}); break;
    case 7: f(Group<7>{}); break;
    default: f(Group<8>{}); break;
  }
}

/// The online softmax of one block for rows [r0, r1), both components: lanes of keys past nj
/// (and, for blocks that are not full, outside each row's [kb, ke)) become -inf; the row max
/// m (log2 units, as every path keeps it), the per-lane sums, alpha, and P in bf16 pairs of keys.
inline void softmax_rows(int r0, int r1, int nj, std::int64_t j0, bool full, const std::int32_t* kb, const std::int32_t* ke,
                         float cscale, float* const m[2], const DecodeScratch& ds, float alpha[2][kDecodeRows]) {
  const int nvk = (nj + 15) / 16;
  const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  const __m512 ninf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  const __m512 cv = _mm512_set1_ps(cscale);
  for (int c = 0; c < 2; ++c)
    for (int r = r0; r < r1; ++r) {
      const float* sr = ds.s + (c * kDecodeRows + r) * kBlockN;
      __m512 v[kKeyVecs];
      __m512 mx = ninf;
      for (int k = 0; k < nvk; ++k) {
        const __m512i j = _mm512_add_epi32(lane, _mm512_set1_epi32(16 * k));  // key index - j0
        __mmask16 ok = _mm512_cmp_epi32_mask(j, _mm512_set1_epi32(nj), _MM_CMPINT_LT);
        if (!full) {
          const __m512i jj = _mm512_add_epi32(j, _mm512_set1_epi32(static_cast<std::int32_t>(j0)));
          ok &= _mm512_cmp_epi32_mask(_mm512_set1_epi32(kb[r]), jj, _MM_CMPINT_LE) &
                _mm512_cmp_epi32_mask(jj, _mm512_set1_epi32(ke[r]), _MM_CMPINT_LT);
        }
        v[k] = _mm512_mask_blend_ps(ok, ninf, _mm512_loadu_ps(sr + 16 * k));
        mx = _mm512_maskz_max_ps(kAll, mx, v[k]);  // a NaN score propagates in its lane
      }
      // the row max across lanes; a NaN score that the reduction drops still makes its P NaN.
      // The running max is an integer (log2 units, rounded up): P = exp2(s c - m) then changes
      // by powers of two only as m grows, so its rounding to bf16 is the rounding of
      // exp2(s c - m_final) scaled exactly, whatever the block and split order (the tests'
      // naive model rounds exactly that: tests/support/naive_lowp.hpp)
      const __m512 m_old = _mm512_set1_ps(m[c][r]);
      const __m512 m_blk = _mm512_maskz_roundscale_ps(kAll, _mm512_mul_ps(_mm512_set1_ps(hmax(mx)), cv), _MM_FROUND_TO_POS_INF | _MM_FROUND_NO_EXC);
      const __m512 m_new = _mm512_maskz_max_ps(kAll, m_old, m_blk);
      const __m512 m_use = avx512::vfinite_or_zero(Vec{m_new}).v;  // no key yet: exponents stay -inf
      alpha[c][r] = _mm512_cvtss_f32(avx512::vexp2(Vec{_mm512_sub_ps(m_old, m_use)}).v);
      m[c][r] = _mm512_cvtss_f32(m_new);
      const __m512 neg_m = _mm512_sub_ps(_mm512_setzero_ps(), m_use);
      __m512 sum = _mm512_setzero_ps();
      for (int k = 0; k < nvk; ++k) {
        v[k] = avx512::vexp2(Vec{_mm512_fmadd_ps(v[k], cv, neg_m)}).v;
        sum = _mm512_add_ps(sum, v[k]);
      }
      float* ls = ds.lsum + (c * kDecodeRows + r) * 16;
      _mm512_storeu_ps(ls, _mm512_fmadd_ps(_mm512_loadu_ps(ls), _mm512_set1_ps(alpha[c][r]), sum));
      std::uint32_t* pr = ds.pb + (c * kDecodeRows + r) * kKeyPairs;
      for (int k = 0; k < nvk; k += 2) {  // keys 16k .. 16k + 31 as 16 pairs, the lower key in the low word
        const __m512 hi = k + 1 < nvk ? v[k + 1] : _mm512_setzero_ps();
        _mm512_storeu_si512(pr + 8 * k, reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(hi, v[k])));
      }
    }
}

/// process_item for a bfloat16 decode item (rows <= kDecodeRows, d % 32 == 0): the same key
/// range, the same State (one group of 16 lanes) and the same results layout as every path.
/// An item holds the heads of pack / n_rep whole KV groups when it has one query token per
/// sequence (cpu::forward's item_pack: one thread then reads whole rows of a cache that stores
/// the groups side by side), else those of one group; the groups of a block of keys are
/// computed one after the other, rows [gi rg, (gi + 1) rg) for group gi.
inline void decode_item(const Ctx& cx, std::int64_t b, std::int64_t h, std::int64_t qb, int s, const ThreadScratch& ts,
                        const State& state) {
  const Params& p = *cx.p;
  const int d = static_cast<int>(cx.geo.d), dv = static_cast<int>(cx.geo.dv), hd = d / 2, ncv = dv / 16;
  const std::int64_t i0 = qb * cx.geo.bm;
  const int nr = static_cast<int>(std::min<std::int64_t>(cx.geo.bm, cx.rows() - i0));
  const int ng = static_cast<int>(std::max<std::int64_t>(1, cx.pack / cx.rep));  // KV groups of the item
  const int rg = nr / ng;                                                          // rows of each
  const DecodeScratch ds = DecodeScratch::at(ts);

  // Q_c's rows as pairs of channels; each row's visible keys; an empty state
  const ConstTensorRef* qs[2] = {&p.q1, &p.q2};
  for (int c = 0; c < 2; ++c) {
    const bfloat16* q = static_cast<const bfloat16*>(qs[c]->ptr) + p.q_offset(*qs[c], b) + h * qs[c]->stride_h;
    for (int r = 0; r < nr; ++r)
      std::memcpy(ds.qd + (c * kDecodeRows + r) * hd,
                  q + cx.tok(i0 + r) * qs[c]->stride_t + (i0 + r) % cx.pack * qs[c]->stride_h, sizeof(bfloat16) * d);
  }
  for (int r = 0; r < nr; ++r) {
    ts.kb[r] = static_cast<std::int32_t>(cx.mask.key_begin(cx.tok(i0 + r)));
    ts.ke[r] = static_cast<std::int32_t>(cx.mask.key_end(cx.tok(i0 + r)));
  }
  for (int c = 0; c < 2; ++c)
    for (int r = 0; r < nr; ++r) state.m[c][r] = -std::numeric_limits<float>::infinity();
  std::fill(ds.lsum, ds.lsum + 2 * kDecodeRows * 16, 0.0f);
  std::fill(ds.o, ds.o + 2 * kDecodeRows * dv, 0.0f);

  const std::int64_t g0 = h / cx.rep;  // the item's first KV group
  ItemKeys<bfloat16> iks[kDecodeRows];  // each group's views; the key range and masks are every group's
  for (int gi = 0; gi < ng; ++gi) iks[gi] = item_keys<bfloat16>(cx, b, g0 + gi, i0, nr, s);
  const ItemKeys<bfloat16>& ik0 = iks[0];
  const int nk = p.is_v2() ? 1 : 2;  // V2's two query heads share one K
  const std::uint32_t* kt[2] = {ds.kt[0], ds.kt[nk - 1]};
  float* m[2] = {state.m[0], state.m[1]};
  float alpha[2][kDecodeRows];
  const bfloat16* rows[kBlockN];
  for (std::int64_t j0 = ik0.lo; j0 < ik0.hi; j0 += kBlockN) {
    const int nj = static_cast<int>(std::min<std::int64_t>(kBlockN, ik0.hi - j0));
    const int nn = static_cast<int>(std::min<std::int64_t>(kBlockN, ik0.hi - j0 - kBlockN));  // keys of the next block
    const bool full = !cx.masked || (ik0.kb_last <= j0 && ik0.ke_first >= j0 + nj);
    for (int gi = 0; gi < ng; ++gi) {
      const ItemKeys<bfloat16>& ik = iks[gi];
      // the next block's rows of this group, prefetched two lines per key pair of P V while
      // this block computes (the rows of one group are strided, pages apart in a paged cache,
      // and the hardware prefetchers did not keep up: Zen 4, 2 threads, B = 16, S = 8192,
      // 8 GB/s without, 10 to 12.7 with; all at once at the block's start, no gain)
      const char* lines[4 * kBlockN * 8];
      int nl = 0;
      auto fetch = [&](int, const bfloat16* r) {
        for (int q = 0; q < d / 32; ++q) lines[nl++] = reinterpret_cast<const char*>(r + 32 * q);
      };
      if (nn > 0) {
        for (int c = 0; c < nk; ++c) ik.each_row(*ik.k[c], ik.kbase[c], j0 + kBlockN, nn, fetch);
        for (int hv = 0; hv < 2 && ik.vbase[hv]; ++hv) ik.each_row(*ik.v[hv], ik.vbase[hv], j0 + kBlockN, nn, fetch);
      }
      Prefetch pf{lines, lines + nl};

      for (int c = 0; c < nk; ++c) {
        ik.krows(c, j0, nj, rows);
        transpose_keys(rows, nj, d, ds.kt[c]);
      }
      for (int hv = 0; hv < 2 && ik.vbase[hv]; ++hv) {  // V's halves side by side: channels [hv d, (hv + 1) d)
        ik.vrows(hv, j0, nj, rows);
        interleave_values(rows, nj, d, hv * d / 16, ncv, ds.vi);
      }
      const int r0 = gi * rg, r1 = r0 + rg;
      for (int a = r0; a < r1; a += kRowGroup) {
        const std::uint32_t* qd[2] = {ds.qd + a * hd, ds.qd + (kDecodeRows + a) * hd};
        float* sg[2] = {ds.s + a * kBlockN, ds.s + (kDecodeRows + a) * kBlockN};
        with_group(std::min(kRowGroup, r1 - a), [&](auto grp) { grp.qk(qd, hd, kt, sg); });
      }
      softmax_rows(r0, r1, nj, j0, full, ts.kb, ts.ke, cx.c, m, ds, alpha);
      const int np = (nj + 1) / 2;
      for (int a = r0; a < r1; a += kRowGroup) {
        const std::uint32_t* pb[2] = {ds.pb + a * kKeyPairs, ds.pb + (kDecodeRows + a) * kKeyPairs};
        const float* al[2] = {alpha[0] + a, alpha[1] + a};
        float* og[2] = {ds.o + a * dv, ds.o + (kDecodeRows + a) * dv};
        with_group(std::min(kRowGroup, r1 - a), [&](auto grp) { grp.pv(np, ncv, pb, ds.vi, al, og, pf); });
      }
      pf.rest();
    }
  }

  // the State of every path: lanes are rows (nr of 16 used), channels in order
  for (int c = 0; c < 2; ++c)
    for (int r = 0; r < kColGroup; ++r) {
      if (r < nr) {
        state.l[c][r] = hsum(_mm512_loadu_ps(ds.lsum + (c * kDecodeRows + r) * 16));
        const float* o = ds.o + (c * kDecodeRows + r) * dv;
        for (int cv = 0; cv < ncv; ++cv)
          for (int t = 0; t < 16; ++t) state.ot[c][perm_channel(cv, t) * kColGroup + r] = o[cv * 16 + t];
      } else {
        state.m[c][r] = -std::numeric_limits<float>::infinity();
        state.l[c][r] = 0.0f;
        for (int ch = 0; ch < dv; ++ch) state.ot[c][ch * kColGroup + r] = 0.0f;
      }
    }
}

/// The entry points of the avx512bf16 path: bfloat16 decode items here, the rest on AVX-512.
struct Entry : avx512::Entry {
  template <class Elem>
  static void process(const Ctx& cx, int nv, std::int64_t b, std::int64_t h, std::int64_t qb, int s,
                      const ThreadScratch& ts, const State& st) {
    if constexpr (std::is_same_v<Elem, bfloat16>) {
      if (decode_shape(cx.geo.d, cx.rows())) {
        decode_item(cx, b, h, qb, s, ts, st);
        return;
      }
    }
    avx512::Entry::process<Elem>(cx, nv, b, h, qb, s, ts, st);
  }
};

}  // namespace avx512bf16
}  // namespace detail
}  // namespace cpu
DIFFATTN_NAMESPACE_END
DIFFATTN_CPU_TARGET_END

#endif  // DIFFATTN_CPU_X86_TARGETS
