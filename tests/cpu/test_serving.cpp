// The serving layouts of Params::seq (variable-length batches, seqused_k, paged KV caches,
// in-place append, split-KV) in cpu::forward and in the reference's oracle path, against the
// equivalent dense problems: each sequence is its own Problem (batch 1, N_b queries, S_b keys,
// official layout), and the test lays their numbers out packed and paged by its own index math
// (not Params::k_offset). Every element of out and of the packed extras is checked per sequence
// with the rule of test_forward.cpp (at most 2x the naive fp32 computation's error against the
// double reference, plus 1e-6 of the largest |value|, and one 16-bit unit roundoff for 16-bit
// outputs). Storage rows past a sequence's keys (unused cache rows and pages) hold NaN, so a
// kernel that reads a key it should not fails; outputs start poisoned. Bad tables are rejected
// with named errors and nothing written.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <random>

#include <diffattn/cpu/forward.hpp>

#include "support/naive_lowp.hpp"

using namespace dt;

namespace {

template <class Elem> constexpr double unit_roundoff() { return 0; }
template <> constexpr double unit_roundoff<da::half>() { return 0x1p-11; }
template <> constexpr double unit_roundoff<da::bfloat16>() { return 0x1p-8; }

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

double max_abs_diff_finite(const std::vector<double>& a, const std::vector<double>& b) {
  double m = 0;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (std::isfinite(a[i]) && std::isfinite(b[i])) m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}
double max_abs(const std::vector<double>& a) {
  double m = 0;
  for (double x : a) if (std::isfinite(x)) m = std::max(m, std::fabs(x));
  return m;
}

const char* kOutNames[6] = {"out", "lse1", "lse2", "attn", "o2", "rstd"};

/// The expected outputs of each sequence: the double reference and the naive fp32 computation
/// of its dense problem (S_b = 0: every row fully masked, out = norm(0), LSE = -inf).
template <class Elem>
struct Expected {
  std::vector<std::vector<std::vector<double>>> ref, naive;
};
template <class Elem>
Expected<Elem> expected(const Served<Elem>& sv) {
  Expected<Elem> e;
  for (i64 b = 0; b < sv.sv.B(); ++b) {
    const i64 N = sv.sv.nq[b];
    if (sv.sv.nk[b] == 0) {  // every row fully masked
      const Problem<Elem>& pr = sv.seqs[b];
      const i64 H = sv.sv.H, dv = sv.dv();
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
      e.ref.push_back(r);
      e.naive.push_back(r);
      continue;
    }
    Problem<Elem> naive = sv.seqs[b];
    Problem<double> ref = widen(naive);
    da::Params pn = naive.params(), pr = ref.params();
    bool amx = false;
    if constexpr (std::is_same_v<Elem, da::bfloat16>) amx = da::cpu::bf16_uses_amx(sv.sv.d);
    if constexpr (std::is_same_v<Elem, da::bfloat16>) {
      if (amx) {
        const NaiveLowp n = naive_lowp_forward(naive, /*separate=*/true);
        for (std::size_t i = 0; i < n.out.size(); ++i) naive.out[i] = da::bfloat16(static_cast<float>(n.out[i]));
        auto cp = [](const std::vector<double>& src, std::vector<float>& dst) {
          for (std::size_t i = 0; i < src.size(); ++i) dst[i] = static_cast<float>(src[i]);
        };
        cp(n.attn, naive.attn); cp(n.o2, naive.o2); cp(n.lse1, naive.lse1); cp(n.lse2, naive.lse2); cp(n.rstd, naive.rstd);
      }
    }
    if (!amx) REQUIRE(da::reference::forward<float>(pn).ok());
    REQUIRE(da::reference::forward<double>(pr).ok());
    e.ref.push_back(outputs_of(ref, N));
    e.naive.push_back(outputs_of(naive, N));
  }
  return e;
}

template <class Elem>
void check_served(const Served<Elem>& got, const Expected<Elem>& e) {
  for (i64 b = 0; b < got.sv.B(); ++b) {
    INFO("sequence " << b << " (N_b " << got.sv.nq[b] << ", S_b " << got.sv.nk[b] << ")");
    const auto g = outputs_of(got, b);
    for (int k = 0; k < 6; ++k) {
      const double atol = 2 * max_abs_diff_finite(e.naive[b][k], e.ref[b][k]) + 1e-6 * max_abs(e.ref[b][k]);
      check_close(g[k], e.ref[b][k], atol, k == 0 ? unit_roundoff<Elem>() : 0.0, kOutNames[k]);
    }
  }
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

template <class Elem>
void run_serving(const Serve& s, std::uint64_t seed) {
  INFO(da::dtype_name(da::dtype_of_v<Elem>) << " seed " << seed << " " << s.str() << " path "
       << da::cpu::isa_name(da::cpu::isa()));
  const Served<Elem> proto(s, seed);
  const Expected<Elem> e = expected(proto);
  // the oracle: the reference's own serving path, the same numbers as the dense problems
  {
    Served<Elem> r(s, seed);
    da::Params p = r.params();
    const da::Status st = da::reference::forward<float>(p);
    REQUIRE_MESSAGE(st.ok(), st.to_string());
    check_served(r, e);
    if (s.append) check_append(r, proto.kc, proto.vc);
  }
  std::vector<Elem> first;
  for (int threads : {1, 2, 3}) {
    INFO("threads " << threads);
    Served<Elem> c(s, seed);
    da::Params p = c.params();
    da::cpu::Options o;
    o.num_threads = threads;
    const da::Status st = da::cpu::forward(p, o);
    REQUIRE_MESSAGE(st.ok(), st.to_string());
    check_served(c, e);
    if (s.append) check_append(c, proto.kc, proto.vc);
    Served<Elem> again(s, seed);
    da::Params p2 = again.params();
    REQUIRE(da::cpu::forward(p2, o).ok());
    CHECK(std::memcmp(c.out.data(), again.out.data(), c.out.size() * sizeof(Elem)) == 0);
  }
}

}  // namespace

TEST_CASE("serving: ragged varlen batches (empty and length-1 sequences), every mask, dense keys with seqused_k") {
  std::uint64_t seed = 9100;
  for (da::MaskKind m : {da::MaskKind::none, da::MaskKind::causal, da::MaskKind::window}) {
    Serve s;
    s.nq = {5, 0, 1, 70, 3};
    s.nk = {9, 4, 1, 130, 0};
    s.mask = m;
    if (m == da::MaskKind::window) { s.wl = 6; s.wr = 2; }
    run_serving<float>(s, ++seed);
    s.varlen_k = true;
    run_serving<da::bfloat16>(s, ++seed);
  }
}

TEST_CASE("serving: paged KV, pages in random order and shared, page sizes 1, 16, 64, 100") {
  std::uint64_t seed = 9200;
  for (i64 ps : {1, 16, 64, 100}) {
    Serve s;
    s.nq = {1, 2, 1, 4};
    s.nk = {300, 333, 129, 64};
    s.page_size = ps;
    s.Hkv = 1; s.H = 4;  // GQA 4:1
    s.share_page = ps <= 64;
    run_serving<float>(s, ++seed);
    s.mask = da::MaskKind::none;
    run_serving<da::half>(s, ++seed);
  }
}

TEST_CASE("serving: in-place append (decode and chunked prefill), paged and dense, V1 and V2") {
  std::uint64_t seed = 9300;
  Serve s;
  s.nq = {1, 3, 1, 8};
  s.nk = {200, 65, 1, 8};  // the third sequence's cache is empty before its first token
  s.append = true;
  s.page_size = 16;
  run_serving<float>(s, ++seed);
  run_serving<da::bfloat16>(s, ++seed);
  s.page_size = 0;  // dense cache [B, capacity]
  s.varlen_q = false;
  s.nq = {2, 2, 2, 2};
  s.nk = {40, 2, 90, 7};
  run_serving<float>(s, ++seed);
  s.v2 = true;
  s.varlen_q = true;
  s.page_size = 32;
  s.nq = {1, 5};
  s.nk = {77, 40};
  run_serving<float>(s, ++seed);
}

TEST_CASE("serving: GQA 1:1 to 8:1, norms, V2, split-KV decoding (num_splits)") {
  std::uint64_t seed = 9400;
  for (i64 rep : {1, 2, 8}) {
    Serve s;
    s.H = 8; s.Hkv = 8 / rep;
    s.nq = {1, 1, 2};
    s.nk = {700, 1, 257};
    s.page_size = 64;
    s.norm = rep == 2 ? da::NormKind::group : da::NormKind::rms;
    s.beta = true;
    s.num_splits = rep == 8 ? 5 : 0;
    run_serving<float>(s, ++seed);
  }
  Serve s;
  s.v2 = true;
  s.nq = {3, 1, 0, 6};
  s.nk = {50, 1000, 3, 6};
  s.varlen_k = true;
  s.num_splits = 64;  // more parts than key blocks: empty parts merge to nothing
  run_serving<float>(s, ++seed);
  s.d = 64;
  s.num_splits = 2;
  run_serving<da::bfloat16>(s, ++seed);
  s.seqused = false;  // the lengths of cu_seqlens_k are the keys
  s.num_splits = 0;
  run_serving<da::half>(s, ++seed);
}

TEST_CASE("serving: bad tables are rejected with named errors and nothing is written") {
  Serve s;
  s.nq = {1, 2, 3};
  s.nk = {20, 33, 3};
  s.page_size = 8;
  s.append = true;
  auto expect_rejected = [&](const char* what, const std::function<void(Served<float>&, da::Params&)>& mutate,
                             const char* needle) {
    INFO(what);
    for (int backend = 0; backend < 2; ++backend) {
      Served<float> c(s, 77);
      da::Params p = c.params();
      mutate(c, p);
      const std::vector<float> kc0 = c.kc, out0 = c.out;
      const da::Status st = backend == 0 ? da::cpu::forward(p) : da::reference::forward<double>(p);
      REQUIRE_FALSE(st.ok());
      CHECK_MESSAGE(st.message().find(needle) != std::string::npos, st.to_string());
      CHECK(std::memcmp(c.kc.data(), kc0.data(), kc0.size() * sizeof(float)) == 0);  // no append
      CHECK(std::memcmp(c.out.data(), out0.data(), out0.size() * sizeof(float)) == 0);
    }
  };
  expect_rejected("page out of range", [](Served<float>& c, da::Params&) { c.table[1 * c.max_pages + 2] = static_cast<std::int32_t>(c.num_pages); },
                  "seq.block_table[1][2]");
  expect_rejected("negative page", [](Served<float>& c, da::Params&) { c.table[0] = -1; }, "seq.block_table[0][0]");
  expect_rejected("lengths past the table", [](Served<float>& c, da::Params&) { c.used[1] = static_cast<std::int32_t>(c.max_pages * 8); },
                  "seq.seqused_k");
  expect_rejected("cu_seqlens_q not increasing", [](Served<float>& c, da::Params&) { c.cu_q[2] = c.cu_q[1] - 1; },
                  "seq.cu_seqlens_q");
  expect_rejected("cu_seqlens_q from 1", [](Served<float>& c, da::Params&) { c.cu_q[0] = 1; }, "seq.cu_seqlens_q[0]");
  expect_rejected("total_q wrong", [](Served<float>&, da::Params& p) { p.seq.total_q += 1; }, "seq.total_q");
  expect_rejected("a sequence longer than seqlen_q", [](Served<float>&, da::Params& p) { p.seqlen_q = 2; }, "seqlen_q");
  expect_rejected("S_b above seqlen_k", [](Served<float>&, da::Params& p) { p.seqlen_k = 30; }, "seqlen_k");
  expect_rejected("negative seqused_k", [](Served<float>& c, da::Params&) { c.used[2] = -1; }, "seq.seqused_k");
  expect_rejected("append without seqused_k", [](Served<float>&, da::Params& p) { p.seq.seqused_k = nullptr; }, "seq.append_kv");
  expect_rejected("both cu_seqlens_k and a table", [](Served<float>& c, da::Params& p) {
    p.seq.cu_seqlens_k = c.cu_q.data(); p.seq.total_k = 6; }, "seq.cu_seqlens_k");
  expect_rejected("page_size 0", [](Served<float>&, da::Params& p) { p.seq.page_size = 0; }, "seq.page_size");
  expect_rejected("num_splits too many", [](Served<float>&, da::Params& p) { p.seq.num_splits = 65; }, "seq.num_splits");
  expect_rejected("new keys missing", [](Served<float>&, da::Params& p) { p.seq.new_v_hi = {}; }, "seq.new_v_hi");
  expect_rejected("new keys inside the cache", [](Served<float>& c, da::Params& p) { p.seq.new_k1.ptr = c.kc.data(); },
                  "overlaps");
  // the backward takes the dense layout only
  Served<float> c(s, 78);
  da::BackwardParams bp;
  bp.fwd = c.params();
  const da::Status st = da::reference::backward<double>(bp);
  CHECK_MESSAGE(st.code() == da::StatusCode::unsupported, st.to_string());
  CHECK(st.message().find("fwd.seq") != std::string::npos);
}
