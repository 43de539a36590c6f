// diffattn/cpu/isa/amx.hpp: the bfloat16 work item on Intel AMX (TDPBF16PS tiles), compiled
// for AMX in any translation unit (cpu/detail/target.hpp) and chosen at run time when the CPU
// has AMX-TILE and AMX-BF16 and Linux grants the tile state (cpu/isa.hpp). Every other element
// type, and bfloat16 with d not a multiple of 32, runs the AVX-512 path (isa/avx512.hpp).
//
// Measured on the project machine (Sapphire Rapids, one core): fp32 FMA 220 GFLOP/s,
// AVX512_BF16's vdpbf16ps only 110 (half the FMA rate there, so it does not pay), and AMX
// TDPBF16PS 3100. The layouts stay those of the other paths (queries along the lanes):
//   S_c^T (16 keys x 16 queries tiles) = K_c (16 x 32 bf16, A) . Q_c^T (pairs of k, B)
//   O_c^T (16 channels x 16 queries)  += V^T (16 x 32 keys bf16, A) . P_c^T (pairs of keys, B)
// P is rounded to bfloat16 for the second product (relative error 2^-9 per term, as any bf16
// computation of P V has; the tests account for it). The online softmax, the key range, the
// masks and the epilogue are the AVX-512 path's.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "diffattn/core/config.hpp"
#include "diffattn/cpu/detail/item.hpp"
#include "diffattn/cpu/detail/target.hpp"
#include "diffattn/cpu/isa/avx512.hpp"

#if DIFFATTN_CPU_X86_TARGETS && defined(__linux__)
#define DIFFATTN_CPU_AMX 1
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#else
#define DIFFATTN_CPU_AMX 0
#endif

DIFFATTN_NAMESPACE_BEGIN
namespace cpu {
namespace detail {

/// True once Linux has granted this process the AMX tile state (asked once; false where the
/// AMX path is not compiled).
inline bool amx_ready() {
#if DIFFATTN_CPU_AMX
  static const bool ok = [] {
    constexpr long kReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return ok;
#else
  return false;
#endif
}

}  // namespace detail
}  // namespace cpu
DIFFATTN_NAMESPACE_END

#if DIFFATTN_CPU_AMX
DIFFATTN_CPU_TARGET_BEGIN("amx-tile,amx-bf16,avx512bf16,avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c")
DIFFATTN_NAMESPACE_BEGIN
namespace cpu {
namespace detail {
namespace amx {

using avx512::kW;
using avx512::online_softmax;
using avx512::transpose16;
using avx512::Vec;
using avx512::vload;
using avx512::vmul;
using avx512::vstore;

struct alignas(64) TileConfig {
  std::uint8_t palette = 1, start_row = 0;
  std::uint8_t reserved[14] = {};
  std::uint16_t colsb[16] = {};
  std::uint8_t rows[16] = {};
};

/// Every tile 16 rows x 64 bytes: tmm0-3 accumulators (one per 16 queries), tmm4 A, tmm5 B.
inline void amx_configure() {
  TileConfig c;
  for (int t = 0; t < 6; ++t) { c.rows[t] = 16; c.colsb[t] = 64; }
  _tile_loadconfig(&c);
}

/// vt (dv, 64 keys) bf16 = V^T of keys [0, nj) (zero past nj): rows of 128 bytes. Pairs of keys
/// are 32-bit words, so it is a 32-bit transpose of the key-pair interleave of V.
template <class RowOf>
inline void pack_vt(RowOf row, int nj, std::int64_t dv, std::uint32_t* vt) {
  for (int jp0 = 0; jp0 < kBlockN / 2; jp0 += 16) {
    for (std::int64_t c0 = 0; c0 < dv; c0 += 16) {
      __m512i r[16];
      for (int q = 0; q < 16; ++q) {
        const int j = 2 * (jp0 + q);
        const __m512i lo = j < nj ? _mm512_maskz_cvtepu16_epi32(avx512::kAll, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row(j) + c0)))
                                  : _mm512_setzero_si512();
        const __m512i hi = j + 1 < nj ? _mm512_maskz_cvtepu16_epi32(avx512::kAll, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row(j + 1) + c0)))
                                      : _mm512_setzero_si512();
        r[q] = _mm512_or_si512(lo, _mm512_maskz_slli_epi32(avx512::kAll, hi, 16));  // row q: key pair jp0 + q, 16 channels
      }
      transpose16(r);  // row q: channel c0 + q, 16 key pairs
      for (int q = 0; q < 16; ++q) _mm512_storeu_si512(vt + (c0 + q) * (kBlockN / 2) + jp0, r[q]);
    }
  }
}

/// pp (ceil(nj/32)*16 key pairs, NV*16) 32-bit words: (P^T[2jp][i], P^T[2jp+1][i]) in bf16.
template <int NV>
inline void pack_p(const float* st, int nj, std::uint32_t* pp) {
  constexpr int ld = NV * kColGroup;
  const __m512i idx = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6,
                                       21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  const int npairs = (nj + 31) / 32 * 16;
  for (int jp = 0; jp < npairs; ++jp) {
    const int j = 2 * jp;
    for (int v = 0; v < NV; ++v) {
      const __m512 a = j < nj ? _mm512_loadu_ps(st + j * ld + v * kW) : _mm512_setzero_ps();
      const __m512 b = j + 1 < nj ? _mm512_loadu_ps(st + (j + 1) * ld + v * kW) : _mm512_setzero_ps();
      const __m512i ab = reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(b, a));  // a in the low half
      _mm512_storeu_si512(pp + jp * ld + v * kW, _mm512_permutexvar_epi16(idx, ab));
    }
  }
}

/// C tiles tmm0..tmm(NV-1) += tmm4 . tmm5 after loading B for query vector v.
template <int NV>
inline void dp_all(const std::uint32_t* b, int ldb_bytes) {
  _tile_loadd(5, b, ldb_bytes);
  _tile_dpbf16ps(0, 4, 5);
  if constexpr (NV > 1) { _tile_loadd(5, b + 16, ldb_bytes); _tile_dpbf16ps(1, 4, 5); }
  if constexpr (NV > 2) { _tile_loadd(5, b + 32, ldb_bytes); _tile_dpbf16ps(2, 4, 5); }
  if constexpr (NV > 3) { _tile_loadd(5, b + 48, ldb_bytes); _tile_dpbf16ps(3, 4, 5); }
}
template <int NV>
inline void store_c(float* c, int ldc_bytes) {
  _tile_stored(0, c, ldc_bytes);
  if constexpr (NV > 1) _tile_stored(1, c + 16, ldc_bytes);
  if constexpr (NV > 2) _tile_stored(2, c + 32, ldc_bytes);
  if constexpr (NV > 3) _tile_stored(3, c + 48, ldc_bytes);
}
template <int NV>
inline void load_c(const float* c, int ldc_bytes) {
  _tile_loadd(0, c, ldc_bytes);
  if constexpr (NV > 1) _tile_loadd(1, c + 16, ldc_bytes);
  if constexpr (NV > 2) _tile_loadd(2, c + 32, ldc_bytes);
  if constexpr (NV > 3) _tile_loadd(3, c + 48, ldc_bytes);
}
template <int NV>
inline void zero_c() {
  _tile_zero(0);
  if constexpr (NV > 1) _tile_zero(1);
  if constexpr (NV > 2) _tile_zero(2);
  if constexpr (NV > 3) _tile_zero(3);
}

/// process_item of kernel.hpp for bfloat16 elements on AMX (same state, same results layout).
/// Scratch reuse: qt[c] holds Q_c^T key pairs, kbuf[c] the K_c block (bf16, zero rows past nj),
/// vbuf V^T, and pp the bf16 pairs of P^T.
template <int NV>
void process_item_amx(const Ctx& cx, std::int64_t b, std::int64_t h, std::int64_t qb, int s,
                      const ThreadScratch& ts, const State& state) {
  constexpr int ld = NV * kColGroup;
  const Params& p = *cx.p;
  const std::int64_t d = cx.geo.d, dv = cx.geo.dv;
  const std::int64_t i0 = qb * cx.geo.bm, nr = std::min<std::int64_t>(cx.geo.bm, cx.rows() - i0);
  const std::int64_t g = h / cx.rep;
  amx_configure();

  // Q_c^T as pairs of k: qtp[kp][i] = (Q[i][2kp], Q[i][2kp+1]), zero past the last row
  const ConstTensorRef* qs[2] = {&p.q1, &p.q2};
  std::uint32_t* qtp[2] = {reinterpret_cast<std::uint32_t*>(ts.qt[0]), reinterpret_cast<std::uint32_t*>(ts.qt[1])};
  for (int c = 0; c < 2; ++c) {
    const bfloat16* q = static_cast<const bfloat16*>(qs[c]->ptr) + p.q_offset(*qs[c], b) + h * qs[c]->stride_h;
    for (std::int64_t i = 0; i < ld; ++i) {
      if (i < nr) {
        const bfloat16* row = q + cx.tok(i0 + i) * qs[c]->stride_t + (i0 + i) % cx.pack * qs[c]->stride_h;
        for (std::int64_t kp = 0; kp < d / 2; ++kp) std::memcpy(&qtp[c][kp * ld + i], row + 2 * kp, 4);
      } else {
        for (std::int64_t kp = 0; kp < d / 2; ++kp) qtp[c][kp * ld + i] = 0;
      }
    }
  }
  begin_item(cx, i0, nr, ld, dv, ts, state);

  const ItemKeys<bfloat16> ik = item_keys<bfloat16>(cx, b, g, i0, nr, s);
  const std::int64_t lo = ik.lo, hi = ik.hi, kb_last = ik.kb_last, ke_first = ik.ke_first;
  bfloat16* kp[2] = {reinterpret_cast<bfloat16*>(ts.kbuf[0]), reinterpret_cast<bfloat16*>(ts.kbuf[1])};
  const int nk = p.is_v2() ? 1 : 2;  // K blocks to pack: V2's two query heads share one K
  std::uint32_t* vt = reinterpret_cast<std::uint32_t*>(ts.vbuf);
  const int ldt = ld * 4;  // bytes per row of S^T, O^T, Q^T pairs and P^T pairs

  Vec alpha[NV];
  for (std::int64_t j0 = lo; j0 < hi; j0 += kBlockN) {
    const int nj = static_cast<int>(std::min<std::int64_t>(kBlockN, hi - j0));
    const int njt = (nj + 15) / 16;
    const bool full = !cx.masked || (kb_last <= j0 && ke_first >= j0 + nj);
    for (int c = 0; c < nk; ++c) {
      for (int j = 0; j < nj; ++j) std::memcpy(kp[c] + j * d, ik.krow(c, j0 + j), d * 2);
      std::memset(static_cast<void*>(kp[c] + nj * d), 0, (njt * 16 - nj) * d * 2);
    }
    for (int hv = 0; hv < 2 && ik.vbase[hv]; ++hv)  // V^T rows [hv d, (hv + 1) d) from V's half hv
      pack_vt([&](int j) { return ik.vrow(hv, j0 + j); }, nj, d, vt + hv * d * (kBlockN / 2));
    for (int c = 0; c < 2; ++c) {
      const bfloat16* kpc = kp[c < nk ? c : 0];
      // S_c^T = K_c Q_c^T, 16 keys at a time
      for (int jt = 0; jt < njt; ++jt) {
        zero_c<NV>();
        for (std::int64_t kc = 0; kc < d / 32; ++kc) {
          _tile_loadd(4, kpc + jt * 16 * d + kc * 32, static_cast<int>(d * 2));
          dp_all<NV>(qtp[c] + kc * 16 * ld, ldt);
        }
        store_c<NV>(ts.st + jt * 16 * ld, ldt);
      }
      online_softmax<NV>(cx, ts.st, nj, j0, full, ts.kb, ts.ke, state.m[c], state.l[c], alpha);
      pack_p<NV>(ts.st, nj, ts.pp);
      // O_c^T = alpha O_c^T + V^T P_c^T
      __mmask16 not_one = 0;
      for (int v = 0; v < NV; ++v) not_one |= _mm512_cmp_ps_mask(alpha[v].v, _mm512_set1_ps(1.0f), _CMP_NEQ_UQ);
      if (not_one) {
        for (std::int64_t ch = 0; ch < dv; ++ch)
          for (int v = 0; v < NV; ++v) {
            float* o = state.ot[c] + ch * ld + v * kW;
            vstore(o, vmul(vload(o), alpha[v]));
          }
      }
      const int njc = (nj + 31) / 32;
      for (std::int64_t ct = 0; ct < dv / 16; ++ct) {
        load_c<NV>(state.ot[c] + ct * 16 * ld, ldt);
        for (int jc = 0; jc < njc; ++jc) {
          _tile_loadd(4, vt + ct * 16 * (kBlockN / 2) + jc * 16, kBlockN * 2);
          dp_all<NV>(ts.pp + jc * 16 * ld, ldt);
        }
        store_c<NV>(state.ot[c] + ct * 16 * ld, ldt);
      }
    }
  }
  _tile_release();
}


/// The entry points of the AMX path: bfloat16 with d a multiple of 32 on AMX tiles, the rest
/// on AVX-512.
struct Entry : avx512::Entry {
  template <class Elem>
  static void process(const Ctx& cx, int nv, std::int64_t b, std::int64_t h, std::int64_t qb, int s,
                      const ThreadScratch& ts, const State& st) {
    if constexpr (std::is_same_v<Elem, bfloat16>) {
      if (amx_head_dim(cx.geo.d)) {  // items of kBlockMAmx = 64 rows: nv <= 4
        switch (nv) {
          case 1: process_item_amx<1>(cx, b, h, qb, s, ts, st); break;
          case 2: process_item_amx<2>(cx, b, h, qb, s, ts, st); break;
          case 3: process_item_amx<3>(cx, b, h, qb, s, ts, st); break;
          default: process_item_amx<4>(cx, b, h, qb, s, ts, st); break;
        }
        return;
      }
    }
    avx512::Entry::process<Elem>(cx, nv, b, h, qb, s, ts, st);
  }
};

}  // namespace amx
}  // namespace detail
}  // namespace cpu
DIFFATTN_NAMESPACE_END
DIFFATTN_CPU_TARGET_END

#endif  // DIFFATTN_CPU_AMX
