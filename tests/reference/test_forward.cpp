// The reference forward: hand-computed cases, an independent loop implementation, properties.
#include <doctest/doctest.h>

#include <sys/resource.h>
#include <unistd.h>

#include <cstdio>

#include "support/problem.hpp"

using namespace dt;

namespace {

// Tolerance for the reference in double against the loop implementation in double: both sum
// at most max(S, 2d) <= 300 terms of magnitude <= ~10 with unit roundoff 1.1e-16; the norm
// divides by an rms >= ~0.01 on random data. 1e-11 absolute and relative leaves a margin of
// ~100x over that bound and still fails any wrong formula, index or mask by many orders.
constexpr double kTolF64 = 1e-11;

template <class Elem>
void run_against_loops(const Shape& s, std::uint64_t seed, bool split = false) {
  INFO("seed " << seed << " " << s.str() << " split=" << split);
  Problem<Elem> pr(s, seed, split);
  da::Params p = pr.params();
  REQUIRE(da::reference::forward<double>(p).ok());
  const LoopResult want = loop_forward(pr, spec_mask(s));
  check_close(to_double(pr.out), want.out, kTolF64, kTolF64, "out");
  check_close(to_double(pr.lse1), want.lse1, kTolF64, kTolF64, "lse1");
  check_close(to_double(pr.lse2), want.lse2, kTolF64, kTolF64, "lse2");
  check_close(to_double(pr.attn), want.attn, kTolF64, kTolF64, "attn");
}

}  // namespace

TEST_CASE("hand-computed: one query, two keys, d = 1") {
  // q1 = 1, q2 = 0, k1 = {0, ln 2}, k2 = anything: s = 1/sqrt(1) = 1.
  // P_1 = softmax(0, ln 2) = (1/3, 2/3); P_2 = softmax(0, 0) = (1/2, 1/2).
  // V = [[3, 0], [0, 3]]: O_1 = (1, 2), O_2 = (1.5, 1.5).
  // lambda vectors all 0: lambda = e^0 - e^0 + lambda_init = 0.5.
  // A = O_1 - 0.5 O_2 = (0.25, 1.25).
  const double ln2 = std::log(2.0);
  std::vector<double> q = {1.0, 0.0};                 // [B=1, N=1, 2H=2, d=1]
  std::vector<double> k = {0.0, 5.0, ln2, -7.0};      // [B=1, S=2, 2Hkv=2, d=1]
  std::vector<double> v = {3.0, 0.0, 0.0, 3.0};       // [B=1, S=2, Hkv=1, 2d=2]
  std::vector<double> out(2, NAN), lse1(1, NAN), lse2(1, NAN), zero(1, 0.0);
  da::Params p = da::make_official_params<double>(1, 1, 2, 1, 1, 1, q.data(), k.data(), v.data(), out.data());
  p.lambda = {zero.data(), zero.data(), zero.data(), zero.data(), false, 0.5};
  p.extras.lse1 = lse1.data();
  p.extras.lse2 = lse2.data();

  SUBCASE("no norm: out = (1 - 0.5) A") {
    p.norm.kind = da::NormKind::none;
    REQUIRE(da::reference::forward<double>(p).ok());
    CHECK(out[0] == doctest::Approx(0.125).epsilon(1e-15));
    CHECK(out[1] == doctest::Approx(0.625).epsilon(1e-15));
    CHECK(lse1[0] == doctest::Approx(std::log(3.0)).epsilon(1e-15));  // log(1 + 2)
    CHECK(lse2[0] == doctest::Approx(std::log(2.0)).epsilon(1e-15));  // q2 = 0: scores (0, 0)
  }
  SUBCASE("RMSNorm with gamma") {
    std::vector<double> gamma = {2.0, 0.5};
    p.norm.kind = da::NormKind::rms;
    p.norm.gamma = gamma.data();
    REQUIRE(da::reference::forward<double>(p).ok());
    const double r = 1.0 / std::sqrt((0.25 * 0.25 + 1.25 * 1.25) / 2 + 1e-5);
    CHECK(out[0] == doctest::Approx(0.5 * 0.25 * r * 2.0).epsilon(1e-15));
    CHECK(out[1] == doctest::Approx(0.5 * 1.25 * r * 0.5).epsilon(1e-15));
  }
  SUBCASE("group norm with gamma and beta") {
    std::vector<double> gamma = {2.0, 0.5}, beta = {0.1, -0.2};
    p.norm.kind = da::NormKind::group;
    p.norm.gamma = gamma.data();
    p.norm.beta = beta.data();
    REQUIRE(da::reference::forward<double>(p).ok());
    // mean 0.75, var 0.25, xhat = (-0.5, 0.5) / sqrt(0.25 + 1e-5)
    const double r = 1.0 / std::sqrt(0.25 + 1e-5);
    CHECK(out[0] == doctest::Approx(0.5 * (-0.5 * r * 2.0 + 0.1)).epsilon(1e-15));
    CHECK(out[1] == doctest::Approx(0.5 * (0.5 * r * 0.5 - 0.2)).epsilon(1e-15));
  }
}

TEST_CASE("hand-computed: causal, two rows, row 0 sees only key 0") {
  // N = S = 2, d = 1; row 0 attends to key 0 alone, so O_1 = O_2 = V_0 and A = (1 - lambda) V_0.
  std::vector<float> q = {0.3f, -1.2f, 2.0f, 0.7f}, k = {1.0f, 2.0f, -1.0f, 0.5f};
  std::vector<float> v = {4.0f, -2.0f, 8.0f, 6.0f}, out(4, NAN), zero(1, 0.0f);
  da::Params p = da::make_official_params<float>(1, 2, 2, 1, 1, 1, q.data(), k.data(), v.data(), out.data());
  p.mask.kind = da::MaskKind::causal;
  p.norm.kind = da::NormKind::none;
  p.lambda = {zero.data(), zero.data(), zero.data(), zero.data(), false, 0.25};
  REQUIRE(da::reference::forward<double>(p).ok());
  CHECK(out[0] == doctest::Approx(0.75 * 0.75 * 4.0).epsilon(1e-7));   // (1 - li)(1 - lambda) V_00
  CHECK(out[1] == doctest::Approx(0.75 * 0.75 * -2.0).epsilon(1e-7));
  // row 1 sees both keys: not hand-computed here; checked against the loop version below
}

TEST_CASE("reference forward == independent loop implementation (f64)") {
  std::uint64_t seed = 1000;
  for (da::NormKind norm : {da::NormKind::none, da::NormKind::rms, da::NormKind::group}) {
    for (auto [N, S] : {std::pair<i64, i64>{1, 1}, {7, 7}, {7, 13}, {13, 5}, {65, 33}}) {
      Shape s;
      s.N = N; s.S = S; s.H = 4; s.Hkv = 2; s.d = 3; s.B = 2;
      s.norm = norm;
      s.beta = norm == da::NormKind::group;
      s.mask = da::MaskKind::none;
      run_against_loops<double>(s, ++seed);
      s.mask = da::MaskKind::causal;
      run_against_loops<double>(s, ++seed);
      s.mask = da::MaskKind::window; s.wl = 2; s.wr = 1;
      run_against_loops<double>(s, ++seed);
      s.wl = -1; s.wr = 0; s.per_head = true; s.gamma = false;
      run_against_loops<double>(s, ++seed, /*split=*/true);
    }
  }
}

TEST_CASE("DIFF V2: reference forward == independent loop implementation (f64)") {
  std::uint64_t seed = 5000;
  for (auto [N, S] : {std::pair<i64, i64>{1, 1}, {7, 7}, {7, 13}, {13, 5}, {65, 33}}) {
    Shape s;
    s.N = N; s.S = S; s.H = 4; s.Hkv = 2; s.d = 3; s.B = 2; s.v2 = true;
    for (da::MaskKind m : {da::MaskKind::none, da::MaskKind::causal, da::MaskKind::window}) {
      s.mask = m;
      if (m == da::MaskKind::window) { s.wl = 2; s.wr = 1; }
      run_against_loops<double>(s, ++seed);
    }
    s.H = 3; s.Hkv = 1; s.logit_scale = 6;  // MQA; sigmoid near 0 and 1
    run_against_loops<double>(s, ++seed, /*split=*/true);
  }
}

TEST_CASE("DIFF V2: hand-computed, one query, two keys") {
  // q_{2h} = 1, q_{2h+1} = 0 (d = 1), k = {0, ln 2}: P_1 = (1/3, 2/3), P_2 = (1/2, 1/2);
  // v = {3, 6}: O_1 = 5, O_2 = 4.5; logit 0: lambda = 1/2, so out = 5 - 2.25 (no norm, no scale).
  const double ln2 = std::log(2.0);
  std::vector<double> q = {1.0, 0.0}, k = {0.0, ln2}, v = {3.0, 6.0}, z = {0.0}, out(1, NAN);
  da::Params p = da::make_diff_v2_params<double>(1, 1, 2, 1, 1, 1, q.data(), k.data(), v.data(), z.data(), out.data());
  REQUIRE(da::reference::forward<double>(p).ok());
  CHECK(out[0] == doctest::Approx(5.0 - 0.5 * 4.5).epsilon(1e-15));
  z[0] = std::log(3.0);  // sigmoid(ln 3) = 3/4
  REQUIRE(da::reference::forward<double>(p).ok());
  CHECK(out[0] == doctest::Approx(5.0 - 0.75 * 4.5).epsilon(1e-15));
}

TEST_CASE("DiffLlama layout: make_diffllama_params computes what HF DiffLlamaAttention computes") {
  // HF's attention written out on its own tensors (q [B,N,Hq,d], k, v [B,S,Hkvq,d]): KV heads
  // repeated n_rep = Hq / Hkvq times; V's repeated heads split in halves along heads and
  // concatenated along channels, then repeated twice along heads; query head j attends with
  // K head j / n_rep and V head j mod (Hq / 2); the first and second halves of the query heads'
  // outputs are subtracted with lambda, RMSNorm over 2d without weight, times 1 - lambda_init.
  for (auto [Hq, Hkvq] : {std::pair<i64, i64>{4, 2}, {8, 4}, {8, 2}, {6, 6}}) {
    const i64 B = 2, N = 5, S = 7, d = 3, H = Hq / 2, nrep = Hq / Hkvq;
    INFO("Hq " << Hq << " Hkvq " << Hkvq);
    std::mt19937_64 rng(77 + Hq * 10 + Hkvq);
    std::normal_distribution<double> nd(0, 1);
    std::vector<double> q(B * N * Hq * d), k(B * S * Hkvq * d), v(B * S * Hkvq * d), out(B * N * H * 2 * d, NAN);
    std::vector<double> lam(4 * d);
    for (auto* t : {&q, &k, &v}) for (double& x : *t) x = nd(rng);
    for (double& x : lam) x = 0.1 * nd(rng);
    const double li = da::lambda_init_for_depth(2);
    da::Params p = da::make_diffllama_params<double>(B, N, S, Hq, Hkvq, d, q.data(), k.data(), v.data(), out.data());
    p.mask.kind = da::MaskKind::causal;
    p.norm.kind = da::NormKind::rms;  // DiffLlama's RMSNorm has no weight
    p.lambda = {lam.data(), lam.data() + d, lam.data() + 2 * d, lam.data() + 3 * d, false, li};
    REQUIRE(da::reference::forward<double>(p).ok());
    double dot1 = 0, dot2 = 0;
    for (i64 x = 0; x < d; ++x) { dot1 += lam[x] * lam[d + x]; dot2 += lam[2 * d + x] * lam[3 * d + x]; }
    const double lambda = std::exp(dot1) - std::exp(dot2) + li;
    auto Q = [&](i64 b, i64 i, i64 j, i64 x) { return q[((b * N + i) * Hq + j) * d + x]; };
    auto K = [&](i64 b, i64 t, i64 g, i64 x) { return k[((b * S + t) * Hkvq + g) * d + x]; };
    auto V = [&](i64 b, i64 t, i64 g, i64 x) { return v[((b * S + t) * Hkvq + g) * d + x]; };
    auto Vcat = [&](i64 b, i64 t, i64 hh, i64 x) {  // head hh < H of the concatenated V
      return x < d ? V(b, t, hh / nrep, x) : V(b, t, (hh + H) / nrep, x - d);
    };
    std::vector<double> want(out.size());
    for (i64 b = 0; b < B; ++b)
      for (i64 i = 0; i < N; ++i) {
        std::vector<double> o(Hq * 2 * d, 0.0);
        for (i64 j = 0; j < Hq; ++j) {
          std::vector<double> sc(S, -INFINITY);
          double mx = -INFINITY;
          for (i64 t = 0; t <= i + (S - N) && t < S; ++t) {
            double a = 0;
            for (i64 x = 0; x < d; ++x) a += Q(b, i, j, x) * K(b, t, j / nrep, x);
            sc[t] = a / std::sqrt(double(d));
            mx = std::max(mx, sc[t]);
          }
          double sum = 0;
          for (i64 t = 0; t < S; ++t) sum += std::exp(sc[t] - mx);
          for (i64 t = 0; t < S; ++t)
            for (i64 x = 0; x < 2 * d; ++x) o[j * 2 * d + x] += std::exp(sc[t] - mx) / sum * Vcat(b, t, j % H, x);
        }
        for (i64 hh = 0; hh < H; ++hh) {
          std::vector<double> a(2 * d);
          double ms = 0;
          for (i64 x = 0; x < 2 * d; ++x) {
            a[x] = o[hh * 2 * d + x] - lambda * o[(hh + H) * 2 * d + x];
            ms += a[x] * a[x] / (2 * d);
          }
          for (i64 x = 0; x < 2 * d; ++x)
            want[((b * N + i) * H + hh) * 2 * d + x] = (1 - li) * a[x] / std::sqrt(ms + 1e-5);
        }
      }
    check_close(out, want, kTolF64, kTolF64, "DiffLlama out");
  }
}

TEST_CASE("DiffLlama layout: the reference gives the official layout's result bit for bit") {
  auto one = [](auto tag, const Shape& s, std::uint64_t seed) {
    using Elem = decltype(tag);
    INFO(s.str());
    Problem<Elem> pr(s, seed);
    DiffLlamaCopy<Elem> dl(pr);
    da::Params p = pr.params();
    p.extras = {};
    REQUIRE(da::reference::forward<double>(p).ok());
    REQUIRE(da::reference::forward<double>(dl.p).ok());
    check_close(to_double(dl.out), to_double(pr.out), 0, 0, "DiffLlama vs official, double accumulation");
    REQUIRE(da::reference::forward<float>(p).ok());
    REQUIRE(da::reference::forward<float>(dl.p).ok());
    check_close(to_double(dl.out), to_double(pr.out), 0, 0, "DiffLlama vs official, float accumulation");
  };
  Shape s;
  s.B = 2; s.N = 9; s.S = 13; s.H = 4; s.Hkv = 2; s.d = 5; s.mask = da::MaskKind::causal; s.gamma = false;
  one(double{}, s, 61);
  one(float{}, s, 62);
  s.Hkv = 1; s.norm = da::NormKind::group; s.beta = true; s.mask = da::MaskKind::window; s.wl = 2; s.wr = 3;
  one(float{}, s, 63);
}

TEST_CASE("lambda = 0 gives ordinary attention followed by the norm") {
  // lambda vectors 0 and lambda_init = 0: lambda = 1 - 1 + 0 = 0 and out_scale = 1, so out is
  // RMSNorm(P_1 V) * gamma. Checked against a plain softmax-attention loop of component 1 only.
  Shape s;
  s.B = 1; s.N = 9; s.S = 11; s.H = 2; s.Hkv = 2; s.d = 4; s.lambda_init = 0.0;
  Problem<double> pr(s, 77);
  for (auto* t : {&pr.lq1, &pr.lk1, &pr.lq2, &pr.lk2}) std::fill(t->begin(), t->end(), 0.0);
  da::Params p = pr.params();
  REQUIRE(da::reference::forward<double>(p).ok());
  const i64 dv = 2 * s.d;
  std::vector<double> want(pr.out.size());
  for (i64 h = 0; h < s.H; ++h)
    for (i64 i = 0; i < s.N; ++i) {
      std::vector<double> sc(s.S), o(dv, 0.0);
      double mx = -INFINITY, sum = 0;
      for (i64 j = 0; j < s.S; ++j) {
        double acc = 0;
        for (i64 x = 0; x < s.d; ++x) acc += pr.q_at(0, 0, i, h, x) * pr.k_at(0, 0, j, h, x);
        sc[j] = acc / 2.0;  // 1/sqrt(4)
        mx = std::max(mx, sc[j]);
      }
      for (i64 j = 0; j < s.S; ++j) sum += std::exp(sc[j] - mx);
      for (i64 j = 0; j < s.S; ++j)
        for (i64 x = 0; x < dv; ++x) o[x] += std::exp(sc[j] - mx) / sum * pr.v_at(0, j, h, x);
      double ms = 0;
      for (double x : o) ms += x * x;
      ms /= dv;
      for (i64 x = 0; x < dv; ++x) want[(i * s.H + h) * dv + x] = o[x] / std::sqrt(ms + 1e-5) * pr.gamma[x];
    }
  check_close(to_double(pr.out), want, kTolF64, kTolF64, "out vs ordinary attention + RMSNorm");
}

TEST_CASE("Q2 = Q1, K2 = K1 and lambda = 1 give A = 0 and out = 0") {
  Shape s;
  s.B = 2; s.N = 6; s.S = 10; s.H = 2; s.Hkv = 1; s.d = 2; s.lambda_init = 0.5;
  s.mask = da::MaskKind::causal;
  Problem<double> pr(s, 91);
  // make the second component a copy of the first (interleaved layout: head 2h+1 := head 2h)
  for (std::size_t r = 0; r < pr.q.size() / (2 * s.d); ++r)
    for (i64 x = 0; x < s.d; ++x) pr.q[r * 2 * s.d + s.d + x] = pr.q[r * 2 * s.d + x];
  for (std::size_t r = 0; r < pr.k.size() / (2 * s.d); ++r)
    for (i64 x = 0; x < s.d; ++x) pr.k[r * 2 * s.d + s.d + x] = pr.k[r * 2 * s.d + x];
  // lambda = e^{<lq1,lk1>} - e^{<lq2,lk2>} + 0.5 = 1.5 - 1 + 0.5 = 1: <lq1,lk1> = ln 1.5, rest 0.
  for (auto* t : {&pr.lq1, &pr.lk1, &pr.lq2, &pr.lk2}) std::fill(t->begin(), t->end(), 0.0);
  pr.lq1[0] = std::log(1.5);
  pr.lk1[0] = 1.0;
  for (da::NormKind norm : {da::NormKind::none, da::NormKind::rms}) {
    pr.poison_outputs();
    da::Params p = pr.params();
    p.norm.kind = norm;
    if (norm == da::NormKind::none) p.norm.gamma = nullptr;
    REQUIRE(da::reference::forward<double>(p).ok());
    // |A| <= |lambda - 1| |O_2| ~ 1e-16; the RMS norm multiplies by at most 1/sqrt(eps) = 316.
    check_close(to_double(pr.attn), std::vector<double>(pr.attn.size(), 0.0), 1e-14, 0, "A");
    check_close(to_double(pr.out), std::vector<double>(pr.out.size(), 0.0), 1e-12, 0, "out");
  }
}

TEST_CASE("official interleaved layout and a split BHSD layout of the same data agree exactly") {
  Shape s;
  s.B = 2; s.N = 7; s.S = 9; s.H = 4; s.Hkv = 2; s.d = 8; s.mask = da::MaskKind::causal;
  Problem<float> a(s, 5);
  Problem<float> b(s, 6, /*split=*/true);
  // copy a's data into b's split layout
  for (i64 bb = 0; bb < s.B; ++bb)
    for (int c = 0; c < 2; ++c) {
      auto& qb = c == 0 ? b.q : b.q2buf;
      auto& kb = c == 0 ? b.k : b.k2buf;
      for (i64 h = 0; h < s.H; ++h)
        for (i64 i = 0; i < s.N; ++i)
          for (i64 x = 0; x < s.d; ++x) qb[((bb * s.H + h) * s.N + i) * s.d + x] = float(a.q_at(c, bb, i, h, x));
      for (i64 g = 0; g < s.Hkv; ++g)
        for (i64 j = 0; j < s.S; ++j)
          for (i64 x = 0; x < s.d; ++x) kb[((bb * s.Hkv + g) * s.S + j) * s.d + x] = float(a.k_at(c, bb, j, g, x));
    }
  b.v = a.v; b.lq1 = a.lq1; b.lk1 = a.lk1; b.lq2 = a.lq2; b.lk2 = a.lk2; b.gamma = a.gamma;
  da::Params pa = a.params(), pb = b.params();
  REQUIRE(da::reference::forward<float>(pa).ok());
  REQUIRE(da::reference::forward<float>(pb).ok());
  check_close(to_double(b.out), to_double(a.out), 0, 0, "split vs interleaved out (bitwise)");
  check_close(to_double(b.lse1), to_double(a.lse1), 0, 0, "lse1");
}

TEST_CASE("diff head h reads KV group h / n_rep") {
  // H = 6, Hkv = 2 (n_rep = 3): heads 0-2 read group 0, heads 3-5 group 1 (the flash files'
  // mapping; the naive file's (2h + c) / n_rep would mix groups). Perturbing K1 of group 1 must
  // change heads 3-5 and leave heads 0-2 bit-identical.
  Shape s;
  s.B = 1; s.N = 5; s.S = 6; s.H = 6; s.Hkv = 2; s.d = 4;
  Problem<double> pr(s, 31);
  da::Params p = pr.params();
  REQUIRE(da::reference::forward<double>(p).ok());
  const std::vector<double> before = pr.out;
  // every key row of group 1, component 1, by a different amount per key (a shift common to all
  // keys would cancel in the softmax)
  for (i64 j = 0; j < s.S; ++j)
    for (i64 x = 0; x < s.d; ++x) pr.k[((0 * s.S + j) * 2 * s.Hkv + 2 * 1 + 0) * s.d + x] += 0.3 * (j - x);
  REQUIRE(da::reference::forward<double>(p).ok());
  for (i64 h = 0; h < s.H; ++h) {
    double diff = 0;
    for (i64 i = 0; i < s.N; ++i)
      for (i64 x = 0; x < 2 * s.d; ++x) {
        const std::size_t at = (i * s.H + h) * 2 * s.d + x;
        diff = std::max(diff, std::fabs(pr.out[at] - before[at]));
      }
    INFO("head " << h << " max change " << diff);
    if (h < 3) CHECK(diff == 0.0);
    else CHECK(diff > 1e-3);
  }
  // and the loop implementation (which maps h -> h / n_rep independently) agrees
  const LoopResult want = loop_forward(pr, spec_mask(s));
  check_close(pr.out, want.out, kTolF64, kTolF64, "out after perturbation");
}

TEST_CASE("bottom-right causal with N < S (decoding) and N > S") {
  for (auto [N, S] : {std::pair<i64, i64>{1, 17}, {4, 17}, {17, 4}, {9, 9}}) {
    Shape s;
    s.B = 1; s.N = N; s.S = S; s.H = 2; s.Hkv = 1; s.d = 4; s.mask = da::MaskKind::causal;
    INFO("N=" << N << " S=" << S);
    Problem<double> pr(s, 400 + N * 31 + S);
    da::Params p = pr.params();
    REQUIRE(da::reference::forward<double>(p).ok());
    // explicit: row i sees keys 0 .. i + S - N; the last query row sees every key
    const LoopResult want = loop_forward(pr, [&](i64 i, i64 j) { return j <= i + S - N; });
    check_close(pr.out, want.out, kTolF64, kTolF64, "out");
    check_close(pr.lse1, want.lse1, kTolF64, kTolF64, "lse1");
    // N = 1 decoding sees all S keys: same as no mask
    if (N == 1) {
      const LoopResult all = loop_forward(pr, [](i64, i64) { return true; });
      check_close(pr.out, all.out, kTolF64, kTolF64, "decode row == unmasked");
    }
  }
}

TEST_CASE("fully masked rows give 0 and LSE -inf, never NaN") {
  for (int variant = 0; variant < 3; ++variant) {
    Shape s;
    s.B = 2; s.H = 2; s.Hkv = 2; s.d = 4;
    if (variant == 0) { s.N = 9; s.S = 4; s.mask = da::MaskKind::causal; }                  // rows 0-4 masked
    if (variant == 1) { s.N = 6; s.S = 3; s.mask = da::MaskKind::window; s.wl = 0; s.wr = 0; }  // rows 0-2
    if (variant == 2) {  // rows 0-2 masked, group norm: Y = beta there
      s.N = 5; s.S = 2; s.mask = da::MaskKind::window; s.wl = 0; s.wr = 0;
      s.norm = da::NormKind::group; s.beta = true;
    }
    INFO("variant " << variant << " " << s.str());
    Problem<float> pr(s, 555 + variant);
    da::Params p = pr.params();
    REQUIRE(da::reference::forward<double>(p).ok());
    const da::RowMask m = da::make_row_mask(p);
    const i64 dv = 2 * s.d;
    int masked_rows = 0;
    for (i64 b = 0; b < s.B; ++b)
      for (i64 h = 0; h < s.H; ++h)
        for (i64 i = 0; i < s.N; ++i) {
          const bool masked = m.row_count(i) == 0;
          masked_rows += masked;
          const float l1 = pr.lse1[(b * s.H + h) * s.N + i];
          CHECK_FALSE(std::isnan(l1));
          if (masked) CHECK((std::isinf(l1) && l1 < 0));
          for (i64 x = 0; x < dv; ++x) {
            const float o = static_cast<float>(pr.out[((b * s.N + i) * s.H + h) * dv + x]);
            CHECK_FALSE(std::isnan(o));
            if (masked) {
              // group norm: Y = beta for A = 0, so out = (1 - li) beta; otherwise exactly 0
              const float want = s.beta ? float((1 - s.lambda_init) * pr.beta[x]) : 0.0f;
              CHECK(o == doctest::Approx(want).epsilon(1e-6));
            }
          }
        }
    CHECK(masked_rows > 0);  // the case really has fully masked rows
    const LoopResult want = loop_forward(pr, spec_mask(s));
    check_close(to_double(pr.out), want.out, 1e-5, 1e-5, "out (f32 storage)");
  }
}

TEST_CASE("extreme logits (|s q.k| ~ 1e4) neither overflow nor NaN") {
  Shape s;
  s.B = 1; s.N = 12; s.S = 12; s.H = 2; s.Hkv = 1; s.d = 4; s.mask = da::MaskKind::causal;
  // inputs of magnitude ~70: s q.k ~ 70 * 70 * 4 / 2 ~ 1e4
  Problem<float> pr(s, 8, /*split=*/false, /*in_scale=*/70.0);
  da::Params p = pr.params();
  for (auto acc_double : {true, false}) {
    pr.poison_outputs();
    p = pr.params();
    REQUIRE((acc_double ? da::reference::forward<double>(p) : da::reference::forward<float>(p)).ok());
    double max_lse = 0;
    for (float x : pr.lse1) {
      CHECK(std::isfinite(x));
      max_lse = std::max(max_lse, double(std::fabs(x)));
    }
    CHECK(max_lse > 1e3);  // the case really is extreme
    for (float x : pr.out) CHECK(std::isfinite(x));
    const LoopResult want = loop_forward(pr, spec_mask(s));
    // softmax is ~one-hot here; float accumulation (acc_double false) of ~1e4 logits loses
    // ~1e4 * 6e-8 = 6e-4 absolute in the scores, so 1e-2 on the normalised output
    check_close(to_double(pr.out), want.out, acc_double ? 1e-5 : 2e-2, acc_double ? 1e-5 : 2e-2, "out");
  }
}

TEST_CASE("softmax_scale is honoured and 0 selects 1/sqrt(d)") {
  Shape s;
  s.N = 5; s.S = 6; s.d = 9;
  Problem<double> a(s, 12), b(s, 12);
  da::Params pa = a.params(), pb = b.params();
  pa.softmax_scale = 0.0;
  pb.softmax_scale = 1.0 / 3.0;
  REQUIRE(da::reference::forward<double>(pa).ok());
  REQUIRE(da::reference::forward<double>(pb).ok());
  check_close(b.out, a.out, 1e-14, 1e-14, "scale 1/3 == default for d = 9");
  pb.softmax_scale = 0.5;
  b.poison_outputs();
  REQUIRE(da::reference::forward<double>(pb).ok());
  double diff = 0;
  for (std::size_t i = 0; i < a.out.size(); ++i) diff = std::max(diff, std::fabs(a.out[i] - b.out[i]));
  CHECK(diff > 1e-3);
}

TEST_CASE("lambda_init_for_depth follows 0.8 - 0.6 exp(-0.3 depth)") {
  CHECK(da::lambda_init_for_depth(0) == doctest::Approx(0.2).epsilon(1e-15));
  CHECK(da::lambda_init_for_depth(1) == doctest::Approx(0.8 - 0.6 * std::exp(-0.3)).epsilon(1e-15));
  CHECK(da::lambda_init_for_depth(23) == doctest::Approx(0.8 - 0.6 * std::exp(-6.9)).epsilon(1e-15));
}

TEST_CASE("accumulating in float agrees with double on f32 inputs") {
  Shape s;
  s.B = 2; s.N = 65; s.S = 127; s.H = 4; s.Hkv = 1; s.d = 16; s.mask = da::MaskKind::causal;
  Problem<float> pr(s, 3);
  da::Params p = pr.params();
  REQUIRE(da::reference::forward<double>(p).ok());
  const std::vector<double> want = to_double(pr.out);
  pr.poison_outputs();
  p = pr.params();
  REQUIRE(da::reference::forward<float>(p).ok());
  // sums of <= 127 products in float: ~127 * 6e-8 relative, amplified by the norm (rms >= 0.05
  // on this data): 1e-4 absolute on outputs of magnitude ~1
  check_close(to_double(pr.out), want, 1e-4, 1e-4, "out, float vs double accumulation");
}

TEST_CASE("out of memory is a Status, not an exception, and nothing is written") {
  // S = 2^34 keys broadcast from one row (token stride 0): the reference would materialise a
  // 1 x 2^34 score row and K as a 2^34 x d matrix. Before, std::bad_alloc left forward().
  Shape s;
  s.N = 1; s.S = 1; s.H = 1; s.Hkv = 1; s.d = 8;
  Problem<float> pr(s, 7);
  da::Params p = pr.params();
  p.seqlen_k = i64{1} << 34;
  p.k1.stride_t = p.k2.stride_t = p.v_lo.stride_t = p.v_hi.stride_t = 0;
  REQUIRE(da::validate(p, da::reference::caps()).ok());
  // an address-space cap makes the allocation fail whatever the machine's overcommit policy
  long pages = 0;
  if (std::FILE* f = std::fopen("/proc/self/statm", "r")) {
    if (std::fscanf(f, "%ld", &pages) != 1) pages = 0;
    std::fclose(f);
  }
  REQUIRE(pages > 0);
  rlimit old{};
  REQUIRE(getrlimit(RLIMIT_AS, &old) == 0);
  rlimit cap = old;
  cap.rlim_cur = static_cast<rlim_t>(pages) * static_cast<rlim_t>(sysconf(_SC_PAGESIZE)) + (rlim_t{1} << 32);
  REQUIRE(setrlimit(RLIMIT_AS, &cap) == 0);
  da::Status st = da::Status::Ok();
  try {
    st = da::reference::forward<double>(p);
  } catch (...) {
    st = da::Status::Internal("an exception left reference::forward");
  }
  REQUIRE(setrlimit(RLIMIT_AS, &old) == 0);
  CHECK(st.code() == da::StatusCode::unsupported);
  CHECK(st.message().find("out of memory") != std::string::npos);
  for (float x : pr.out) CHECK(std::isnan(x));
  for (float x : pr.lse1) CHECK(std::isnan(x));
}
