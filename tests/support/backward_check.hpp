// tests/support/backward_check.hpp: what the backward tests of every backend share: the
// gradients of a problem in a fixed order, the tolerance rule of docs/TESTING.md, bitwise
// comparison, and the naive backward in a 16-bit tensor-core kernel's own precision.
#pragma once

#include <cstring>
#include <utility>
#include <vector>

#include "support/naive_lowp.hpp"

namespace dt {

template <class Elem> constexpr double bwd_unit_roundoff() { return 0; }
template <> constexpr double bwd_unit_roundoff<da::half>() { return 0x1p-11; }
template <> constexpr double bwd_unit_roundoff<da::bfloat16>() { return 0x1p-8; }

inline double max_abs_of(const std::vector<double>& a) {
  double m = 0;
  for (double x : a) m = std::max(m, std::fabs(x));
  return m;
}

/// docs/TESTING.md's rule for one gradient: atol = 2 max|naive - want| + 1e-5 max(max|want|,
/// signal). `signal`: the largest element of dq, dk and dv, the floor's scale for a gradient that
/// is zero in exact arithmetic (S = 1: D_i = dP_i1, so dS = 0 and dq = dk = 0, which a kernel
/// computes as a difference of two equal fp32 terms and the naive loops happen to get exactly).
inline void check_grad(const std::vector<double>& got, const std::vector<double>& naive, const std::vector<double>& want,
                       double rtol, double signal, const char* what) {
  const double atol = 2 * max_abs_diff(naive, want) + 1e-5 * std::max(max_abs_of(want), signal);
  check_close(got, want, atol, rtol, what);
}

template <class T>
bool bits_equal(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

using Grads = std::vector<std::pair<const char*, std::vector<double>>>;

/// The gradients of a problem, widened, in a fixed order (dlogits for V2; the side ones for V1).
template <class Elem>
Grads grads(const Problem<Elem>& p) {
  Grads g;
  g.push_back({"dq", to_double(p.dq)});
  if (p.split) g.push_back({"dq2", to_double(p.dq2buf)});
  g.push_back({"dk", to_double(p.dk)});
  if (p.split && !p.sh.v2) g.push_back({"dk2", to_double(p.dk2buf)});
  g.push_back({"dv", to_double(p.dv)});
  if (p.sh.v2) {
    g.push_back({"dlogits", to_double(p.dlogits)});
  } else {
    g.push_back({"dlq1", to_double(p.dlq1)});
    g.push_back({"dlk1", to_double(p.dlk1)});
    g.push_back({"dlq2", to_double(p.dlq2)});
    g.push_back({"dlk2", to_double(p.dlk2)});
    if (p.sh.norm != da::NormKind::none && p.sh.gamma) g.push_back({"dgamma", to_double(p.dgamma)});
    if (p.sh.norm == da::NormKind::group && p.sh.beta) g.push_back({"dbeta", to_double(p.dbeta)});
  }
  return g;
}

/// Whether a gradient of grads() is a 16-bit tensor (dq, dk, dv) or an fp32 side one.
inline bool is_tensor_grad(const char* name) {
  return !std::strcmp(name, "dv") || !std::strncmp(name, "dq", 2) || !std::strncmp(name, "dk", 2);
}

/// Checks every gradient of `got` against the double reference with the tolerance rule, the
/// naive computation in the kernel's precision being `naive`; rtol u for the 16-bit gradients,
/// side_rtol for the fp32 side ones.
inline void check_grads(const Grads& got, const Grads& naive, const Grads& ref, double u, double side_rtol = 0) {
  double signal = 0;
  for (const auto& g : ref)
    if (is_tensor_grad(g.first)) signal = std::max(signal, max_abs_of(g.second));
  for (std::size_t k = 0; k < got.size(); ++k)
    check_grad(got[k].second, naive[k].second, ref[k].second, is_tensor_grad(got[k].first) ? u : side_rtol, signal,
               got[k].first);
}

/// The naive backward in a 16-bit tensor-core kernel's precision (the CUDA backward's rounding
/// points), fp32 loops from the forward's saved tensors in `pr` (pr.lse1, lse2, attn, o2, rstd,
/// mean: set them with a forward on pr.params(), or from naive_lowp_forward with
/// set_saved_lowp): dA through the norm's backward, the side gradients (lambda vectors, norm
/// weights, logits) from it, and dq, dk, dv with dA, P_1 - lambda P_2 and dS_c rounded to the
/// element type before their products, each gradient rounded once at the end.
/// `dot_from_lse`: <dA, O_2> as a backward without a saved O_2 computes it, the sum over the
/// visible keys of P_2 times (rounded dA) V^T, instead of from pr.o2.
template <class Elem>
void naive_lowp_backward(Problem<Elem>& pr, bool dot_from_lse = false) {
  const Shape& s = pr.sh;
  da::BackwardParams bp = pr.backward_params();
  const i64 B = s.B, N = s.N, S = s.S, H = s.H, G = s.Hkv, d = s.d, dv = s.dv(), rep = H / G;
  const da::NormKind norm = s.v2 ? da::NormKind::none : s.norm;
  const float out_scale = s.v2 ? 1.f : 1 - float(s.lambda_init);
  const float scale = 1.0f / std::sqrt(float(d));
  const auto vis = spec_mask(s);
  auto rnd = [](float x) { return float(from_double<Elem>(x)); };
  auto at = [](const da::TensorRef& t, i64 b, i64 i, i64 h) {
    return static_cast<Elem*>(t.ptr) + b * t.stride_b + i * t.stride_t + h * t.stride_h;
  };
  const int nk = s.v2 ? 1 : 2;
  std::vector<float> dk(std::size_t(B * S * G * 2 * d), 0.f), dvv(std::size_t(B * S * G * dv), 0.f);
  std::vector<float> dgam(std::size_t(dv), 0.f), dbet(std::size_t(dv), 0.f), dlam(std::size_t(H), 0.f);
  for (i64 b = 0; b < B; ++b)
    for (i64 h = 0; h < H; ++h) {
      const i64 g = h / rep;
      const float lambda_v1 = naive_lambda_terms(pr, h).value(float(s.lambda_init));
      for (i64 i = 0; i < N; ++i) {
        const i64 row = (b * H + h) * N + i;
        const float lambda = s.v2 ? 1.f / (1.f + std::exp(-pr.logits[(b * N + i) * H + h])) : lambda_v1;
        // dA through the norm's backward (docs/SPEC.md), fp32
        std::vector<float> da_(dv), dy(dv);
        const float* a = &pr.attn[row * dv];
        for (i64 x = 0; x < dv; ++x)
          dy[x] = out_scale * float(pr.dout[((b * N + i) * H + h) * dv + x]);
        auto gm = [&](i64 x) { return (!s.v2 && s.gamma && norm != da::NormKind::none) ? float(pr.gamma[x]) : 1.f; };
        if (norm == da::NormKind::rms) {
          const float r = pr.rstd[row];
          float mga = 0;
          for (i64 x = 0; x < dv; ++x) mga += dy[x] * gm(x) * a[x];
          mga /= float(dv);
          for (i64 x = 0; x < dv; ++x) da_[x] = r * dy[x] * gm(x) - r * r * r * mga * a[x];
          for (i64 x = 0; x < dv; ++x) dgam[x] += dy[x] * a[x] * r;
        } else if (norm == da::NormKind::group) {
          const float r = pr.rstd[row], mu = pr.mean[row];
          float mg = 0, mgx = 0;
          for (i64 x = 0; x < dv; ++x) {
            mg += dy[x] * gm(x);
            mgx += dy[x] * gm(x) * (a[x] - mu) * r;
          }
          mg /= float(dv); mgx /= float(dv);
          for (i64 x = 0; x < dv; ++x) da_[x] = r * (dy[x] * gm(x) - mg - (a[x] - mu) * r * mgx);
          for (i64 x = 0; x < dv; ++x) {
            dgam[x] += dy[x] * (a[x] - mu) * r;
            dbet[x] += dy[x];
          }
        } else {
          da_ = dy;
        }
        std::vector<float> dar(dv);
        for (i64 x = 0; x < dv; ++x) dar[x] = rnd(da_[x]);
        float dot = 0, daa = 0;
        for (i64 x = 0; x < dv; ++x) {
          if (!dot_from_lse) dot += da_[x] * float(pr.o2[row * dv + x]);
          daa += da_[x] * a[x];
        }
        if (dot_from_lse)
          for (i64 j = 0; j < S; ++j) {
            if (!vis(i, j)) continue;
            float acc = 0, dp = 0;
            for (i64 x = 0; x < d; ++x) acc += float(pr.q_at(1, b, i, h, x)) * float(pr.k_at(1, b, j, g, x));
            for (i64 x = 0; x < dv; ++x) dp += dar[x] * float(pr.v_at(b, j, g, x));
            dot += std::exp(acc * scale - pr.lse2[row]) * dp;
          }
        const float D1 = daa + lambda * dot, D2 = -lambda * dot;
        if (s.v2) {
          pr.dlogits[(b * N + i) * H + h] = -dot * lambda * (1 - lambda);
        } else {
          dlam[h] -= dot;
        }
        std::vector<float> dq(std::size_t(2 * d), 0.f);
        for (i64 j = 0; j < S; ++j) {
          if (!vis(i, j)) continue;
          float p[2];
          for (int c = 0; c < 2; ++c) {
            const float lse = c == 0 ? pr.lse1[row] : pr.lse2[row];
            float acc = 0;
            for (i64 x = 0; x < d; ++x) acc += float(pr.q_at(c, b, i, h, x)) * float(pr.k_at(c, b, j, g, x));
            p[c] = std::exp(acc * scale - lse);
          }
          float dp = 0;
          for (i64 x = 0; x < dv; ++x) dp += dar[x] * float(pr.v_at(b, j, g, x));
          const float pt = rnd(p[0] - lambda * p[1]);
          const float ds[2] = {rnd(p[0] * (dp - D1)), rnd(p[1] * (-lambda * dp - D2))};
          for (i64 x = 0; x < dv; ++x) dvv[((b * S + j) * G + g) * dv + x] += pt * dar[x];
          for (int c = 0; c < 2; ++c) {
            const int kc = s.v2 ? 0 : c;
            for (i64 x = 0; x < d; ++x) {
              dk[(((b * S + j) * G + g) * 2 + kc) * d + x] += scale * ds[c] * float(pr.q_at(c, b, i, h, x));
              dq[c * d + x] += scale * ds[c] * float(pr.k_at(c, b, j, g, x));
            }
          }
        }
        for (int c = 0; c < 2; ++c) {
          Elem* q = at(c == 0 ? bp.grad.dq1 : bp.grad.dq2, b, i, h);
          for (i64 x = 0; x < d; ++x) q[x] = from_double<Elem>(dq[c * d + x]);
        }
      }
    }
  if (!s.v2) {
    if (bp.grad.dgamma) std::copy(dgam.begin(), dgam.end(), pr.dgamma.begin());
    if (bp.grad.dbeta) std::copy(dbet.begin(), dbet.end(), pr.dbeta.begin());
    for (i64 set = 0; set < (s.per_head ? H : 1); ++set) {
      float dl = 0;
      for (i64 h = 0; h < H; ++h)
        if (!s.per_head || h == set) dl += dlam[h];
      const i64 lo = set * d;
      const da::LambdaTerms<float> lt = naive_lambda_terms(pr, set);  // set: the head, for per-head sets
      const float e1 = lt.e1, e2 = lt.e2;
      for (i64 x = 0; x < d; ++x) {
        pr.dlq1[lo + x] = dl * e1 * pr.lk1[lo + x];
        pr.dlk1[lo + x] = dl * e1 * pr.lq1[lo + x];
        pr.dlq2[lo + x] = -dl * e2 * pr.lk2[lo + x];
        pr.dlk2[lo + x] = -dl * e2 * pr.lq2[lo + x];
      }
    }
  }
  for (i64 b = 0; b < B; ++b)
    for (i64 j = 0; j < S; ++j)
      for (i64 g = 0; g < G; ++g) {
        for (int c = 0; c < nk; ++c) {
          Elem* k = at(c == 0 ? bp.grad.dk1 : bp.grad.dk2, b, j, g);
          for (i64 x = 0; x < d; ++x) k[x] = from_double<Elem>(dk[(((b * S + j) * G + g) * 2 + c) * d + x]);
        }
        for (i64 x = 0; x < dv; ++x) {
          const bool upper = !s.v2 && x >= d;
          Elem* v = at(upper ? bp.grad.dv_hi : bp.grad.dv_lo, b, j, g);
          v[upper ? x - d : x] = from_double<Elem>(dvv[((b * S + j) * G + g) * dv + x]);
        }
      }
}

/// Sets pr's saved tensors from the naive forward in the kernel's precision (16-bit P), as a
/// 16-bit kernel's forward saves them.
template <class Elem>
void set_saved_lowp(Problem<Elem>& pr) {
  const NaiveLowp f = naive_lowp_forward(pr);
  auto put = [](auto& dst, const std::vector<double>& src) {
    dst.resize(src.size());
    for (std::size_t i = 0; i < src.size(); ++i) dst[i] = static_cast<typename std::decay_t<decltype(dst)>::value_type>(src[i]);
  };
  put(pr.attn, f.attn); put(pr.o2, f.o2); put(pr.lse1, f.lse1); put(pr.lse2, f.lse2);
  put(pr.rstd, f.rstd); put(pr.mean, f.mean);
}

}  // namespace dt
