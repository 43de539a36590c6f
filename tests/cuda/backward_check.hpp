// tests/cuda/backward_check.hpp: the CUDA backward's test cases, run through any way of
// executing it (the emulator in CI, a GPU where one is present): against
// reference::backward<double>, in both dQ modes (atomics; per-split buffers with the
// deterministic option), with docs/TESTING.md's tolerance rule against the naive backward in the
// kernel's own precision (tests/support/backward_check.hpp: dA, P_1 - lambda P_2 and dS rounded
// to the element type before their products, as the tensor cores take them).
#pragma once

#include <functional>
#include <utility>

#include <diffattn/cuda/backward_kernel.hpp>

#include "support/backward_check.hpp"

namespace dt {

/// Runs a CUDA backward (emulated or on a GPU) and its forward (same way) on host params.
struct CudaBackwardRunner {
  std::function<da::Status(const da::BackwardParams&)> backward;
  std::function<da::Status(const da::Params&)> forward;  ///< for the chain case
};

template <class Elem, int kD>
struct CudaBackwardCases {
  CudaBackwardRunner run;
  // the two-pass forward (d > 64) keeps one accumulator and saves no O_2: its backward takes the
  // path without it
  static constexpr bool kForwardSavesO2 = da::cuda::default_single_pass(kD);

  static Shape bshape(i64 N, i64 S, i64 H, i64 Hkv, da::MaskKind m, bool v2 = false) {
    Shape s;
    s.B = 1; s.N = N; s.S = S; s.H = H; s.Hkv = Hkv; s.d = kD; s.mask = m; s.v2 = v2;
    if (m == da::MaskKind::window) { s.wl = 40; s.wr = 5; }
    return s;
  }

  // The forward that saves (reference<float>, or the CUDA forward), then the CUDA backward on pc.
  da::Status run_cuda_backward(Problem<Elem>& pc, bool deterministic, bool cuda_forward = false,
                               bool no_o2 = false) const {
    da::Params pf = pc.params();
    if (cuda_forward) {
      if (no_o2) pf.extras.o2 = nullptr;  // not asked of the forward (the two-pass one has none)
      const da::Status fs = run.forward(pf);
      REQUIRE_MESSAGE(fs.ok(), fs.to_string());
    } else {
      REQUIRE(da::reference::forward<float>(pf).ok());
    }
    da::BackwardParams bp = pc.backward_params();
    bp.saved = da::saved_from(pf.extras);
    if (no_o2) bp.saved.o2 = nullptr;  // the backward recomputes <dA, O_2> from LSE_2
    bp.deterministic = deterministic;
    return run.backward(bp);
  }

  void run_bwd(const Shape& s, std::uint64_t seed, bool split = false, bool cuda_forward = false,
               bool no_o2 = false) const {
    INFO(da::dtype_name(da::dtype_of_v<Elem>) << " seed " << seed << " split " << split << " " << s.str()
         << (cuda_forward ? " (saved by the cuda forward)" : "") << (no_o2 ? " (no saved O_2)" : ""));
    Problem<Elem> naive(s, seed, split);
    Problem<double> ref = widen(naive);
    // the naive backward reads saved tensors in the precision of the forward that saves them
    if (cuda_forward) {
      set_saved_lowp(naive);
    } else {
      da::Params pf = naive.params();
      REQUIRE(da::reference::forward<float>(pf).ok());
    }
    naive_lowp_backward(naive, /*dot_from_lse=*/no_o2);
    {
      da::BackwardParams br = ref.backward_params();
      REQUIRE(da::reference::backward<double>(br).ok());
    }
    const Grads gref = grads(ref), gnaive = grads(naive);
    for (bool det : {false, true}) {
      INFO("deterministic " << det);
      Problem<Elem> pc(s, seed, split);
      const da::Status st = run_cuda_backward(pc, det, cuda_forward, no_o2);
      REQUIRE_MESSAGE(st.ok(), st.to_string());
      const Grads got = grads(pc);
      // saved by the 16-bit forward, A and O_2 carry its rounding of P (relative u per term),
      // which the naive forward models at other rounding points (normalised P): the side
      // gradients, sums of products with A and O_2, get rtol u too
      const double u = bwd_unit_roundoff<Elem>();
      check_grads(got, gnaive, gref, u, cuda_forward ? u : 0);
      if (det) {  // bitwise reproducible run to run
        Problem<Elem> again(s, seed, split);
        REQUIRE(run_cuda_backward(again, true, cuda_forward, no_o2).ok());
        const Grads got2 = grads(again);
        for (std::size_t k = 0; k < got.size(); ++k) {
          INFO(got[k].first);
          CHECK(bits_equal(got[k].second, got2[k].second));
        }
      }
    }
  }

  void awkward() const {
    const std::pair<i64, i64> sizes[] = {{1, 1}, {7, 65}, {65, 7}, {33, 100}, {100, 33}, {70, 130}};
    std::uint64_t seed = 5100 + kD;
    for (auto [N, S] : sizes)
      for (da::MaskKind m : {da::MaskKind::none, da::MaskKind::causal, da::MaskKind::window})
        run_bwd(bshape(N, S, 2, 1, m), ++seed);
    // more key blocks than the deterministic option's splits (the emulator plans for 4 SMs: 8
    // splits here, so 10 key blocks give blocks of 2 in a row, one dQ buffer each)
    for (da::MaskKind m : {da::MaskKind::none, da::MaskKind::causal}) run_bwd(bshape(40, 600, 2, 1, m), ++seed);
  }

  void layouts_norms() const {
    std::uint64_t seed = 5200 + kD;
    run_bwd(bshape(40, 72, 2, 2, da::MaskKind::causal), ++seed);
    run_bwd(bshape(40, 72, 4, 1, da::MaskKind::none), ++seed, /*split=*/true);
    Shape s = bshape(50, 50, 2, 1, da::MaskKind::causal);
    s.gamma = false;  // rms without a weight
    run_bwd(s, ++seed);
    s.norm = da::NormKind::group; s.gamma = true; s.beta = true;
    run_bwd(s, ++seed);
    s.norm = da::NormKind::none;
    s.per_head = true;
    s.B = 2;
    run_bwd(s, ++seed, /*split=*/true);
  }

  void v2() const {
    std::uint64_t seed = 5300 + kD;
    for (da::MaskKind m : {da::MaskKind::none, da::MaskKind::causal, da::MaskKind::window}) {
      run_bwd(bshape(45, 90, 2, 1, m, true), ++seed);
      run_bwd(bshape(90, 45, 2, 2, m, true), ++seed, /*split=*/true);
    }
  }

  void chain() const {
    run_bwd(bshape(48, 80, 2, 1, da::MaskKind::causal), 5400 + kD, false, /*cuda_forward=*/true, !kForwardSavesO2);
    run_bwd(bshape(48, 80, 2, 1, da::MaskKind::none, true), 5410 + kD, false, /*cuda_forward=*/true, !kForwardSavesO2);
  }

  // DiffLlama's layout (make_diffllama_params, gradients laid out as q, k and v): from the same
  // saved tensors, in the deterministic mode, every gradient has the official layout's bits (the
  // kernels take any strides; only the addresses differ)
  void diffllama() const {
    std::uint64_t seed = 5600 + kD;
    for (i64 hkv : {1, 2}) {
      Shape s = bshape(40, 72, 4, hkv, da::MaskKind::causal);
      s.gamma = false;  // DiffLlama's RMSNorm has no weight
      if (hkv == 2) { s.norm = da::NormKind::group; s.gamma = true; s.beta = true; s.per_head = true; }
      INFO(s.str());
      Problem<Elem> pr(s, ++seed);
      DiffLlamaCopy<Elem> dl(pr);
      da::Params pf = pr.params();
      REQUIRE(da::reference::forward<float>(pf).ok());
      da::BackwardParams bo = pr.backward_params();
      bo.saved = da::saved_from(pf.extras);
      bo.deterministic = true;
      const da::Status so = run.backward(bo);
      REQUIRE_MESSAGE(so.ok(), so.to_string());
      for (const auto& [name, g] : grads(pr))
        for (double x : g) REQUIRE_MESSAGE(std::isfinite(x), name);
      da::BackwardParams bd = dl.backward_params(bo.saved);
      bd.deterministic = true;
      const da::Status sd = run.backward(bd);
      REQUIRE_MESSAGE(sd.ok(), sd.to_string());
      CHECK(dl.same_gradients_as_official());
    }
  }

  // without a saved O_2 (saved.o2 null): <dA, O_2> from LSE_2 in BwdO2DotKernel. Awkward sizes
  // (a dot block of 64 rows past N and npad), every mask, GQA, each norm, V2, both dQ modes, and
  // the chain from the CUDA forward's own saved tensors
  void no_o2() const {
    std::uint64_t seed = 5700 + kD;
    const std::pair<i64, i64> sizes[] = {{1, 1}, {7, 65}, {65, 7}, {100, 33}, {130, 70}};
    for (auto [N, S] : sizes)
      for (da::MaskKind m : {da::MaskKind::none, da::MaskKind::causal, da::MaskKind::window})
        run_bwd(bshape(N, S, 2, 1, m), ++seed, false, false, /*no_o2=*/true);
    Shape s = bshape(50, 90, 4, 2, da::MaskKind::causal);
    s.norm = da::NormKind::group; s.beta = true; s.per_head = true; s.B = 2;
    run_bwd(s, ++seed, /*split=*/true, false, true);
    s.norm = da::NormKind::none;
    run_bwd(s, ++seed, false, false, true);
    for (da::MaskKind m : {da::MaskKind::none, da::MaskKind::window})
      run_bwd(bshape(70, 45, 2, 2, m, true), ++seed, false, false, true);
    run_bwd(bshape(48, 80, 2, 1, da::MaskKind::causal), ++seed, false, /*cuda_forward=*/true, true);
  }

  // causal with N > S: rows i < N - S see no key: dq 0 there, nothing NaN
  void fully_masked() const {
    const Shape s = bshape(70, 20, 2, 1, da::MaskKind::causal);
    run_bwd(s, 5500 + kD);
    Problem<Elem> pc(s, 5501);
    REQUIRE(run_cuda_backward(pc, false).ok());
    for (auto x : pc.dq) REQUIRE(std::isfinite(static_cast<float>(x)));
    for (auto x : pc.dk) REQUIRE(std::isfinite(static_cast<float>(x)));
    for (auto x : pc.dv) REQUIRE(std::isfinite(static_cast<float>(x)));
    for (i64 i = 0; i < s.N - s.S; ++i)
      for (i64 x = 0; x < 2 * s.H * kD; ++x) REQUIRE(static_cast<float>(pc.dq[i * 2 * s.H * kD + x]) == 0.f);
  }

  // small cases of every kind, for compute-sanitizer on a GPU
  void small() const {
    run_bwd(bshape(7, 65, 2, 1, da::MaskKind::causal), 5800 + kD);
    run_bwd(bshape(33, 20, 2, 2, da::MaskKind::window, true), 5810 + kD, /*split=*/true);
  }
};

/// Bad input: a named error, nothing written (through `backward`, which validates first).
template <class Elem, int kD>
void check_backward_bad_input(const std::function<da::Status(const da::BackwardParams&)>& backward) {
  const Shape s = CudaBackwardCases<Elem, kD>::bshape(20, 20, 2, 1, da::MaskKind::none);
  Problem<Elem> pc(s, 5600);
  da::Params pf = pc.params();
  REQUIRE(da::reference::forward<float>(pf).ok());
  auto expect = [&](da::BackwardParams bp, const char* what) {
    const da::Status st = backward(bp);
    INFO(st.to_string());
    CHECK_FALSE(st.ok());
    CHECK(st.message().find(what) != std::string::npos);
    for (auto x : pc.dq) REQUIRE(std::isnan(static_cast<float>(x)));
    for (auto x : pc.dv) REQUIRE(std::isnan(static_cast<float>(x)));
    for (auto x : pc.dlq1) REQUIRE(std::isnan(x));
  };
  da::BackwardParams bp = pc.backward_params();
  bp.saved = da::saved_from(pf.extras);
  da::BackwardParams b1 = bp;
  b1.saved.lse2 = nullptr;
  expect(b1, "saved.lse2");
  da::BackwardParams b2 = bp;
  b2.saved.rstd = nullptr;
  expect(b2, "saved.rstd");
  da::BackwardParams b3 = bp;
  b3.grad.dk1.ptr = nullptr;
  expect(b3, "grad.dk1");
  da::BackwardParams b4 = bp;
  b4.fwd.head_dim = 2000;
  expect(b4, "head_dim");
}

}  // namespace dt
