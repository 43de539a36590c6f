// diffattn/reference/backward.hpp: the naive backward of docs/SPEC.md, line by line.
//
//   Status s = diffattn::reference::backward<double>(bparams);
//
// Recomputes the forward of each (batch, diff head) (reference/head.hpp), then:
//   dY = (1 - lambda_init) dout;  the norm's backward gives dA (and dgamma, dbeta);
//   dO_1 = dA, dO_2 = -lambda dA, dlambda = -sum <dA_i, O_2,i>;
//   the ordinary attention backward for c = 1, 2; dV = P_1^T dO_1 + P_2^T dO_2;
//   dK_c and dV of a KV group sum over the n_rep diff heads that read it;
//   the lambda vectors' gradients from dlambda (one set per layer or one per head).
// DIFF V2: no norm and no out scale (dA = dout), dO_2 = -diag(lambda_i) dA, dlogit_i =
// -<dA_i, O_2,i> lambda_i (1 - lambda_i); K_1 = K_2, so dK = dK_1 + dK_2 into grad.dk1.
// Every gradient is overwritten (not accumulated into). Single-threaded.
#pragma once

#include <cstdint>
#include <vector>

#include "diffattn/core/params.hpp"
#include "diffattn/core/status.hpp"
#include "diffattn/core/validate.hpp"
#include "diffattn/reference/forward.hpp"
#include "diffattn/reference/head.hpp"

DIFFATTN_NAMESPACE_BEGIN
namespace reference {
namespace detail {

template <class Elem, class Acc>
void backward_impl(const BackwardParams& bp) {
  using P = param_t<Elem>;
  const Params& p = bp.fwd;
  const Gradients& gr = bp.grad;
  const std::int64_t N = p.seqlen_q, S = p.seqlen_k, H = p.heads, G = p.kv_heads;
  const std::int64_t d = p.head_dim, dv = p.value_dim();
  const bool v2 = p.is_v2();
  const NormKind norm = p.norm_kind();
  const Acc scale = static_cast<Acc>(p.scale());
  const Acc out_scale = static_cast<Acc>(p.out_scale());
  const Vec<Acc> gamma = load_vec<Acc, P>(p.norm.gamma, 0, dv, Acc(1));

  Vec<Acc> dgamma = Vec<Acc>::Zero(dv), dbeta = Vec<Acc>::Zero(dv);
  // dlambda per lambda set (one set, or one per head), and the set's two exponentials
  const std::int64_t nsets = p.lambda.per_head ? H : 1;
  std::vector<Acc> dlambda(static_cast<std::size_t>(nsets), Acc(0));

  for (std::int64_t b = 0; b < p.batch; ++b) {
    std::vector<Mat<Acc>> dk1(G, Mat<Acc>::Zero(S, d)), dk2(G, Mat<Acc>::Zero(S, d)),
        dvv(G, Mat<Acc>::Zero(S, dv));
    for (std::int64_t h = 0; h < H; ++h) {
      const HeadForward<Acc> f = head_forward<Elem, Acc>(p, b, h);
      const std::int64_t g = p.kv_group(h);
      const Mat<Acc> dy = out_scale * load_head<Acc, Elem>(bp.dout, b, h, N, dv);

      // the norm's backward: dA per row
      Mat<Acc> da(N, dv);
      for (std::int64_t i = 0; i < N; ++i) {
        const Acc r = f.rstd(i);
        if (norm == NormKind::none) {
          da.row(i) = dy.row(i);
        } else if (norm == NormKind::rms) {
          const auto a = f.a.row(i).array();
          dgamma.array() += (dy.row(i).array() * a * r).transpose();
          const auto gg = (dy.row(i).array() * gamma.transpose().array()).eval();
          const Acc mean_ga = (gg * a).sum() / Acc(dv);
          da.row(i) = r * gg - (r * r * r * mean_ga) * a;
        } else {  // group: xhat = (A - mean) r, Y = xhat gamma + beta
          const auto xhat = ((f.a.row(i).array() - f.mean(i)) * r).eval();
          dgamma.array() += (dy.row(i).array() * xhat).transpose();
          dbeta.array() += dy.row(i).array().transpose();
          const auto gg = (dy.row(i).array() * gamma.transpose().array()).eval();
          const Acc mean_g = gg.sum() / Acc(dv), mean_gx = (gg * xhat).sum() / Acc(dv);
          da.row(i) = r * (gg - mean_g - xhat * mean_gx);
        }
      }

      const Mat<Acc> do1 = da;
      Mat<Acc> do2;
      if (v2) {
        do2 = -(f.lam_row.asDiagonal() * da);
        const Vec<Acc> dot = (da.array() * f.o2.array()).rowwise().sum();  // <dA_i, O_2,i>
        P* dz = static_cast<P*>(gr.dlogits.ptr) + b * gr.dlogits.stride_b + h * gr.dlogits.stride_h;
        for (std::int64_t i = 0; i < N; ++i) {
          const Acc l = f.lam_row(i);
          dz[i * gr.dlogits.stride_t] = static_cast<P>(-dot(i) * l * (Acc(1) - l));
        }
      } else {
        do2 = -f.lambda * da;
        dlambda[static_cast<std::size_t>(p.lambda.per_head ? h : 0)] -= (da.array() * f.o2.array()).sum();
      }

      // the ordinary attention backward, c = 1, 2
      auto attn_bwd = [&](const Mat<Acc>& pc, const Mat<Acc>& oc, const Mat<Acc>& doc,
                          const Mat<Acc>& qc, const Mat<Acc>& kc, const TensorRef& dq_out,
                          Mat<Acc>& dk_acc) {
        const Vec<Acc> D = (doc.array() * oc.array()).rowwise().sum();  // [N]
        const Mat<Acc> dP = doc * f.v.transpose();                      // [N, S]
        const Mat<Acc> dS = (pc.array() * (dP.colwise() - D).array()).matrix();
        store_head<Elem>(dq_out, b, h, Mat<Acc>(scale * (dS * kc)));
        dk_acc += scale * (dS.transpose() * qc);
        dvv[g] += pc.transpose() * doc;
      };
      attn_bwd(f.p1, f.o1, do1, f.q1, f.k1, gr.dq1, dk1[g]);
      attn_bwd(f.p2, f.o2, do2, f.q2, f.k2, gr.dq2, v2 ? dk1[g] : dk2[g]);
    }
    for (std::int64_t g = 0; g < G; ++g) {
      store_head<Elem>(gr.dk1, b, g, dk1[g]);
      store_head<Elem>(gr.dv_lo, b, g, Mat<Acc>(dvv[g].leftCols(d)));
      if (!v2) {
        store_head<Elem>(gr.dk2, b, g, dk2[g]);
        store_head<Elem>(gr.dv_hi, b, g, Mat<Acc>(dvv[g].rightCols(d)));
      }
    }
  }
  if (v2) return;  // no lambda vectors, no norm weights

  // lambda vectors: dlq1 = dlambda e1 lk1, dlk1 = dlambda e1 lq1, and minus for set 2
  for (std::int64_t set = 0; set < nsets; ++set) {
    const LambdaTerms<Acc> t = head_lambda_terms<Acc, P>(p, set);
    const Acc dl = dlambda[static_cast<std::size_t>(set)];
    const std::int64_t off = set * d;
    for (std::int64_t c = 0; c < d; ++c) {
      const Acc lq1 = static_cast<const P*>(p.lambda.lq1)[off + c];
      const Acc lk1 = static_cast<const P*>(p.lambda.lk1)[off + c];
      const Acc lq2 = static_cast<const P*>(p.lambda.lq2)[off + c];
      const Acc lk2 = static_cast<const P*>(p.lambda.lk2)[off + c];
      static_cast<P*>(gr.dlq1)[off + c] = static_cast<P>(dl * t.e1 * lk1);
      static_cast<P*>(gr.dlk1)[off + c] = static_cast<P>(dl * t.e1 * lq1);
      static_cast<P*>(gr.dlq2)[off + c] = static_cast<P>(-dl * t.e2 * lk2);
      static_cast<P*>(gr.dlk2)[off + c] = static_cast<P>(-dl * t.e2 * lq2);
    }
  }
  for (std::int64_t c = 0; c < dv; ++c) {
    if (gr.dgamma) static_cast<P*>(gr.dgamma)[c] = static_cast<P>(dgamma(c));
    if (gr.dbeta) static_cast<P*>(gr.dbeta)[c] = static_cast<P>(dbeta(c));
  }
}

}  // namespace detail

/// The reference backward. Validates first; on error returns the status and writes nothing.
template <class Acc = double>
Status backward(const BackwardParams& bp) {
  static_assert(std::is_same_v<Acc, float> || std::is_same_v<Acc, double>,
                "reference::backward<Acc>: Acc must be float or double");
  Status s = validate(bp, caps());
  if (!s.ok()) return s;
  try {
    visit_dtype(bp.fwd.dtype, [&](auto elem) { detail::backward_impl<decltype(elem), Acc>(bp); });
  } catch (const std::bad_alloc&) {  // no exception leaves a public entry point
    return detail::out_of_memory(bp.fwd);
  }
  return Status::Ok();
}

}  // namespace reference
DIFFATTN_NAMESPACE_END
