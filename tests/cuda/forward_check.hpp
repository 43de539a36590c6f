// tests/cuda/forward_check.hpp: one forward case of a CUDA configuration, run by any runner
// (the emulator, or a real GPU), checked against the double reference with docs/TESTING.md's rule.
#pragma once

#include <functional>
#include <string>

#include "support/naive_lowp.hpp"

namespace dt {

/// Worst errors seen over the cases of one configuration (reported by the tests).
struct ErrorStats {
  double kernel_err = 0, naive_err = 0, out_ratio = 0, attn_ratio = 0;
};

/// Runs `run(params)` on a fresh random problem of shape s and checks out, A, LSEs and rstd.
/// `run` must write the params' outputs (host memory) or return an error status. A DIFF V2
/// configuration (Traits::kV2) gets the V2 problem of the same shape (norm and lambda vectors
/// of the shape unused: lambda from random logits).
template <class Traits>
void check_forward_case(const Shape& s0, std::uint64_t seed, bool split,
                        const std::function<da::Status(const da::Params&)>& run, ErrorStats& st) {
  using Elem = typename Traits::Elem;
  Shape s = s0;
  s.v2 = Traits::kV2;
  INFO(std::string(da::dtype_name(Traits::kDType)) << " d=" << Traits::kHeadDim << " seed " << seed << " "
                                                   << s.str() << " split=" << split);
  Problem<Elem> pr(s, seed, split);
  Problem<double> ref = widen(pr);
  da::Params p = pr.params(), pref = ref.params();
  p.extras.o2 = nullptr;  // not produced by the two-pass kernel (checked separately)
  const da::Status status = run(p);
  REQUIRE_MESSAGE(status.ok(), status.to_string());
  REQUIRE(da::reference::forward<double>(pref).ok());
  // docs/TESTING.md's rule: at most 2x the error of the naive computation in the kernel's precision
  // (16-bit inputs and P, fp32 math, 16-bit output), plus a floor of 2 units in the last place
  // of a 16-bit output of magnitude ~1 (covers exp2.approx and summation-order differences
  // when the naive error of a case happens to be tiny).
  const NaiveLowp naive = naive_lowp_forward(pr, /*separate=*/Traits::kSinglePass);
  const double naive_err = max_abs_diff(naive.out, ref.out);
  const double u = Traits::kFmt == da::simt::fmt16::f16 ? 0x1p-11 : 0x1p-8;
  const double tol = 2 * naive_err + 2 * u;
  INFO("naive error " << naive_err << ", tolerance " << tol);
  check_close(to_double(pr.out), ref.out, tol, 0, "out");
  // A (fp32, before the norm and the output rounding): the sharpest view of the kernel's math
  // The floor: a sixteenth of the 16-bit rounding unit of the largest |A|. The kernel rounds the
  // unnormalised exp2(s - m) of each key to 16 bits, the naive computation the normalised P: the
  // same u per term but different draws, and in a case where the naive draws happen to be small
  // the kernel's max error can pass 2x theirs by chance (seen: 2.03x, bf16 d = 32, DIFF V2, where
  // the floor was 1e-6). One misrounded P term of weight above 1/16 still fails.
  const double naive_attn_err = max_abs_diff(naive.attn, ref.attn);
  double amax = 0;
  for (double x : ref.attn) amax = std::max(amax, std::fabs(x));
  check_close(to_double(pr.attn), ref.attn, 2 * naive_attn_err + u * amax / 16 + 1e-6, 0, "attn (A)");
  // LSE: fp32 sums of exact products of 16-bit inputs; ~d * 2^-24 relative, 1e-4 leaves margin
  check_close(to_double(pr.lse1), ref.lse1, 1e-4, 1e-4, "lse1");
  check_close(to_double(pr.lse2), ref.lse2, 1e-4, 1e-4, "lse2");
  check_close(to_double(pr.rstd), ref.rstd, 0, 4 * u + 1e-4, "rstd");
  const double kernel_err = max_abs_diff(to_double(pr.out), ref.out);
  const double kernel_attn_err = max_abs_diff(to_double(pr.attn), ref.attn);
  st.kernel_err = std::max(st.kernel_err, kernel_err);
  st.naive_err = std::max(st.naive_err, naive_err);
  if (naive_err > 0) st.out_ratio = std::max(st.out_ratio, kernel_err / naive_err);
  if (naive_attn_err > 0) st.attn_ratio = std::max(st.attn_ratio, kernel_attn_err / naive_attn_err);
}

/// The shapes every configuration is checked on: awkward sizes, every mask, GQA, all norms,
/// per-head lambda, the split layout, B > 1, fully masked rows.
template <class Traits>
void check_forward_suite(const std::function<da::Status(const da::Params&)>& run, ErrorStats& st) {
  std::uint64_t seed = 100 * Traits::kHeadDim + (Traits::kFmt == da::simt::fmt16::f16 ? 0 : 50);
  const std::pair<i64, i64> sizes[] = {{1, 1}, {7, 65}, {65, 7}, {127, 66}, {17, 130}, {257, 257}};
  for (auto [N, S] : sizes) {
    for (da::MaskKind m : {da::MaskKind::none, da::MaskKind::causal, da::MaskKind::window}) {
      Shape s;
      s.B = 1; s.N = N; s.S = S; s.H = 4; s.Hkv = 2; s.d = Traits::kHeadDim; s.mask = m;
      if (m == da::MaskKind::window) { s.wl = 9; s.wr = 20; }
      check_forward_case<Traits>(s, ++seed, false, run, st);
    }
  }
  Shape s;
  s.B = 2; s.N = 70; s.S = 33; s.H = 3; s.Hkv = 1; s.d = Traits::kHeadDim;  // MQA 3:1
  s.mask = da::MaskKind::causal;  // N > S: rows 0-36 fully masked
  s.norm = da::NormKind::group; s.beta = true; s.per_head = true;
  check_forward_case<Traits>(s, 7, /*split=*/true, run, st);
  s.norm = da::NormKind::none; s.gamma = false; s.beta = false; s.mask = da::MaskKind::window;
  s.wl = 0; s.wr = 0; s.N = 40; s.S = 70;
  check_forward_case<Traits>(s, 8, false, run, st);
  // one-sided windows, and lambda above 1 (lambda_init 0.95) or below 0 (lambda_init -0.8):
  // docs/SPEC.md does not constrain lambda
  Shape w;
  w.B = 1; w.N = 50; w.S = 90; w.H = 2; w.Hkv = 2; w.d = Traits::kHeadDim; w.mask = da::MaskKind::window;
  w.wl = -1; w.wr = 5; w.lambda_init = 0.95;
  check_forward_case<Traits>(w, 9, false, run, st);
  w.wl = 7; w.wr = -1; w.lambda_init = -0.8;
  check_forward_case<Traits>(w, 10, false, run, st);
  // |lambda| past f16's largest finite value (65504): the two-pass form's 16-bit
  // P = P_1 - lambda P_2 would overflow unless scaled (it is divided by a power of two >= |lambda|); the RMS norm keeps the output in range
  w.mask = da::MaskKind::none; w.wl = -1; w.wr = -1; w.lambda_init = 0.2; w.lambda_dot1 = 20;  // lambda ~ 4.9e8
  check_forward_case<Traits>(w, 11, false, run, st);
}

/// A few small problems, each checked like the suite's: a ragged query tile and ragged key
/// tiles with GQA 2:1 (no mask); causal with N > S (rows 0-6 fully masked), B = 2, MQA 3:1, the
/// split layout, GroupNorm with beta and per-head lambda; a two-sided window. Small enough for
/// compute-sanitizer, whose tools slow a kernel down by orders of magnitude (test_forward_gpu.cu).
template <class Traits>
void check_forward_small_cases(const std::function<da::Status(const da::Params&)>& run, ErrorStats& st) {
  Shape s;
  s.B = 1; s.N = 65; s.S = 130; s.H = 2; s.Hkv = 1; s.d = Traits::kHeadDim;
  check_forward_case<Traits>(s, 21, false, run, st);
  Shape c;
  c.B = 2; c.N = 20; c.S = 13; c.H = 3; c.Hkv = 1; c.d = Traits::kHeadDim; c.mask = da::MaskKind::causal;
  c.norm = da::NormKind::group; c.beta = true; c.per_head = true;
  check_forward_case<Traits>(c, 22, /*split=*/true, run, st);
  Shape w;
  w.B = 1; w.N = 40; w.S = 77; w.H = 2; w.Hkv = 2; w.d = Traits::kHeadDim; w.mask = da::MaskKind::window;
  w.wl = 9; w.wr = 20;
  check_forward_case<Traits>(w, 23, false, run, st);
}

}  // namespace dt
