// Randomized tests of every forward backend (ctest label fuzz), seeded and time-bounded:
//
//   differential: random valid problems (shapes, GQA, strides with gaps, masks with any window,
//     norms, per-head lambda, extras, threads, element types) through reference<float>,
//     cpu::forward and the CUDA kernel under the emulator (random schedules), each against
//     reference<double> on the same rounded inputs, every output element checked; every output
//     buffer sits between guard elements and has gaps in its strides, all filled with a sentinel
//     bit pattern that must survive wherever the call may not write;
//   bad input: mutations of valid params that every backend must reject with a message, writing
//     nothing (bitwise), and mutations that are valid and must give the right answer; the same
//     for the backward backends (reference::backward, cpu::backward, the emulated CUDA backward),
//     with the forward's mutations and the backward's own (gradients, dout, saved tensors).
//
//   serving: random serving layouts (Params::seq: ragged batches, caches, pages of any size,
//     appends, splits) through reference::forward's oracle path and cpu::forward, every
//     sequence against the double reference of its dense problem (tests/support/serving.hpp).
//
// DIFFATTN_FUZZ_SECONDS (default 20) bounds each test case's time, DIFFATTN_FUZZ_SEED (default
// 1) picks the run; each case prints its seed, so a failure is replayed with the same seed.
#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <diffattn/cpu/backward.hpp>
#include <diffattn/cpu/forward.hpp>
#include <diffattn/cuda/emulated.hpp>
#include <diffattn/diffattn.hpp>

#include "cuda/forward_check.hpp"  // dt::check_forward_served: one serving case of a cuda configuration
#include "support/problem.hpp"  // dt::Problem: the backward's buffers
#include "support/serving.hpp"  // dt::Served: the serving layouts' problems

namespace da = diffattn;
using i64 = std::int64_t;

namespace {

double env_double(const char* name, double dflt) {
  const char* v = std::getenv(name);
  return v && *v ? std::atof(v) : dflt;
}

/// A buffer of elements of `bytes_per` bytes with `guard` sentinel elements on both sides.
struct Buffer {
  static constexpr int kGuard = 16;
  std::vector<unsigned char> raw;
  std::size_t n = 0, bytes_per = 0;
  Buffer() = default;
  Buffer(std::size_t n_, std::size_t bytes_per_) : raw((n_ + 2 * kGuard) * bytes_per_ + 16), n(n_), bytes_per(bytes_per_) {}
  unsigned char* base() {  // 16-byte aligned start of element 0
    auto p = reinterpret_cast<std::uintptr_t>(raw.data()) + kGuard * bytes_per;
    return reinterpret_cast<unsigned char*>((p + 15) & ~std::uintptr_t{15});
  }
  void* data() { return n ? base() : nullptr; }
  void fill_sentinel() { std::memset(raw.data(), 0xA7, raw.size()); }
  /// Element indices [0, n) where the call may write: `written`; checks the sentinel elsewhere.
  std::size_t stray_writes(const std::vector<char>& written) {
    std::size_t bad = 0;
    const unsigned char* b = base();
    for (std::size_t i = 0; i < raw.size(); ++i) {
      const std::ptrdiff_t off = &raw[i] - b;
      const bool inside = off >= 0 && static_cast<std::size_t>(off) < n * bytes_per;
      if (inside && written[static_cast<std::size_t>(off) / bytes_per]) continue;
      bad += raw[i] != 0xA7;
    }
    return bad;
  }
  bool untouched() {
    for (unsigned char c : raw)
      if (c != 0xA7) return false;
    return true;
  }
};

std::size_t elem_bytes(da::DType t) { return t == da::DType::f32 ? 4 : (t == da::DType::f64 ? 8 : 2); }

void store(void* p, std::size_t i, da::DType t, double x) {
  switch (t) {
    case da::DType::f32: static_cast<float*>(p)[i] = static_cast<float>(x); break;
    case da::DType::f64: static_cast<double*>(p)[i] = x; break;
    case da::DType::f16: static_cast<da::half*>(p)[i] = da::half(static_cast<float>(x)); break;
    default: static_cast<da::bfloat16*>(p)[i] = da::bfloat16(static_cast<float>(x)); break;
  }
}
double load(const void* p, std::size_t i, da::DType t) {
  switch (t) {
    case da::DType::f32: return static_cast<const float*>(p)[i];
    case da::DType::f64: return static_cast<const double*>(p)[i];
    case da::DType::f16: return static_cast<float>(static_cast<const da::half*>(p)[i]);
    default: return static_cast<float>(static_cast<const da::bfloat16*>(p)[i]);
  }
}
double unit_roundoff(da::DType t) {
  return t == da::DType::f16 ? 0x1p-11 : (t == da::DType::bf16 ? 0x1p-8 : (t == da::DType::f32 ? 0x1p-24 : 0x1p-53));
}

/// One random problem: sizes, layout with gaps, options; data generated once in double and
/// stored in a backend's element type (the double reference reads the same rounded values).
struct Case {
  i64 B, N, S, H, Hkv, d;
  da::MaskParams mask;
  da::NormKind norm;
  bool gamma, beta, per_head, extras[6];  // lse1 lse2 attn o2 rstd mean
  double lambda_init, eps = 1e-5, scale = 0;
  i64 gap_h, gap_t, gap_b;  // element gaps in head, token and batch strides
  bool v2 = false;       // DIFF V2: one K, V of d channels, lambda from logits, no norm
  bool split_v = false;  // V1: V's halves as two KV heads of d channels (the DiffLlama layout)
  std::uint64_t seed;
  std::string str() const {
    char b[360];
    std::snprintf(b, sizeof b,
                  "seed %llu: B=%lld N=%lld S=%lld H=%lld Hkv=%lld d=%lld mask=%d(%lld,%lld) norm=%d gamma=%d beta=%d "
                  "per_head=%d lambda_init=%g extras=%d%d%d%d%d%d gaps=%lld,%lld,%lld v2=%d split_v=%d",
                  (unsigned long long)seed, (long long)B, (long long)N, (long long)S, (long long)H, (long long)Hkv,
                  (long long)d, int(mask.kind), (long long)mask.window_left, (long long)mask.window_right, int(norm),
                  gamma, beta, per_head, lambda_init, extras[0], extras[1], extras[2], extras[3], extras[4], extras[5],
                  (long long)gap_h, (long long)gap_t, (long long)gap_b, int(v2), int(split_v));
    return b;
  }
};

Case random_case(std::uint64_t seed, const std::vector<i64>& dims, bool allow_v2 = true) {
  std::mt19937_64 r(seed);
  auto pick = [&](i64 lo, i64 hi) { return std::uniform_int_distribution<i64>(lo, hi)(r); };
  Case c{};
  c.seed = seed;
  c.B = pick(1, 2);
  c.N = pick(1, 3) == 1 ? pick(1, 8) : pick(1, 80);
  c.S = pick(1, 3) == 1 ? pick(1, 8) : pick(1, 80);
  c.Hkv = pick(1, 2);
  c.H = c.Hkv * pick(1, 3);
  c.d = dims[static_cast<std::size_t>(pick(0, static_cast<i64>(dims.size()) - 1))];
  c.mask.kind = static_cast<da::MaskKind>(pick(0, 2));
  if (c.mask.kind == da::MaskKind::window) {
    c.mask.window_left = pick(-1, 40);
    c.mask.window_right = c.mask.window_left < 0 ? pick(0, 40) : pick(-1, 40);  // both unbounded is no mask
  }
  c.norm = static_cast<da::NormKind>(pick(0, 2));
  c.gamma = c.norm != da::NormKind::none && pick(0, 1);
  c.beta = c.norm == da::NormKind::group && pick(0, 1);
  c.per_head = pick(0, 1);
  for (bool& e : c.extras) e = pick(0, 2) == 0;
  c.lambda_init = std::uniform_real_distribution<double>(-1, 1)(r);
  if (pick(0, 3) == 0) c.scale = std::uniform_real_distribution<double>(0.05, 0.5)(r);
  c.gap_h = pick(0, 2) * 8;  // multiples of 8 elements keep 16-byte alignment for CUDA
  c.gap_t = pick(0, 2) * 8;
  c.gap_b = pick(0, 1) * 8;
  c.v2 = allow_v2 && pick(0, 3) == 0;
  if (c.v2) {
    c.norm = da::NormKind::none;
    c.gamma = c.beta = c.per_head = false;
    c.lambda_init = 0;  // unset in the params; 0 here makes compare()'s out scale 1
  } else {
    c.split_v = pick(0, 2) == 0;
  }
  return c;
}

/// Buffers and Params of a case in one element type (outputs poisoned, guards around each).
struct Run {
  da::DType dt;
  Buffer q, k, v, out, side[6], logits;
  std::vector<float> lam, gamma, beta;
  std::vector<double> lam_d, gamma_d, beta_d;
  da::Params p;
  std::vector<char> out_mask;  // which elements of `out` the call writes
  i64 qs_h, qs_t, qs_b, ks_h, ks_t, ks_b, vs_h, vs_t, vs_b, os_h, os_t, os_b;

  Run(const Case& c, da::DType t) : dt(t) {
    std::mt19937_64 r(c.seed * 7919 + 1);
    std::normal_distribution<double> nd(0, 1);
    const i64 d = c.d, dv = c.v2 ? d : 2 * d;
    // token-major [B, T, H, 2d] layouts with gaps: q = (q1 | q2) per head, k likewise (V2: one K
    // of d per head); V [B, S, Hkv, dv], or split_v: [B, S, 2 Hkv, d], half c of group g at head
    // c Hkv + g (DiffLlama's)
    qs_h = 2 * d + c.gap_h; qs_t = c.H * qs_h + c.gap_t; qs_b = c.N * qs_t + c.gap_b;
    ks_h = (c.v2 ? d : 2 * d) + c.gap_h; ks_t = c.Hkv * ks_h + c.gap_t; ks_b = c.S * ks_t + c.gap_b;
    if (c.split_v) {
      vs_h = d + c.gap_h; vs_t = 2 * c.Hkv * vs_h + c.gap_t;
    } else {
      vs_h = dv + c.gap_h; vs_t = c.Hkv * vs_h + c.gap_t;
    }
    vs_b = c.S * vs_t + c.gap_b;
    os_h = dv + c.gap_h; os_t = c.H * os_h + c.gap_t; os_b = c.N * os_t + c.gap_b;
    const std::size_t eb = elem_bytes(t);
    q = Buffer(static_cast<std::size_t>(c.B * qs_b), eb);
    k = Buffer(static_cast<std::size_t>(c.B * ks_b), eb);
    v = Buffer(static_cast<std::size_t>(c.B * vs_b), eb);
    out = Buffer(static_cast<std::size_t>(c.B * os_b), eb);
    // the same values for every element type: drawn in double, rounded to bf16 (exact in all)
    auto fill = [&](Buffer& b, double sc) {
      std::mt19937_64 rr(c.seed * 31 + b.n);
      std::normal_distribution<double> n1(0, sc);
      for (std::size_t i = 0; i < b.n; ++i) store(b.data(), i, t, static_cast<float>(da::bfloat16(static_cast<float>(n1(rr)))));
    };
    fill(q, 1.0); fill(k, 1.0); fill(v, 1.0);
    const bool dbl0 = t == da::DType::f64;
    if (c.v2) {  // logits [B, N, H], contiguous, in the side type (fp32, double for f64)
      logits = Buffer(static_cast<std::size_t>(c.B * c.N * c.H), dbl0 ? 8 : 4);
      std::mt19937_64 rz(c.seed * 17 + 3);
      std::normal_distribution<double> nz(0, 2);
      for (std::size_t i = 0; i < logits.n; ++i) {
        const double z = static_cast<float>(nz(rz));
        if (dbl0) static_cast<double*>(logits.data())[i] = z;
        else static_cast<float*>(logits.data())[i] = static_cast<float>(z);
      }
    }
    const std::size_t nl = static_cast<std::size_t>((c.per_head ? c.H : 1) * d);
    for (auto* x : {&lam_d}) x->resize(4 * nl);
    std::mt19937_64 rl(c.seed * 13 + 5);
    std::normal_distribution<double> nl1(0, 0.1);
    for (double& x : lam_d) x = static_cast<float>(nl1(rl));
    gamma_d.resize(static_cast<std::size_t>(dv));
    beta_d.resize(static_cast<std::size_t>(dv));
    for (double& x : gamma_d) x = static_cast<float>(1 + 0.5 * nl1(rl) * 10);
    for (double& x : beta_d) x = static_cast<float>(nl1(rl) * 5);
    lam.assign(lam_d.begin(), lam_d.end());
    gamma.assign(gamma_d.begin(), gamma_d.end());
    beta.assign(beta_d.begin(), beta_d.end());
    const bool dbl = t == da::DType::f64;
    const std::size_t rows = static_cast<std::size_t>(c.B * c.H * c.N), sb = dbl ? 8 : 4;
    const std::size_t side_n[6] = {rows, rows, rows * dv, rows * dv, rows, rows};
    for (int e = 0; e < 6; ++e) side[e] = Buffer(c.extras[e] ? side_n[e] : 0, sb);
    for (auto& b : side) b.fill_sentinel();
    out.fill_sentinel();
    out_mask.assign(out.n, 0);
    for (i64 b = 0; b < c.B; ++b)
      for (i64 i = 0; i < c.N; ++i)
        for (i64 h = 0; h < c.H; ++h)
          for (i64 x = 0; x < dv; ++x) out_mask[static_cast<std::size_t>(b * os_b + i * os_t + h * os_h + x)] = 1;

    p.batch = c.B; p.seqlen_q = c.N; p.seqlen_k = c.S; p.heads = c.H; p.kv_heads = c.Hkv; p.head_dim = d;
    p.dtype = t;
    p.softmax_scale = c.scale;
    auto* qb = static_cast<unsigned char*>(q.data());
    auto* kb = static_cast<unsigned char*>(k.data());
    p.q1 = {qb, qs_b, qs_t, qs_h};
    p.q2 = {qb + d * eb, qs_b, qs_t, qs_h};
    p.k1 = {kb, ks_b, ks_t, ks_h};
    p.out = {out.data(), os_b, os_t, os_h};
    p.mask = c.mask;
    if (c.v2) {
      p.variant = da::Variant::diff_v2;
      p.v_lo = {v.data(), vs_b, vs_t, vs_h};
      p.lambda.logits = {logits.data(), c.N * c.H, c.H, 1};
      p.norm.kind = da::NormKind::none;
      void* ex[6];
      for (int e = 0; e < 6; ++e) ex[e] = side[e].data();
      p.extras = {ex[0], ex[1], ex[2], ex[3], ex[4], ex[5]};
      return;
    }
    p.k2 = {kb + d * eb, ks_b, ks_t, ks_h};
    if (c.split_v) {
      auto* vb = static_cast<unsigned char*>(v.data());
      p.v_lo = {vb, vs_b, vs_t, vs_h};
      p.v_hi = {vb + c.Hkv * vs_h * static_cast<i64>(eb), vs_b, vs_t, vs_h};
    } else {
      p.set_v({v.data(), vs_b, vs_t, vs_h});
    }
    const void* lv = dbl ? static_cast<const void*>(lam_d.data()) : lam.data();
    const std::size_t step = nl * (dbl ? 8 : 4);
    p.lambda = {lv, static_cast<const unsigned char*>(lv) + step, static_cast<const unsigned char*>(lv) + 2 * step,
                static_cast<const unsigned char*>(lv) + 3 * step, c.per_head, c.lambda_init};
    p.norm.kind = c.norm;
    p.norm.eps = c.eps;
    p.norm.gamma = c.gamma ? (dbl ? static_cast<const void*>(gamma_d.data()) : gamma.data()) : nullptr;
    p.norm.beta = c.beta ? (dbl ? static_cast<const void*>(beta_d.data()) : beta.data()) : nullptr;
    void* ex[6];
    for (int e = 0; e < 6; ++e) ex[e] = side[e].data();
    p.extras = {ex[0], ex[1], ex[2], ex[3], ex[4], ex[5]};
  }

  /// Nothing outside the output's elements and the requested extras was written.
  std::size_t stray() {
    std::size_t bad = out.stray_writes(out_mask);
    for (auto& b : side) bad += b.stray_writes(std::vector<char>(b.n, 1));
    return bad;
  }
  bool untouched() {
    bool ok = out.untouched();
    for (auto& b : side) ok = ok && b.untouched();
    return ok;
  }
  double out_at(const Case& c, i64 b, i64 i, i64 h, i64 x) const {
    return load(const_cast<Buffer&>(out).base(), static_cast<std::size_t>(b * os_b + i * os_t + h * os_h + x), dt);
  }
  double side_at(int e, std::size_t i) const {
    const void* p0 = const_cast<Buffer&>(side[e]).base();
    return dt == da::DType::f64 ? static_cast<const double*>(p0)[i] : static_cast<const float*>(p0)[i];
  }
};

/// Every element of a backend's run against the double reference (ref: a Run in f64 with every
/// extra requested). u: the element type's unit roundoff; p_rounded: P is rounded to it before
/// P V (tensor-core kernels). Returns the number of bad elements (reported with CHECKs).
std::size_t compare(const Case& c, Run& got, Run& ref, double u, bool p_rounded, const std::string& who) {
  INFO(who << ", " << c.str());
  const i64 dv = c.v2 ? c.d : 2 * c.d;
  std::size_t bad = 0;
  double vmax = 0;
  for (std::size_t i = 0; i < ref.v.n; ++i) vmax = std::max(vmax, std::fabs(load(ref.v.base(), i, da::DType::f64)));
  // the error of A: fp32 accumulation (a few ulps of the sum of |P V|), and, where P is rounded
  // to 16 bits, u of each |P_c V| term: at most (1 + |lambda|) u max|V| per row
  double lam_max = c.v2 ? 1.0 : 0.0;  // V2: sigmoid, in (0, 1)
  for (i64 h = 0; h < (c.v2 ? 0 : (c.per_head ? c.H : 1)); ++h) {
    double dot[2] = {0, 0};
    for (i64 x = 0; x < c.d; ++x)
      for (int j = 0; j < 2; ++j) dot[j] += ref.lam_d[(2 * j) * (ref.lam_d.size() / 4) + h * c.d + x] * ref.lam_d[(2 * j + 1) * (ref.lam_d.size() / 4) + h * c.d + x];
    lam_max = std::max(lam_max, std::fabs(std::exp(dot[0]) - std::exp(dot[1]) + c.lambda_init));
  }
  const double tol_a = (1 + lam_max) * vmax * ((p_rounded ? 2 * u : 0) + 1e-5);
  double gmax = 1;
  for (double g : ref.gamma_d) gmax = std::max(gmax, std::fabs(g));
  for (i64 b = 0; b < c.B; ++b)
    for (i64 h = 0; h < c.H; ++h)
      for (i64 i = 0; i < c.N; ++i) {
        const std::size_t row = static_cast<std::size_t>((b * c.H + h) * c.N + i);
        const double rstd = ref.side_at(4, row);
        // y = (A - mean) rstd gamma (+ beta): an error e in A moves y by at most about 2 e rstd |gamma|
        const double tol_y = std::fabs(1 - c.lambda_init) * (3 * tol_a * rstd * gmax) + 1e-6;
        for (i64 x = 0; x < dv; ++x) {
          const double want = ref.out_at(c, b, i, h, x), have = got.out_at(c, b, i, h, x);
          const double tol = tol_y + 2 * u * std::fabs(want);
          if (!(std::fabs(have - want) <= tol)) {
            if (bad < 3) CHECK_MESSAGE(false, "out (" << b << "," << i << "," << h << "," << x << ") = " << have << ", want " << want << " (tol " << tol << ")");
            ++bad;
          }
        }
        auto check_side = [&](int e, std::size_t idx, double tol, const char* name) {
          if (!c.extras[e]) return;
          const double want = ref.side_at(e, idx), have = got.side_at(e, idx);
          const bool same_inf = std::isinf(want) && have == want;
          if (!same_inf && !(std::fabs(have - want) <= tol)) {
            if (bad < 3) CHECK_MESSAGE(false, name << "[" << idx << "] = " << have << ", want " << want << " (tol " << tol << ")");
            ++bad;
          }
        };
        const double lse_tol = 1e-4 * (1 + std::fabs(ref.side_at(0, row))) + 1e-3;
        check_side(0, row, lse_tol, "lse1");
        check_side(1, row, 1e-4 * (1 + std::fabs(ref.side_at(1, row))) + 1e-3, "lse2");
        check_side(4, row, 3 * tol_a * rstd * rstd + 1e-5 * rstd, "rstd");
        check_side(5, row, tol_a + 1e-6, "mean");
        for (i64 x = 0; x < dv; ++x) {
          check_side(2, row * dv + x, tol_a, "attn");
          check_side(3, row * dv + x, vmax * ((p_rounded ? 2 * u : 0) + 1e-5), "o2");
        }
      }
  return bad;
}

template <class F>
void for_a_while(const char* what, F&& one) {
  const double seconds = env_double("DIFFATTN_FUZZ_SECONDS", 20);
  const std::uint64_t seed0 = static_cast<std::uint64_t>(env_double("DIFFATTN_FUZZ_SEED", 1));
  const auto t0 = std::chrono::steady_clock::now();
  int n = 0;
  for (std::uint64_t s = seed0 * 1000003;; ++s) {
    one(s);
    ++n;
    const double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (el > seconds || n >= 100000) break;
  }
  MESSAGE(std::string(what) << ": " << n << " random cases in " << seconds << " s or less (DIFFATTN_FUZZ_SECONDS)");
  CHECK(n >= 10);  // a run that tried next to nothing is not a pass
}

Run reference_run(const Case& c) {
  Case all = c;
  for (bool& e : all.extras) e = true;
  all.extras[3] = true;
  Run ref(all, da::DType::f64);
  const da::Status st = da::reference::forward<double>(ref.p);
  INFO(c.str() << ": " << st.to_string());
  REQUIRE(st.ok());
  return ref;
}

}  // namespace

TEST_CASE("differential: reference<float>, cpu::forward and the emulated CUDA kernel vs reference<double>") {
  std::size_t runs[3] = {0, 0, 0};
  for_a_while("differential", [&](std::uint64_t seed) {
    std::mt19937_64 r(seed ^ 0xABCDEF);
    const int backend = static_cast<int>(seed % 3);
    // CUDA: the configurations this build has (DIFFATTN_CUDA_HEAD_DIMS / _DTYPES), d <= 64 for speed
    std::vector<std::pair<da::DType, i64>> cuda_cfgs;
#define DIFFATTN_X(fmt, dd) \
  if (dd <= 64) cuda_cfgs.emplace_back(da::DType::fmt, i64{dd});
    DIFFATTN_CUDA_FORWARD_CONFIGS(DIFFATTN_X)
#undef DIFFATTN_X
    REQUIRE(!cuda_cfgs.empty());
    const auto cuda_cfg = cuda_cfgs[seed / 3 % cuda_cfgs.size()];
    const std::vector<i64> dims = backend == 2 ? std::vector<i64>{cuda_cfg.second} : std::vector<i64>{8, 16, 24, 40, 64};
    Case c = random_case(seed, dims);
    const da::DType types[3] = {da::DType::f32, da::DType::bf16, da::DType::f16};
    const da::DType t = backend == 0 ? da::DType::f32 : (backend == 2 ? cuda_cfg.first : types[seed / 3 % 3]);
    Run ref = reference_run(c);
    Run got(c, t);
    da::Status st;
    std::string who;
    if (backend == 0) {
      who = "reference<float>";
      st = da::reference::forward<float>(got.p);
    } else if (backend == 1) {
      da::cpu::Options o;
      o.num_threads = 1 + static_cast<int>(seed / 7 % 2);
      who = std::string("cpu::forward ") + da::dtype_name(t) + " threads " + std::to_string(o.num_threads);
      st = da::cpu::forward(got.p, o);
    } else {
      da::simt::emu::LaunchConfig cfg;
      cfg.schedule = seed % 2 ? da::simt::emu::Schedule::random : da::simt::emu::Schedule::deterministic;
      cfg.seed = seed;
      who = std::string("cuda (emulated) ") + da::dtype_name(t);
      st = da::cuda::emulated_forward(got.p, cfg);
    }
    INFO(who << ", " << c.str() << ": " << st.to_string());
    const bool two_pass_o2 = backend == 2 && c.extras[3] && c.d > 64 && !da::cuda::takes_decode_path(got.p);
    if (two_pass_o2) {
      CHECK(!st.ok());
    } else {
      REQUIRE(st.ok());
    }
    CHECK(got.stray() == 0);
    if (st.ok()) {
      // tensor-core kernels (and the CPU's AMX path) round P to the element type before P V
      compare(c, got, ref, unit_roundoff(t), t != da::DType::f32, who);
      ++runs[backend];
    } else {
      CHECK(!st.message().empty());
      CHECK(got.untouched());
    }
  });
  MESSAGE("runs: reference<float> " << runs[0] << ", cpu " << runs[1] << ", cuda emulated " << runs[2]);
  CHECK(runs[0] > 0);
  CHECK(runs[1] > 0);
  CHECK(runs[2] > 0);
}

namespace {

/// A random serving case (Params::seq): ragged or dense queries, dense, packed or paged keys of
/// any page size, seqused_k, appends, splits, GQA, masks, norms, V2.
dt::Serve random_serve(std::uint64_t seed) {
  std::mt19937_64 r(seed ^ 0x5E5E5E);
  auto U = [&](i64 lo, i64 hi) { return std::uniform_int_distribution<i64>(lo, hi)(r); };
  dt::Serve s;
  const i64 B = U(1, 5);
  const i64 pages[6] = {1, 7, 16, 32, 64, 100};
  s.page_size = U(0, 2) == 0 ? 0 : pages[U(0, 5)];
  s.varlen_q = U(0, 3) != 0;
  s.varlen_k = s.page_size == 0 && U(0, 1) == 1;
  s.seqused = !s.varlen_k || U(0, 1) == 1;  // dense and paged keys take their lengths from seqused_k
  s.append = s.seqused && U(0, 2) == 0;
  s.spare = U(0, 5);
  const i64 nq_all = U(1, 9);
  for (i64 b = 0; b < B; ++b) {
    const i64 nq = s.varlen_q ? (U(0, 4) == 0 ? 0 : U(1, 40)) : nq_all;
    i64 nk = U(0, 4) == 0 ? U(0, 2) : U(0, 300);
    if (s.append) nk = std::max(nk, nq);  // the appended keys are the last nq of the nk
    s.nq.push_back(nq);
    s.nk.push_back(nk);
  }
  if (*std::max_element(s.nq.begin(), s.nq.end()) == 0) s.nq[0] = 1;
  if (s.append) s.nk[0] = std::max(s.nk[0], s.nq[0]);
  // packed keys with nothing stored at all (total_k = 0) are rejected by validation: store one
  if (s.varlen_k && !s.seqused && *std::max_element(s.nk.begin(), s.nk.end()) == 0) s.nk[0] = 1;
  const i64 reps[4] = {1, 2, 4, 8}, dims[5] = {8, 16, 24, 40, 64};
  s.Hkv = U(1, 3);
  s.H = s.Hkv * reps[U(0, 3)];
  s.d = dims[U(0, 4)];
  const da::MaskKind masks[3] = {da::MaskKind::none, da::MaskKind::causal, da::MaskKind::window};
  s.mask = masks[U(0, 2)];
  if (s.mask == da::MaskKind::window) {
    s.wl = U(-1, 50);
    s.wr = s.wl == -1 ? U(0, 20) : U(-1, 20);
  }
  const da::NormKind norms[3] = {da::NormKind::rms, da::NormKind::group, da::NormKind::none};
  s.norm = norms[U(0, 2)];
  s.beta = U(0, 1) == 1;
  s.v2 = U(0, 3) == 0;
  s.num_splits = U(0, 3) == 0 ? static_cast<int>(U(1, 8)) : 0;
  return s;
}

template <class Elem>
void one_serving(std::uint64_t seed, int backend, int threads) {
  const dt::Serve s = random_serve(seed);
  INFO("seed " << seed << " " << da::dtype_name(da::dtype_of_v<Elem>) << " " << (backend ? "cpu::forward" : "reference<float>")
               << " threads " << threads << " | " << s.str());
  const dt::Served<Elem> proto(s, seed);
  const dt::Expected<Elem> e = dt::expected(proto);
  dt::Served<Elem> c(s, seed);
  da::Params p = c.params();
  da::cpu::Options o;
  o.num_threads = threads;
  const da::Status st = backend ? da::cpu::forward(p, o) : da::reference::forward<float>(p);
  REQUIRE_MESSAGE(st.ok(), st.to_string());
  dt::check_served(c, e);
  if (s.append) dt::check_append(c, proto.kc, proto.vc);
}

}  // namespace

TEST_CASE("differential, serving layouts: random ragged batches, caches, pages, appends and splits vs reference<double>") {
  std::size_t runs = 0;
  for_a_while("serving", [&](std::uint64_t seed) {
    const int backend = static_cast<int>(seed % 2), threads = 1 + static_cast<int>(seed / 2 % 3);
    switch (backend ? seed / 6 % 3 : 0) {
      case 1: one_serving<da::bfloat16>(seed, backend, threads); break;
      case 2: one_serving<da::half>(seed, backend, threads); break;
      default: one_serving<float>(seed, backend, threads); break;
    }
    ++runs;
  });
  CHECK(runs > 0);
}

namespace {

/// One random serving case on the CUDA forward under the emulator, in the configuration
/// (element type, d in {32, 64}, variant) the seed picks among those this build has.
template <da::simt::fmt16 F, int D>
bool one_cuda_serving(std::uint64_t seed, dt::Serve s) {
  if constexpr (D > 64) {
    return false;  // the two-pass kernels: slower under the emulator, covered by the suites
  } else {
    s.d = D;
    // smaller than the cpu's draws (the emulator runs every CUDA thread as a fiber: about a
    // second a case at the full sizes under ASan, where the fuzzer has 10 s): at most 8 heads
    // (GQA up to 8:1 kept), 12 tokens and 80 keys per sequence
    if (s.H > 8) { s.H /= s.Hkv; s.Hkv = 1; }
    for (std::size_t b = 0; b < s.nq.size(); ++b) {
      s.nq[b] = std::min<i64>(s.nq[b], 12);
      s.nk[b] = std::min<i64>(s.nk[b], 80);
      if (s.append) s.nk[b] = std::max(s.nk[b], s.nq[b]);
    }
    // the fused kernel (more than 64 rows per KV group, no splits) reads whole key tiles from a
    // page: give it pages it can read (the suites check its rejection of the others)
    da::Params p0;  // what takes_decode_path reads: the longest query run, heads, groups, splits
    p0.seqlen_q = std::max<i64>(*std::max_element(s.nq.begin(), s.nq.end()), 1);
    p0.heads = s.H; p0.kv_heads = s.Hkv; p0.seq.num_splits = s.num_splits;
    if (s.page_size > 0 && !da::cuda::takes_decode_path(p0)) s.page_size = 64;
    auto run = [](const da::Params& p) { return da::cuda::emulated_forward(p); };
    if (s.v2) dt::check_forward_served<da::cuda::ForwardTraitsV2<F, D>>(s, seed, run);
    else dt::check_forward_served<da::cuda::ForwardTraits<F, D>>(s, seed, run);
    return true;
  }
}

}  // namespace

TEST_CASE("differential, serving layouts on the cuda forward (emulated): decoding path and fused kernel vs reference<double>") {
  std::size_t runs = 0;
  for_a_while("serving (cuda emulated)", [&](std::uint64_t seed) {
    const dt::Serve s = random_serve(seed);
    int k = 0, pick = -1;
#define DIFFATTN_X(fmt, dd) if (dd <= 64) ++k;
    DIFFATTN_CUDA_FORWARD_CONFIGS(DIFFATTN_X)
#undef DIFFATTN_X
    REQUIRE(k > 0);
    pick = static_cast<int>(seed / 7 % static_cast<std::uint64_t>(k));
    k = 0;
#define DIFFATTN_X(fmt, dd) \
    if (dd <= 64 && k++ == pick) runs += one_cuda_serving<da::simt::fmt16::fmt, dd>(seed, s);
    DIFFATTN_CUDA_FORWARD_CONFIGS(DIFFATTN_X)
#undef DIFFATTN_X
  });
  CHECK(runs > 0);
}

namespace {

/// A mutation of valid params: apply(p) makes them invalid; every backend must reject them.
struct Mutation {
  const char* name;
  std::function<void(da::Params&)> apply;
};

std::vector<Mutation> invalid_mutations() {
  return {
      {"q1 null", [](da::Params& p) { p.q1.ptr = nullptr; }},
      {"k2 null", [](da::Params& p) { p.k2.ptr = nullptr; }},
      {"v_lo null", [](da::Params& p) { p.v_lo.ptr = nullptr; }},
      {"v_hi null", [](da::Params& p) { p.v_hi.ptr = nullptr; }},
      {"lambda_init unset", [](da::Params& p) { p.lambda.lambda_init = std::numeric_limits<double>::quiet_NaN(); }},
      {"norm kind unset", [](da::Params& p) { p.norm.kind = da::NormKind::unset; }},
      {"variant V2 with V1's fields", [](da::Params& p) { p.variant = da::Variant::diff_v2; }},
      {"variant out of range", [](da::Params& p) { p.variant = static_cast<da::Variant>(5); }},
      {"out null", [](da::Params& p) { p.out.ptr = nullptr; }},
      {"lambda lq1 null", [](da::Params& p) { p.lambda.lq1 = nullptr; }},
      {"batch 0", [](da::Params& p) { p.batch = 0; }},
      {"seqlen_q negative", [](da::Params& p) { p.seqlen_q = -3; }},
      {"seqlen_k 0", [](da::Params& p) { p.seqlen_k = 0; }},
      {"heads not a multiple of kv_heads", [](da::Params& p) { p.kv_heads = 2; p.heads = 3; }},
      {"kv_heads 0", [](da::Params& p) { p.kv_heads = 0; }},
      {"huge heads with per-head lambda", [](da::Params& p) { p.heads = p.kv_heads * (i64{1} << 60); p.lambda.per_head = true; }},
      {"head_dim 0", [](da::Params& p) { p.head_dim = 0; }},
      {"head_dim 2000 (above every backend's maximum)", [](da::Params& p) { p.head_dim = 2000; }},
      {"dtype out of range", [](da::Params& p) { p.dtype = static_cast<da::DType>(42); }},
      {"mask kind out of range", [](da::Params& p) { p.mask.kind = static_cast<da::MaskKind>(9); }},
      {"window set without window mask", [](da::Params& p) { p.mask.kind = da::MaskKind::none; p.mask.window_left = 3; }},
      {"window side below -1", [](da::Params& p) { p.mask.kind = da::MaskKind::window; p.mask.window_left = -7; }},
      {"norm kind out of range", [](da::Params& p) { p.norm.kind = static_cast<da::NormKind>(5); }},
      {"eps 0", [](da::Params& p) { p.norm.kind = da::NormKind::rms; p.norm.eps = 0; }},
      {"eps NaN", [](da::Params& p) { p.norm.kind = da::NormKind::rms; p.norm.eps = NAN; }},
      {"lambda_init NaN", [](da::Params& p) { p.lambda.lambda_init = NAN; }},
      {"softmax_scale NaN", [](da::Params& p) { p.softmax_scale = NAN; }},
      {"softmax_scale infinite", [](da::Params& p) { p.softmax_scale = INFINITY; }},
      {"softmax_scale negative", [](da::Params& p) { p.softmax_scale = -0.3; }},
      {"seqlen_k 2^40", [](da::Params& p) { p.seqlen_k = i64{1} << 40; }},
      {"batch * seqlen overflow", [](da::Params& p) { p.batch = i64{1} << 40; p.seqlen_q = i64{1} << 40; }},
  };
}

}  // namespace

TEST_CASE("bad input: every backend rejects each mutation with a message and writes nothing") {
  const auto muts = invalid_mutations();
  std::size_t rejected = 0;
  for_a_while("bad input", [&](std::uint64_t seed) {
    Case c = random_case(seed, {32, 64}, /*allow_v2=*/false);  // V1's fields are mutated
    const Mutation& m = muts[seed % muts.size()];
    const int backend = static_cast<int>(seed / muts.size() % 3);
    const da::DType t = backend == 2 ? da::DType::bf16 : da::DType::f32;
    Run got(c, t);
    m.apply(got.p);
    da::Status st;
    const std::string who = backend == 0 ? "reference" : (backend == 1 ? "cpu" : "cuda (emulated)");
    if (backend == 0) st = da::reference::forward<float>(got.p);
    else if (backend == 1) st = da::cpu::forward(got.p);
    else st = da::cuda::emulated_forward(got.p);
    INFO(who << ", mutation '" << std::string(m.name) << "', " << c.str() << ": " << st.to_string());
    CHECK(!st.ok());
    CHECK(!st.message().empty());
    CHECK(got.untouched());
    rejected += !st.ok();
  });
  MESSAGE(rejected << " mutated calls rejected, " << muts.size() << " kinds of mutation");
}

TEST_CASE("valid but unusual input is accepted and correct: broadcast keys (token stride 0), Q2 = Q1 and K2 = K1") {
  for_a_while("unusual input", [&](std::uint64_t seed) {
    Case c = random_case(seed, {16, 32}, /*allow_v2=*/false);
    Run ref = reference_run(c);
    Run got(c, da::DType::f32);
    const bool broadcast = seed % 2;
    auto apply = [&](da::Params& p) {
      if (broadcast) {  // every key and value is token 0's
        p.k1.stride_t = p.k2.stride_t = p.v_lo.stride_t = p.v_hi.stride_t = 0;
      } else {  // both softmaxes the same: A = (1 - lambda) P V
        p.q2 = p.q1;
        p.k2 = p.k1;
      }
    };
    apply(ref.p);
    const da::Status rs = da::reference::forward<double>(ref.p);
    INFO(c.str() << ": reference " << rs.to_string());
    REQUIRE(rs.ok());
    apply(got.p);
    const da::Status st = da::cpu::forward(got.p);
    INFO(c.str() << (broadcast ? " broadcast keys" : " Q2 = Q1, K2 = K1") << ": " << st.to_string());
    REQUIRE(st.ok());
    CHECK(got.stray() == 0);
    compare(c, got, ref, unit_roundoff(da::DType::f32), false, "cpu::forward");
  });
}

namespace {

/// A mutation of a valid backward call (its forward params, dout, saved tensors, gradients).
/// `fused`: only the fused backends reject it (the reference reads no saved tensors).
struct BwdMutation {
  const char* name;
  bool fused;
  std::function<void(da::BackwardParams&)> apply;
  bool cuda_accepts = false;  ///< valid for the CUDA backward (it recomputes what is missing)
};

std::vector<BwdMutation> invalid_backward_mutations() {
  std::vector<BwdMutation> m;
  for (const Mutation& f : invalid_mutations()) {
    if (!std::strcmp(f.name, "out null")) continue;  // the backward does not read out
    m.push_back({f.name, false, [f](da::BackwardParams& bp) { f.apply(bp.fwd); }});
  }
  auto shift = [](auto& ptr, std::ptrdiff_t bytes) {  // ptr: void* or const void*
    ptr = static_cast<const char*>(ptr) + bytes;
  };
  const std::vector<BwdMutation> own = {
      {"dout null", false, [](da::BackwardParams& bp) { bp.dout.ptr = nullptr; }},
      {"grad.dq1 null", false, [](da::BackwardParams& bp) { bp.grad.dq1.ptr = nullptr; }},
      {"grad.dk2 null", false, [](da::BackwardParams& bp) { bp.grad.dk2.ptr = nullptr; }},
      {"grad.dv_hi null", false, [](da::BackwardParams& bp) { bp.grad.dv_hi.ptr = nullptr; }},
      {"grad.dlq1 null", false, [](da::BackwardParams& bp) { bp.grad.dlq1 = nullptr; }},
      {"grad.dlogits set for V1", false, [](da::BackwardParams& bp) { bp.grad.dlogits = {bp.grad.dlq1, 1, 1, 1}; }},
      {"grad.dq2 overlaps grad.dq1", false, [](da::BackwardParams& bp) { bp.grad.dq2 = bp.grad.dq1; }},
      {"grad.dk1 is the input k1", false, [](da::BackwardParams& bp) { bp.grad.dk1.ptr = const_cast<void*>(bp.fwd.k1.ptr); }},
      {"grad.dq1 misaligned", false, [](da::BackwardParams& bp) { bp.grad.dq1.ptr = static_cast<char*>(bp.grad.dq1.ptr) + 1; }},
      {"saved.lse1 null", true, [](da::BackwardParams& bp) { bp.saved.lse1 = nullptr; }},
      // (saved.o2 null is valid: both fused backwards recompute <dA, O_2> from LSE_2)
      {"saved.attn null", true, [](da::BackwardParams& bp) { bp.saved.attn = nullptr; }},
      {"saved.rstd misaligned", false, [shift](da::BackwardParams& bp) { shift(bp.saved.rstd, 2); }},
  };
  m.insert(m.end(), own.begin(), own.end());
  return m;
}

template <class Elem>
bool grads_untouched(const dt::Problem<Elem>& p) {
  auto nan16 = [](const std::vector<Elem>& v) {
    for (auto x : v)
      if (!std::isnan(static_cast<float>(x))) return false;
    return true;
  };
  auto nanf = [](const std::vector<float>& v) {
    for (auto x : v)
      if (!std::isnan(x)) return false;
    return true;
  };
  return nan16(p.dq) && nan16(p.dq2buf) && nan16(p.dk) && nan16(p.dk2buf) && nan16(p.dv) && nanf(p.dlq1) &&
         nanf(p.dlk1) && nanf(p.dlq2) && nanf(p.dlk2) && nanf(p.dgamma) && nanf(p.dbeta);
}

// One random valid backward call on `pr` (saved tensors from reference::forward<float>), mutated,
// through one backend: rejected with a message, no gradient element written.
template <class Elem>
void one_bad_backward(std::uint64_t seed, const BwdMutation& m, int backend) {
  std::mt19937_64 rng(seed);
  auto pick = [&](i64 lo, i64 hi) { return std::uniform_int_distribution<i64>(lo, hi)(rng); };
  dt::Shape s;
  s.B = pick(1, 2); s.N = pick(1, 70); s.S = pick(1, 70);
  s.Hkv = pick(1, 2); s.H = s.Hkv * pick(1, 2); s.d = pick(0, 1) ? 32 : 64;
  s.mask = static_cast<da::MaskKind>(pick(0, 2));
  if (s.mask == da::MaskKind::window) { s.wl = pick(0, 20); s.wr = pick(0, 5); }
  s.norm = pick(0, 1) ? da::NormKind::rms : da::NormKind::group;
  s.beta = s.norm == da::NormKind::group;
  dt::Problem<Elem> pr(s, seed, /*split_layout=*/pick(0, 1) == 1);
  da::Params pf = pr.params();
  REQUIRE(da::reference::forward<float>(pf).ok());
  da::BackwardParams bp = pr.backward_params();
  bp.saved = da::saved_from(pf.extras);
  m.apply(bp);
  da::Status st;
  const std::string who = backend == 0 ? "reference" : (backend == 1 ? "cpu" : "cuda (emulated)");
  if (backend == 0) st = da::reference::backward<float>(bp);
  else if (backend == 1) st = da::cpu::backward(bp);
  else st = da::cuda::emulated_backward(bp);
  INFO("backward, " << who << ", mutation '" << std::string(m.name) << "', seed " << seed << ", " << s.str() << ": "
                    << st.to_string());
  CHECK(!st.ok());
  CHECK(!st.message().empty());
  CHECK(grads_untouched(pr));
}

}  // namespace

TEST_CASE("bad input, backward: every backward backend rejects each mutation with a message and writes nothing") {
  const auto muts = invalid_backward_mutations();
  std::size_t tried = 0;
  for_a_while("backward bad input", [&](std::uint64_t seed) {
    const BwdMutation& m = muts[seed % muts.size()];
    int backend = static_cast<int>(seed / muts.size() % 3);
    if (m.fused && backend == 0) backend = 1;
    if (m.cuda_accepts && backend == 2) backend = 1;
    if (backend == 2) one_bad_backward<da::bfloat16>(seed, m, backend);
    else one_bad_backward<float>(seed, m, backend);
    ++tried;
  });
  MESSAGE(tried << " mutated backward calls, " << muts.size() << " kinds of mutation");
}
