// Fragment layouts of ldmatrix and mma, shuffle semantics and 16-bit conversions under the
// emulator, checked against isa_formulas.hpp (written independently of simt/layout.hpp).
#include <doctest/doctest.h>

#include <Eigen/Core>
#include <cstdint>
#include <random>
#include <vector>

#include "diffattn/simt/simt.hpp"
#include "isa_formulas.hpp"
#include "simt/probe_kernels.hpp"

namespace simt = diffattn::simt;
namespace emu = diffattn::simt::emu;

TEST_CASE("layout.hpp agrees with the ISA formulas") {
  for (int lane = 0; lane < 32; ++lane) {
    for (int i = 0; i < 8; ++i) {
      CHECK(simt::mma_a_coord(lane, i).row == isa::mma_a(lane, i).row);
      CHECK(simt::mma_a_coord(lane, i).col == isa::mma_a(lane, i).col);
    }
    for (int i = 0; i < 4; ++i) {
      CHECK(simt::mma_b_coord(lane, i).row == isa::mma_b(lane, i).row);
      CHECK(simt::mma_b_coord(lane, i).col == isa::mma_b(lane, i).col);
      CHECK(simt::mma_c_coord(lane, i).row == isa::mma_c(lane, i).row);
      CHECK(simt::mma_c_coord(lane, i).col == isa::mma_c(lane, i).col);
    }
  }
  // Every element of each operand is held by exactly one (lane, element).
  std::vector<int> a(256, 0), b(128, 0), c(128, 0);
  for (int lane = 0; lane < 32; ++lane) {
    for (int i = 0; i < 8; ++i) ++a[isa::mma_a(lane, i).row * 16 + isa::mma_a(lane, i).col];
    for (int i = 0; i < 4; ++i) ++b[isa::mma_b(lane, i).row * 8 + isa::mma_b(lane, i).col];
    for (int i = 0; i < 4; ++i) ++c[isa::mma_c(lane, i).row * 8 + isa::mma_c(lane, i).col];
  }
  for (int x : a) CHECK(x == 1);
  for (int x : b) CHECK(x == 1);
  for (int x : c) CHECK(x == 1);
}

namespace {

// Every ldmatrix variant: lane l supplies the address of stacked row (l%8 of matrix l/8), rows
// stored at permuted slots; the result is compared with the ISA formulas.
template <int N, bool Trans>
struct LdmKernel {
  void operator()(std::uint32_t* out) const {
    const int lane = static_cast<int>(simt::lane_id());
    auto s = simt::shared_memory<std::uint16_t>();
    for (int c = 0; c < 8; ++c) s[simt_test::ldm_slot(lane) * 8 + c] = simt_test::ldm_id(lane, c);
    simt::syncwarp();
    std::uint32_t r[N];
    auto row = s + simt_test::ldm_slot(lane) * 8;
    if constexpr (Trans) {
      if constexpr (N == 1) simt::ldmatrix_x1_trans(r, row);
      if constexpr (N == 2) simt::ldmatrix_x2_trans(r, row);
      if constexpr (N == 4) simt::ldmatrix_x4_trans(r, row);
    } else {
      if constexpr (N == 1) simt::ldmatrix_x1(r, row);
      if constexpr (N == 2) simt::ldmatrix_x2(r, row);
      if constexpr (N == 4) simt::ldmatrix_x4(r, row);
    }
    for (int j = 0; j < N; ++j) out[lane * N + j] = r[j];
  }
};

template <int N, bool Trans>
void check_ldmatrix() {
  CAPTURE(N);
  CAPTURE(Trans);
  std::vector<std::uint32_t> out(32 * N, 0);
  emu::launch(1, 32, simt_test::kProbeSmemBytes, LdmKernel<N, Trans>{}, out.data());
  for (int lane = 0; lane < 32; ++lane) {
    for (int j = 0; j < N; ++j) {
      for (int h = 0; h < 2; ++h) {
        const isa::RC e = Trans ? isa::ldm_trans(lane, h) : isa::ldm(lane, h);
        const std::uint16_t want = simt_test::ldm_id(8 * j + e.row, e.col);
        const auto got = static_cast<std::uint16_t>(out[lane * N + j] >> (16 * h));
        CHECK_MESSAGE(got == want, "lane " << lane << " reg " << j << " half " << h);
      }
    }
  }
}

template <simt::fmt16 F>
std::uint16_t to_bits(float x) {
  return simt::float_to_bits16<F>(x);
}

// One mma with fragments packed by the ISA formulas from random small integers.
template <simt::fmt16 F>
struct MmaKernel {
  void operator()(const float* A, const float* B, const float* C, float* D) const {
    const int lane = static_cast<int>(simt::lane_id());
    std::uint32_t a[4], b[2];
    float c[4], d[4];
    for (int r = 0; r < 4; ++r) {
      const isa::RC p0 = isa::mma_a(lane, 2 * r), p1 = isa::mma_a(lane, 2 * r + 1);
      a[r] = simt::pack2<F>(A[p0.row * 16 + p0.col], A[p1.row * 16 + p1.col]);
    }
    for (int r = 0; r < 2; ++r) {
      const isa::RC p0 = isa::mma_b(lane, 2 * r), p1 = isa::mma_b(lane, 2 * r + 1);
      b[r] = simt::pack2<F>(B[p0.row * 8 + p0.col], B[p1.row * 8 + p1.col]);
    }
    for (int i = 0; i < 4; ++i) c[i] = C[isa::mma_c(lane, i).row * 8 + isa::mma_c(lane, i).col];
    simt::mma_m16n8k16<F>(d, a, b, c);
    for (int i = 0; i < 4; ++i) D[isa::mma_c(lane, i).row * 8 + isa::mma_c(lane, i).col] = d[i];
  }
};

template <simt::fmt16 F>
void check_mma(unsigned seed) {
  CAPTURE(seed);
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> small(-8, 8), cdist(-100, 100);
  Eigen::Matrix<float, 16, 16, Eigen::RowMajor> A;
  Eigen::Matrix<float, 16, 8, Eigen::RowMajor> B, C, D;
  for (int i = 0; i < A.size(); ++i) A.data()[i] = static_cast<float>(small(rng));
  for (int i = 0; i < B.size(); ++i) B.data()[i] = static_cast<float>(small(rng));
  for (int i = 0; i < C.size(); ++i) C.data()[i] = static_cast<float>(cdist(rng));
  D.setConstant(std::nanf(""));
  emu::launch(1, 32, 0, MmaKernel<F>{}, A.data(), B.data(), C.data(), D.data());
  const Eigen::Matrix<float, 16, 8, Eigen::RowMajor> want = A * B + C;
  for (int r = 0; r < 16; ++r) {
    for (int n = 0; n < 8; ++n) CHECK_MESSAGE(D(r, n) == want(r, n), "D(" << r << "," << n << ")");
  }
}

struct ShflKernel {
  void operator()(std::uint32_t* out, int mode, int arg, int width) const {
    const unsigned lane = simt::lane_id();
    const std::uint32_t v = 1000 + lane;
    std::uint32_t r = 0;
    switch (mode) {
      case 0: r = simt::shfl_sync(simt::kFullMask, v, arg, width); break;
      case 1: r = simt::shfl_up_sync(simt::kFullMask, v, static_cast<unsigned>(arg), width); break;
      case 2: r = simt::shfl_down_sync(simt::kFullMask, v, static_cast<unsigned>(arg), width); break;
      default: r = simt::shfl_xor_sync(simt::kFullMask, v, arg, width); break;
    }
    out[lane] = r;
    // 8-byte values travel as two words.
    const double dv = 0.5 + lane;
    double dr = simt::shfl_xor_sync(simt::kFullMask, dv, 1);
    out[32 + lane] = static_cast<std::uint32_t>(dr * 2);
  }
};

}  // namespace

TEST_CASE("ldmatrix x1/x2/x4 with and without .trans match the ISA") {
  check_ldmatrix<1, false>();
  check_ldmatrix<2, false>();
  check_ldmatrix<4, false>();
  check_ldmatrix<1, true>();
  check_ldmatrix<2, true>();
  check_ldmatrix<4, true>();
}

TEST_CASE("mma m16n8k16 f16 and bf16 into f32 match Eigen exactly on small integers") {
  for (unsigned seed : {1u, 2u, 3u}) {
    check_mma<simt::fmt16::f16>(seed);
    check_mma<simt::fmt16::bf16>(seed);
  }
}

TEST_CASE("shuffles follow CUDA's semantics for every mode and width") {
  std::vector<std::uint32_t> out(64);
  for (int mode = 0; mode < 4; ++mode) {
    for (int width : {1, 2, 4, 8, 16, 32}) {
      for (int arg : {0, 1, 2, 3, 5, 8, 13, 16, 31}) {
        if (mode == 3 && arg >= 32) continue;
        CAPTURE(mode);
        CAPTURE(width);
        CAPTURE(arg);
        emu::launch(1, 32, 0, ShflKernel{}, out.data(), mode, arg, width);
        for (int lane = 0; lane < 32; ++lane) {
          CHECK(out[lane] == 1000u + static_cast<unsigned>(isa::shfl_src(mode, lane, arg, width)));
          CHECK(out[32 + lane] == static_cast<unsigned>(2 * (lane ^ 1) + 1));
        }
      }
    }
  }
}

TEST_CASE("16-bit conversions round to nearest even like cvt.rn") {
  using simt::fmt16;
  // f16: 10 fraction bits.
  CHECK(to_bits<fmt16::f16>(1.0f) == 0x3c00);
  CHECK(to_bits<fmt16::f16>(1.0f + 0x1p-11f) == 0x3c00);         // tie -> even (down)
  CHECK(to_bits<fmt16::f16>(1.0f + 3 * 0x1p-11f) == 0x3c02);     // tie -> even (up)
  CHECK(to_bits<fmt16::f16>(1.0f + 0x1p-11f + 0x1p-20f) == 0x3c01);  // above the tie
  CHECK(to_bits<fmt16::f16>(-2.0f) == 0xc000);
  CHECK(to_bits<fmt16::f16>(65504.f) == 0x7bff);
  CHECK(to_bits<fmt16::f16>(65519.f) == 0x7bff);
  CHECK(to_bits<fmt16::f16>(65520.f) == 0x7c00);  // rounds to infinity
  CHECK(to_bits<fmt16::f16>(0x1p-24f) == 0x0001);  // smallest subnormal
  CHECK(to_bits<fmt16::f16>(0x1p-25f) == 0x0000);  // tie -> even (zero)
  CHECK(to_bits<fmt16::f16>(3 * 0x1p-25f) == 0x0002);
  // bf16: 7 fraction bits.
  CHECK(to_bits<fmt16::bf16>(1.0f) == 0x3f80);
  CHECK(to_bits<fmt16::bf16>(1.0f + 0x1p-8f) == 0x3f80);
  CHECK(to_bits<fmt16::bf16>(1.0f + 3 * 0x1p-8f) == 0x3f82);
  CHECK(to_bits<fmt16::bf16>(-1.0f - 0x1p-8f - 0x1p-16f) == 0xbf81);
  CHECK(to_bits<fmt16::bf16>(3.0e38f) == 0x7f62);
  // Round trips and packing order (lower index in the lower half).
  CHECK(simt::pack2<fmt16::f16>(1.0f, -2.0f) == 0xc0003c00u);
  CHECK(simt::pack2<fmt16::bf16>(1.0f, -2.0f) == 0xc0003f80u);
  float lo = 0, hi = 0;
  simt::unpack2<fmt16::f16>(0xc0003c00u, lo, hi);
  CHECK(lo == 1.0f);
  CHECK(hi == -2.0f);
  simt::unpack2<fmt16::bf16>(0xc0003f80u, lo, hi);
  CHECK(lo == 1.0f);
  CHECK(hi == -2.0f);
  for (std::uint32_t b = 0; b < 0x10000; b += 7) {
    const auto h = static_cast<std::uint16_t>(b);
    const float f = simt::bits16_to_float<fmt16::f16>(h);
    if (f == f && !(h == 0x8000)) CHECK(to_bits<fmt16::f16>(f) == h);
    const float g = simt::bits16_to_float<fmt16::bf16>(h);
    if (g == g && !(h == 0x8000)) CHECK(to_bits<fmt16::bf16>(g) == h);
  }
  CHECK(simt::exp2_approx(3.0f) == 8.0f);
}
