// tests/cuda/forward_check.hpp: one forward case of a CUDA configuration, run by any runner
// (the emulator, or a real GPU), checked against the double reference with docs/TESTING.md's rule.
#pragma once

#include <functional>
#include <string>

#include <diffattn/cuda/dispatch.hpp>

#include "support/naive_lowp.hpp"
#include "support/serving.hpp"

namespace dt {

/// Worst errors seen over the cases of one configuration (reported by the tests).
struct ErrorStats {
  double kernel_err = 0, naive_err = 0, out_ratio = 0, attn_ratio = 0;
};

/// Runs `run(params)` on a fresh random problem of shape s and checks out, A, LSEs and rstd.
/// `dispatched`: run chooses the kernel as cuda::forward does (the decoding path where
/// cuda::takes_decode_path), else it always runs the fused kernel of Traits.
/// `run` must write the params' outputs (host memory) or return an error status. A DIFF V2
/// configuration (Traits::kV2) gets the V2 problem of the same shape (norm and lambda vectors
/// of the shape unused: lambda from random logits).
template <class Traits>
void check_forward_case(const Shape& s0, std::uint64_t seed, bool split,
                        const std::function<da::Status(const da::Params&)>& run, ErrorStats& st, bool dispatched = true) {
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
  // the naive model of the kernel's P rounding: each component's (single pass, and the decoding
  // path where `run` dispatches as cuda::forward does) or the combined P_1 - lambda P_2 (two pass)
  const NaiveLowp naive =
      naive_lowp_forward(pr, /*separate=*/Traits::kSinglePass || (dispatched && da::cuda::takes_decode_path(p)));
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
void check_forward_suite(const std::function<da::Status(const da::Params&)>& run, ErrorStats& st, bool dispatched = true) {
  std::uint64_t seed = 100 * Traits::kHeadDim + (Traits::kFmt == da::simt::fmt16::f16 ? 0 : 50);
  const std::pair<i64, i64> sizes[] = {{1, 1}, {7, 65}, {65, 7}, {127, 66}, {17, 130}, {257, 257}};
  for (auto [N, S] : sizes) {
    for (da::MaskKind m : {da::MaskKind::none, da::MaskKind::causal, da::MaskKind::window}) {
      Shape s;
      s.B = 1; s.N = N; s.S = S; s.H = 4; s.Hkv = 2; s.d = Traits::kHeadDim; s.mask = m;
      if (m == da::MaskKind::window) { s.wl = 9; s.wr = 20; }
      check_forward_case<Traits>(s, ++seed, false, run, st, dispatched);
    }
  }
  Shape s;
  s.B = 2; s.N = 70; s.S = 33; s.H = 3; s.Hkv = 1; s.d = Traits::kHeadDim;  // MQA 3:1
  s.mask = da::MaskKind::causal;  // N > S: rows 0-36 fully masked
  s.norm = da::NormKind::group; s.beta = true; s.per_head = true;
  check_forward_case<Traits>(s, 7, /*split=*/true, run, st, dispatched);
  s.norm = da::NormKind::none; s.gamma = false; s.beta = false; s.mask = da::MaskKind::window;
  s.wl = 0; s.wr = 0; s.N = 40; s.S = 70;
  check_forward_case<Traits>(s, 8, false, run, st, dispatched);
  // one-sided windows, and lambda above 1 (lambda_init 0.95) or below 0 (lambda_init -0.8):
  // docs/SPEC.md does not constrain lambda
  Shape w;
  w.B = 1; w.N = 50; w.S = 90; w.H = 2; w.Hkv = 2; w.d = Traits::kHeadDim; w.mask = da::MaskKind::window;
  w.wl = -1; w.wr = 5; w.lambda_init = 0.95;
  check_forward_case<Traits>(w, 9, false, run, st, dispatched);
  w.wl = 7; w.wr = -1; w.lambda_init = -0.8;
  check_forward_case<Traits>(w, 10, false, run, st, dispatched);
  // |lambda| past f16's largest finite value (65504): the two-pass form's 16-bit
  // P = P_1 - lambda P_2 would overflow unless scaled (it is divided by a power of two >= |lambda|); the RMS norm keeps the output in range
  w.mask = da::MaskKind::none; w.wl = -1; w.wr = -1; w.lambda_init = 0.2; w.lambda_dot1 = 20;  // lambda ~ 4.9e8
  check_forward_case<Traits>(w, 11, false, run, st, dispatched);
}

/// A few small problems, each checked like the suite's: a ragged query tile and ragged key
/// tiles with GQA 2:1 (no mask); causal with N > S (rows 0-6 fully masked), B = 2, MQA 3:1, the
/// split layout, GroupNorm with beta and per-head lambda; a two-sided window. Small enough for
/// compute-sanitizer, whose tools slow a kernel down by orders of magnitude (test_forward_gpu.cu).
template <class Traits>
void check_forward_small_cases(const std::function<da::Status(const da::Params&)>& run, ErrorStats& st, bool dispatched = true) {
  Shape s;
  s.B = 1; s.N = 65; s.S = 130; s.H = 2; s.Hkv = 1; s.d = Traits::kHeadDim;
  check_forward_case<Traits>(s, 21, false, run, st, dispatched);
  Shape c;
  c.B = 2; c.N = 20; c.S = 13; c.H = 3; c.Hkv = 1; c.d = Traits::kHeadDim; c.mask = da::MaskKind::causal;
  c.norm = da::NormKind::group; c.beta = true; c.per_head = true;
  check_forward_case<Traits>(c, 22, /*split=*/true, run, st, dispatched);
  Shape w;
  w.B = 1; w.N = 40; w.S = 77; w.H = 2; w.Hkv = 2; w.d = Traits::kHeadDim; w.mask = da::MaskKind::window;
  w.wl = 9; w.wr = 20;
  check_forward_case<Traits>(w, 23, false, run, st, dispatched);
}

/// Per row (h, i) of a dense batch-1 problem on which reference::forward has run: the worst
/// error that rounding its largest P term of each component to 16 bits (relative u / 2) can
/// put on a channel of A: (u / 2) max|V| (max_j P_1j + |lambda| max_j P_2j). A row whose few
/// largest terms dominate has only that many rounding draws behind its error, which the naive
/// computation draws independently: the ratio of two such errors is not bounded.
inline std::vector<double> dominant_term_error(Problem<double>& ref, double u) {
  const da::Params p = ref.params();
  const i64 N = p.seqlen_q, S = p.seqlen_k, H = p.heads, d = p.head_dim, rep = p.n_rep();
  const da::RowMask mask = da::make_row_mask(p);
  auto at = [](const da::ConstTensorRef& t, i64 j, i64 h, i64 c) {
    return static_cast<const double*>(t.ptr)[j * t.stride_t + h * t.stride_h + c];
  };
  double vmax = 0;
  for (i64 j = 0; j < S; ++j)
    for (i64 g = 0; g < p.kv_heads; ++g)
      for (i64 c = 0; c < d; ++c) {
        vmax = std::max(vmax, std::fabs(at(p.v_lo, j, g, c)));
        if (p.v_hi.ptr) vmax = std::max(vmax, std::fabs(at(p.v_hi, j, g, c)));
      }
  std::vector<double> e(static_cast<std::size_t>(H * N), 0.0);
  for (i64 h = 0; h < H; ++h)
    for (i64 i = 0; i < N; ++i) {
      double lam;
      if (p.is_v2()) {
        lam = 1 / (1 + std::exp(-static_cast<const double*>(p.lambda.logits.ptr)[i * p.lambda.logits.stride_t + h * p.lambda.logits.stride_h]));
      } else {
        const i64 off = p.lambda.per_head ? h * d : 0;
        auto f = [&](const void* v) { return static_cast<const double*>(v) + off; };
        lam = da::lambda_terms<double>(f(p.lambda.lq1), f(p.lambda.lk1), f(p.lambda.lq2), f(p.lambda.lk2), d).value(p.lambda.lambda_init);
      }
      double pmax[2] = {0, 0};
      for (int c = 0; c < 2; ++c) {
        const da::ConstTensorRef& q = c ? p.q2 : p.q1;
        const da::ConstTensorRef& k = c && !p.is_v2() ? p.k2 : p.k1;
        const double lse = (c ? ref.lse2 : ref.lse1)[static_cast<std::size_t>(h * N + i)];
        if (!(lse > -INFINITY)) continue;
        for (i64 j = 0; j < S; ++j) {
          if (!mask.visible(i, j)) continue;
          double sc = 0;
          for (i64 x = 0; x < d; ++x) sc += at(q, i, h, x) * at(k, j, h / rep, x);
          pmax[c] = std::max(pmax[c], std::exp(sc * p.scale() - lse));
        }
      }
      e[static_cast<std::size_t>(h * N + i)] = u / 2 * vmax * (pmax[0] + std::fabs(lam) * pmax[1]);
    }
  return e;
}

/// One serving case: `run` on the Served problem of s (s.d, s.v2 set from Traits) and seed,
/// each sequence checked against the double reference of its dense problem (out: 2x the naive
/// 16-bit computation's error plus 2 u; A, LSEs, rstd as check_forward_case), the appended
/// cache rows bit for bit, O_2 on the decoding path (cuda::takes_decode_path), which takes
/// pages of any size; the fused kernel's two-pass form must reject a paged cache.
template <class Traits>
void check_forward_served(Serve s, std::uint64_t seed, const std::function<da::Status(const da::Params&)>& run) {
  using Elem = typename Traits::Elem;
  const double u = Traits::kFmt == da::simt::fmt16::f16 ? 0x1p-11 : 0x1p-8;
  s.d = Traits::kHeadDim;
  s.v2 = Traits::kV2;
  Served<Elem> c(s, seed);
  INFO(std::string(da::dtype_name(Traits::kDType)) << " d=" << Traits::kHeadDim << " seed " << seed << " " << s.str());
  const std::vector<Elem> kc0 = c.kc, vc0 = c.vc;
  da::Params p = c.params();
  // the decoding path (few query rows per KV group, or splits) gives O_2 at every d, reads
  // pages of any size; the fused kernel's two-pass form has no O_2 and no paged path
  const bool decode = da::cuda::takes_decode_path(p);
  INFO(std::string(decode ? "decoding path" : "fused kernel"));
  if (!decode) p.extras.o2 = nullptr;
  const da::Status status = run(p);
  if (s.page_size > 0 && !decode && !Traits::kSinglePass) {  // no paged path in the two-pass kernel
    CHECK(status.code() == da::StatusCode::unsupported);
    CHECK_MESSAGE(status.message().find("seq.block_table") != std::string::npos, status.to_string());
    for (Elem x : c.out) REQUIRE(std::isnan(static_cast<float>(x)));  // nothing written
    CHECK(std::memcmp(c.kc.data(), kc0.data(), kc0.size() * sizeof(Elem)) == 0);  // no append either
    return;
  }
  REQUIRE_MESSAGE(status.ok(), status.to_string());
  for (i64 b = 0; b < s.B(); ++b) {
    if (s.nq[b] == 0) continue;
    INFO("sequence " << b << " (N_b " << s.nq[b] << ", S_b " << s.nk[b] << ")");
    const auto got = outputs_of(c, b);
    std::vector<std::vector<double>> want, naive_out(2);
    std::vector<double> dominant(static_cast<std::size_t>(s.H * s.nq[b]), 0.0);
    if (s.nk[b] == 0) {
      want = fully_masked_outputs(c, b);
      naive_out = {want[0], want[3]};
    } else {
      Problem<double> ref = widen(c.seqs[b]);
      da::Params pr = ref.params();
      REQUIRE(da::reference::forward<double>(pr).ok());
      want = outputs_of(ref, s.nq[b]);
      // the naive error: the larger of the two naive roundings of P (each component's, and the
      // combined P_1 - lambda P_2). A sequence of a few rows per head has a handful of P rounding
      // draws behind its largest errors (a row's largest P terms dominate every channel), and one
      // model's draws can be far luckier than the other's: test_fuzz seed 1000267 (13 tokens, GQA
      // 4:1, 156 keys: bf16 d = 64, the fused kernel and the decoding path alike) has 1.1e-3 per
      // component and 2.5e-3 combined, the kernel 3.8e-3, all of it in one row
      const NaiveLowp n = naive_lowp_forward(c.seqs[b], /*separate=*/true);
      const NaiveLowp nc = naive_lowp_forward(c.seqs[b], /*separate=*/false);
      const bool worse_c = max_abs_diff(nc.attn, want[3]) > max_abs_diff(n.attn, want[3]);
      naive_out = {max_abs_diff(nc.out, want[0]) > max_abs_diff(n.out, want[0]) ? nc.out : n.out,
                   worse_c ? nc.attn : n.attn};
      dominant = dominant_term_error(ref, u);
    }
    check_close(got[0], want[0], 2 * max_abs_diff(naive_out[0], want[0]) + 2 * u, 0, "out");
    double amax = 0;
    for (double x : want[3]) amax = std::max(amax, std::fabs(x));
    // beside check_forward_case's floor (u max|A| / 16), each row's dominant_term_error: with a
    // few rows per head even the larger naive error is a few draws (seen: 2.3x with 4 rows, f16
    // d = 128, 2 splits, seed 8283, where exact P, Q = 0, gives the reference to 1e-8:
    // check_forward_exact_p; 2.2x with 1 row, bf16 d = 64, a window, test_fuzz seed 1000658)
    {
      const double base = 2 * max_abs_diff(naive_out[1], want[3]) + u * amax / 16 + 1e-6;
      const std::size_t dv = want[3].size() / dominant.size();
      std::size_t bad = 0, first = 0;
      for (std::size_t k = 0; k < want[3].size(); ++k)
        if (!(std::fabs(got[3][k] - want[3][k]) <= base + dominant[k / dv]) && bad++ == 0) first = k;
      CHECK_MESSAGE(bad == 0, "attn (A): " << bad << " elements past 2 x naive " << base << " + the row's dominant-term "
                                           "error; first at " << first << ": got " << got[3][first] << " want "
                                           << want[3][first] << ", row allowance " << dominant[first / dv]);
    }
    check_close(got[1], want[1], 1e-4, 1e-4, "lse1");
    check_close(got[2], want[2], 1e-4, 1e-4, "lse2");
    check_close(got[5], want[5], 0, 4 * u + 1e-4, "rstd");
    if (decode) {  // O_2 = P_2 V, P_2 rounded to 16 bits: at most u max|V| per row (P sums to 1)
      double vmax = 0;
      for (auto x : c.seqs[b].v) vmax = std::max(vmax, std::fabs(static_cast<double>(static_cast<float>(x))));
      check_close(got[4], want[4], u * vmax + 1e-5, 0, "o2");
    }
  }
  if (s.append) check_append(c, kc0, vc0);  // the new rows bit for bit, the rest unchanged
}

/// The merge of the decoding path's splits, exactly: with Q = 0 every score is 0 and every P is 1
/// (exact in 16 bits), so A is the mean of V over each row's keys up to fp32 summation: a key
/// skipped or counted twice at a split or page boundary, or a wrong merge weight, moves A by
/// about 1 / S_b of a V row, far above the 1e-5 max|A| allowed (seen: 1.6e-8 absolute). Pages
/// of 32 and 7 rows, 1 to 5 splits, GQA 4:1, ragged sequences, a window.
template <class Traits>
void check_forward_exact_p(const std::function<da::Status(const da::Params&)>& run) {
  using Elem = typename Traits::Elem;
  for (int splits = 1; splits <= 5; ++splits) {
    Serve s;
    s.d = Traits::kHeadDim; s.v2 = Traits::kV2;
    s.nq = {1, 2, 1, 4};
    s.nk = {300, 97, 129, 64};
    s.H = 4; s.Hkv = 1;
    s.page_size = splits % 2 ? 32 : 7;
    if (splits == 4) { s.mask = da::MaskKind::window; s.wl = 50; s.wr = 0; }
    s.num_splits = splits;
    Served<Elem> c(s, 900 + splits);
    INFO(std::string(da::dtype_name(Traits::kDType)) << " d=" << Traits::kHeadDim << " Q = 0, " << s.str());
    for (auto& x : c.q) x = Elem(0.0f);
    for (auto& sq : c.seqs) {
      for (auto& x : sq.q) x = Elem(0.0f);
      for (auto& x : sq.q2buf) x = Elem(0.0f);
    }
    da::Params p = c.params();
    REQUIRE(da::cuda::takes_decode_path(p));
    const da::Status status = run(p);
    REQUIRE_MESSAGE(status.ok(), status.to_string());
    for (i64 b = 0; b < s.B(); ++b) {
      INFO("sequence " << b);
      Problem<double> ref = widen(c.seqs[b]);
      da::Params pr = ref.params();
      REQUIRE(da::reference::forward<double>(pr).ok());
      const auto want = outputs_of(ref, s.nq[b]);
      const auto got = outputs_of(c, b);
      double amax = 0;
      for (double x : want[3]) amax = std::max(amax, std::fabs(x));
      check_close(got[3], want[3], 1e-5 * amax + 1e-7, 0, "attn (A), exact P");
      check_close(got[4], want[4], 1e-5 * amax + 1e-7, 0, "o2, exact P");
      check_close(got[1], want[1], 1e-5, 1e-6, "lse1, exact P");
    }
  }
}

/// The serving layouts (Params::seq: packed queries and keys, seqused_k, pages, append) in one
/// configuration: `run` on a Served problem (tests/support/serving.hpp), each sequence checked
/// against the double reference of its dense problem with check_forward_case's rules (out: 2x
/// the naive 16-bit computation's error plus 2 u; A, LSEs, rstd as there), the appended cache
/// rows bit for bit; on the decoding path (cuda::takes_decode_path) O_2 too. The decoding path:
/// GQA 8:1 with 8 tokens (four row blocks), pages of 1, 7, 32 and 64 rows, 3 splits, the
/// heuristic's splits, more splits than tiles, splits of an 80-row call. The fused kernel: pages
/// of 16 are `unsupported` where a key tile is 32, and every paged cache in the two-pass kernel
/// (V1 at d = 96 and 128), with nothing written.
template <class Traits>
void check_forward_serving(const std::function<da::Status(const da::Params&)>& run) {
  using Elem = typename Traits::Elem;
  std::uint64_t seed = 7000 + 10 * Traits::kHeadDim + (Traits::kV2 ? 5 : 0);
  auto one = [&](const Serve& s) { check_forward_served<Traits>(s, ++seed, run); };
  Serve s;  // ragged varlen queries and keys, empty and length-1 sequences, a sequence with no keys
  s.nq = {5, 0, 1, 70, 3};
  s.nk = {9, 4, 1, 130, 0};
  s.varlen_k = true;
  one(s);
  s.mask = da::MaskKind::window; s.wl = 6; s.wr = 2; s.varlen_k = false;  // dense cache, seqused_k
  one(s);
  s = Serve{};  // decoding over pages of 32, GQA 4:1, a shared page, random page order
  s.nq = {1, 2, 1, 4};
  s.nk = {300, 97, 129, 64};
  s.H = 4; s.Hkv = 1;
  s.page_size = 32;
  s.share_page = true;
  one(s);
  s = Serve{};  // append, then attend (decode and a chunk of 8), pages of 64, GroupNorm
  s.nq = {1, 3, 1, 8};
  s.nk = {200, 65, 1, 8};
  s.append = true;
  s.page_size = 64;
  s.norm = da::NormKind::group; s.beta = true;
  one(s);
  s.page_size = 0; s.varlen_q = false;  // append into a dense cache [B, capacity]
  s.nq = {2, 2, 2, 2};
  s.nk = {40, 2, 90, 7};
  one(s);
  // the decoding path: GQA 8:1 with up to 8 query tokens (64 rows per group: four row blocks),
  // pages of 7 rows, three splits of each sequence's visible tiles
  s = Serve{};
  s.H = 8; s.Hkv = 1;
  s.nq = {8, 1, 3};
  s.nk = {700, 300, 9};
  s.page_size = 7;
  s.num_splits = 3;
  one(s);
  // one long sequence: the heuristic's splits (emulated: 4 SMs, so 4 or more), pages of one
  // row, a window that leaves each row a few hundred keys
  s = Serve{};
  s.H = 8; s.Hkv = 2;
  s.nq = {1};
  s.nk = {1500};
  s.page_size = 1;
  s.mask = da::MaskKind::window; s.wl = 300; s.wr = -1;
  one(s);
  // more splits than tiles (empty splits), a dense cache with an append, GroupNorm with beta
  s = Serve{};
  s.H = 2; s.Hkv = 1;
  s.nq = {2, 2};
  s.nk = {40, 130};
  s.varlen_q = false;
  s.append = true;
  s.num_splits = da::kMaxSplits;
  s.norm = da::NormKind::group; s.beta = true;
  one(s);
  // splits asked of a prefill-sized call (80 rows per group, 5 row blocks): the decoding path
  s = Serve{};
  s.nq = {40, 1}; s.nk = {40, 220};
  s.num_splits = 4;
  one(s);
  // what the fused kernel's tiling cannot read: pages of 16 where a key tile is 32 (80 rows per
  // group: no decoding path), every page in the two-pass form; nothing written
  s = Serve{};
  s.d = Traits::kHeadDim; s.v2 = Traits::kV2;
  s.nq = {40, 1}; s.nk = {40, 20};
  s.page_size = 16;
  Served<Elem> c(s, 1);
  da::Params p = c.params();
  p.extras.o2 = nullptr;
  REQUIRE(!da::cuda::takes_decode_path(p));
  const da::Status st = run(p);
  if (!Traits::kSinglePass || Traits::kBlockN > 16) {
    CHECK(st.code() == da::StatusCode::unsupported);
    CHECK(st.message().find(Traits::kSinglePass ? "seq.page_size" : "seq.block_table") != std::string::npos);
    for (Elem x : c.out) REQUIRE(std::isnan(static_cast<float>(x)));  // nothing written
  } else {
    CHECK(st.ok());
  }
}

}  // namespace dt
