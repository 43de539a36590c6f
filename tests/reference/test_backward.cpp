// The reference backward against central finite differences of the reference forward, in double.
#include <doctest/doctest.h>

#include "support/problem.hpp"

using namespace dt;

namespace {

// L = sum(out * W) with W = dout (random), so dL/dx is what the backward returns for dout = W.
double loss(Problem<double>& pr) {
  da::Params p = pr.params();
  p.extras = {};
  REQUIRE(da::reference::forward<double>(p).ok());
  double l = 0;
  for (std::size_t i = 0; i < pr.out.size(); ++i) l += pr.out[i] * pr.dout[i];
  return l;
}

// Central differences with step h = 1e-5 * max(1, |x|): truncation error ~h^2 |f'''| ~ 1e-10
// relative, rounding ~1e-16 |L| / h ~ 1e-11 |L|. The check is relative 1e-6 per element, with a
// floor at 1e-3 of the largest gradient of the same tensor for elements that are nearly zero
// (where a relative error means nothing), and 1e-9 absolute for an all-zero tensor.
void check_tensor(Problem<double>& pr, std::vector<double>& x, const std::vector<double>& grad,
                  const char* name) {
  REQUIRE(x.size() == grad.size());
  double gmax = 0;
  for (double g : grad) gmax = std::max(gmax, std::fabs(g));
  std::vector<double> fd(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) {
    const double x0 = x[i], h = 1e-5 * std::max(1.0, std::fabs(x0));
    x[i] = x0 + h;
    const double lp = loss(pr);
    x[i] = x0 - h;
    const double lm = loss(pr);
    x[i] = x0;
    fd[i] = (lp - lm) / (2 * h);
  }
  double worst = 0;
  std::size_t bad = 0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    const double err = std::fabs(fd[i] - grad[i]);
    const double denom = std::max({std::fabs(grad[i]), 1e-3 * gmax, 1e-3});
    worst = std::max(worst, err / denom);
    if (std::isnan(grad[i]) || err > 1e-6 * denom) {
      if (bad++ < 3)
        FAIL_CHECK(std::string(name) << "[" << i << "]: backward " << grad[i] << ", finite difference " << fd[i]);
    }
  }
  INFO(std::string(name) << ": " << x.size() << " elements, worst relative error " << worst);
  CHECK(bad == 0);
  MESSAGE(std::string(name) << ": " << x.size() << " elements, worst relative error " << worst);
}

void check_backward(const Shape& s, std::uint64_t seed, bool split) {
  INFO("seed " << seed << " " << s.str() << " split=" << split);
  Problem<double> pr(s, seed, split);
  da::BackwardParams bp = pr.backward_params();
  REQUIRE(da::reference::backward<double>(bp).ok());
  // copies: the finite differences rerun the forward, which does not touch the gradients, but
  // keep the analytic values safe anyway
  const auto dq = pr.dq, dq2 = pr.dq2buf, dk = pr.dk, dk2 = pr.dk2buf, dv = pr.dv;
  if (s.v2) {  // one K (both query heads of a pair), V of d channels, lambda from the logits
    const auto dlogits = pr.dlogits;
    check_tensor(pr, pr.q, dq, split ? "dq1" : "dq (dq1, dq2 interleaved)");
    if (split) check_tensor(pr, pr.q2buf, dq2, "dq2");
    check_tensor(pr, pr.k, dk, "dk (shared by both heads of a pair)");
    check_tensor(pr, pr.v, dv, "dv");
    check_tensor(pr, pr.logits, dlogits, "dlogits");
    return;
  }
  const auto dlq1 = pr.dlq1, dlk1 = pr.dlk1, dlq2 = pr.dlq2, dlk2 = pr.dlk2;
  const auto dgamma = pr.dgamma, dbeta = pr.dbeta;
  check_tensor(pr, pr.q, dq, split ? "dq1" : "dq (dq1, dq2 interleaved)");
  check_tensor(pr, pr.k, dk, split ? "dk1" : "dk (dk1, dk2 interleaved)");
  if (split) {
    check_tensor(pr, pr.q2buf, dq2, "dq2");
    check_tensor(pr, pr.k2buf, dk2, "dk2");
  }
  check_tensor(pr, pr.v, dv, "dv");
  check_tensor(pr, pr.lq1, dlq1, "dlq1");
  check_tensor(pr, pr.lk1, dlk1, "dlk1");
  check_tensor(pr, pr.lq2, dlq2, "dlq2");
  check_tensor(pr, pr.lk2, dlk2, "dlk2");
  if (bp.fwd.norm.gamma) check_tensor(pr, pr.gamma, dgamma, "dgamma");
  if (bp.fwd.norm.beta) check_tensor(pr, pr.beta, dbeta, "dbeta");
}

}  // namespace

TEST_CASE("backward == finite differences: GQA 2:1, causal, RMSNorm with gamma, shared lambda") {
  Shape s;
  s.B = 1; s.N = 4; s.S = 6; s.H = 2; s.Hkv = 1; s.d = 3; s.mask = da::MaskKind::causal;
  check_backward(s, 101, false);
}

TEST_CASE("backward == finite differences: window, group norm with gamma and beta, per-head lambda") {
  Shape s;
  s.B = 2; s.N = 5; s.S = 3; s.H = 3; s.Hkv = 3; s.d = 2;
  s.mask = da::MaskKind::window; s.wl = 1; s.wr = 1;
  s.norm = da::NormKind::group; s.beta = true; s.per_head = true;
  check_backward(s, 202, true);
}

TEST_CASE("backward == finite differences: GQA 4:2, no mask, RMSNorm without gamma") {
  Shape s;
  s.B = 1; s.N = 6; s.S = 5; s.H = 4; s.Hkv = 2; s.d = 2; s.gamma = false; s.lambda_init = 0.6;
  check_backward(s, 303, false);
}

TEST_CASE("backward == finite differences: causal N > S (fully masked rows), no norm") {
  Shape s;
  s.B = 1; s.N = 5; s.S = 3; s.H = 2; s.Hkv = 1; s.d = 2;
  s.mask = da::MaskKind::causal; s.norm = da::NormKind::none; s.gamma = false;
  check_backward(s, 404, false);
}

TEST_CASE("backward == finite differences: MQA 3:1, decoding-like N < S, per-head lambda") {
  Shape s;
  s.B = 1; s.N = 2; s.S = 7; s.H = 3; s.Hkv = 1; s.d = 4;
  s.mask = da::MaskKind::causal; s.per_head = true;
  check_backward(s, 505, true);
}

TEST_CASE("backward == finite differences: DIFF V2, GQA 4:2, causal, interleaved pairs") {
  Shape s;
  s.B = 2; s.N = 5; s.S = 6; s.H = 4; s.Hkv = 2; s.d = 3; s.mask = da::MaskKind::causal; s.v2 = true;
  check_backward(s, 707, false);
}

TEST_CASE("backward == finite differences: DIFF V2, MQA 3:1, window, N > S, split layout, large logits") {
  Shape s;
  s.B = 1; s.N = 6; s.S = 4; s.H = 3; s.Hkv = 1; s.d = 2; s.v2 = true; s.logit_scale = 4;
  s.mask = da::MaskKind::window; s.wl = 1; s.wr = 0;
  check_backward(s, 808, true);
}

TEST_CASE("backward writes every gradient element (no NaN left from the poison) in f32") {
  Shape s;
  s.B = 2; s.N = 7; s.S = 9; s.H = 4; s.Hkv = 2; s.d = 8; s.mask = da::MaskKind::causal;
  Problem<float> pr(s, 606);
  da::BackwardParams bp = pr.backward_params();
  REQUIRE(da::reference::backward<float>(bp).ok());
  for (const auto* t : {&pr.dq, &pr.dk, &pr.dv})
    for (float x : *t) REQUIRE(std::isfinite(x));
  for (const auto* t : {&pr.dlq1, &pr.dlk1, &pr.dlq2, &pr.dlk2, &pr.dgamma})
    for (float x : *t) REQUIRE(std::isfinite(x));
  // and agrees with the double-accumulating reference on the same f32 inputs
  const auto dq_f = pr.dq, dk_f = pr.dk, dv_f = pr.dv;
  pr.poison_outputs();
  bp = pr.backward_params();
  REQUIRE(da::reference::backward<double>(bp).ok());
  // float sums of <= 2d * S = 144 terms through the norm's backward: ~1e-5 relative; 1e-4 gives
  // margin and still catches any wrong term
  check_close(to_double(dq_f), to_double(pr.dq), 1e-4, 1e-4, "dq float vs double accumulation");
  check_close(to_double(dk_f), to_double(pr.dk), 1e-4, 1e-4, "dk");
  check_close(to_double(dv_f), to_double(pr.dv), 1e-4, 1e-4, "dv");
}

TEST_CASE("backward on f16 and bf16 elements vs the double reference on the same inputs") {
  // The gradients are rounded once to the element type (<= u relative) after fp32 math; the
  // fp32 error of these small sums is < 1e-5 of the largest gradient. Tolerance: 2u relative
  // plus 2e-5 of the tensor's largest gradient (docs/TESTING.md's 2x rule, absolute floor scaled to
  // the tensor because gradients have no natural unit).
  auto run = [](auto tag, double u, std::uint64_t seed) {
    using Elem = decltype(tag);
    Shape s;
    s.B = 1; s.N = 9; s.S = 13; s.H = 4; s.Hkv = 2; s.d = 8; s.mask = da::MaskKind::causal;
    INFO(da::dtype_name(da::dtype_of_v<Elem>) << " seed " << seed);
    Problem<Elem> lo(s, seed);
    Problem<double> hi(s, seed);
    hi.q = to_double(lo.q); hi.k = to_double(lo.k); hi.v = to_double(lo.v); hi.dout = to_double(lo.dout);
    auto f2d = [](const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); };
    hi.lq1 = f2d(lo.lq1); hi.lk1 = f2d(lo.lk1); hi.lq2 = f2d(lo.lq2); hi.lk2 = f2d(lo.lk2);
    hi.gamma = f2d(lo.gamma);
    da::BackwardParams bl = lo.backward_params(), bh = hi.backward_params();
    REQUIRE(da::reference::backward<float>(bl).ok());
    REQUIRE(da::reference::backward<double>(bh).ok());
    auto cmp = [&](const std::vector<double>& got, const std::vector<double>& want, double rel, const char* n) {
      double m = 0;
      for (double w : want) m = std::max(m, std::fabs(w));
      check_close(got, want, 2e-5 * m, rel, n);
    };
    cmp(to_double(lo.dq), hi.dq, 2 * u, "dq");
    cmp(to_double(lo.dk), hi.dk, 2 * u, "dk");
    cmp(to_double(lo.dv), hi.dv, 2 * u, "dv");
    cmp(f2d(lo.dlq1), hi.dlq1, 1e-5, "dlq1 (fp32)");
    cmp(f2d(lo.dgamma), hi.dgamma, 1e-5, "dgamma (fp32)");
  };
  run(da::half{}, 0x1p-11, 707);
  run(da::bfloat16{}, 0x1p-8, 708);
}

TEST_CASE("backward in the DiffLlama layout: the official layout's gradients, bit for bit") {
  // make_diffllama_params's views (and gradients laid out as q, k, v) hold the same numbers in
  // other places: the reference computes the same sums in the same order, so every gradient must
  // have the same bits. Before the exact overlap rule, validation rejected these gradients
  // ("grad.dq1 overlaps output grad.dq2").
  std::uint64_t seed = 720;
  auto one = [&](auto tag, const Shape& s) {
    using Elem = decltype(tag);
    INFO(da::dtype_name(da::dtype_of_v<Elem>) << " " << s.str());
    Problem<Elem> pr(s, ++seed);
    DiffLlamaCopy<Elem> dl(pr);
    da::BackwardParams bo = pr.backward_params();
    REQUIRE(da::reference::backward<float>(bo).ok());
    for (const auto* t : {&pr.dq, &pr.dk, &pr.dv})
      for (Elem x : *t) REQUIRE(std::isfinite(static_cast<double>(static_cast<float>(x))));
    da::BackwardParams bd = dl.backward_params({});
    const da::Status st = da::reference::backward<float>(bd);
    REQUIRE_MESSAGE(st.ok(), st.to_string());
    CHECK(dl.same_gradients_as_official());
  };
  for (i64 hkv : {1, 2}) {
    Shape s;
    s.B = 2; s.N = 9; s.S = 13; s.H = 4; s.Hkv = hkv; s.d = 8; s.mask = da::MaskKind::causal;
    s.gamma = false;  // DiffLlama's RMSNorm has no weight
    one(float{}, s);
    one(da::bfloat16{}, s);
  }
  Shape w;
  w.B = 1; w.N = 11; w.S = 11; w.H = 2; w.Hkv = 1; w.d = 8; w.mask = da::MaskKind::window;
  w.wl = 3; w.wr = 1; w.norm = da::NormKind::group; w.beta = true; w.per_head = true;
  one(float{}, w);
}
