// tests/support/problem.hpp: random problems, poisoned outputs, every-element comparisons,
// and an independent loop-based differential attention (double) to check the reference with.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <doctest/doctest.h>

#include <diffattn/diffattn.hpp>

namespace dt {  // diffattn tests

namespace da = diffattn;
using i64 = std::int64_t;

/// The shape and options of one test case.
struct Shape {
  i64 B = 1, N = 8, S = 8, H = 2, Hkv = 1, d = 4;
  da::MaskKind mask = da::MaskKind::none;
  i64 wl = -1, wr = -1;
  da::NormKind norm = da::NormKind::rms;
  bool gamma = true, beta = false, per_head = false;
  double lambda_init = 0.2;
  /// nonzero: lq1 = lk1 = sqrt(lambda_dot1 / d) everywhere, so that lambda = e^lambda_dot1 - ...
  /// (a large lambda with a representable output, unlike a large lambda_init)
  double lambda_dot1 = 0;
  /// DIFF V2 (da::Variant::diff_v2): one K and a V of d channels per KV head, out of d channels,
  /// lambda = sigmoid(logits) per (b, i, h) (random, spread logit_scale), no norm
  bool v2 = false;
  double logit_scale = 1.5;
  i64 dv() const { return v2 ? d : 2 * d; }
  std::string str() const {
    char buf[256];
    std::snprintf(buf, sizeof buf,
                  "B=%lld N=%lld S=%lld H=%lld Hkv=%lld d=%lld mask=%d(%lld,%lld) norm=%d gamma=%d "
                  "beta=%d per_head=%d lambda_init=%g lambda_dot1=%g v2=%d",
                  (long long)B, (long long)N, (long long)S, (long long)H, (long long)Hkv,
                  (long long)d, int(mask), (long long)wl, (long long)wr, int(norm), int(gamma),
                  int(beta), int(per_head), lambda_init, lambda_dot1, int(v2));
    return buf;
  }
};

/// double -> any element type (through float for the 16-bit types).
template <class T>
T from_double(double x) {
  if constexpr (std::is_same_v<T, da::half> || std::is_same_v<T, da::bfloat16>) {
    return T(static_cast<float>(x));
  } else {
    return static_cast<T>(x);
  }
}

/// A NaN of any element type, used to poison outputs before a run.
template <class T>
T poison() {
  return T(std::numeric_limits<float>::quiet_NaN());
}

/// Owns every buffer of one problem in the official interleaved layout (or BHSD split layout),
/// with random inputs (seeded) and poisoned outputs. Elem: element type, P: side type.
/// DIFF V2 (Shape::v2): q as V1's ([B, N, 2H, d], pair h = heads 2h, 2h + 1), k and v
/// [B, S, Hkv, d] (k2buf unused), logits [B, N, H], out [B, N, H, d]; split: BHSD q1, q2, k.
template <class Elem>
struct Problem {
  using P = da::param_t<Elem>;
  Shape sh;
  bool split = false;  // false: official interleaved BSHD; true: separate Q1/Q2/K1/K2, BHSD
  std::vector<Elem> q, q2buf, k, k2buf, v, out, dout;
  std::vector<P> lq1, lk1, lq2, lk2, gamma, beta;
  std::vector<P> logits;  // V2
  std::vector<P> lse1, lse2, attn, o2, rstd, mean;
  // gradients
  std::vector<Elem> dq, dq2buf, dk, dk2buf, dv;
  std::vector<P> dlq1, dlk1, dlq2, dlk2, dgamma, dbeta, dlogits;

  Problem(const Shape& s, std::uint64_t seed, bool split_layout = false, double in_scale = 1.0)
      : sh(s), split(split_layout) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<double> nd(0.0, 1.0);
    auto fill = [&](auto& vec, std::size_t n, double sc) {
      using T = typename std::decay_t<decltype(vec)>::value_type;
      vec.resize(n);
      for (auto& x : vec) x = from_double<T>(nd(rng) * sc);
    };
    const i64 B = s.B, N = s.N, S = s.S, H = s.H, G = s.Hkv, d = s.d, dv = s.dv();
    const std::size_t nq = B * N * H * d, nk = B * S * G * d;
    if (split) {
      fill(q, nq, in_scale); fill(q2buf, nq, in_scale);
      fill(k, nk, in_scale);
      if (!s.v2) fill(k2buf, nk, in_scale);
    } else {
      fill(q, 2 * nq, in_scale);
      fill(k, (s.v2 ? 1 : 2) * nk, in_scale);
    }
    fill(v, B * S * G * dv, 1.0);
    fill(dout, B * N * H * dv, 1.0);
    if (s.v2) fill(logits, B * N * H, s.logit_scale);
    const std::size_t nl = (s.per_head ? H : 1) * d;
    fill(lq1, nl, 0.1); fill(lk1, nl, 0.1); fill(lq2, nl, 0.1); fill(lk2, nl, 0.1);
    if (s.lambda_dot1 != 0) {
      const P c = P(std::sqrt(s.lambda_dot1 / double(d)));
      for (auto* t : {&lq1, &lk1}) t->assign(nl, c);
    }
    fill(gamma, 2 * d, 0.5);
    for (auto& g : gamma) g = g + P(1);
    fill(beta, 2 * d, 0.5);
    poison_outputs();
  }

  void poison_outputs() {
    const i64 B = sh.B, N = sh.N, S = sh.S, H = sh.H, G = sh.Hkv, d = sh.d, dvc = sh.dv();
    const std::size_t rows = B * H * N;
    const P pn = std::numeric_limits<P>::quiet_NaN();
    out.assign(B * N * H * dvc, poison<Elem>());
    for (auto* t : {&lse1, &lse2, &rstd, &mean}) t->assign(rows, pn);
    for (auto* t : {&attn, &o2}) t->assign(rows * dvc, pn);
    if (split) {
      dq.assign(B * N * H * d, poison<Elem>()); dq2buf.assign(B * N * H * d, poison<Elem>());
      dk.assign(B * S * G * d, poison<Elem>());
      if (!sh.v2) dk2buf.assign(B * S * G * d, poison<Elem>());
    } else {
      dq.assign(2 * B * N * H * d, poison<Elem>());
      dk.assign((sh.v2 ? 1 : 2) * B * S * G * d, poison<Elem>());
    }
    dv.assign(B * S * G * dvc, poison<Elem>());
    if (sh.v2) dlogits.assign(rows, pn);
    const std::size_t nl = (sh.per_head ? H : 1) * d;
    for (auto* t : {&dlq1, &dlk1, &dlq2, &dlk2}) t->assign(nl, pn);
    dgamma.assign(2 * d, pn);
    dbeta.assign(2 * d, pn);
  }

  da::Params params() {
    const i64 B = sh.B, N = sh.N, S = sh.S, H = sh.H, G = sh.Hkv, d = sh.d;
    da::Params p;
    if (sh.v2) {
      p = da::make_diff_v2_params(B, N, S, H, G, d, q.data(), k.data(), v.data(), logits.data(), out.data());
      if (split) {
        p.q1 = da::bhsd(q.data(), N, H, d);
        p.q2 = da::bhsd(q2buf.data(), N, H, d);
        p.k1 = da::bhsd(k.data(), S, G, d);
      }
      p.mask = {sh.mask, sh.wl, sh.wr};
      p.extras = {lse1.data(), lse2.data(), attn.data(), o2.data(), rstd.data(), mean.data()};
      return p;
    }
    if (!split) {
      p = da::make_official_params(B, N, S, H, G, d, q.data(), k.data(), v.data(), out.data());
    } else {
      p.batch = B; p.seqlen_q = N; p.seqlen_k = S; p.heads = H; p.kv_heads = G; p.head_dim = d;
      p.dtype = da::dtype_of_v<Elem>;
      p.q1 = da::bhsd(q.data(), N, H, d);
      p.q2 = da::bhsd(q2buf.data(), N, H, d);
      p.k1 = da::bhsd(k.data(), S, G, d);
      p.k2 = da::bhsd(k2buf.data(), S, G, d);
      p.set_v(da::bshd(v.data(), S, G, 2 * d));
      p.out = da::bshd(out.data(), N, H, 2 * d);
    }
    p.mask = {sh.mask, sh.wl, sh.wr};
    p.lambda.lq1 = lq1.data(); p.lambda.lk1 = lk1.data();
    p.lambda.lq2 = lq2.data(); p.lambda.lk2 = lk2.data();
    p.lambda.per_head = sh.per_head;
    p.lambda.lambda_init = sh.lambda_init;
    p.norm.kind = sh.norm;
    p.norm.gamma = (sh.norm != da::NormKind::none && sh.gamma) ? gamma.data() : nullptr;
    p.norm.beta = (sh.norm == da::NormKind::group && sh.beta) ? beta.data() : nullptr;
    p.extras = {lse1.data(), lse2.data(), attn.data(), o2.data(), rstd.data(), mean.data()};
    return p;
  }

  da::BackwardParams backward_params() {
    da::BackwardParams bp;
    bp.fwd = params();
    bp.fwd.out = {};
    bp.fwd.extras = {};
    const i64 N = sh.N, S = sh.S, H = sh.H, G = sh.Hkv, d = sh.d;
    bp.dout = da::bshd(dout.data(), N, H, sh.dv());
    if (sh.v2) {
      if (!split) {
        bp.grad.dq1 = {dq.data(), N * 2 * H * d, 2 * H * d, 2 * d};
        bp.grad.dq2 = {dq.data() + d, N * 2 * H * d, 2 * H * d, 2 * d};
        bp.grad.dk1 = da::bshd(dk.data(), S, G, d);
      } else {
        bp.grad.dq1 = da::bhsd(dq.data(), N, H, d);
        bp.grad.dq2 = da::bhsd(dq2buf.data(), N, H, d);
        bp.grad.dk1 = da::bhsd(dk.data(), S, G, d);
      }
      bp.grad.dv_lo = da::bshd(dv.data(), S, G, d);
      bp.grad.dlogits = {dlogits.data(), N * H, H, 1};
      return bp;
    }
    if (!split) {
      bp.grad.dq1 = {dq.data(), N * 2 * H * d, 2 * H * d, 2 * d};
      bp.grad.dq2 = {dq.data() + d, N * 2 * H * d, 2 * H * d, 2 * d};
      bp.grad.dk1 = {dk.data(), S * 2 * G * d, 2 * G * d, 2 * d};
      bp.grad.dk2 = {dk.data() + d, S * 2 * G * d, 2 * G * d, 2 * d};
    } else {
      bp.grad.dq1 = da::bhsd(dq.data(), N, H, d);
      bp.grad.dq2 = da::bhsd(dq2buf.data(), N, H, d);
      bp.grad.dk1 = da::bhsd(dk.data(), S, G, d);
      bp.grad.dk2 = da::bhsd(dk2buf.data(), S, G, d);
    }
    bp.set_dv(da::bshd(dv.data(), S, G, 2 * d));
    bp.grad.dlq1 = dlq1.data(); bp.grad.dlk1 = dlk1.data();
    bp.grad.dlq2 = dlq2.data(); bp.grad.dlk2 = dlk2.data();
    bp.grad.dgamma = bp.fwd.norm.gamma ? dgamma.data() : nullptr;
    bp.grad.dbeta = bp.fwd.norm.beta ? dbeta.data() : nullptr;
    return bp;
  }

  // element accessors in the official layout terms (split: BHSD)
  double q_at(int c, i64 b, i64 i, i64 h, i64 x) const {
    const i64 N = sh.N, H = sh.H, d = sh.d;
    if (!split) return to_d(q[((b * N + i) * 2 * H + 2 * h + c) * d + x]);
    const auto& buf = c == 0 ? q : q2buf;
    return to_d(buf[((b * H + h) * N + i) * d + x]);
  }
  double k_at(int c, i64 b, i64 j, i64 g, i64 x) const {
    const i64 S = sh.S, G = sh.Hkv, d = sh.d;
    if (sh.v2) return split ? to_d(k[((b * G + g) * S + j) * d + x]) : to_d(k[((b * S + j) * G + g) * d + x]);
    if (!split) return to_d(k[((b * S + j) * 2 * G + 2 * g + c) * d + x]);
    const auto& buf = c == 0 ? k : k2buf;
    return to_d(buf[((b * G + g) * S + j) * d + x]);
  }
  double v_at(i64 b, i64 j, i64 g, i64 x) const {
    return to_d(v[((b * sh.S + j) * sh.Hkv + g) * sh.dv() + x]);
  }
  double out_at(i64 b, i64 i, i64 h, i64 x) const {
    return to_d(out[((b * sh.N + i) * sh.H + h) * sh.dv() + x]);
  }
  /// lambda of (b, i, h): V2 sigmoid(logits), V1 the vectors' value (same for every row)
  double lambda_at(i64 b, i64 i, i64 h) const {
    if (sh.v2) return 1.0 / (1.0 + std::exp(-double(logits[(b * sh.N + i) * sh.H + h])));
    const i64 lo = sh.per_head ? h * sh.d : 0;
    double dot1 = 0, dot2 = 0;
    for (i64 x = 0; x < sh.d; ++x) {
      dot1 += double(lq1[lo + x]) * double(lk1[lo + x]);
      dot2 += double(lq2[lo + x]) * double(lk2[lo + x]);
    }
    return std::exp(dot1) - std::exp(dot2) + sh.lambda_init;
  }
  template <class T>
  static double to_d(T x) {
    return conv(x);
  }
  static double conv(double x) { return x; }
  static double conv(float x) { return x; }
  static double conv(da::half x) { return static_cast<float>(x); }
  static double conv(da::bfloat16 x) { return static_cast<float>(x); }
};

/// Converts any element vector to double (exactly).
template <class T>
std::vector<double> to_double(const std::vector<T>& v) {
  std::vector<double> r(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) r[i] = Problem<T>::conv(v[i]);
  return r;
}

/// Every element: |got - want| <= atol + rtol * |want|; NaN anywhere (got or want) fails, and
/// infinities must match exactly. Reports the worst element and the max abs/rel errors.
inline void check_close(const std::vector<double>& got, const std::vector<double>& want, double atol,
                        double rtol, const std::string& what) {
  REQUIRE_MESSAGE(got.size() == want.size(), what << ": size " << got.size() << " vs " << want.size());
  double max_abs = 0, max_rel = 0;
  std::size_t bad = 0, first_bad = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    const double g = got[i], w = want[i];
    bool ok;
    if (std::isnan(g) || std::isnan(w)) {
      ok = false;
    } else if (std::isinf(g) || std::isinf(w)) {
      ok = g == w;
    } else {
      const double e = std::fabs(g - w);
      max_abs = std::max(max_abs, e);
      if (w != 0) max_rel = std::max(max_rel, e / std::fabs(w));
      ok = e <= atol + rtol * std::fabs(w);
    }
    if (!ok && bad++ == 0) first_bad = i;
  }
  INFO(what << ": max abs err " << max_abs << ", max rel err " << max_rel << " over " << got.size()
            << " elements");
  if (bad) {
    FAIL_CHECK(what << ": " << bad << " elements out of tolerance (atol " << atol << ", rtol " << rtol
                    << "); first at " << first_bad << ": got " << got[first_bad] << " want "
                    << want[first_bad]);
  } else {
    CHECK(true);
  }
}

// max |a - b| over the elements where both are finite (LSE of masked rows is -inf in both)
inline double max_abs_diff_finite(const std::vector<double>& a, const std::vector<double>& b) {
  double m = 0;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (std::isfinite(a[i]) && std::isfinite(b[i])) m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}
inline double max_abs(const std::vector<double>& a) {
  double m = 0;
  for (double x : a) if (std::isfinite(x)) m = std::max(m, std::fabs(x));
  return m;
}

/// got vs want with the forward's 2x-naive rule (docs/TESTING.md; tests/cpu/test_forward.cpp
/// says why): atol = 2 max|naive - want| + 1e-6 max|want|, and rtol as given (one 16-bit unit
/// roundoff for 16-bit outputs).
inline void check_rule(const std::vector<double>& got, const std::vector<double>& naive,
                       const std::vector<double>& want, double rtol, const char* what) {
  const double atol = 2 * max_abs_diff_finite(naive, want) + 1e-6 * max_abs(want);
  check_close(got, want, atol, rtol, what);
}

/// An independent loop-based forward in double (no Eigen, no library code but the formulas),
/// with the mask given as a predicate visible(i, j). Returns out [B, N, H, 2d] and LSE_c
/// [B, H, N].
struct LoopResult {
  std::vector<double> out, lse1, lse2, attn;
};
template <class Elem>
LoopResult loop_forward(const Problem<Elem>& pr, const std::function<bool(i64, i64)>& visible,
                        bool use_lambda_vectors = true) {
  const Shape& s = pr.sh;
  const i64 N = s.N, S = s.S, H = s.H, d = s.d, dv = s.dv(), rep = s.H / s.Hkv;
  const double scale = 1.0 / std::sqrt(double(d));
  LoopResult r;
  r.out.assign(s.B * N * H * dv, 0);
  r.lse1.assign(s.B * H * N, 0);
  r.lse2.assign(s.B * H * N, 0);
  r.attn.assign(s.B * H * N * dv, 0);
  for (i64 b = 0; b < s.B; ++b)
    for (i64 h = 0; h < H; ++h) {
      const i64 g = h / rep;
      for (i64 i = 0; i < N; ++i) {
        const double lambda = pr.lambda_at(b, i, h);
        std::vector<double> o[2] = {std::vector<double>(dv, 0), std::vector<double>(dv, 0)};
        for (int c = 0; c < 2; ++c) {
          double mx = -INFINITY;
          std::vector<double> sc(S, -INFINITY);
          for (i64 j = 0; j < S; ++j) {
            if (!visible(i, j)) continue;
            double acc = 0;
            for (i64 x = 0; x < d; ++x) acc += pr.q_at(c, b, i, h, x) * pr.k_at(c, b, j, g, x);
            sc[j] = scale * acc;
            mx = std::max(mx, sc[j]);
          }
          double sum = 0;
          for (i64 j = 0; j < S; ++j) if (visible(i, j)) sum += std::exp(sc[j] - mx);
          double& lse = (c == 0 ? r.lse1 : r.lse2)[(b * H + h) * N + i];
          lse = sum > 0 ? mx + std::log(sum) : -INFINITY;
          for (i64 j = 0; j < S; ++j) {
            if (!visible(i, j)) continue;
            const double pj = std::exp(sc[j] - mx) / sum;
            for (i64 x = 0; x < dv; ++x) o[c][x] += pj * pr.v_at(b, j, g, x);
          }
        }
        std::vector<double> a(dv);
        for (i64 x = 0; x < dv; ++x) a[x] = o[0][x] - lambda * o[1][x];
        double mean = 0, ms = 0;
        for (i64 x = 0; x < dv; ++x) { mean += a[x]; ms += a[x] * a[x]; }
        mean /= dv; ms /= dv;
        double var = 0;
        for (i64 x = 0; x < dv; ++x) var += (a[x] - mean) * (a[x] - mean);
        var /= dv;
        for (i64 x = 0; x < dv; ++x) {
          double y = a[x];
          const double gm = s.gamma ? double(pr.gamma[x]) : 1.0;
          if (!s.v2 && s.norm == da::NormKind::rms) y = a[x] / std::sqrt(ms + 1e-5) * gm;
          if (!s.v2 && s.norm == da::NormKind::group)
            y = (a[x] - mean) / std::sqrt(var + 1e-5) * gm + (s.beta ? double(pr.beta[x]) : 0.0);
          r.out[((b * N + i) * H + h) * dv + x] = (s.v2 ? 1.0 : 1 - s.lambda_init) * y;
          r.attn[((b * H + h) * N + i) * dv + x] = a[x];
        }
      }
    }
  return r;
}

/// The mask predicate of docs/SPEC.md written out directly (bottom-right aligned).
inline std::function<bool(i64, i64)> spec_mask(const Shape& s) {
  const i64 off = s.S - s.N;
  switch (s.mask) {
    case da::MaskKind::causal: return [off](i64 i, i64 j) { return j <= i + off; };
    case da::MaskKind::window: {
      const i64 wl = s.wl, wr = s.wr;
      return [=](i64 i, i64 j) {
        return (wl < 0 || j >= i + off - wl) && (wr < 0 || j <= i + off + wr);
      };
    }
    default: return [](i64, i64) { return true; };
  }
}

}  // namespace dt

namespace dt {

/// The numbers of an official-layout V1 Problem (not split) laid out as HF DiffLlama holds them
/// (q [B, N, 2H, d], k and v [B, S, 2Hkv, d]: query head i is q1 of diff head i and query head
/// i + H its q2; KV head g is K_1 / V's lower half of group g, KV head g + Hkv K_2 / V's upper
/// half), with its own poisoned out [B, N, H, 2d], and params through make_diffllama_params.
template <class Elem>
struct DiffLlamaCopy {
  using P = typename Problem<Elem>::P;
  std::vector<Elem> q, k, v, out;
  // gradients in DiffLlama's layout (dq as q, dk and dv as k and v), poisoned
  std::vector<Elem> dq, dk, dv;
  std::vector<P> dlq1, dlk1, dlq2, dlk2, dgamma, dbeta;
  da::Params p;
  Problem<Elem>& of;
  explicit DiffLlamaCopy(Problem<Elem>& pr) : of(pr) {
    const Shape& s = pr.sh;
    REQUIRE(!pr.split);
    REQUIRE(!s.v2);
    const i64 B = s.B, N = s.N, S = s.S, H = s.H, G = s.Hkv, d = s.d;
    q.resize(pr.q.size()); k.resize(pr.k.size()); v.resize(pr.v.size());
    for (i64 b = 0; b < B; ++b)
      for (i64 i = 0; i < N; ++i)
        for (i64 h = 0; h < H; ++h)
          for (int c = 0; c < 2; ++c)
            for (i64 x = 0; x < d; ++x)
              q[((b * N + i) * 2 * H + c * H + h) * d + x] = pr.q[((b * N + i) * 2 * H + 2 * h + c) * d + x];
    for (i64 b = 0; b < B; ++b)
      for (i64 j = 0; j < S; ++j)
        for (i64 g = 0; g < G; ++g)
          for (int c = 0; c < 2; ++c)
            for (i64 x = 0; x < d; ++x) {
              k[((b * S + j) * 2 * G + c * G + g) * d + x] = pr.k[((b * S + j) * 2 * G + 2 * g + c) * d + x];
              v[((b * S + j) * 2 * G + c * G + g) * d + x] = pr.v[((b * S + j) * G + g) * 2 * d + c * d + x];
            }
    out.assign(pr.out.size(), poison<Elem>());
    const da::Params official = pr.params();
    p = da::make_diffllama_params(B, N, S, 2 * H, 2 * G, d, q.data(), k.data(), v.data(), out.data());
    p.mask = official.mask;
    p.lambda = official.lambda;
    p.norm = official.norm;
    p.softmax_scale = official.softmax_scale;
  }

  /// The backward of these params: the official Problem's dout (out's layout is the same in
  /// both), `saved` as given, gradients into this copy's poisoned buffers in DiffLlama's layout.
  da::BackwardParams backward_params(const da::SavedTensors& saved) {
    const Shape& s = of.sh;
    const i64 N = s.N, S = s.S, H = s.H, G = s.Hkv, d = s.d;
    dq.assign(q.size(), poison<Elem>());
    dk.assign(k.size(), poison<Elem>());
    dv.assign(v.size(), poison<Elem>());
    const P pn = std::numeric_limits<P>::quiet_NaN();
    for (auto* t : {&dlq1, &dlk1, &dlq2, &dlk2}) t->assign(of.dlq1.size(), pn);
    dgamma.assign(2 * d, pn);
    dbeta.assign(2 * d, pn);
    da::BackwardParams bp;
    bp.fwd = p;
    bp.fwd.out = {};
    bp.fwd.extras = {};
    bp.dout = da::bshd(of.dout.data(), N, H, 2 * d);
    bp.saved = saved;
    bp.grad.dq1 = {dq.data(), N * 2 * H * d, 2 * H * d, d};
    bp.grad.dq2 = {dq.data() + H * d, N * 2 * H * d, 2 * H * d, d};
    bp.grad.dk1 = {dk.data(), S * 2 * G * d, 2 * G * d, d};
    bp.grad.dk2 = {dk.data() + G * d, S * 2 * G * d, 2 * G * d, d};
    bp.grad.dv_lo = {dv.data(), S * 2 * G * d, 2 * G * d, d};
    bp.grad.dv_hi = {dv.data() + G * d, S * 2 * G * d, 2 * G * d, d};
    bp.grad.dlq1 = dlq1.data(); bp.grad.dlk1 = dlk1.data();
    bp.grad.dlq2 = dlq2.data(); bp.grad.dlk2 = dlk2.data();
    bp.grad.dgamma = p.norm.gamma ? dgamma.data() : nullptr;
    bp.grad.dbeta = p.norm.beta ? dbeta.data() : nullptr;
    return bp;
  }

  /// True if every gradient here has the bits of the official Problem's (after its backward),
  /// element by element through the two layouts' index maps.
  bool same_gradients_as_official() const {
    const Shape& s = of.sh;
    const i64 B = s.B, N = s.N, S = s.S, H = s.H, G = s.Hkv, d = s.d;
    auto eq = [](const auto& x, const auto& y) { return std::memcmp(&x, &y, sizeof x) == 0; };
    bool same = true;
    for (i64 b = 0; b < B; ++b)
      for (i64 i = 0; i < N; ++i)
        for (i64 h = 0; h < H; ++h)
          for (int c = 0; c < 2; ++c)
            for (i64 x = 0; x < d; ++x)
              same = same && eq(dq[((b * N + i) * 2 * H + c * H + h) * d + x], of.dq[((b * N + i) * 2 * H + 2 * h + c) * d + x]);
    for (i64 b = 0; b < B; ++b)
      for (i64 j = 0; j < S; ++j)
        for (i64 g = 0; g < G; ++g)
          for (int c = 0; c < 2; ++c)
            for (i64 x = 0; x < d; ++x) {
              same = same && eq(dk[((b * S + j) * 2 * G + c * G + g) * d + x], of.dk[((b * S + j) * 2 * G + 2 * g + c) * d + x]);
              same = same && eq(dv[((b * S + j) * 2 * G + c * G + g) * d + x], of.dv[((b * S + j) * G + g) * 2 * d + c * d + x]);
            }
    auto all_eq = [&](const std::vector<P>& x, const std::vector<P>& y) {
      return x.size() == y.size() && (x.empty() || std::memcmp(x.data(), y.data(), x.size() * sizeof(P)) == 0);
    };
    same = same && all_eq(dlq1, of.dlq1) && all_eq(dlk1, of.dlk1) && all_eq(dlq2, of.dlq2) && all_eq(dlk2, of.dlk2);
    if (p.norm.gamma) same = same && all_eq(dgamma, of.dgamma);
    if (p.norm.beta) same = same && all_eq(dbeta, of.dbeta);
    return same;
  }
};

}  // namespace dt
