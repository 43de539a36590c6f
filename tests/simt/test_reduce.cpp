// Warp and block reductions built on shuffles (simt/reduce.hpp), on several block sizes and
// schedules; small integers, so float sums are exact.
#include <doctest/doctest.h>

#include <algorithm>
#include <random>
#include <vector>

#include "diffattn/simt/simt.hpp"

namespace simt = diffattn::simt;
namespace emu = diffattn::simt::emu;

namespace {

template <int kWarps>
struct BlockReduceKernel {
  void operator()(const float* in, float* sums, float* maxes) const {
    const unsigned rank = simt::thread_rank();
    const unsigned b = simt::block_idx().x;
    const float v = in[b * kWarps * 32 + rank];
    auto scratch = simt::shared_memory<float>();
    const float s = simt::block_allreduce<kWarps>(v, simt::op_sum{}, scratch, rank);
    const float m = simt::block_allreduce<kWarps>(v, simt::op_max{}, scratch, rank);
    sums[b * kWarps * 32 + rank] = s;
    maxes[b * kWarps * 32 + rank] = m;
  }
};

// Quad reductions: the row max / row sum pattern of an mma accumulator (4 lanes share a row).
struct QuadReduceKernel {
  void operator()(const int* in, int* out) const {
    const unsigned lane = simt::lane_id();
    int v = in[lane];
    out[lane] = simt::warp_allreduce<4>(v, simt::op_sum{});
    out[32 + lane] = simt::warp_allreduce<4>(v, simt::op_max{});
    // Tree reduction with shfl_down: lane 0 gets the warp total.
    int t = v;
    for (unsigned d = 16; d > 0; d /= 2) t += simt::shfl_down_sync(simt::kFullMask, t, d);
    out[64 + lane] = simt::shfl_sync(simt::kFullMask, t, 0);
  }
};

template <int kWarps>
void check_block_reduce(emu::Schedule sched, std::uint64_t seed) {
  CAPTURE(kWarps);
  CAPTURE(seed);
  const int blocks = 3, n = blocks * kWarps * 32;
  std::mt19937 rng(static_cast<unsigned>(kWarps * 100 + seed));
  std::uniform_int_distribution<int> d(-1000, 1000);
  std::vector<float> in(n), sums(n, -1), maxes(n, -1);
  for (float& x : in) x = static_cast<float>(d(rng));
  emu::LaunchConfig cfg;
  cfg.grid = blocks;
  cfg.block = kWarps * 32;
  cfg.smem_bytes = kWarps * sizeof(float);
  cfg.schedule = sched;
  cfg.seed = seed;
  emu::launch(cfg, BlockReduceKernel<kWarps>{}, in.data(), sums.data(), maxes.data());
  for (int b = 0; b < blocks; ++b) {
    float s = 0, m = -1e30f;
    for (int i = 0; i < kWarps * 32; ++i) {
      s += in[b * kWarps * 32 + i];
      m = std::max(m, in[b * kWarps * 32 + i]);
    }
    for (int i = 0; i < kWarps * 32; ++i) {
      CHECK(sums[b * kWarps * 32 + i] == s);
      CHECK(maxes[b * kWarps * 32 + i] == m);
    }
  }
}

}  // namespace

TEST_CASE("block all-reduce (sum, max) for 1, 2, 3, 4 and 8 warps") {
  for (auto sched : {emu::Schedule::deterministic, emu::Schedule::random}) {
    const std::uint64_t seed = sched == emu::Schedule::random ? 5 : 0;
    check_block_reduce<1>(sched, seed);
    check_block_reduce<2>(sched, seed);
    check_block_reduce<3>(sched, seed);
    check_block_reduce<4>(sched, seed);
    check_block_reduce<8>(sched, seed);
  }
}

TEST_CASE("quad and tree warp reductions") {
  std::vector<int> in(32), out(96, -1);
  for (int i = 0; i < 32; ++i) in[i] = (i * 37) % 23 - 11;
  emu::launch(1, 32, 0, QuadReduceKernel{}, in.data(), out.data());
  int total = 0;
  for (int x : in) total += x;
  for (int l = 0; l < 32; ++l) {
    const int q = l & ~3;
    CHECK(out[l] == in[q] + in[q + 1] + in[q + 2] + in[q + 3]);
    CHECK(out[32 + l] == std::max({in[q], in[q + 1], in[q + 2], in[q + 3]}));
    CHECK(out[64 + l] == total);
  }
}

namespace {
// any_sync over the warp and over a partial mask; op_max and fmaxf agree when a lane holds NaN.
struct VoteKernel {
  void operator()(const int* pred, int* out, float* mx) const {
    const unsigned lane = simt::lane_id();
    out[lane] = simt::any_sync(simt::kFullMask, pred[lane] != 0) ? 1 : 0;
    const float v = lane == 5 ? NAN : static_cast<float>(lane % 4);
    mx[lane] = simt::warp_allreduce<4>(v, simt::op_max{});
    if (lane < 16) out[32 + lane] = simt::any_sync(0x0000ffffu, pred[lane] != 0) ? 1 : 0;
  }
};
}  // namespace

TEST_CASE("any_sync votes over the mask; op_max drops NaN like fmaxf, so every lane agrees") {
  for (int only : {-1, 3, 20}) {  // no lane, a lane inside the half mask, a lane outside it
    CAPTURE(only);
    std::vector<int> pred(32, 0), out(64, -1);
    if (only >= 0) pred[only] = 1;
    std::vector<float> mx(32, -1.f);
    emu::launch(1, 32, 0, VoteKernel{}, pred.data(), out.data(), mx.data());
    for (int l = 0; l < 32; ++l) CHECK(out[l] == (only >= 0 ? 1 : 0));
    for (int l = 0; l < 16; ++l) CHECK(out[32 + l] == (only >= 0 && only < 16 ? 1 : 0));
    for (int l = 0; l < 32; ++l) CHECK(mx[l] == 3.f);  // lane 5's NaN dropped in its quad (4-7)
  }
}
