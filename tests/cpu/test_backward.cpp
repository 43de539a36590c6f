// cpu::backward against reference::backward<double>: every element type, mask, norm, GQA ratio,
// DIFF V2, awkward sizes, fully masked rows, 1 to 3 threads, plus determinism, poisoned
// outputs and bad input (missing or impossible saved tensors).
//
// Tolerance (docs/TESTING.md's rule): for each gradient x, the error of cpu::backward against
// reference::backward<double> on the same inputs (widened exactly) may be at most twice the
// error of the naive computation in the kernel's own precision, plus a floor:
//   atol(x) = 2 * max|naive_x - ref_x| + 1e-5 * max(max|ref_x|, max|ref of dq, dk, dv|),
//   rtol = u for 16-bit gradients.
// The naive computation in the kernel's precision is reference::backward<float> on the same
// inputs: every product, softmax and norm in fp32, gradients rounded once to the element type.
// The floor is 10x the forward's: each gradient here is a sum over N or S terms of products
// of fp32 quantities that are themselves sums (dP, D, dA), and the kernel sums in another
// order than the naive loops (blocks of 64, FMA), so a gradient the naive computation happens
// to get nearly exact still carries some 1e-6 relative of the kernel's own rounding. The saved
// tensors are those of reference::forward<float> (the naive forward in the kernel's precision),
// so the check is of the backward alone whatever path the forward takes on this CPU; one case
// runs the whole cpu::forward -> cpu::backward chain.
#include <doctest/doctest.h>

#include <cstring>

#include <diffattn/cpu/backward.hpp>

#include "support/backward_check.hpp"  // grads(), check_grads(), widen(), Problem

using namespace dt;

namespace {

// Runs the forward that saves (reference<float>, or cpu::forward) and cpu::backward on `pc`.
template <class Elem>
da::Status run_cpu_backward(Problem<Elem>& pc, int threads, bool cpu_forward = false, bool no_o2 = false) {
  da::Params pf = pc.params();
  if (no_o2) pf.extras.o2 = nullptr;  // neither saved nor passed: stage 1b recomputes <dA, O_2>
  if (cpu_forward) {
    da::cpu::Options fo;
    fo.num_threads = threads;
    REQUIRE(da::cpu::forward(pf, fo).ok());
  } else {
    REQUIRE(da::reference::forward<float>(pf).ok());
  }
  da::BackwardParams bp = pc.backward_params();
  bp.saved = da::saved_from(pf.extras);
  REQUIRE((bp.saved.o2 == nullptr) == no_o2);
  da::cpu::Options o;
  o.num_threads = threads;
  return da::cpu::backward(bp, o);
}

template <class Elem>
void run_bwd(const Shape& s, std::uint64_t seed, bool split = false, bool cpu_forward = false, bool no_o2 = false) {
  INFO(da::dtype_name(da::dtype_of_v<Elem>) << " seed " << seed << " split " << split << " " << s.str()
       << " path " << da::cpu::isa_name(da::cpu::isa()) << (cpu_forward ? " (saved by cpu::forward)" : "")
       << (no_o2 ? " (no saved O_2)" : ""));
  Problem<Elem> naive(s, seed, split);
  Problem<double> ref = widen(naive);
  {
    da::BackwardParams bn = naive.backward_params(), br = ref.backward_params();
    REQUIRE(da::reference::backward<float>(bn).ok());
    REQUIRE(da::reference::backward<double>(br).ok());
  }
  const auto gref = grads(ref), gnaive = grads(naive);
  const double u = bwd_unit_roundoff<Elem>();
  Grads first;
  for (int threads : {1, 2, 3}) {
    INFO("threads " << threads);
    Problem<Elem> pc(s, seed, split);
    const da::Status st = run_cpu_backward(pc, threads, cpu_forward, no_o2);
    REQUIRE_MESSAGE(st.ok(), st.to_string());
    const auto got = grads(pc);
    check_grads(got, gnaive, gref, u);
    // bitwise reproducible for a fixed thread count
    Problem<Elem> again(s, seed, split);
    REQUIRE(run_cpu_backward(again, threads, cpu_forward, no_o2).ok());
    const auto got2 = grads(again);
    for (std::size_t k = 0; k < got.size(); ++k) {
      INFO(got[k].first);
      CHECK(bits_equal(got[k].second, got2[k].second));
    }
    // one chunk per KV group (B * Hkv >= 4 x threads): the same bits for every thread count
    if (threads == 1) first = got;
    if (s.B * s.Hkv >= 4 * threads)
      for (std::size_t k = 0; k < got.size(); ++k) {
        INFO(got[k].first << " against 1 thread");
        CHECK(bits_equal(got[k].second, first[k].second));
      }
  }
}

Shape bshape(i64 N, i64 S, i64 H, i64 Hkv, i64 d, da::MaskKind m) {
  Shape s;
  s.B = 1; s.N = N; s.S = S; s.H = H; s.Hkv = Hkv; s.d = d; s.mask = m;
  if (m == da::MaskKind::window) { s.wl = 16; s.wr = 3; }
  return s;
}

const std::pair<i64, i64> kBwdAwkward[] = {{1, 1}, {7, 65}, {65, 7}, {127, 127}, {1, 200}, {200, 1}, {65, 129}, {130, 64}};
const da::MaskKind kBwdMasks[] = {da::MaskKind::none, da::MaskKind::causal, da::MaskKind::window};

template <class Elem>
void bwd_awkward(std::uint64_t seed) {
  for (auto [N, S] : kBwdAwkward)
    for (da::MaskKind m : kBwdMasks) run_bwd<Elem>(bshape(N, S, 4, 2, 32, m), ++seed);
}

}  // namespace

TEST_CASE("cpu backward f32: awkward sizes x masks x threads") { bwd_awkward<float>(2100); }
TEST_CASE("cpu backward f16: awkward sizes x masks x threads") { bwd_awkward<da::half>(2200); }
TEST_CASE("cpu backward bf16: awkward sizes x masks x threads") { bwd_awkward<da::bfloat16>(2300); }

TEST_CASE("cpu backward: head dims 8/40/64/128 x GQA 1:1, 2:1, 4:1 (MQA) x masks") {
  std::uint64_t seed = 2400;
  for (i64 d : {8, 40, 64, 128})
    for (i64 hkv : {4, 2, 1}) {
      Shape s = bshape(d >= 64 ? 70 : 100, d >= 64 ? 97 : 150, 4, hkv, d, kBwdMasks[seed % 3]);
      s.B = hkv == 4 ? 2 : 1;  // B * Hkv = 8: one chunk per group for up to 2 threads
      run_bwd<float>(s, ++seed);
      if (d == 64) run_bwd<da::bfloat16>(s, ++seed);
    }
}

TEST_CASE("cpu backward: norms (rms without gamma, group with beta, none), per-head lambda, split layout, windows") {
  std::uint64_t seed = 2500;
  Shape s = bshape(100, 90, 4, 2, 32, da::MaskKind::none);
  s.norm = da::NormKind::group; s.beta = true;
  run_bwd<float>(s, ++seed, /*split=*/true);
  run_bwd<da::half>(s, ++seed);
  s.mask = da::MaskKind::causal;  // N > S: fully masked rows (zero dq, still a dbeta)
  s.N = 100; s.S = 40;
  run_bwd<float>(s, ++seed);
  s = bshape(90, 100, 4, 4, 32, da::MaskKind::window);
  s.norm = da::NormKind::none; s.gamma = false; s.per_head = true;
  run_bwd<float>(s, ++seed, /*split=*/true);
  s.norm = da::NormKind::rms; s.gamma = false;
  s.wl = 0; s.wr = 0;  // each row sees one key
  run_bwd<da::bfloat16>(s, ++seed);
  s.wl = -1; s.wr = 7;  // unbounded on the left; rows past the keys fully masked
  s.N = 200; s.S = 70;
  run_bwd<float>(s, ++seed);
  s = bshape(64, 300, 2, 1, 16, da::MaskKind::window);  // keys no row sees: their dk, dv are 0
  s.wl = 3; s.wr = 2;
  run_bwd<float>(s, ++seed);
}

TEST_CASE("cpu backward: DIFF V2, every element type, masks, GQA") {
  std::uint64_t seed = 2600;
  for (da::MaskKind m : kBwdMasks) {
    Shape s = bshape(70, 97, 4, 2, 64, m);
    s.v2 = true;
    run_bwd<float>(s, ++seed);
    run_bwd<da::half>(s, ++seed);
    run_bwd<da::bfloat16>(s, ++seed);
  }
  Shape s = bshape(33, 130, 3, 1, 32, da::MaskKind::causal);  // MQA 3:1, wide logits
  s.v2 = true; s.logit_scale = 5;
  run_bwd<float>(s, ++seed, /*split=*/true);
  s = bshape(100, 40, 2, 2, 32, da::MaskKind::causal);  // N > S: fully masked rows
  s.v2 = true;
  run_bwd<float>(s, ++seed);
}

// Without a saved O_2 the backward recomputes <dA, O_2> per row from LSE_2 (stage 1b): the same
// tolerance against the double reference, every mask (fully masked rows included: N > S under
// causal), GQA and MQA, every norm, per-head lambda, V2, every element type, ragged row and key
// blocks (N, S not multiples of 64), 1 to 3 threads, reproducible. Without stage 1b's dot D_1
// and D_2 lose lambda <dA, O_2> and dK, dQ, dlambda (or dlogits) fail the check.
TEST_CASE("cpu backward: without a saved O_2 (from LSE_2), masks, GQA, norms, V2, element types") {
  std::uint64_t seed = 2900;
  for (da::MaskKind m : kBwdMasks) {
    run_bwd<float>(bshape(130, 150, 4, 2, 32, m), ++seed, false, false, /*no_o2=*/true);
    run_bwd<da::bfloat16>(bshape(65, 129, 4, 1, 64, m), ++seed, false, false, true);
  }
  run_bwd<da::half>(bshape(100, 40, 2, 2, 40, da::MaskKind::causal), ++seed, false, false, true);  // N > S
  Shape s = bshape(70, 97, 4, 2, 64, da::MaskKind::causal);
  s.norm = da::NormKind::group; s.beta = true; s.per_head = true;
  run_bwd<float>(s, ++seed, true, false, true);
  s = bshape(33, 200, 2, 1, 128, da::MaskKind::window);
  s.norm = da::NormKind::rms; s.gamma = false;
  run_bwd<float>(s, ++seed, false, false, true);
  s = bshape(70, 97, 4, 2, 64, da::MaskKind::none);
  s.v2 = true;
  run_bwd<float>(s, ++seed, false, false, true);
  run_bwd<da::bfloat16>(s, ++seed, false, false, true);
  s = bshape(150, 170, 4, 2, 64, da::MaskKind::causal);  // the chain: cpu::forward without extras.o2
  run_bwd<float>(s, ++seed, false, /*cpu_forward=*/true, true);
}

TEST_CASE("cpu backward: from cpu::forward's saved tensors (the chain a training step runs)") {
  std::uint64_t seed = 2700;
  Shape s = bshape(150, 170, 4, 2, 64, da::MaskKind::causal);
  run_bwd<float>(s, ++seed, false, /*cpu_forward=*/true);
  s.v2 = true;
  run_bwd<float>(s, ++seed, true, /*cpu_forward=*/true);
}

TEST_CASE("cpu backward: fully masked rows give zero dq and no NaN anywhere") {
  Shape s = bshape(90, 20, 2, 1, 32, da::MaskKind::causal);  // rows 0 .. 69 see no key
  Problem<float> pc(s, 2800);
  REQUIRE(run_cpu_backward(pc, 2).ok());
  for (const auto& [name, g] : grads(pc))
    for (double x : g) REQUIRE_MESSAGE(std::isfinite(x), name);
  const i64 N = s.N, H = s.H, d = s.d;
  for (i64 i = 0; i < N - s.S; ++i)
    for (i64 h = 0; h < H; ++h)
      for (i64 x = 0; x < 2 * d; ++x) CHECK(pc.dq[(i * 2 * H + 2 * h) * d + x] == 0.0f);
}

TEST_CASE("cpu backward: bad input is rejected with a named error and nothing is written") {
  Shape s = bshape(40, 50, 2, 1, 32, da::MaskKind::none);
  auto expect_rejected = [&](const char* what, auto mutate, const char* needle) {
    INFO(what);
    Problem<float> pc(s, 2900);
    da::Params pf = pc.params();
    REQUIRE(da::reference::forward<float>(pf).ok());
    da::BackwardParams bp = pc.backward_params();
    bp.saved = da::saved_from(pf.extras);
    mutate(bp, pc);
    const Problem<float> before = pc;
    const da::Status st = da::cpu::backward(bp);
    CHECK(!st.ok());
    CHECK_MESSAGE(st.message().find(needle) != std::string::npos, st.to_string());
    CHECK(bits_equal(pc.dq, before.dq));
    CHECK(bits_equal(pc.dk, before.dk));
    CHECK(bits_equal(pc.dv, before.dv));
    CHECK(bits_equal(pc.dlq1, before.dlq1));
    CHECK(bits_equal(pc.dgamma, before.dgamma));
  };
  expect_rejected("no saved lse1", [](da::BackwardParams& bp, Problem<float>&) { bp.saved.lse1 = nullptr; }, "saved.lse1");
  // (no saved o2 is accepted: the test case "without a saved O_2")
  expect_rejected("no saved rstd with an rms norm", [](da::BackwardParams& bp, Problem<float>&) { bp.saved.rstd = nullptr; }, "saved.rstd");
  expect_rejected("saved rstd not positive", [](da::BackwardParams&, Problem<float>& pc) { pc.rstd[17] = -1.0f; }, "saved.rstd");
  expect_rejected("saved lse NaN", [](da::BackwardParams&, Problem<float>& pc) { pc.lse2[3] = NAN; }, "saved.lse2");
  expect_rejected("saved attn overlapping a gradient",
                  [](da::BackwardParams& bp, Problem<float>& pc) { bp.saved.attn = pc.dlq1.data(); }, "overlaps");
  expect_rejected("saved by a forward with another mask",
                  [](da::BackwardParams& bp, Problem<float>& pc) {
                    da::Params other = pc.params();
                    other.mask.kind = da::MaskKind::causal;
                    REQUIRE(da::reference::forward<float>(other).ok());
                    (void)bp;
                  }, "does not match these params");
  expect_rejected("saved by a forward with another lambda_init",
                  [](da::BackwardParams& bp, Problem<float>& pc) {
                    da::Params other = pc.params();
                    other.lambda.lambda_init = 0.7;
                    REQUIRE(da::reference::forward<float>(other).ok());
                    (void)bp;
                  }, "saved.attn does not match");
  expect_rejected("dout null", [](da::BackwardParams& bp, Problem<float>&) { bp.dout.ptr = nullptr; }, "dout");
  expect_rejected("dk2 null", [](da::BackwardParams& bp, Problem<float>&) { bp.grad.dk2.ptr = nullptr; }, "grad.dk2");
}

TEST_CASE("cpu backward: a caller scratch too small is rejected; one of the right size gives the same bits") {
  Shape s = bshape(70, 80, 2, 2, 32, da::MaskKind::causal);
  Problem<float> a(s, 3000), b(s, 3000);
  REQUIRE(run_cpu_backward(a, 2).ok());
  da::Params pf = b.params();
  REQUIRE(da::reference::forward<float>(pf).ok());
  da::BackwardParams bp = b.backward_params();
  bp.saved = da::saved_from(pf.extras);
  da::cpu::Options o;
  o.num_threads = 2;
  const std::size_t need = da::cpu::backward_workspace_bytes(bp, o);
  std::vector<unsigned char> buf(need + 1);
  o.scratch = buf.data() + 1;  // any alignment
  o.scratch_bytes = need - 1;
  const da::Status st = da::cpu::backward(bp, o);
  CHECK(!st.ok());
  CHECK(st.message().find("options.scratch") != std::string::npos);
  CHECK(std::isnan(b.dq[0]));
  o.scratch_bytes = need;
  REQUIRE(da::cpu::backward(bp, o).ok());
  CHECK(bits_equal(a.dq, b.dq));
  CHECK(bits_equal(a.dk, b.dk));
  CHECK(bits_equal(a.dv, b.dv));
}

TEST_CASE("cpu backward: the DiffLlama layout's gradients are the official layout's, bit for bit") {
  // Gradients laid out as DiffLlama holds q, k and v (the halves of the head axis), from the
  // same saved tensors: the kernel computes the same sums and only writes them elsewhere. Before
  // the exact overlap rule, validation rejected these ("grad.dq1 overlaps output grad.dq2").
  std::uint64_t seed = 3100;
  auto one = [&](auto tag, const Shape& s, int threads) {
    using Elem = decltype(tag);
    INFO(da::dtype_name(da::dtype_of_v<Elem>) << " threads " << threads << " " << s.str());
    Problem<Elem> pr(s, ++seed);
    DiffLlamaCopy<Elem> dl(pr);
    da::cpu::Options o;
    o.num_threads = threads;
    da::Params pf = pr.params();
    REQUIRE(da::cpu::forward(pf, o).ok());
    da::BackwardParams bo = pr.backward_params();
    bo.saved = da::saved_from(pf.extras);
    REQUIRE(da::cpu::backward(bo, o).ok());
    for (const auto& [name, g] : grads(pr))
      for (double x : g) REQUIRE_MESSAGE(std::isfinite(x), name);
    da::BackwardParams bd = dl.backward_params(bo.saved);
    const da::Status st = da::cpu::backward(bd, o);
    REQUIRE_MESSAGE(st.ok(), st.to_string());
    CHECK(dl.same_gradients_as_official());
  };
  for (i64 hkv : {1, 2}) {  // DiffLlama's Hkvq = 2 Hkv
    Shape s = bshape(37, 70, 4, hkv, 64, da::MaskKind::causal);
    s.gamma = false;  // DiffLlama's RMSNorm has no weight
    one(float{}, s, 2);
    one(da::bfloat16{}, s, 1);
  }
  Shape w = bshape(50, 50, 2, 1, 32, da::MaskKind::window);
  w.wl = 7; w.wr = 3; w.norm = da::NormKind::group; w.beta = true;
  one(da::half{}, w, 2);
}
