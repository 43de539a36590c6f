// diffattn/reference/head.hpp: the naive forward of ONE (batch, diff head), materialising the
// scores, shared by reference::forward and reference::backward (which recomputes it).
//
// It follows docs/SPEC.md line by line, in precision Acc (float or double):
//   S_c = s Q_c K_c^T, P_c = softmax(S_c + mask), A = P_1 V - lambda P_2 V,
//   Y = norm(A) (RMS / group / none), out = (1 - lambda_init) Y.
// DIFF V2: K_2 = K_1, V of d channels, lambda per row = sigmoid(logit), Y = A, out = A.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#include <Eigen/Core>

#include "diffattn/core/dtype.hpp"
#include "diffattn/core/lambda.hpp"
#include "diffattn/core/mask.hpp"
#include "diffattn/core/params.hpp"

DIFFATTN_NAMESPACE_BEGIN
namespace reference {
namespace detail {

template <class Acc>
using Mat = Eigen::Matrix<Acc, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class Acc>
using Vec = Eigen::Matrix<Acc, Eigen::Dynamic, 1>;

/// Element -> Acc. half/bfloat16 widen exactly through float.
template <class Acc, class Elem>
inline Acc to_acc(Elem x) {
  if constexpr (std::is_same_v<Elem, half> || std::is_same_v<Elem, bfloat16>) {
    return static_cast<Acc>(static_cast<float>(x));
  } else {
    return static_cast<Acc>(x);
  }
}
/// Acc -> Element. For half/bfloat16 a double is rounded to float first (round to nearest
/// even twice; differs from one correct rounding only on exact ties of the float value).
template <class Elem, class Acc>
inline Elem from_acc(Acc x) {
  if constexpr (std::is_same_v<Elem, half> || std::is_same_v<Elem, bfloat16>) {
    return Elem(static_cast<float>(x));
  } else {
    return static_cast<Elem>(x);
  }
}

/// Rows [T, C] of head `h` of batch `b` of a strided tensor, widened to Acc.
template <class Acc, class Elem>
Mat<Acc> load_head(const ConstTensorRef& t, std::int64_t b, std::int64_t h, std::int64_t T,
                   std::int64_t C) {
  Mat<Acc> m(T, C);
  const Elem* base = static_cast<const Elem*>(t.ptr) + b * t.stride_b + h * t.stride_h;
  for (std::int64_t i = 0; i < T; ++i)
    for (std::int64_t c = 0; c < C; ++c) m(i, c) = to_acc<Acc>(base[i * t.stride_t + c]);
  return m;
}

/// Writes rows [T, C] to head `h` of batch `b` of a strided tensor, rounding to Elem.
template <class Elem, class Acc>
void store_head(const TensorRef& t, std::int64_t b, std::int64_t h, const Mat<Acc>& m) {
  Elem* base = static_cast<Elem*>(t.ptr) + b * t.stride_b + h * t.stride_h;
  for (std::int64_t i = 0; i < m.rows(); ++i)
    for (std::int64_t c = 0; c < m.cols(); ++c) base[i * t.stride_t + c] = from_acc<Elem>(m(i, c));
}

/// A small contiguous side vector (lambda, gamma, beta) widened to Acc; `ones`/zeros if null.
template <class Acc, class P>
Vec<Acc> load_vec(const void* ptr, std::int64_t offset, std::int64_t n, Acc fill) {
  Vec<Acc> v(n);
  for (std::int64_t i = 0; i < n; ++i)
    v(i) = ptr ? static_cast<Acc>(static_cast<const P*>(ptr)[offset + i]) : fill;
  return v;
}

/// lambda of diff head h, and its two exponentials (for the backward).
template <class Acc, class P>
LambdaTerms<Acc> head_lambda_terms(const Params& p, std::int64_t h) {
  const std::int64_t d = p.head_dim;
  const std::int64_t off = p.lambda.per_head ? h * d : 0;
  const P* lq1 = static_cast<const P*>(p.lambda.lq1) + off;
  const P* lk1 = static_cast<const P*>(p.lambda.lk1) + off;
  const P* lq2 = static_cast<const P*>(p.lambda.lq2) + off;
  const P* lk2 = static_cast<const P*>(p.lambda.lk2) + off;
  return lambda_terms<Acc>(lq1, lk1, lq2, lk2, d);
}

/// The [N] lambda logits of (b, h) (DIFF V2), widened to Acc.
template <class Acc, class P>
Vec<Acc> head_logits(const Params& p, std::int64_t b, std::int64_t h) {
  const ConstTensorRef& t = p.lambda.logits;
  Vec<Acc> z(p.seqlen_q);
  const P* base = static_cast<const P*>(t.ptr) + b * t.stride_b + h * t.stride_h;
  for (std::int64_t i = 0; i < p.seqlen_q; ++i) z(i) = static_cast<Acc>(base[i * t.stride_t]);
  return z;
}

/// Row softmax of scores under the mask, in place: masked entries and fully masked rows become
/// exactly 0. Returns the row logsumexp (-inf for a fully masked row).
template <class Acc>
Vec<Acc> masked_softmax(Mat<Acc>& s, const RowMask& mask) {
  const Acc neg_inf = -std::numeric_limits<Acc>::infinity();
  Vec<Acc> lse(s.rows());
  for (std::int64_t i = 0; i < s.rows(); ++i) {
    const std::int64_t kb = mask.key_begin(i), ke = mask.key_end(i);
    if (ke <= kb) {
      s.row(i).setZero();
      lse(i) = neg_inf;
      continue;
    }
    Acc mx = neg_inf;
    for (std::int64_t j = kb; j < ke; ++j) mx = std::max(mx, s(i, j));
    Acc sum = 0;
    for (std::int64_t j = 0; j < s.cols(); ++j) {
      const bool vis = j >= kb && j < ke;
      s(i, j) = vis ? std::exp(s(i, j) - mx) : Acc(0);
      sum += s(i, j);
    }
    s.row(i) /= sum;  // sum >= 1: the maximum contributes exp(0)
    lse(i) = mx + std::log(sum);
  }
  return lse;
}

/// Everything the forward computes for one (b, h), kept for the backward.
template <class Acc>
struct HeadForward {
  Mat<Acc> q1, q2, k1, k2, v;  // inputs, widened: [N, d] x2, [S, d] x2, [S, dv] (V2: k2 = k1)
  Mat<Acc> p1, p2;             // probabilities [N, S]
  Vec<Acc> lse1, lse2;         // [N]
  Mat<Acc> o1, o2;             // P_c V [N, dv]
  Mat<Acc> a;                  // A = O_1 - lambda O_2
  Vec<Acc> mean, rstd;         // per row: the norm's mean (group) and rsqrt(var + eps)
  Mat<Acc> y;                  // normalised, before (1 - lambda_init)
  LambdaTerms<Acc> lam_terms;  // V1
  Acc lambda = 0;              // V1: one lambda for the head
  Vec<Acc> lam_row;            // V2: lambda of each row, sigmoid(logit) [N]
};

/// The naive forward of one (b, h).
template <class Elem, class Acc>
HeadForward<Acc> head_forward(const Params& p, std::int64_t b, std::int64_t h) {
  using P = param_t<Elem>;
  const std::int64_t N = p.seqlen_q, S = p.seqlen_k, d = p.head_dim, dv = p.value_dim();
  const std::int64_t g = p.kv_group(h);
  const Acc scale = static_cast<Acc>(p.scale());
  const RowMask mask = make_row_mask(p);

  HeadForward<Acc> f;
  f.q1 = load_head<Acc, Elem>(p.q1, b, h, N, d);
  f.q2 = load_head<Acc, Elem>(p.q2, b, h, N, d);
  f.k1 = load_head<Acc, Elem>(p.k1, b, g, S, d);
  f.k2 = load_head<Acc, Elem>(p.key2(), b, g, S, d);
  f.v.resize(S, dv);
  f.v.leftCols(d) = load_head<Acc, Elem>(p.v_lo, b, g, S, d);
  if (!p.is_v2()) f.v.rightCols(d) = load_head<Acc, Elem>(p.v_hi, b, g, S, d);

  f.p1 = scale * (f.q1 * f.k1.transpose());
  f.p2 = scale * (f.q2 * f.k2.transpose());
  f.lse1 = masked_softmax(f.p1, mask);
  f.lse2 = masked_softmax(f.p2, mask);
  f.o1 = f.p1 * f.v;
  f.o2 = f.p2 * f.v;

  if (p.is_v2()) {
    const Vec<Acc> z = head_logits<Acc, P>(p, b, h);
    f.lam_row = (Acc(1) / (Acc(1) + (-z.array()).exp())).matrix();
    f.a = f.o1 - f.lam_row.asDiagonal() * f.o2;
  } else {
    f.lam_terms = head_lambda_terms<Acc, P>(p, h);
    f.lambda = f.lam_terms.value(static_cast<Acc>(p.lambda.lambda_init));
    f.a = f.o1 - f.lambda * f.o2;
  }

  const Vec<Acc> gamma = load_vec<Acc, P>(p.norm.gamma, 0, dv, Acc(1));
  const Vec<Acc> beta = load_vec<Acc, P>(p.norm.beta, 0, dv, Acc(0));
  const Acc eps = static_cast<Acc>(p.norm.eps);
  f.mean = Vec<Acc>::Zero(N);
  f.rstd = Vec<Acc>::Ones(N);
  f.y = f.a;
  const NormKind norm = p.norm_kind();
  for (std::int64_t i = 0; i < N; ++i) {
    if (norm == NormKind::rms) {
      const Acc ms = f.a.row(i).squaredNorm() / Acc(dv);
      f.rstd(i) = Acc(1) / std::sqrt(ms + eps);
      f.y.row(i) = (f.a.row(i).array() * f.rstd(i)) * gamma.transpose().array();
    } else if (norm == NormKind::group) {
      f.mean(i) = f.a.row(i).sum() / Acc(dv);
      const auto centred = (f.a.row(i).array() - f.mean(i)).eval();
      const Acc var = centred.square().sum() / Acc(dv);
      f.rstd(i) = Acc(1) / std::sqrt(var + eps);
      f.y.row(i) = (centred * f.rstd(i)) * gamma.transpose().array() + beta.transpose().array();
    }
  }
  return f;
}

}  // namespace detail
}  // namespace reference
DIFFATTN_NAMESPACE_END
