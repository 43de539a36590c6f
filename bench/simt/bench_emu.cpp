// Speed of the simt host emulator itself, so that the run time of emulated kernel tests stays
// predictable. One worker thread (a single block), deterministic schedule.
//   BM_BlockBarrier/<threads>: __syncthreads per second (items/s) for a block of that size.
//   BM_Mma: emulated mma.sync m16n8k16 per second, one warp issuing back to back (items/s);
//           also reported as emulated GFLOP/s (2 * 16 * 8 * 16 flops each).
//   BM_ShflXor: full-warp shuffles per second.
//   BM_Launch: empty launches of one 128-thread block per second (fiber setup cost).
//   BM_GemmTile: the 64x64x64 tile GEMM of tests/simt (128 threads, cp.async, ldmatrix, mma).
#include <benchmark/benchmark.h>

#include <cstdint>
#include <vector>

#include "diffattn/simt/simt.hpp"
#include "../../tests/simt/gemm_kernel.hpp"

namespace simt = diffattn::simt;
namespace emu = diffattn::simt::emu;

namespace {

emu::LaunchConfig one_block(unsigned threads, std::size_t smem = 0) {
  emu::LaunchConfig cfg;
  cfg.grid = 1;
  cfg.block = threads;
  cfg.smem_bytes = smem;
  cfg.workers = 1;
  cfg.schedule = emu::Schedule::deterministic;
  return cfg;
}

struct BarrierLoop {
  void operator()(int iters) const {
    for (int i = 0; i < iters; ++i) simt::syncthreads();
  }
};

struct MmaLoop {
  void operator()(int iters, float* out) const {
    std::uint32_t a[4] = {0x3c003c00u, 0x3c003c00u, 0x3c003c00u, 0x3c003c00u};
    std::uint32_t b[2] = {0x3c003c00u, 0x3c003c00u};
    float acc[4] = {0.f, 0.f, 0.f, 0.f};
    for (int i = 0; i < iters; ++i) simt::mma_m16n8k16_f16f32(acc, a, b, acc);
    out[simt::lane_id()] = acc[0];
  }
};

struct ShflLoop {
  void operator()(int iters, int* out) const {
    int v = static_cast<int>(simt::lane_id());
    for (int i = 0; i < iters; ++i) v += simt::shfl_xor_sync(simt::kFullMask, v, 1 + (i & 15));
    out[simt::lane_id()] = v;
  }
};

void BM_BlockBarrier(benchmark::State& state) {
  const auto threads = static_cast<unsigned>(state.range(0));
  const int iters = 2000;
  for (auto _ : state) emu::launch(one_block(threads), BarrierLoop{}, iters);
  state.SetItemsProcessed(state.iterations() * iters);
  state.counters["threads"] = threads;
}
BENCHMARK(BM_BlockBarrier)->Arg(32)->Arg(128)->Arg(256)->Unit(benchmark::kMillisecond);

void BM_Mma(benchmark::State& state) {
  const int iters = 2000;
  std::vector<float> out(32);
  for (auto _ : state) emu::launch(one_block(32), MmaLoop{}, iters, out.data());
  state.SetItemsProcessed(state.iterations() * iters);
  state.counters["emulated_GFLOP/s"] = benchmark::Counter(
      static_cast<double>(state.iterations()) * iters * 2.0 * 16 * 8 * 16 * 1e-9,
      benchmark::Counter::kIsRate);
}
BENCHMARK(BM_Mma)->Unit(benchmark::kMillisecond);

void BM_ShflXor(benchmark::State& state) {
  const int iters = 2000;
  std::vector<int> out(32);
  for (auto _ : state) emu::launch(one_block(32), ShflLoop{}, iters, out.data());
  state.SetItemsProcessed(state.iterations() * iters);
}
BENCHMARK(BM_ShflXor)->Unit(benchmark::kMillisecond);

void BM_Launch(benchmark::State& state) {
  for (auto _ : state) emu::launch(one_block(128), [] {});
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_Launch)->Unit(benchmark::kMicrosecond);

void BM_GemmTile(benchmark::State& state) {
  using Kernel = simt_test::GemmKernel<simt::fmt16::f16, false>;
  std::vector<simt::u32x4> a(64 * 64 / 8), b(64 * 64 / 8);
  std::vector<float> c(64 * 64);
  for (auto _ : state) {
    emu::launch(one_block(Kernel::kThreads, Kernel::kSmemBytes), Kernel{},
                reinterpret_cast<const std::uint16_t*>(a.data()),
                reinterpret_cast<const std::uint16_t*>(b.data()), c.data(), 64, 64, 64);
  }
  state.SetItemsProcessed(state.iterations());
  state.counters["emulated_GFLOP/s"] = benchmark::Counter(
      static_cast<double>(state.iterations()) * 2.0 * 64 * 64 * 64 * 1e-9,
      benchmark::Counter::kIsRate);
}
BENCHMARK(BM_GemmTile)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
