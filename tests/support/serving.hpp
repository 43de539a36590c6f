// tests/support/serving.hpp: serving-layout problems (Params::seq) built from per-sequence dense
// Problems: each sequence is its own Problem (batch 1, N_b queries, S_b keys, official layout),
// and Served lays their numbers out packed (varlen), in dense caches with seqused_k, or in pages
// (shuffled, optionally one shared by two sequences), by its own index math (not
// Params::k_offset), with NaN in every storage row past a sequence's keys and poisoned outputs.
// Used by the CPU serving tests (tests/cpu/test_serving.cpp) and the emulated CUDA forward's.
#pragma once

#include <algorithm>
#include <cstring>
#include <numeric>
#include <random>

#include <diffattn/cpu/forward.hpp>

#include "support/naive_lowp.hpp"

namespace dt {

/// One serving case: per-sequence query and key counts and how they are stored.
struct Serve {
  std::vector<i64> nq;   // N_b (0 allowed with varlen)
  std::vector<i64> nk;   // S_b, the keys attended (after any append)
  i64 H = 4, Hkv = 2, d = 32;
  da::MaskKind mask = da::MaskKind::causal;
  i64 wl = -1, wr = -1;
  da::NormKind norm = da::NormKind::rms;
  bool beta = false, v2 = false;
  bool varlen_q = true;   // packed queries (else every N_b equal, dense [B, N])
  bool varlen_k = false;  // packed keys (cu_seqlens_k)
  i64 page_size = 0;      // > 0: paged cache
  bool seqused = true;    // seqused_k given (else S_b is the storage length)
  i64 spare = 3;          // storage rows past S_b (NaN), dense / varlen_k with seqused
  bool append = false;    // the last N_b keys of each sequence come through new_k / new_v
  bool share_page = false;  // paged: sequence 1's first page is sequence 0's
  int num_splits = 0;
  i64 B() const { return static_cast<i64>(nq.size()); }
  std::string str() const {
    std::string s = "nq";
    for (i64 x : nq) s += " " + std::to_string(x);
    s += " | nk";
    for (i64 x : nk) s += " " + std::to_string(x);
    char buf[256];
    std::snprintf(buf, sizeof buf, " | H=%lld Hkv=%lld d=%lld mask=%d norm=%d v2=%d varlen_q=%d varlen_k=%d page=%lld "
                  "seqused=%d append=%d share=%d splits=%d", (long long)H, (long long)Hkv, (long long)d, int(mask),
                  int(norm), int(v2), int(varlen_q), int(varlen_k), (long long)page_size, int(seqused), int(append),
                  int(share_page), num_splits);
    return s + buf;
  }
};

/// The per-sequence dense problems and the serving-layout buffers built from them.
template <class Elem>
struct Served {
  using P = da::param_t<Elem>;
  Serve sv;
  std::vector<Problem<Elem>> seqs;           // dense, batch 1
  std::vector<Elem> q, kc, vc, knew, vnew, out;
  std::vector<P> logits, lse1, lse2, attn, o2, rstd, mean;
  std::vector<std::int32_t> cu_q, cu_k, used, table;
  i64 total_q = 0, total_k = 0, num_pages = 0, max_pages = 0, Nmax = 0, Smax = 0, cap_max = 0;
  std::vector<i64> qstart, kstart, cap;  // token offsets; storage rows per sequence

  i64 kh() const { return sv.v2 ? sv.Hkv : 2 * sv.Hkv; }  // key heads stored per token (K_1, K_2 interleaved)
  i64 dv() const { return sv.v2 ? sv.d : 2 * sv.d; }

  Served(const Serve& s, std::uint64_t seed) : sv(s) {
    const i64 B = s.B(), H = s.H, d = s.d;
    std::mt19937_64 rng(seed);
    for (i64 b = 0; b < B; ++b) {
      Shape sh;
      sh.B = 1; sh.N = std::max<i64>(s.nq[b], 1); sh.S = std::max<i64>(s.nk[b], 1); sh.H = H; sh.Hkv = s.Hkv; sh.d = d;
      sh.mask = s.mask; sh.wl = s.wl; sh.wr = s.wr; sh.norm = s.norm; sh.beta = s.beta; sh.v2 = s.v2;
      seqs.emplace_back(sh, seed * 131 + b);
    }
    // one set of lambda vectors and norm weights for the call
    for (i64 b = 1; b < B; ++b) {
      seqs[b].lq1 = seqs[0].lq1; seqs[b].lk1 = seqs[0].lk1; seqs[b].lq2 = seqs[0].lq2; seqs[b].lk2 = seqs[0].lk2;
      seqs[b].gamma = seqs[0].gamma; seqs[b].beta = seqs[0].beta;
    }
    if (s.share_page) {  // the shared prefix: sequence 1's first page_size keys are sequence 0's
      REQUIRE(s.page_size > 0);
      REQUIRE(B >= 2);
      const i64 rows = s.page_size;
      REQUIRE((s.nk[0] - (s.append ? s.nq[0] : 0) >= rows && s.nk[1] - (s.append ? s.nq[1] : 0) >= rows));
      std::copy(seqs[0].k.begin(), seqs[0].k.begin() + rows * kh() * d, seqs[1].k.begin());
      std::copy(seqs[0].v.begin(), seqs[0].v.begin() + rows * s.Hkv * dv(), seqs[1].v.begin());
    }
    // queries (and logits, and the appended keys), packed or dense
    qstart.resize(B);
    for (i64 b = 0; b < B; ++b) {
      qstart[b] = total_q;
      total_q += s.varlen_q ? s.nq[b] : *std::max_element(s.nq.begin(), s.nq.end());
      Nmax = std::max(Nmax, s.nq[b]);
    }
    if (!s.varlen_q) for (i64 x : s.nq) REQUIRE(x == Nmax);
    cu_q.assign(B + 1, 0);
    for (i64 b = 0; b < B; ++b) cu_q[b + 1] = static_cast<std::int32_t>(cu_q[b] + s.nq[b]);
    q.assign(total_q * 2 * H * d, Elem(0.f));
    logits.assign(total_q * H, P(0));
    out.assign(total_q * H * dv(), poison<Elem>());
    for (i64 b = 0; b < B; ++b) {
      for (i64 i = 0; i < s.nq[b]; ++i) {
        std::copy_n(seqs[b].q.begin() + i * 2 * H * d, 2 * H * d, q.begin() + (qstart[b] + i) * 2 * H * d);
        if (s.v2) std::copy_n(seqs[b].logits.begin() + i * H, H, logits.begin() + (qstart[b] + i) * H);
      }
    }
    // key storage
    cap.resize(B);
    kstart.assign(B, 0);
    for (i64 b = 0; b < B; ++b) {
      cap[b] = s.nk[b] + (s.seqused ? s.spare : 0);
      if (s.seqused) cap[b] = std::max<i64>(cap[b], 1);  // a cache holds a row even when unused (seqlen_k >= 1)
      if (s.page_size > 0) cap[b] = std::max<i64>(1, (cap[b] + s.page_size - 1) / s.page_size) * s.page_size;
      Smax = std::max(Smax, s.nk[b]);
    }
    const float nan = std::numeric_limits<float>::quiet_NaN();
    const i64 krow = kh() * d, vrow = s.Hkv * dv();
    if (s.page_size > 0) {
      max_pages = 0;
      for (i64 b = 0; b < B; ++b) max_pages = std::max(max_pages, cap[b] / s.page_size);
      max_pages += 1;  // a spare column, unused (garbage entries past a sequence's pages are never read)
      i64 need = 0;
      for (i64 b = 0; b < B; ++b) need += cap[b] / s.page_size;
      num_pages = need + 3;  // and some pages nobody uses
      std::vector<std::int32_t> ids(num_pages);
      std::iota(ids.begin(), ids.end(), 0);
      std::shuffle(ids.begin(), ids.end(), rng);
      table.assign(B * max_pages, -7);  // entries past the pages in use are out of range on purpose
      i64 next = 0;
      for (i64 b = 0; b < B; ++b)
        for (i64 k = 0; k < cap[b] / s.page_size; ++k) table[b * max_pages + k] = ids[next++];
      if (s.share_page) table[1 * max_pages + 0] = table[0];
      cap_max = max_pages * s.page_size;
      kc.assign(num_pages * s.page_size * krow, Elem(nan));
      vc.assign(num_pages * s.page_size * vrow, Elem(nan));
    } else {
      for (i64 b = 0; b < B; ++b) {
        kstart[b] = s.varlen_k ? total_k : b * *std::max_element(cap.begin(), cap.end());
        total_k += cap[b];
      }
      cap_max = *std::max_element(cap.begin(), cap.end());
      const i64 rows = s.varlen_k ? total_k : B * cap_max;
      kc.assign(rows * krow, Elem(nan));
      vc.assign(rows * vrow, Elem(nan));
      cu_k.assign(B + 1, 0);
      for (i64 b = 0; b < B; ++b) cu_k[b + 1] = static_cast<std::int32_t>(cu_k[b] + cap[b]);
    }
    used.assign(B, 0);
    knew.assign(total_q * krow, Elem(0.f));
    vnew.assign(total_q * vrow, Elem(0.f));
    for (i64 b = 0; b < B; ++b) {
      const i64 old = s.append ? s.nk[b] - s.nq[b] : s.nk[b];
      REQUIRE(old >= 0);
      used[b] = static_cast<std::int32_t>(old);
      for (i64 j = 0; j < s.nk[b]; ++j) {
        const bool fresh = j >= old;
        Elem* kd = fresh ? knew.data() + (qstart[b] + j - old) * krow : kc.data() + slot(b, j) * krow;
        Elem* vd = fresh ? vnew.data() + (qstart[b] + j - old) * vrow : vc.data() + slot(b, j) * vrow;
        std::copy_n(seqs[b].k.begin() + j * krow, krow, kd);
        std::copy_n(seqs[b].v.begin() + j * vrow, vrow, vd);
      }
    }
    const i64 rows = H * total_q;
    const P pn = std::numeric_limits<P>::quiet_NaN();
    for (auto* t : {&lse1, &lse2, &rstd, &mean}) t->assign(rows, pn);
    for (auto* t : {&attn, &o2}) t->assign(rows * dv(), pn);
  }
  /// Storage row of key j of sequence b (a page's row, or a row of the dense / packed storage).
  i64 slot(i64 b, i64 j) const {
    if (sv.page_size > 0) return i64(table[b * max_pages + j / sv.page_size]) * sv.page_size + j % sv.page_size;
    return kstart[b] + j;
  }

  da::Params params() {
    const Serve& s = sv;
    const i64 B = s.B(), H = s.H, G = s.Hkv, d = s.d;
    da::Params p;
    p.batch = B; p.heads = H; p.kv_heads = G; p.head_dim = d; p.dtype = da::dtype_of_v<Elem>;
    p.seqlen_q = std::max<i64>(Nmax, 1);
    p.seqlen_k = std::max<i64>(Smax, 1);
    p.variant = s.v2 ? da::Variant::diff_v2 : da::Variant::diff_v1;
    const i64 qsb = s.varlen_q ? 0 : Nmax * 2 * H * d;
    p.q1 = {q.data(), qsb, 2 * H * d, 2 * d};
    p.q2 = {q.data() + d, qsb, 2 * H * d, 2 * d};
    p.out = {out.data(), s.varlen_q ? 0 : Nmax * H * dv(), H * dv(), dv()};
    const i64 krow = kh() * d, vrow = G * dv();
    const i64 kb = s.page_size > 0 ? s.page_size * krow : s.varlen_k ? 0 : cap_max * krow;
    const i64 vb = s.page_size > 0 ? s.page_size * vrow : s.varlen_k ? 0 : cap_max * vrow;
    const i64 khs = s.v2 ? d : 2 * d;  // stride between KV heads of K
    p.k1 = {kc.data(), kb, krow, khs};
    if (!s.v2) p.k2 = {kc.data() + d, kb, krow, khs};
    p.v_lo = {vc.data(), vb, vrow, dv()};
    if (!s.v2) p.v_hi = {vc.data() + d, vb, vrow, dv()};
    p.mask = {s.mask, s.wl, s.wr};
    if (s.v2) {
      p.lambda.logits = {logits.data(), s.varlen_q ? 0 : Nmax * H, H, 1};
      p.norm.kind = da::NormKind::none;
    } else {
      const Problem<Elem>& s0 = seqs[0];
      p.lambda = {s0.lq1.data(), s0.lk1.data(), s0.lq2.data(), s0.lk2.data(), false, s0.sh.lambda_init};
      p.norm.kind = s.norm;
      p.norm.gamma = s.norm != da::NormKind::none ? s0.gamma.data() : nullptr;
      p.norm.beta = s.norm == da::NormKind::group && s.beta ? s0.beta.data() : nullptr;
    }
    p.extras = {lse1.data(), lse2.data(), attn.data(), o2.data(), rstd.data(), mean.data()};
    da::SeqParams& q_ = p.seq;
    if (s.varlen_q) { q_.cu_seqlens_q = cu_q.data(); q_.total_q = total_q; }
    if (s.page_size > 0) {
      q_.block_table = table.data(); q_.max_pages = max_pages; q_.page_size = s.page_size; q_.num_pages = num_pages;
    } else if (s.varlen_k) {
      q_.cu_seqlens_k = cu_k.data(); q_.total_k = total_k;
    }
    if (s.seqused) q_.seqused_k = used.data();
    if (s.append) {
      q_.append_kv = true;
      q_.new_k1 = {knew.data(), s.varlen_q ? 0 : Nmax * krow, krow, khs};
      if (!s.v2) q_.new_k2 = {knew.data() + d, s.varlen_q ? 0 : Nmax * krow, krow, khs};
      q_.new_v_lo = {vnew.data(), s.varlen_q ? 0 : Nmax * vrow, vrow, dv()};
      if (!s.v2) q_.new_v_hi = {vnew.data() + d, s.varlen_q ? 0 : Nmax * vrow, vrow, dv()};
    }
    q_.num_splits = s.num_splits;
    return p;
  }

  /// Row of (b, h, i) in the extras, by the layout SeqParams documents.
  i64 xrow(i64 b, i64 h, i64 i) const { return sv.varlen_q ? h * total_q + qstart[b] + i : (b * sv.H + h) * Nmax + i; }
};

/// The outputs of sequence b (out, lse1, lse2, attn, o2, rstd) from the serving buffers, in the
/// dense Problem's order.
template <class Elem>
std::vector<std::vector<double>> outputs_of(const Served<Elem>& s, i64 b) {
  const i64 N = s.sv.nq[b], H = s.sv.H, dv = s.dv();
  std::vector<std::vector<double>> r(6);
  for (i64 i = 0; i < N; ++i)
    for (i64 h = 0; h < H; ++h)
      for (i64 c = 0; c < dv; ++c) r[0].push_back(Problem<Elem>::conv(s.out[((s.qstart[b] + i) * H + h) * dv + c]));
  for (i64 h = 0; h < H; ++h)
    for (i64 i = 0; i < N; ++i) {
      const i64 x = s.xrow(b, h, i);
      r[1].push_back(s.lse1[x]); r[2].push_back(s.lse2[x]); r[5].push_back(s.rstd[x]);
      for (i64 c = 0; c < dv; ++c) { r[3].push_back(s.attn[x * dv + c]); r[4].push_back(s.o2[x * dv + c]); }
    }
  return r;
}
template <class T>
std::vector<std::vector<double>> outputs_of(const Problem<T>& pr, i64 N) {
  const i64 H = pr.sh.H, dv = pr.sh.dv();
  std::vector<std::vector<double>> r(6);
  for (i64 k = 0; k < N * H * dv; ++k) r[0].push_back(Problem<T>::conv(pr.out[k]));
  for (i64 h = 0; h < H; ++h)
    for (i64 i = 0; i < N; ++i) {
      const i64 x = h * N + i;
      r[1].push_back(pr.lse1[x]); r[2].push_back(pr.lse2[x]); r[5].push_back(pr.rstd[x]);
      for (i64 c = 0; c < dv; ++c) { r[3].push_back(pr.attn[x * dv + c]); r[4].push_back(pr.o2[x * dv + c]); }
    }
  return r;
}

/// The outputs of sequence b when it has no keys (S_b = 0): every row fully masked, out =
/// norm(0) (0, or (1 - lambda_init) beta for GroupNorm with a bias), LSE = -inf, A = O_2 = 0,
/// rstd = 1 / sqrt(eps) in fp32 (1 without a norm).
template <class Elem>
std::vector<std::vector<double>> fully_masked_outputs(const Served<Elem>& sv, i64 b) {
  const Problem<Elem>& pr = sv.seqs[b];
  const i64 N = sv.sv.nq[b], H = sv.sv.H, dv = sv.dv();
  std::vector<std::vector<double>> r(6);
  const bool group_beta = !sv.sv.v2 && sv.sv.norm == da::NormKind::group && sv.sv.beta;
  for (i64 i = 0; i < N; ++i)
    for (i64 h = 0; h < H; ++h)
      for (i64 c = 0; c < dv; ++c)
        r[0].push_back(group_beta ? Problem<Elem>::conv(Elem(static_cast<float>((1 - pr.sh.lambda_init) * double(pr.beta[c])))) : 0.0);
  const double rstd = (sv.sv.v2 || sv.sv.norm == da::NormKind::none) ? 1.0 : double(float(1.0 / std::sqrt(1e-5)));
  for (i64 k = 0; k < H * N; ++k) {
    r[1].push_back(-INFINITY); r[2].push_back(-INFINITY); r[5].push_back(rstd);
    for (i64 c = 0; c < dv; ++c) { r[3].push_back(0); r[4].push_back(0); }
  }
  return r;
}

/// The cache rows the append wrote must be the new keys, bit for bit, and every other storage
/// row unchanged (checked against a copy taken before the call).
template <class Elem>
void check_append(const Served<Elem>& after, const std::vector<Elem>& kc0, const std::vector<Elem>& vc0) {
  const Serve& s = after.sv;
  std::vector<Elem> kwant = kc0, vwant = vc0;
  const i64 krow = after.kh() * s.d, vrow = s.Hkv * after.dv();
  for (i64 b = 0; b < s.B(); ++b)
    for (i64 i = 0; i < s.nq[b]; ++i) {
      const i64 slot = after.slot(b, after.used[b] + i);
      std::copy_n(after.knew.begin() + (after.qstart[b] + i) * krow, krow, kwant.begin() + slot * krow);
      std::copy_n(after.vnew.begin() + (after.qstart[b] + i) * vrow, vrow, vwant.begin() + slot * vrow);
    }
  CHECK(std::memcmp(after.kc.data(), kwant.data(), kwant.size() * sizeof(Elem)) == 0);
  CHECK(std::memcmp(after.vc.data(), vwant.data(), vwant.size() * sizeof(Elem)) == 0);
}

/// One unit roundoff of a 16-bit output (0 for f32: its rule has no relative term).
template <class Elem> constexpr double served_roundoff() { return 0; }
template <> constexpr double served_roundoff<da::half>() { return 0x1p-11; }
template <> constexpr double served_roundoff<da::bfloat16>() { return 0x1p-8; }

inline const char* kServedOutNames[6] = {"out", "lse1", "lse2", "attn", "o2", "rstd"};
/// The expected outputs of each sequence: the double reference and the naive fp32 computation
/// of its dense problem (S_b = 0: every row fully masked, out = norm(0), LSE = -inf).
template <class Elem>
struct Expected {
  std::vector<std::vector<std::vector<double>>> ref, naive;
};
template <class Elem>
Expected<Elem> expected(const Served<Elem>& sv) {
  Expected<Elem> e;
  const da::Params served = const_cast<Served<Elem>&>(sv).params();  // read only: sizes and tables
  for (i64 b = 0; b < sv.sv.B(); ++b) {
    const i64 N = sv.sv.nq[b];
    if (sv.sv.nk[b] == 0) {  // every row fully masked
      e.ref.push_back(fully_masked_outputs(sv, b));
      e.naive.push_back(e.ref.back());
      continue;
    }
    Problem<Elem> naive = sv.seqs[b];
    Problem<double> ref = widen(naive);
    da::Params pn = naive.params(), pr = ref.params();
    const bool round_p = da::cpu::bf16_rounds_p(served, b);
    if constexpr (std::is_same_v<Elem, da::bfloat16>) {
      if (round_p) {
        const NaiveLowp n = naive_lowp_forward(naive, /*separate=*/true, /*integer_max=*/true);
        for (std::size_t i = 0; i < n.out.size(); ++i) naive.out[i] = da::bfloat16(static_cast<float>(n.out[i]));
        auto cp = [](const std::vector<double>& src, std::vector<float>& dst) {
          for (std::size_t i = 0; i < src.size(); ++i) dst[i] = static_cast<float>(src[i]);
        };
        cp(n.attn, naive.attn); cp(n.o2, naive.o2); cp(n.lse1, naive.lse1); cp(n.lse2, naive.lse2); cp(n.rstd, naive.rstd);
      }
    }
    if (!round_p) REQUIRE(da::reference::forward<float>(pn).ok());
    REQUIRE(da::reference::forward<double>(pr).ok());
    e.ref.push_back(outputs_of(ref, N));
    e.naive.push_back(outputs_of(naive, N));
  }
  return e;
}

/// The CPU backends' outputs of every sequence against `e` with tests/cpu/test_forward.cpp's rule.
template <class Elem>
void check_served(const Served<Elem>& got, const Expected<Elem>& e) {
  for (i64 b = 0; b < got.sv.B(); ++b) {
    INFO("sequence " << b << " (N_b " << got.sv.nq[b] << ", S_b " << got.sv.nk[b] << ")");
    const auto g = outputs_of(got, b);
    for (int k = 0; k < 6; ++k) {
      if (k == 1 || k == 2) {
        // LSE: a sequence with one key has a single score per row, which may cancel to near 0
        // (seen: -0.008 over d = 64 products of N(0, 1) inputs); its fp32 error scales with
        // s sum |q_i k_i| (O(1) here), not with the value: a floor of 1e-6 absolute as well
        const double atol = 2 * max_abs_diff_finite(e.naive[b][k], e.ref[b][k]) + std::max(1e-6, 1e-6 * max_abs(e.ref[b][k]));
        check_close(g[k], e.ref[b][k], atol, 0.0, kServedOutNames[k]);
      } else {
        check_rule(g[k], e.naive[b][k], e.ref[b][k], k == 0 ? served_roundoff<Elem>() : 0.0, kServedOutNames[k]);
      }
    }
  }
}

}  // namespace dt
