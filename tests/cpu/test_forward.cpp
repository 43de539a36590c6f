// cpu::forward against the reference in double, every element type, mask, GQA ratio and head dim,
// at the awkward sizes of docs/TESTING.md, on 1, 2 and 4 threads (4 forces key splits on small
// problems), plus determinism, poisoned outputs and bad input.
//
// Tolerance (docs/TESTING.md's rule): for each output x, the error of cpu::forward against
// reference::forward<double> on the same inputs (widened exactly to double) may be at most twice
// the error of the naive computation in the kernel's own precision, plus a small floor. The
// naive computation in the kernel's precision is reference::forward<float> on the same inputs:
// inputs rounded to the element type, every product, softmax and norm in fp32, the output
// rounded once to the element type: exactly the precision cpu::forward computes in. So
//   atol(x) = 2 * max|naive_x - ref_x| + 1e-6 * max|ref_x|
// (the floor covers outputs the naive computation happens to get exact, e.g. S = 1, where the
// kernel's own fp32 rounding, its exp2 polynomial (relative error 1e-7) and its different
// summation order still leave a few fp32 ulps), and for 16-bit outputs also rtol = u (one unit
// roundoff of the element type): two fp32 results that agree to 1e-6 can still round to
// neighbouring 16-bit values, an error the naive computation shows only where it happens.
// bfloat16 on AMX and bfloat16 decode items on the avx512bf16 path (cpu::bf16_rounds_p) round P
// to bf16 for P V: their naive counterpart is naive_bf16_p below, the same fp32 computation
// with P rounded to bf16.
#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <memory>
#include <thread>

#include <diffattn/cpu/forward.hpp>

#include "support/naive_lowp.hpp"  // widen(), and Problem

using namespace dt;

namespace {


template <class Elem> constexpr double unit_roundoff() { return 0; }
template <> constexpr double unit_roundoff<da::half>() { return 0x1p-11; }
template <> constexpr double unit_roundoff<da::bfloat16>() { return 0x1p-8; }

// The naive computation in the precision of the bfloat16 paths that round P (AMX, decode items
// on avx512bf16): fp32 math on the bf16
// inputs, with P_1 and P_2 rounded to bfloat16 before P V (support/naive_lowp.hpp; the kernel
// rounds the unnormalised exp2(s - m) instead: the same 2^-9 relative error per term). Fills
// the outputs of `pr` (out rounded to bf16, side outputs in fp32).
void naive_bf16_p(Problem<da::bfloat16>& pr) {
  const NaiveLowp n = naive_lowp_forward(pr, /*separate=*/true, /*integer_max=*/true);
  for (std::size_t i = 0; i < n.out.size(); ++i) pr.out[i] = da::bfloat16(static_cast<float>(n.out[i]));
  auto to_float = [](const std::vector<double>& src, std::vector<float>& dst) {
    for (std::size_t i = 0; i < src.size(); ++i) dst[i] = static_cast<float>(src[i]);
  };
  to_float(n.attn, pr.attn);
  to_float(n.o2, pr.o2);
  to_float(n.lse1, pr.lse1);
  to_float(n.lse2, pr.lse2);
  to_float(n.rstd, pr.rstd);
  to_float(n.mean, pr.mean);
}

template <class T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

template <class Elem>
void run_case(const Shape& s, std::uint64_t seed, bool split = false) {
  INFO(da::dtype_name(da::dtype_of_v<Elem>) << " seed " << seed << " split " << split << " " << s.str()
       << " path " << da::cpu::isa_name(da::cpu::isa()));
  Problem<Elem> naive(s, seed, split);
  Problem<double> ref = widen(naive);
  da::Params pn = naive.params(), pr = ref.params();
  const bool round_p = da::cpu::bf16_rounds_p(pn);  // every sequence has N rows here
  INFO("P rounded to bf16: " << round_p);
  if constexpr (std::is_same_v<Elem, da::bfloat16>) {
    if (round_p) naive_bf16_p(naive);
  }
  if (!round_p) REQUIRE(da::reference::forward<float>(pn).ok());
  REQUIRE(da::reference::forward<double>(pr).ok());
  const double u = unit_roundoff<Elem>();

  std::vector<Elem> first_out;
  for (int threads : {1, 2, 4}) {
    INFO("threads " << threads);
    Problem<Elem> pc(s, seed, split);
    da::Params p = pc.params();
    da::cpu::Options opt;
    opt.num_threads = threads;
    const da::Status st = da::cpu::forward(p, opt);
    REQUIRE_MESSAGE(st.ok(), st.to_string());
    check_rule(to_double(pc.out), to_double(naive.out), ref.out, u, "out");
    check_rule(to_double(pc.lse1), to_double(naive.lse1), ref.lse1, 0, "lse1");
    check_rule(to_double(pc.lse2), to_double(naive.lse2), ref.lse2, 0, "lse2");
    check_rule(to_double(pc.attn), to_double(naive.attn), ref.attn, 0, "attn");
    check_rule(to_double(pc.o2), to_double(naive.o2), ref.o2, 0, "o2");
    check_rule(to_double(pc.rstd), to_double(naive.rstd), ref.rstd, 0, "rstd");
    check_rule(to_double(pc.mean), to_double(naive.mean), ref.mean, 0, "mean");

    // bitwise reproducible for a fixed thread count
    Problem<Elem> again(s, seed, split);
    da::Params p2 = again.params();
    REQUIRE(da::cpu::forward(p2, opt).ok());
    CHECK(same_bits(pc.out, again.out));
    CHECK(same_bits(pc.lse1, again.lse1));
    CHECK(same_bits(pc.lse2, again.lse2));
    CHECK(same_bits(pc.attn, again.attn));
  }
}

Shape shape(i64 N, i64 S, i64 H, i64 Hkv, i64 d, da::MaskKind m) {
  Shape s;
  s.B = 1; s.N = N; s.S = S; s.H = H; s.Hkv = Hkv; s.d = d; s.mask = m;
  if (m == da::MaskKind::window) { s.wl = 16; s.wr = 3; }
  return s;
}

const std::pair<i64, i64> kAwkward[] = {{1, 1}, {7, 65}, {65, 7}, {127, 127}, {257, 257},
                                        {1, 257}, {257, 1}, {65, 129}, {50, 100}};
const da::MaskKind kMasks[] = {da::MaskKind::none, da::MaskKind::causal, da::MaskKind::window};

template <class Elem>
void awkward_sizes(std::uint64_t seed) {
  for (auto [N, S] : kAwkward)
    for (da::MaskKind m : kMasks) run_case<Elem>(shape(N, S, 4, 2, 32, m), ++seed);
}

template <class Elem>
void head_dims_and_gqa(std::uint64_t seed) {
  for (i64 d : {32, 64, 128})
    for (i64 hkv : {4, 2, 1})
      for (da::MaskKind m : kMasks) {
        Shape s = shape(d == 128 ? 70 : 130, d == 128 ? 97 : 150, 4, hkv, d, m);
        s.B = hkv == 2 ? 2 : 1;
        run_case<Elem>(s, ++seed);
      }
}

}  // namespace

TEST_CASE("cpu forward f32: awkward sizes x masks x threads") { awkward_sizes<float>(100); }
TEST_CASE("cpu forward f16: awkward sizes x masks x threads") { awkward_sizes<da::half>(200); }
TEST_CASE("cpu forward bf16: awkward sizes x masks x threads") { awkward_sizes<da::bfloat16>(300); }
TEST_CASE("cpu forward f32: head dims 32/64/128 x GQA 1/2/4 x masks") { head_dims_and_gqa<float>(400); }
TEST_CASE("cpu forward f16: head dims 32/64/128 x GQA 1/2/4 x masks") { head_dims_and_gqa<da::half>(500); }
TEST_CASE("cpu forward bf16: head dims 32/64/128 x GQA 1/2/4 x masks") { head_dims_and_gqa<da::bfloat16>(600); }

TEST_CASE("cpu forward: other head dims (8, 40, 256), odd and wide") {
  std::uint64_t seed = 700;
  for (i64 d : {8, 40, 256}) {
    run_case<float>(shape(33, 70, 2, 1, d, da::MaskKind::causal), ++seed);
    run_case<da::bfloat16>(shape(33, 70, 2, 1, d, da::MaskKind::none), ++seed);
  }
}

TEST_CASE("cpu forward: norms, per-head lambda, split BHSD layout, windows") {
  std::uint64_t seed = 800;
  Shape s = shape(100, 90, 4, 2, 64, da::MaskKind::none);
  s.norm = da::NormKind::group; s.beta = true;
  run_case<float>(s, ++seed, /*split=*/true);
  run_case<da::half>(s, ++seed);
  s.mask = da::MaskKind::causal;  // fully masked rows with a bias: out = (1 - lambda_init) beta
  s.N = 100; s.S = 40;
  run_case<float>(s, ++seed);
  s = shape(90, 100, 4, 4, 32, da::MaskKind::window);
  s.norm = da::NormKind::none; s.gamma = false; s.per_head = true;
  run_case<float>(s, ++seed, /*split=*/true);
  s.norm = da::NormKind::rms; s.gamma = false;
  s.wl = 0; s.wr = 0;  // each row sees one key
  run_case<da::bfloat16>(s, ++seed);
  s.wl = 5; s.wr = -1;  // unbounded on the right
  run_case<float>(s, ++seed);
  s.wl = -1; s.wr = 7;  // unbounded on the left
  s.N = 200; s.S = 70;  // rows past the keys: fully masked
  run_case<float>(s, ++seed);
  // lambda = e^27.5 = 8.8e11, just below validation's bound 2^40: the fp32 norm stays finite
  s = shape(70, 90, 2, 1, 64, da::MaskKind::causal);
  s.lambda_dot1 = 27.5;
  run_case<float>(s, ++seed);
  run_case<da::half>(s, ++seed);
  s.norm = da::NormKind::group; s.beta = true;
  run_case<da::bfloat16>(s, ++seed);
}

TEST_CASE("cpu forward: DIFF V2, every element type, masks, GQA, head dims") {
  std::uint64_t seed = 1300;
  for (da::MaskKind m : {da::MaskKind::none, da::MaskKind::causal, da::MaskKind::window}) {
    Shape s = shape(70, 97, 4, 2, 64, m);
    s.v2 = true;
    run_case<float>(s, ++seed);
    run_case<da::half>(s, ++seed);
    run_case<da::bfloat16>(s, ++seed);
  }
  for (i64 d : {32, 128}) {
    Shape s = shape(33, 130, 3, 1, d, da::MaskKind::causal);  // MQA 3:1
    s.v2 = true; s.logit_scale = 5;
    run_case<float>(s, ++seed, /*split=*/true);
    run_case<da::bfloat16>(s, ++seed);
  }
  Shape s = shape(100, 40, 2, 2, 64, da::MaskKind::causal);  // N > S: fully masked rows
  s.v2 = true;
  run_case<float>(s, ++seed);
}

TEST_CASE("cpu forward: the DiffLlama layout gives the official layout's result bit for bit") {
  std::uint64_t seed = 1400;
  auto one = [&](auto tag, const Shape& s) {
    using Elem = decltype(tag);
    INFO(da::dtype_name(da::dtype_of_v<Elem>) << " " << s.str());
    Problem<Elem> pr(s, ++seed);
    DiffLlamaCopy<Elem> dl(pr);
    da::Params p = pr.params();
    p.extras = {};
    for (int threads : {1, 2}) {
      da::cpu::Options opt;
      opt.num_threads = threads;
      pr.out.assign(pr.out.size(), poison<Elem>());
      dl.out.assign(dl.out.size(), poison<Elem>());
      REQUIRE(da::cpu::forward(p, opt).ok());
      REQUIRE(da::cpu::forward(dl.p, opt).ok());
      for (auto x : dl.out) REQUIRE(!std::isnan(static_cast<double>(static_cast<float>(x))));
      CHECK(same_bits(pr.out, dl.out));
    }
  };
  for (i64 hkv : {1, 2, 4}) {  // DiffLlama's Hkvq = 2 Hkv
    Shape s = shape(37, 70, 4, hkv, 64, da::MaskKind::causal);
    s.gamma = false;  // DiffLlama's RMSNorm has no weight
    one(float{}, s);
    one(da::bfloat16{}, s);
    one(da::half{}, s);
  }
  Shape w = shape(50, 50, 2, 1, 32, da::MaskKind::window);
  w.wl = 7; w.wr = 3; w.norm = da::NormKind::group; w.beta = true;
  one(float{}, w);
}

TEST_CASE("cpu forward: decoding (N = 1, long S) splits keys and matches") {
  std::uint64_t seed = 900;
  for (i64 S : {1000, 4097}) {
    run_case<float>(shape(1, S, 2, 1, 64, da::MaskKind::causal), ++seed);
    run_case<da::bfloat16>(shape(3, S, 1, 1, 128, da::MaskKind::window), ++seed);
  }
}

TEST_CASE("cpu forward: decode items (1 to 16 rows per sequence), every row count, packing across KV groups") {
  // On the avx512bf16 path these are its decode items (keys along the lanes, P in bf16); on the
  // other paths the same problems run the common items. Row counts 1 to 16 (N x the heads of
  // one or several whole KV groups), MHA and GQA up to 16:1, every mask, V2, d = 32 to 256,
  // key counts around the 64-key blocks and 16-key vectors, splits (4 threads).
  std::uint64_t seed = 1500;
  struct Case { i64 N, S, H, Hkv, d; da::MaskKind m; bool v2; };
  const Case cases[] = {
      {1, 300, 16, 2, 64, da::MaskKind::causal, false},   // GQA 8:1, two groups per item (16 rows)
      {1, 64, 16, 2, 64, da::MaskKind::none, false},      // one full block
      {1, 17, 8, 8, 32, da::MaskKind::none, false},       // MHA: 8 groups of one row per item
      {1, 129, 6, 2, 64, da::MaskKind::window, false},    // rep 3, two groups: 6 rows
      {2, 200, 8, 1, 128, da::MaskKind::causal, false},   // 16 rows of one group, two tokens
      {3, 95, 4, 1, 64, da::MaskKind::window, false},     // 12 rows, window cuts keys per row
      {5, 33, 3, 3, 32, da::MaskKind::causal, false},     // 5 rows, MHA
      {1, 250, 16, 1, 64, da::MaskKind::causal, false},   // GQA 16:1: 16 rows of one group
      {1, 77, 16, 4, 64, da::MaskKind::none, true},       // V2, four groups of 4 rows
      {2, 70, 8, 2, 32, da::MaskKind::causal, true},      // V2, 8 rows of one group
      {1, 80, 2, 1, 256, da::MaskKind::none, false},      // the widest head
      {1, 1, 8, 2, 64, da::MaskKind::causal, false},      // one key
      {1, 66, 4, 2, 40, da::MaskKind::none, false},       // d % 32 != 0: the common items
  };
  for (const Case& c : cases) {
    Shape s = shape(c.N, c.S, c.H, c.Hkv, c.d, c.m);
    s.v2 = c.v2;
    if (c.m == da::MaskKind::window) { s.wl = 40; s.wr = 0; }
    run_case<da::bfloat16>(s, ++seed);
    if (c.S > 100) run_case<float>(s, ++seed);
  }
  Shape s = shape(1, 500, 8, 1, 64, da::MaskKind::causal);  // per-head lambda and a group norm
  s.per_head = true; s.norm = da::NormKind::group; s.beta = true;
  // (with seed 1518 in the split BHSD layout the group norm's mean, 0.0096 from 128 channels that
  // mostly cancel, came out at 2.09x the naive computation's error on one row: the kernel rounds
  // exp2(s - m) against its running max, the naive model against the row's final max, so the two
  // 2^-9 roundings per term are independent and their sums' ratio has a tail past 2)
  run_case<da::bfloat16>(s, ++seed);
}

TEST_CASE("cpu forward: results do not depend on the thread count without key splits") {
  Shape s = shape(300, 200, 4, 2, 64, da::MaskKind::causal);
  Problem<float> a(s, 1), b(s, 1);
  da::Params pa = a.params(), pb = b.params();
  da::cpu::Options o1, o2;
  o1.num_threads = 1;
  o2.num_threads = 2;
  REQUIRE(da::cpu::forward(pa, o1).ok());
  REQUIRE(da::cpu::forward(pb, o2).ok());
  CHECK(same_bits(a.out, b.out));
  CHECK(same_bits(a.lse1, b.lse1));
}

TEST_CASE("cpu forward: concurrent callers run concurrently, each bitwise as alone") {
  // Four threads call at once (2 threads each, pool workspaces), on different problems; every
  // result equals the same call made alone.
  std::vector<Shape> shapes;
  for (int i = 0; i < 4; ++i) shapes.push_back(shape(70 + 40 * i, 90 + 30 * i, 2, 1, 32 << (i % 2), da::MaskKind::causal));
  std::vector<std::unique_ptr<Problem<float>>> alone, together;
  for (int i = 0; i < 4; ++i) {
    alone.emplace_back(new Problem<float>(shapes[i], 30 + i));
    together.emplace_back(new Problem<float>(shapes[i], 30 + i));
    da::Params p = alone[i]->params();
    da::cpu::Options o;
    o.num_threads = 2;
    REQUIRE(da::cpu::forward(p, o).ok());
  }
  std::vector<da::Status> st(4, da::Status::Internal("not run"));
  std::vector<std::thread> th;
  for (int i = 0; i < 4; ++i)
    th.emplace_back([&, i] {
      da::Params p = together[i]->params();
      da::cpu::Options o;
      o.num_threads = 2;
      for (int rep = 0; rep < 3 && (rep == 0 || st[i].ok()); ++rep) st[i] = da::cpu::forward(p, o);
    });
  for (auto& t : th) t.join();
  for (int i = 0; i < 4; ++i) {
    INFO("caller " << i);
    CHECK(st[i].ok());
    CHECK(same_bits(alone[i]->out, together[i]->out));
    CHECK(same_bits(alone[i]->lse1, together[i]->lse1));
  }
}

TEST_CASE("cpu forward: a small call is not held up by a long one running in another thread") {
  // Before, one mutex serialised whole calls: the small call waited for the long one to end.
  Shape big = shape(2048, 2048, 4, 4, 64, da::MaskKind::none), small = shape(16, 16, 1, 1, 32, da::MaskKind::none);
  Problem<float> a(big, 1), b(small, 2);
  da::Params pa = a.params(), pb = b.params();
  da::cpu::Options o;
  o.num_threads = 1;
  using clock = std::chrono::steady_clock;
  std::atomic<bool> started{false};
  clock::time_point a_end, b_end;
  std::thread ta([&] {
    started = true;
    REQUIRE(da::cpu::forward(pa, o).ok());
    a_end = clock::now();
  });
  while (!started) std::this_thread::yield();
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  REQUIRE(da::cpu::forward(pb, o).ok());
  b_end = clock::now();
  ta.join();
  CHECK(b_end < a_end);
}

TEST_CASE("cpu forward: caller scratch") {
  Shape s = shape(70, 90, 2, 1, 32, da::MaskKind::none);
  Problem<float> a(s, 3), b(s, 3);
  da::Params pa = a.params(), pb = b.params();
  da::cpu::Options o;
  o.num_threads = 2;
  std::vector<unsigned char> buf(da::cpu::workspace_bytes(pb, o) + 3);
  REQUIRE(da::cpu::forward(pa, o).ok());
  o.scratch = buf.data() + 3;  // any alignment
  o.scratch_bytes = buf.size() - 3;
  REQUIRE(da::cpu::forward(pb, o).ok());
  CHECK(same_bits(a.out, b.out));
}

TEST_CASE("cpu forward: fully masked rows stay finite at the smallest eps validation accepts") {
  // causal with N > S: the first N - S rows see no key (A = 0); before eps was bounded below,
  // eps = 1e-80 made rstd = 1/sqrt(eps) overflow fp32 and those rows NaN
  for (da::NormKind norm : {da::NormKind::rms, da::NormKind::group}) {
    Shape s = shape(40, 20, 2, 1, 32, da::MaskKind::causal);
    s.norm = norm;
    s.beta = norm == da::NormKind::group;
    Problem<float> a(s, 6), r(s, 6);
    da::Params p = a.params(), pr = r.params();
    p.norm.eps = pr.norm.eps = 1e-30;
    REQUIRE(da::cpu::forward(p).ok());
    REQUIRE(da::reference::forward<float>(pr).ok());
    for (std::size_t i = 0; i < a.out.size(); ++i) {
      REQUIRE(std::isfinite(a.out[i]));
      REQUIRE(std::isfinite(r.out[i]));
    }
    for (i64 ch = 0; ch < 64; ++ch) CHECK(a.out[ch] == (s.beta ? r.out[ch] : 0.0f));  // row 0: no key
    p.norm.eps = 1e-80;
    CHECK(da::cpu::forward(p).code() == da::StatusCode::invalid_argument);
  }
}

TEST_CASE("cpu forward: NaN in an input row shows up in that row's output") {
  Shape s = shape(20, 20, 1, 1, 32, da::MaskKind::none);
  Problem<float> a(s, 5);
  a.q[3 * 2 * 32 + 1] = std::numeric_limits<float>::quiet_NaN();  // row 3 of q1
  da::Params p = a.params();
  REQUIRE(da::cpu::forward(p).ok());
  CHECK(std::isnan(a.out[3 * 64]));
  CHECK(std::isfinite(a.out[2 * 64]));
}

TEST_CASE("cpu forward: NaN in K, V or Q of a decode item reaches exactly the rows that use it") {
  // bf16, one token, GQA 8:1 over two groups: one decode item holds both groups on avx512bf16
  const i64 S = 100, H = 16, G = 2, d = 64;
  const Shape s = shape(1, S, H, G, d, da::MaskKind::none);
  auto out_nan = [&](const Problem<da::bfloat16>& pr, i64 h) {
    bool any = false, all = true;
    for (i64 ch = 0; ch < 2 * d; ++ch) {
      const bool n = std::isnan(static_cast<float>(pr.out[h * 2 * d + ch]));
      any = any || n;
      all = all && n;
    }
    REQUIRE(any == all);  // a row is NaN in every channel (the norm spreads it) or in none
    return any;
  };
  const auto nan = da::bfloat16(std::numeric_limits<float>::quiet_NaN());
  for (int where = 0; where < 4; ++where) {
    INFO("NaN in " << (where == 0 ? "K_1 of group 1" : where == 1 ? "K_2 of group 0" : where == 2 ? "V of group 0" : "Q_1 of head 11"));
    Problem<da::bfloat16> pr(s, 77);
    if (where == 0) pr.k[((37 * G + 1) * 2 + 0) * d + 5] = nan;
    if (where == 1) pr.k[((99 * G + 0) * 2 + 1) * d + 63] = nan;  // the last key, second component
    if (where == 2) pr.v[(64 * G + 0) * 2 * d + 100] = nan;       // first key of the second block
    if (where == 3) pr.q[(11 * 2 + 0) * d + 17] = nan;
    da::Params p = pr.params();
    REQUIRE(da::cpu::forward(p).ok());
    for (i64 h = 0; h < H; ++h) {
      const bool want = where == 0 ? h / 8 == 1 : where == 3 ? h == 11 : h / 8 == 0;
      CHECK_MESSAGE(out_nan(pr, h) == want, "head " << h);
    }
  }
}

TEST_CASE("cpu forward: bad input returns validate()'s status and writes nothing") {
  Shape s = shape(9, 9, 2, 1, 32, da::MaskKind::causal);
  auto untouched = [](const Problem<float>& pr) {
    for (float x : pr.out) if (!std::isnan(x)) return false;
    for (float x : pr.lse1) if (!std::isnan(x)) return false;
    return true;
  };
  {
    Problem<float> pr(s, 1);
    da::Params p = pr.params();
    p.q1.ptr = nullptr;
    const da::Status st = da::cpu::forward(p);
    CHECK(st.code() == da::StatusCode::invalid_argument);
    CHECK(st.message().find("q1") != std::string::npos);
    CHECK(untouched(pr));
  }
  {
    Problem<double> pr(s, 1);
    da::Params p = pr.params();
    CHECK(da::cpu::forward(p).code() == da::StatusCode::unsupported);  // f64 elements
  }
  {
    Shape t = s;
    t.d = 264;
    Problem<float> pr(t, 1);
    da::Params p = pr.params();
    const da::Status st = da::cpu::forward(p);
    CHECK(st.code() == da::StatusCode::unsupported);
    CHECK(st.message().find("head_dim") != std::string::npos);
  }
  {
    Problem<float> pr(s, 1);
    da::Params p = pr.params();
    p.heads = 3;  // not a multiple of kv_heads... and of the buffers
    p.kv_heads = 2;
    CHECK(da::cpu::forward(p).code() == da::StatusCode::invalid_argument);
    CHECK(untouched(pr));
  }
  {
    Problem<float> pr(s, 1);
    da::Params p = pr.params();
    p.out.ptr = pr.q.data();  // output over an input
    CHECK(da::cpu::forward(p).code() == da::StatusCode::invalid_argument);
  }
  {
    Problem<float> pr(s, 1);
    da::Params p = pr.params();
    da::cpu::Options o;
    o.num_threads = -1;
    CHECK(da::cpu::forward(p, o).code() == da::StatusCode::invalid_argument);
    o.num_threads = 1;
    unsigned char small[16];
    o.scratch = small;
    o.scratch_bytes = sizeof small;
    const da::Status st = da::cpu::forward(p, o);
    CHECK(st.code() == da::StatusCode::invalid_argument);
    CHECK(st.message().find("scratch") != std::string::npos);
    CHECK(untouched(pr));
  }
}
