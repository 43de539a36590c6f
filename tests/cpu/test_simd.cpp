// The vectorised exp2 of the CPU kernels against std::exp2, over the whole range they use.
#include <doctest/doctest.h>

#include <cmath>
#include <limits>

#include <diffattn/cpu/detail/simd.hpp>

namespace cd = diffattn::cpu::detail;

TEST_CASE("cpu vexp2: relative error below 2e-7 on [-126, 64], 0 below, -inf -> 0, NaN -> NaN") {
  double worst = 0;
  float in[16], out[16];
  for (double x0 = -126.0; x0 <= 64.0; x0 += 16 * 0.000731) {
    for (int i = 0; i < 16; ++i) in[i] = static_cast<float>(x0 + i * 0.000731);
    cd::vstore(out, cd::vexp2(cd::vload(in)));
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
  cd::vstore(out, cd::vexp2(cd::vload(special)));
  CHECK(out[0] == 0.0f);
  CHECK(out[1] == 0.0f);
  CHECK(out[2] == 0.0f);
  CHECK(out[15] == 0.0f);
  for (int i : {3, 4, 5}) CHECK(out[i] <= 0x1p-126f);  // at most a denormal: negligible
  CHECK(out[6] == 1.0f);
  CHECK(out[7] == 1.0f);
  CHECK(out[10] == 2.0f);
  CHECK(out[11] == 0.5f);
  CHECK(std::isnan(out[12]));
  CHECK(out[13] == 8.0f);
}

TEST_CASE("cpu simd: max propagates NaN of the second operand; masks keys") {
  float a[16], b[16], r[16];
  for (int i = 0; i < 16; ++i) { a[i] = float(i); b[i] = float(15 - i); }
  b[4] = std::numeric_limits<float>::quiet_NaN();
  cd::vstore(r, cd::vmax(cd::vload(a), cd::vload(b)));
  CHECK(std::isnan(r[4]));
  CHECK(r[0] == 15.0f);
  CHECK(r[15] == 15.0f);
  std::int32_t kb[16], ke[16];
  for (int i = 0; i < 16; ++i) { kb[i] = i; ke[i] = i + 2; }
  cd::vstore(r, cd::vmask_keys(cd::vload(a), kb, ke, 5));
  for (int i = 0; i < 16; ++i) CHECK((i == 4 || i == 5) == std::isfinite(r[i]));
}
