// tests/support/naive_lowp.hpp: the naive forward in a 16-bit kernel's own precision, for
// docs/TESTING.md's tolerance rule ("a kernel's error may be at most 2x the error of the naive
// computation in the kernel's own precision"): 16-bit inputs, fp32 scores, softmax and
// accumulation, P = P_1 - lambda P_2 rounded to the element type before P V (as a tensor-core
// kernel must), fp32 norm, output rounded to the element type.
#pragma once

#include "support/problem.hpp"

namespace dt {

struct NaiveLowp {
  std::vector<double> out;         // [B, N, H, dv], rounded to Elem (dv = 2d, V2: d)
  std::vector<double> attn, o2;    // [B, H, N, dv], A and O_2 in fp32
  std::vector<double> lse1, lse2;  // [B, H, N]
  std::vector<double> rstd, mean;  // [B, H, N], the norm's (1 and 0 without one)
};

/// exp(<lq1, lk1>) and exp(<lq2, lk2>) of V1 head h's lambda set, in fp32 loops.
template <class Elem>
da::LambdaTerms<float> naive_lambda_terms(const Problem<Elem>& pr, i64 h) {
  const i64 d = pr.sh.d, lo = pr.sh.per_head ? h * d : 0;
  float dot1 = 0, dot2 = 0;
  for (i64 x = 0; x < d; ++x) {
    dot1 += pr.lq1[lo + x] * pr.lk1[lo + x];
    dot2 += pr.lq2[lo + x] * pr.lk2[lo + x];
  }
  da::LambdaTerms<float> t;
  t.e1 = std::exp(dot1);
  t.e2 = std::exp(dot2);
  return t;
}

template <class Elem>
NaiveLowp naive_lowp_forward(const Problem<Elem>& pr, bool separate = false, bool integer_max = false) {
  const Shape& s = pr.sh;
  const i64 N = s.N, S = s.S, H = s.H, d = s.d, dv = s.dv(), rep = s.H / s.Hkv;
  const da::NormKind norm = s.v2 ? da::NormKind::none : s.norm;
  const float out_scale = s.v2 ? 1.f : 1 - float(s.lambda_init);
  const float scale = 1.0f / std::sqrt(float(d));
  const auto vis = spec_mask(s);
  NaiveLowp res;
  res.out.assign(s.B * N * H * dv, 0.0);
  res.attn.assign(s.B * N * H * dv, 0.0);
  res.o2.assign(s.B * N * H * dv, 0.0);
  for (auto* v : {&res.lse1, &res.lse2, &res.rstd, &res.mean}) v->assign(s.B * H * N, 0.0);
  for (i64 b = 0; b < s.B; ++b)
    for (i64 h = 0; h < H; ++h) {
      const i64 g = h / rep;
      const float lambda_v1 = naive_lambda_terms(pr, h).value(float(s.lambda_init));
      for (i64 i = 0; i < N; ++i) {
        const float lambda = s.v2 ? 1.f / (1.f + std::exp(-pr.logits[(b * N + i) * H + h])) : lambda_v1;
        int lexp = 0;
        if (std::fabs(lambda) > 1.f) std::frexp(lambda, &lexp);
        const float ls = std::ldexp(1.f, lexp);
        std::vector<float> p(S, 0.f), pc[2] = {std::vector<float>(S, 0.f), std::vector<float>(S, 0.f)};
        for (int c = 0; c < 2; ++c) {
          std::vector<float> sc(S, -INFINITY);
          float mx = -INFINITY;
          for (i64 j = 0; j < S; ++j) {
            if (!vis(i, j)) continue;
            float acc = 0;
            for (i64 x = 0; x < d; ++x) acc += float(pr.q_at(c, b, i, h, x)) * float(pr.k_at(c, b, j, g, x));
            sc[j] = acc * scale;
            mx = std::max(mx, sc[j]);
          }
          float sum = 0;
          for (i64 j = 0; j < S; ++j) if (vis(i, j)) sum += std::exp(sc[j] - mx);
          (c == 0 ? res.lse1 : res.lse2)[(b * H + h) * N + i] = sum > 0 ? mx + std::log(sum) : -INFINITY;
          // integer_max (with separate): the CPU kernels that round P (AMX, decode items) round
          // the unnormalised exp2(s log2(e) - m) against their running max m; decode items keep
          // m an integer, rounded up, so their rounded P is round(exp2(s log2(e) - ceil(max)))
          // up to exact powers of two: rounded here the same way, then normalised by the
          // unrounded sum (else P is rounded after normalising, an independent rounding)
          const float mq = std::ceil(mx * 1.44269504088896341f);
          float sum2 = 0;
          if (separate && integer_max)
            for (i64 j = 0; j < S; ++j) if (vis(i, j)) sum2 += std::exp2(sc[j] * 1.44269504088896341f - mq);
          for (i64 j = 0; j < S; ++j)
            if (vis(i, j)) {
              pc[c][j] = std::exp(sc[j] - mx) / sum;
              p[j] += (c == 0 ? 1.f : -lambda) * pc[c][j];
              if (separate)
                pc[c][j] = integer_max ? float(from_double<Elem>(std::exp2(sc[j] * 1.44269504088896341f - mq))) / sum2
                                       : float(from_double<Elem>(pc[c][j]));
            }
        }
        std::vector<float> a(dv, 0.f), o[2] = {std::vector<float>(dv, 0.f), std::vector<float>(dv, 0.f)};
        for (i64 j = 0; j < S; ++j) {
          if (separate) {  // O_c = round(P_c) V, then A = O_1 - lambda O_2
            for (int c = 0; c < 2; ++c) {
              const float pj = pc[c][j];  // rounded above
              for (i64 x = 0; x < dv; ++x) o[c][x] += pj * float(pr.v_at(b, j, g, x));
            }
          } else {
            // rounded as the kernel's mma input: P / L with L = 2^e >= max(1, |lambda|), so that
            // the 16-bit P cannot overflow, then times L (exact)
            const float pj = float(from_double<Elem>(p[j] / ls)) * ls;
            for (i64 x = 0; x < dv; ++x) a[x] += pj * float(pr.v_at(b, j, g, x));
          }
        }
        if (separate) {
          for (i64 x = 0; x < dv; ++x) a[x] = o[0][x] - lambda * o[1][x];
        } else {  // O_2 alone, for the side output (rounded P_2, as any 16-bit P V would)
          for (i64 j = 0; j < S; ++j) {
            const float pj = float(from_double<Elem>(pc[1][j]));
            for (i64 x = 0; x < dv; ++x) o[1][x] += pj * float(pr.v_at(b, j, g, x));
          }
        }
        float mean = 0, ms = 0;
        for (float x : a) { mean += x; ms += x * x; }
        mean /= dv; ms /= dv;
        float var = 0;
        for (float x : a) var += (x - mean) * (x - mean);
        var /= dv;
        const i64 row = (b * H + h) * N + i;
        res.rstd[row] = norm == da::NormKind::rms ? 1 / std::sqrt(ms + 1e-5f)
                        : norm == da::NormKind::group ? 1 / std::sqrt(var + 1e-5f) : 1.f;
        res.mean[row] = norm == da::NormKind::group ? mean : 0.f;
        for (i64 x = 0; x < dv; ++x) {
          res.o2[row * dv + x] = o[1][x];
          float y = a[x];
          const float gm = s.gamma ? pr.gamma[x] : 1.f;
          if (norm == da::NormKind::rms) y = a[x] / std::sqrt(ms + 1e-5f) * gm;
          if (norm == da::NormKind::group) y = (a[x] - mean) / std::sqrt(var + 1e-5f) * gm + (s.beta ? pr.beta[x] : 0.f);
          res.out[((b * N + i) * H + h) * dv + x] = double(float(from_double<Elem>(out_scale * y)));
          res.attn[((b * H + h) * N + i) * dv + x] = a[x];
        }
      }
    }
  return res;
}

inline double max_abs_diff(const std::vector<double>& a, const std::vector<double>& b) {
  double m = 0;
  for (std::size_t i = 0; i < a.size(); ++i) m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}

/// The same problem with every input widened exactly to double, and fresh poisoned outputs.
template <class Elem>
Problem<double> widen(const Problem<Elem>& src) {
  Problem<double> w(src.sh, /*seed=*/0, src.split);
  w.q = to_double(src.q); w.q2buf = to_double(src.q2buf);
  w.k = to_double(src.k); w.k2buf = to_double(src.k2buf);
  w.v = to_double(src.v);
  w.dout = to_double(src.dout);  // the backward's incoming gradient too
  auto f2d = [](const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); };
  w.lq1 = f2d(src.lq1); w.lk1 = f2d(src.lk1); w.lq2 = f2d(src.lq2); w.lk2 = f2d(src.lk2);
  w.gamma = f2d(src.gamma); w.beta = f2d(src.beta); w.logits = f2d(src.logits);
  return w;
}

}  // namespace dt
