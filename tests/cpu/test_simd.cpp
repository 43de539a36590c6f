// The vector primitives of every CPU path this machine runs (cpu/isa/), through the entry
// points the dispatcher uses: exp2 against std::exp2 over the whole range the kernels use, the
// NaN rule of max, key masks, and the exact widening of half and bfloat16. Paths compiled here
// but not runnable on this CPU are listed and skipped by name (the forced-path runs of
// test_cpu then report them as skipped too).
#include <doctest/doctest.h>

#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <diffattn/cpu/isa.hpp>

namespace da = diffattn;
namespace cd = diffattn::cpu::detail;

namespace {

std::vector<const cd::Kernels*> runnable_paths() {
  std::vector<const cd::Kernels*> r;
  for (da::cpu::Isa i : da::cpu::kAllIsas) {
    if (da::cpu::isa_supported(i)) {
      r.push_back(cd::kernels(i));
    } else {
      const std::string why = da::cpu::isa_compiled(i) ? ": not supported by this CPU, skipped" : ": not compiled for this target, skipped";
      const std::string msg = std::string("path ") + da::cpu::isa_name(i) + why;
      MESSAGE(msg);
    }
  }
  return r;
}

}  // namespace

TEST_CASE("cpu paths: the best supported path is chosen, portable always runs") {
  CHECK(da::cpu::isa_supported(da::cpu::Isa::portable));
  CHECK(da::cpu::isa_supported(da::cpu::best_isa()));
  for (da::cpu::Isa i : da::cpu::kAllIsas) {
    if (i == da::cpu::best_isa()) break;
    CHECK_MESSAGE(!da::cpu::isa_supported(i), da::cpu::isa_name(i) << " is supported but not chosen");
  }
#if defined(__x86_64__)
  CHECK(da::cpu::isa_compiled(da::cpu::Isa::avx2));
  CHECK(da::cpu::isa_compiled(da::cpu::Isa::avx512));
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) CHECK(da::cpu::isa_supported(da::cpu::Isa::avx2));
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")) CHECK(da::cpu::isa_supported(da::cpu::Isa::avx512));
#endif
#if defined(__aarch64__)
  CHECK(da::cpu::best_isa() == da::cpu::Isa::neon);
#endif
  const std::string chosen = std::string("best path here: ") + da::cpu::isa_name(da::cpu::best_isa()) +
                             "; cpu::isa(): " + da::cpu::isa_name(da::cpu::isa());
  MESSAGE(chosen);
}

TEST_CASE("cpu paths: names parse; a bad or unrunnable request is an error naming the setting") {
  da::cpu::Isa i = da::cpu::Isa::none;
  CHECK(da::cpu::parse_isa("avx2", &i).ok());
  CHECK(i == da::cpu::Isa::avx2);
  CHECK(da::cpu::parse_isa("auto", &i).ok());
  CHECK(i == da::cpu::Isa::automatic);
  const da::Status bad = da::cpu::parse_isa("sse9", &i, "DIFFATTN_CPU_ISA");
  CHECK(bad.code() == da::StatusCode::invalid_argument);
  CHECK(bad.message().find("DIFFATTN_CPU_ISA") != std::string::npos);
  for (da::cpu::Isa want : da::cpu::kAllIsas) {
    const da::Status s = da::cpu::select_isa(want, &i);
    if (da::cpu::isa_supported(want)) {
      CHECK(s.ok());
      CHECK(i == want);
    } else {
      CHECK(s.code() == da::StatusCode::unsupported);
      CHECK(s.message().find("options.isa") != std::string::npos);
    }
  }
}

TEST_CASE("cpu vexp2, every path: relative error below 2e-7 on [-126, 64], 0 below, -inf -> 0, NaN -> NaN") {
  for (const cd::Kernels* k : runnable_paths()) {
    INFO("path " << da::cpu::isa_name(k->isa));
    double worst = 0;
    float in[16], out[16];
    for (double x0 = -126.0; x0 <= 64.0; x0 += 16 * 0.000731) {
      for (int i = 0; i < 16; ++i) in[i] = static_cast<float>(x0 + i * 0.000731);
      k->exp2_n(in, out, 16);
      for (int i = 0; i < 16; ++i) {
        const double want = std::exp2(static_cast<double>(in[i]));
        worst = std::max(worst, std::fabs(out[i] - want) / want);
      }
    }
    INFO("worst relative error " << worst);
    CHECK(worst < 2e-7);
    const float inf = std::numeric_limits<float>::infinity();
    const float special[16] = {-inf, -200.0f, -1000.0f, -150.0f, -149.5f, -127.0f, 0.0f, -0.0f,
                               0.5f, -0.5f, 1.0f, -1.0f, std::numeric_limits<float>::quiet_NaN(), 3.0f, -3.0f, -1e30f};
    k->exp2_n(special, out, 16);
    CHECK(out[0] == 0.0f);
    CHECK(out[1] == 0.0f);
    CHECK(out[2] == 0.0f);
    CHECK(out[15] == 0.0f);
    for (int i : {3, 4, 5}) CHECK(out[i] <= 0x1p-126f);  // at most a denormal: negligible
    CHECK(out[6] == 1.0f);
    CHECK(out[7] == 1.0f);
    CHECK(out[8] == doctest::Approx(std::sqrt(2.0)).epsilon(2e-7));
    CHECK(out[9] == doctest::Approx(std::sqrt(0.5)).epsilon(2e-7));
    CHECK(out[10] == 2.0f);
    CHECK(out[11] == 0.5f);
    CHECK(std::isnan(out[12]));
    CHECK(out[13] == 8.0f);
  }
}

TEST_CASE("cpu simd, every path: max propagates NaN of the second operand; masks keys") {
  for (const cd::Kernels* k : runnable_paths()) {
    INFO("path " << da::cpu::isa_name(k->isa));
    float a[16], b[16], r[16];
    for (int i = 0; i < 16; ++i) { a[i] = float(i); b[i] = float(15 - i); }
    b[4] = std::numeric_limits<float>::quiet_NaN();
    k->max_n(a, b, r, 16);
    CHECK(std::isnan(r[4]));
    CHECK(r[0] == 15.0f);
    CHECK(r[15] == 15.0f);
    std::int32_t kb[16], ke[16];
    for (int i = 0; i < 16; ++i) { kb[i] = i; ke[i] = i + 2; }
    k->mask_keys_n(a, kb, ke, 5, r, 16);
    for (int i = 0; i < 16; ++i) CHECK((i == 4 || i == 5) == std::isfinite(r[i]));
    for (int i = 0; i < 16; ++i) if (i == 4 || i == 5) CHECK(r[i] == a[i]);
  }
}

TEST_CASE("cpu simd, every path: half and bfloat16 widen exactly (all 65536 bit patterns)") {
  std::vector<da::half> h(65536 + 5);
  std::vector<da::bfloat16> bf(65536 + 5);
  for (std::uint32_t u = 0; u < 65536 + 5; ++u) {
    const std::uint16_t bits = static_cast<std::uint16_t>(u * 40503u);  // a permutation, then a tail
    h[u] = Eigen::numext::bit_cast<da::half>(bits);
    bf[u] = Eigen::numext::bit_cast<da::bfloat16>(bits);
  }
  for (const cd::Kernels* k : runnable_paths()) {
    INFO("path " << da::cpu::isa_name(k->isa));
    std::vector<float> out(h.size());
    k->widen_f16(h.data(), out.data(), static_cast<std::int64_t>(h.size()));
    std::size_t bad = 0;
    for (std::size_t i = 0; i < h.size(); ++i) {
      const float want = static_cast<float>(h[i]);
      if (!(std::memcmp(&want, &out[i], 4) == 0 || (std::isnan(want) && std::isnan(out[i])))) ++bad;
    }
    CHECK(bad == 0);
    k->widen_bf16(bf.data(), out.data(), static_cast<std::int64_t>(bf.size()));
    bad = 0;
    for (std::size_t i = 0; i < bf.size(); ++i) {
      const float want = static_cast<float>(bf[i]);
      if (!(std::memcmp(&want, &out[i], 4) == 0 || (std::isnan(want) && std::isnan(out[i])))) ++bad;
    }
    CHECK(bad == 0);
  }
}

TEST_CASE("cpu tiles, every path: the micro-tile products equal a double computation") {
  // one 64-query block x 61 keys (a remainder tile), d = 37, dv = 74: odd sizes on purpose
  constexpr int nq = 64, nj = 61, d = 37, dv = 74;
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> kmat(nj * d), qt(d * nq), v(nj * dv), pt(nj * nq);
  for (auto* vec : {&kmat, &qt, &v, &pt})
    for (float& x : *vec) x = u(rng);
  for (const cd::Kernels* k : runnable_paths()) {
    INFO("path " << da::cpu::isa_name(k->isa));
    std::vector<float> st(nj * nq, std::numeric_limits<float>::quiet_NaN());
    std::vector<float> ot(dv * nq, 0.5f);
    k->qk_block64(kmat.data(), d, nj, qt.data(), d, st.data());
    k->pv_block64(v.data(), dv, nj, dv, pt.data(), ot.data());
    double worst_qk = 0, worst_pv = 0;
    for (int j = 0; j < nj; ++j)
      for (int i = 0; i < nq; ++i) {
        double want = 0;
        for (int x = 0; x < d; ++x) want += double(kmat[j * d + x]) * qt[x * nq + i];
        worst_qk = std::max(worst_qk, std::fabs(st[j * nq + i] - want));  // NaN fails the check below
        if (!std::isfinite(st[j * nq + i])) worst_qk = INFINITY;
      }
    for (int c = 0; c < dv; ++c)
      for (int i = 0; i < nq; ++i) {
        double want = 0.5;
        for (int j = 0; j < nj; ++j) want += double(v[j * dv + c]) * pt[j * nq + i];
        worst_pv = std::max(worst_pv, std::fabs(ot[c * nq + i] - want));
        if (!std::isfinite(ot[c * nq + i])) worst_pv = INFINITY;
      }
    // |terms| <= 1: an fp32 sum of n products is within n * 2^-24 * sum|terms| <= n^2 * 6e-8
    CHECK(worst_qk < d * d * 6e-8);
    CHECK(worst_pv < nj * nj * 6e-8);
  }
}
