// The emulator's execution model: indices, barriers, schedules, workers, fibers.
#include <doctest/doctest.h>

#include <cfenv>
#include <cstdlib>
#include <set>
#include <vector>

#include "diffattn/simt/simt.hpp"

namespace simt = diffattn::simt;
namespace emu = diffattn::simt::emu;

namespace {

struct IndexKernel {
  void operator()(unsigned* out) const {
    const simt::dim3 t = simt::thread_idx(), b = simt::block_idx(), bd = simt::block_dim(),
                     gd = simt::grid_dim();
    const unsigned block_lin = b.x + gd.x * (b.y + gd.y * b.z);
    const unsigned rank = simt::thread_rank();
    CHECK(rank == t.x + bd.x * (t.y + bd.y * t.z));
    CHECK(simt::lane_id() == rank % 32);
    CHECK(simt::warp_id() == rank / 32);
    const unsigned g = block_lin * static_cast<unsigned>(bd.volume()) + rank;
    out[4 * g + 0] = t.x + 100 * t.y + 10000 * t.z;
    out[4 * g + 1] = b.x + 100 * b.y + 10000 * b.z;
    out[4 * g + 2] = bd.x + 100 * bd.y + 10000 * bd.z;
    out[4 * g + 3] = gd.x + 100 * gd.y + 10000 * gd.z;
  }
};

// Rounds of: write own slot, barrier, read a neighbour's, barrier. Any schedule gives the same.
struct PhasedKernel {
  void operator()(int* out, int rounds) const {
    auto s = simt::shared_memory<int>();
    const unsigned n = simt::block_dim().x, t = simt::thread_rank();
    int acc = 0;
    for (int r = 0; r < rounds; ++r) {
      s[t] = static_cast<int>(t) * (r + 1);
      simt::syncthreads();
      acc += s[(t + static_cast<unsigned>(r) + 1) % n];
      simt::syncthreads();
    }
    out[simt::block_idx().x * n + t] = acc;
  }
};

// A race: no barrier between the writes and the reads. The result depends on the interleaving.
struct RacyKernel {
  void operator()(int* out) const {
    auto s = simt::shared_memory<int>();
    const unsigned n = simt::block_dim().x, t = simt::thread_rank();
    if (t == 0) {
      for (unsigned i = 0; i < n; ++i) s[i] = 0;
    }
    simt::syncthreads();
    s[t] = static_cast<int>(t) + 1;
    out[t] = s[(t + 1) % n];  // missing syncthreads before this read
  }
};

}  // namespace

TEST_CASE("thread, block and grid indices in 3D") {
  const simt::dim3 grid(2, 3, 2), block(4, 2, 3);
  std::vector<unsigned> out(4 * grid.volume() * block.volume(), ~0u);
  emu::launch(grid, block, 0, IndexKernel{}, out.data());
  std::size_t g = 0;
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx)
        for (unsigned tz = 0; tz < block.z; ++tz)
          for (unsigned ty = 0; ty < block.y; ++ty)
            for (unsigned tx = 0; tx < block.x; ++tx, ++g) {
              CHECK(out[4 * g + 0] == tx + 100 * ty + 10000 * tz);
              CHECK(out[4 * g + 1] == bx + 100 * by + 10000 * bz);
              CHECK(out[4 * g + 2] == 4u + 200u + 30000u);
              CHECK(out[4 * g + 3] == 2u + 300u + 20000u);
            }
}

TEST_CASE("barriers order shared-memory phases under every schedule, block size and worker count") {
  for (unsigned n : {1u, 7u, 32u, 65u, 128u, 1024u}) {
    for (int workers : {1, 2}) {
      for (std::uint64_t seed : {0u, 11u, 12u}) {
        CAPTURE(n);
        CAPTURE(workers);
        CAPTURE(seed);
        const int rounds = 3, blocks = 5;
        std::vector<int> out(blocks * n, -1);
        emu::LaunchConfig cfg;
        cfg.grid = blocks;
        cfg.block = n;
        cfg.smem_bytes = n * sizeof(int);
        cfg.workers = workers;
        cfg.schedule = seed ? emu::Schedule::random : emu::Schedule::deterministic;
        cfg.seed = seed;
        emu::launch(cfg, PhasedKernel{}, out.data(), rounds);
        for (unsigned b = 0; b < blocks; ++b) {
          for (unsigned t = 0; t < n; ++t) {
            int want = 0;
            for (int r = 0; r < rounds; ++r) want += static_cast<int>((t + r + 1) % n) * (r + 1);
            CHECK(out[b * n + t] == want);
          }
        }
      }
    }
  }
}

TEST_CASE("random schedules interleave (races show) and replay exactly from their seed") {
  const unsigned n = 64;
  auto run = [&](emu::Schedule s, std::uint64_t seed) {
    std::vector<int> out(n, -1);
    emu::LaunchConfig cfg;
    cfg.block = n;
    cfg.smem_bytes = n * sizeof(int);
    cfg.schedule = s;
    cfg.seed = seed;
    emu::launch(cfg, RacyKernel{}, out.data());
    return out;
  };
  const std::vector<int> det = run(emu::Schedule::deterministic, 0);
  CHECK(det == run(emu::Schedule::deterministic, 0));
  // Deterministic: the last thread to reach the barrier (n - 1) continues first, then threads
  // 0, 1, ... each run to their end: thread t < n - 2 reads slot t + 1 before its owner wrote it.
  for (unsigned t = 0; t + 2 < n; ++t) CHECK(det[t] == 0);
  CHECK(det[n - 2] == static_cast<int>(n));
  CHECK(det[n - 1] == 0);
  std::set<std::vector<int>> outcomes;
  for (std::uint64_t seed = 1; seed <= 8; ++seed) {
    const std::vector<int> a = run(emu::Schedule::random, seed);
    CHECK(a == run(emu::Schedule::random, seed));
    outcomes.insert(a);
  }
  CHECK(outcomes.size() > 1);
}

TEST_CASE("each fiber keeps its own floating-point control state") {
  std::vector<int> out(64, -1);
  const int before = std::fegetround();
  emu::launch(1, 64, 0, [](int* o) {
    const unsigned t = simt::thread_rank();
    if (t == 0) std::fesetround(FE_UPWARD);
    simt::syncthreads();
    o[t] = std::fegetround() == (t == 0 ? FE_UPWARD : FE_TONEAREST) ? 1 : 0;
    if (t == 0) std::fesetround(FE_TONEAREST);
  }, out.data());
  for (int x : out) CHECK(x == 1);
  CHECK(std::fegetround() == before);
}

TEST_CASE("deep fiber stacks, large blocks, many blocks over several workers") {
  std::vector<int> out(256 * 64, -1);
  emu::LaunchConfig cfg;
  cfg.grid = 256;
  cfg.block = 64;
  cfg.workers = 2;
  emu::launch(cfg, [](int* o) {
    volatile char big[96 * 1024];  // well inside the 256 KiB default stack
    big[0] = 1;
    big[sizeof(big) - 1] = 2;
    const unsigned g = simt::block_idx().x * 64 + simt::thread_rank();
    o[g] = static_cast<int>(g) + big[0] + big[sizeof(big) - 1];
  }, out.data());
  for (int i = 0; i < 256 * 64; ++i) CHECK(out[i] == i + 3);

  std::vector<int> out2(1024, -1);
  emu::launch(1, 1024, 1024 * sizeof(int), PhasedKernel{}, out2.data(), 1);
  for (int t = 0; t < 1024; ++t) CHECK(out2[t] == (t + 1) % 1024);
}

TEST_CASE("kernel functors and arguments are copied per thread, like CUDA parameters") {
  struct Counter {
    int calls = 0;
    void operator()(int* out, int base) {
      ++calls;  // mutates its own copy only
      base += calls;
      out[simt::thread_rank()] = base;
    }
  };
  std::vector<int> out(32, 0);
  Counter c;
  emu::launch(1, 32, 0, c, out.data(), 10);
  for (int x : out) CHECK(x == 11);
  CHECK(c.calls == 0);
}

TEST_CASE("the environment selects the schedule and workers") {
  ::setenv("DIFFATTN_SIMT_SCHEDULE", "random:42", 1);
  ::setenv("DIFFATTN_SIMT_WORKERS", "3", 1);
  emu::detail::EnvSettings s = emu::detail::read_env();
  CHECK(s.schedule == emu::Schedule::random);
  CHECK(s.seed == 42);
  CHECK(s.workers == 3);
  ::setenv("DIFFATTN_SIMT_SCHEDULE", "deterministic", 1);
  ::setenv("DIFFATTN_SIMT_SEED", "9", 1);
  s = emu::detail::read_env();
  CHECK(s.schedule == emu::Schedule::random);
  CHECK(s.seed == 9);
  ::unsetenv("DIFFATTN_SIMT_SEED");
  ::unsetenv("DIFFATTN_SIMT_SCHEDULE");
  ::unsetenv("DIFFATTN_SIMT_WORKERS");
  s = emu::detail::read_env();
  CHECK(s.schedule == emu::Schedule::deterministic);
}
