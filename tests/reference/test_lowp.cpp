// half and bfloat16 inputs against the double reference on the same (rounded) inputs.
#include <doctest/doctest.h>

#include "support/naive_lowp.hpp"

using namespace dt;

namespace {

// Unit roundoff of the element type: the output is rounded once to it.
template <class Elem> constexpr double unit_roundoff();
template <> constexpr double unit_roundoff<float>() { return 0x1p-24; }
template <> constexpr double unit_roundoff<da::half>() { return 0x1p-11; }
template <> constexpr double unit_roundoff<da::bfloat16>() { return 0x1p-8; }

template <class Elem>
void run_lowp(const Shape& s, std::uint64_t seed) {
  INFO(da::dtype_name(da::dtype_of_v<Elem>) << " seed " << seed << " " << s.str());
  Problem<Elem> pr(s, seed);
  Problem<double> ref = widen(pr);
  da::Params p = pr.params(), pr_ref = ref.params();
  REQUIRE(da::reference::forward<float>(p).ok());
  REQUIRE(da::reference::forward<double>(pr_ref).ok());
  // Tolerance: the output is rounded once to Elem (<= u |out|) after fp32 math whose error on
  // these sizes (<= 257 terms per sum, normalised rows) is below 1e-5 absolute; we allow twice
  // both (docs/TESTING.md's 2x rule): 2u relative plus 2e-5 absolute.
  const double u = unit_roundoff<Elem>();
  check_close(to_double(pr.out), ref.out, 2e-5, 2 * u, "out");
  // LSE and the saved rows stay fp32: fp32 error only
  check_close(to_double(pr.lse1), ref.lse1, 2e-5, 2e-5, "lse1");
  check_close(to_double(pr.lse2), ref.lse2, 2e-5, 2e-5, "lse2");
  check_close(to_double(pr.attn), ref.attn, 2e-5, 2e-5, "attn");
  check_close(to_double(pr.rstd), ref.rstd, 2e-5, 2e-5, "rstd");
}

template <class Elem>
void awkward_sizes(std::uint64_t seed0) {
  std::uint64_t seed = seed0;
  for (auto [N, S] : {std::pair<i64, i64>{1, 1}, {7, 65}, {65, 7}, {127, 127}, {257, 129}}) {
    for (da::MaskKind m : {da::MaskKind::none, da::MaskKind::causal, da::MaskKind::window}) {
      Shape s;
      s.B = 1; s.N = N; s.S = S; s.H = 4; s.Hkv = 2; s.d = 32; s.mask = m;
      if (m == da::MaskKind::window) { s.wl = 16; s.wr = 3; }
      run_lowp<Elem>(s, ++seed);
    }
  }
}

}  // namespace

TEST_CASE("f16 inputs: reference in fp32 math vs double, awkward sizes") { awkward_sizes<da::half>(7000); }
TEST_CASE("bf16 inputs: reference in fp32 math vs double, awkward sizes") { awkward_sizes<da::bfloat16>(8000); }
TEST_CASE("f32 inputs: reference in fp32 math vs double, awkward sizes") { awkward_sizes<float>(9000); }

TEST_CASE("f16 and bf16 storage round to nearest even like the GPU") {
  // 1 + 2^-11 is halfway between 1 and the next half (1 + 2^-10): ties go to even (1).
  CHECK(static_cast<float>(da::half(1.0f + 0x1p-11f)) == 1.0f);
  CHECK(static_cast<float>(da::half(1.0f + 3 * 0x1p-11f)) == 1.0f + 0x1p-9f);  // tie to even (up)
  CHECK(static_cast<float>(da::bfloat16(1.0f + 0x1p-8f)) == 1.0f);
  CHECK(static_cast<float>(da::bfloat16(1.0f + 3 * 0x1p-8f)) == 1.0f + 0x1p-6f);
  CHECK(std::isinf(static_cast<float>(da::half(70000.0f))));  // beyond half's max 65504
  CHECK(std::isnan(static_cast<float>(da::bfloat16(std::numeric_limits<float>::quiet_NaN()))));
}
