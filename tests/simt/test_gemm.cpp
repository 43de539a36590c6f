// A GEMM through cp.async, ldmatrix, mma and a store (gemm_kernel.hpp), on small-integer inputs
// (every product and sum exact in f32), checked bit for bit against Eigen, with B as [n][k] and
// as [k][n] (.trans), f16 and bf16, under the deterministic schedule and several random ones.
#include <doctest/doctest.h>

#include <Eigen/Core>
#include <cstring>
#include <random>
#include <vector>

#include "diffattn/core/dtype.hpp"
#include "simt/gemm_kernel.hpp"

namespace simt = diffattn::simt;
namespace emu = diffattn::simt::emu;

namespace {

using MatF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

template <simt::fmt16 F, bool kBKN>
void run_gemm(int M, int N, int K, emu::Schedule schedule, std::uint64_t seed) {
  const unsigned data_seed = static_cast<unsigned>(1000 + M + 7 * N + 13 * K);
  CAPTURE(data_seed);
  CAPTURE(seed);
  CAPTURE(kBKN);
  CAPTURE(static_cast<int>(F));
  std::mt19937 rng(data_seed);
  std::uniform_int_distribution<int> small(-4, 4);
  MatF A(M, K), B(K, N);  // B(k, n)
  for (Eigen::Index i = 0; i < A.size(); ++i) A.data()[i] = static_cast<float>(small(rng));
  for (Eigen::Index i = 0; i < B.size(); ++i) B.data()[i] = static_cast<float>(small(rng));
  std::vector<std::uint16_t> a16(static_cast<std::size_t>(M) * K), b16(static_cast<std::size_t>(K) * N);
  for (int m = 0; m < M; ++m) {
    for (int k = 0; k < K; ++k) a16[m * K + k] = simt::float_to_bits16<F>(A(m, k));
  }
  for (int k = 0; k < K; ++k) {
    for (int n = 0; n < N; ++n) {
      const std::uint16_t bits = simt::float_to_bits16<F>(B(k, n));
      if (kBKN) {
        b16[k * N + n] = bits;
      } else {
        b16[n * K + k] = bits;
      }
    }
  }
  // 16-byte aligned copies for cp.async (std::vector's allocator gives 16 on x86-64 glibc, but
  // do not rely on it).
  std::vector<simt::u32x4> abuf((a16.size() + 7) / 8), bbuf((b16.size() + 7) / 8);
  std::memcpy(abuf.data(), a16.data(), a16.size() * 2);
  std::memcpy(bbuf.data(), b16.data(), b16.size() * 2);
  MatF C(M, N);
  C.setConstant(std::nanf(""));  // poison: every element must be written

  using Kernel = simt_test::GemmKernel<F, kBKN>;
  emu::LaunchConfig cfg;
  cfg.grid = simt::dim3(static_cast<unsigned>(N / 64), static_cast<unsigned>(M / 64));
  cfg.block = Kernel::kThreads;
  cfg.smem_bytes = Kernel::kSmemBytes;
  cfg.schedule = schedule;
  cfg.seed = seed;
  emu::launch(cfg, Kernel{}, reinterpret_cast<const std::uint16_t*>(abuf.data()),
              reinterpret_cast<const std::uint16_t*>(bbuf.data()), C.data(), M, N, K);
  const MatF want = A * B;
  int bad = 0;
  for (int m = 0; m < M; ++m) {
    for (int n = 0; n < N; ++n) {
      if (!(C(m, n) == want(m, n)) && bad++ < 5) {
        FAIL_CHECK("C(" << m << "," << n << ") = " << C(m, n) << ", want " << want(m, n));
      }
    }
  }
  CHECK(bad == 0);
}

template <simt::fmt16 F, bool kBKN>
void run_all_schedules(int M, int N, int K) {
  run_gemm<F, kBKN>(M, N, K, emu::Schedule::deterministic, 0);
  for (std::uint64_t seed : {1u, 2u, 3u}) run_gemm<F, kBKN>(M, N, K, emu::Schedule::random, seed);
}

}  // namespace

TEST_CASE("GEMM 64x64x64, B as [n][k] (ldmatrix)") {
  run_all_schedules<simt::fmt16::f16, false>(64, 64, 64);
  run_all_schedules<simt::fmt16::bf16, false>(64, 64, 64);
}

TEST_CASE("GEMM 64x64x64, B as [k][n] (ldmatrix .trans)") {
  run_all_schedules<simt::fmt16::f16, true>(64, 64, 64);
  run_all_schedules<simt::fmt16::bf16, true>(64, 64, 64);
}

TEST_CASE("GEMM over a 2x3 grid of blocks, K = 96 (three k-tiles through the two-stage pipeline)") {
  run_gemm<simt::fmt16::f16, false>(128, 192, 96, emu::Schedule::deterministic, 0);
  run_gemm<simt::fmt16::bf16, true>(128, 192, 96, emu::Schedule::random, 7);
}
