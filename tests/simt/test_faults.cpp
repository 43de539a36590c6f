// Every loud failure of the emulator, provoked on purpose and caught: try_launch returns the
// fault (kind, block, thread, message), launch throws emu::Error, and the emulator stays usable.
#include <doctest/doctest.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "diffattn/simt/simt.hpp"

namespace simt = diffattn::simt;
namespace emu = diffattn::simt::emu;

namespace {

template <class K, class... Args>
emu::LaunchError fault_of(emu::LaunchConfig cfg, K k, Args... args) {
  emu::LaunchResult r = emu::try_launch(cfg, k, args...);
  REQUIRE_FALSE(r.ok());
  MESSAGE(r.error.message);
  CHECK(r.error.message.find(emu::fault_name(r.error.fault)) != std::string::npos);
  return r.error;
}

emu::LaunchConfig cfg_of(simt::dim3 grid, simt::dim3 block, std::size_t smem = 0) {
  emu::LaunchConfig c;
  c.grid = grid;
  c.block = block;
  c.smem_bytes = smem;
  return c;
}

bool has(const std::string& s, const char* sub) { return s.find(sub) != std::string::npos; }

struct Fill {
  void operator()(int* out) const {
    auto s = simt::shared_memory<int>();
    s[simt::thread_rank()] = static_cast<int>(simt::thread_rank());
    simt::syncthreads();
    out[simt::thread_rank()] = s[(simt::thread_rank() + 1) % simt::block_dim().x];
  }
};

void check_still_usable() {
  std::vector<int> out(64, -1);
  emu::launch(1, 64, 64 * sizeof(int), Fill{}, out.data());
  for (int i = 0; i < 64; ++i) CHECK(out[i] == (i + 1) % 64);
}

}  // namespace

TEST_CASE("deadlock: __syncthreads after some threads exited") {
  auto e = fault_of(cfg_of(1, 64), [] {
    if (simt::thread_rank() < 32) return;
    simt::syncthreads();
  });
  CHECK(e.fault == emu::Fault::deadlock);
  CHECK(e.has_thread);
  CHECK(e.thread == simt::dim3(32, 0, 0));
  CHECK(has(e.message, "__syncthreads"));
  CHECK(has(e.message, "exited"));
  check_still_usable();
}

TEST_CASE("deadlock: a thread exits while others wait at __syncthreads") {
  auto e = fault_of(cfg_of(1, 64), [] {
    if (simt::thread_rank() >= 32) return;
    simt::syncthreads();
  });
  CHECK(e.fault == emu::Fault::deadlock);
  CHECK(e.thread == simt::dim3(32, 0, 0));
  CHECK(has(e.message, "wait at __syncthreads"));
  check_still_usable();
}

TEST_CASE("deadlock: lanes split between a barrier and a shuffle (found by the scheduler)") {
  auto e = fault_of(cfg_of(1, 32), [] {
    if (simt::lane_id() == 0) {
      simt::syncthreads();
    } else {
      (void)simt::shfl_xor_sync(simt::kFullMask, 1, 1);
    }
  });
  CHECK(e.fault == emu::Fault::deadlock);
  CHECK_FALSE(e.has_thread);
  CHECK(has(e.message, "threads 0 wait at __syncthreads"));
  CHECK(has(e.message, "threads 1-31 wait in shfl.sync.bfly"));
}

TEST_CASE("deadlock: a shuffle whose mask names an exited lane") {
  auto e = fault_of(cfg_of(1, 32), [] {
    if (simt::lane_id() == 3) return;
    (void)simt::shfl_xor_sync(simt::kFullMask, 1, 1);
  });
  CHECK(e.fault == emu::Fault::deadlock);
  CHECK(has(e.message, "lane 3"));
}

TEST_CASE("divergent collectives: different primitives, modes or masks in one warp") {
  auto e1 = fault_of(cfg_of(1, 32), [] {
    if (simt::lane_id() % 2) {
      (void)simt::shfl_sync(simt::kFullMask, 1, 0);
    } else {
      (void)simt::shfl_xor_sync(simt::kFullMask, 1, 1);
    }
  });
  CHECK(e1.fault == emu::Fault::divergent_collective);
  CHECK(e1.thread == simt::dim3(1, 0, 0));
  CHECK(has(e1.message, "shfl.sync.idx"));
  CHECK(has(e1.message, "shfl.sync.bfly"));

  auto e2 = fault_of(cfg_of(1, 32, 512), [] {
    std::uint32_t r[4];
    if (simt::lane_id() < 16) {
      simt::ldmatrix_x4(r, simt::shared_memory<std::uint16_t>() + 8 * simt::lane_id());
    } else {
      simt::syncwarp();
    }
  });
  CHECK(e2.fault == emu::Fault::divergent_collective);
  CHECK(has(e2.message, "__syncwarp"));
  CHECK(has(e2.message, "ldmatrix.x4"));

  auto e3 = fault_of(cfg_of(1, 32), [] {
    const std::uint32_t mask = simt::lane_id() == 1 ? 0x3u : simt::kFullMask;
    simt::syncwarp(mask);
  });
  CHECK(e3.fault == emu::Fault::divergent_collective);
  CHECK(has(e3.message, "0x00000003"));

  auto e4 = fault_of(cfg_of(1, 32), [] {
    float d[4];
    const std::uint32_t a[4] = {0, 0, 0, 0}, b[2] = {0, 0};
    const float c[4] = {0, 0, 0, 0};
    if (simt::lane_id() == 31) {
      simt::mma_m16n8k16_bf16f32(d, a, b, c);
    } else {
      simt::mma_m16n8k16_f16f32(d, a, b, c);
    }
  });
  CHECK(e4.fault == emu::Fault::divergent_collective);
  CHECK(has(e4.message, "mma.m16n8k16.bf16"));
}

TEST_CASE("bad masks and shuffle arguments") {
  auto e1 = fault_of(cfg_of(1, 32), [] { simt::syncwarp(0xfffffffeu); });
  CHECK(e1.fault == emu::Fault::bad_argument);
  CHECK(e1.thread == simt::dim3(0, 0, 0));
  CHECK(has(e1.message, "does not include the calling lane"));

  auto e2 = fault_of(cfg_of(1, 48), [] { (void)simt::shfl_xor_sync(simt::kFullMask, 1, 1); });
  CHECK(e2.fault == emu::Fault::bad_argument);
  CHECK(e2.thread == simt::dim3(32, 0, 0));
  CHECK(has(e2.message, "do not exist"));

  auto e3 = fault_of(cfg_of(1, 32), [] { (void)simt::shfl_xor_sync(simt::kFullMask, 1, 1, 6); });
  CHECK(e3.fault == emu::Fault::bad_argument);
  CHECK(has(e3.message, "width 6"));

  auto e4 = fault_of(cfg_of(1, 32), [] {
    if (simt::lane_id() < 16) (void)simt::shfl_down_sync(0xffffu, 1, 4);
  });
  CHECK(e4.fault == emu::Fault::bad_argument);
  CHECK(has(e4.message, "not in the mask"));
}

TEST_CASE("shared memory out of bounds") {
  auto e1 = fault_of(cfg_of(1, 32, 128), [] {
    auto s = simt::shared_memory<float>();
    float x = s[simt::thread_rank() + 16];  // threads 16+ read past 128 bytes
    (void)x;
  });
  CHECK(e1.fault == emu::Fault::smem_out_of_bounds);
  CHECK(e1.thread == simt::dim3(16, 0, 0));
  CHECK(has(e1.message, "shared offset 128"));
  CHECK(has(e1.message, "128 bytes"));

  auto e2 = fault_of(cfg_of(2, 8, 64), [] {
    if (simt::block_idx().x == 1 && simt::thread_rank() == 5) simt::shared_memory<int>()[-1] = 3;
  });
  CHECK(e2.fault == emu::Fault::smem_out_of_bounds);
  CHECK(e2.block == simt::dim3(1, 0, 0));
  CHECK(e2.thread == simt::dim3(5, 0, 0));
  CHECK(has(e2.message, "st.shared"));

  auto e3 = fault_of(cfg_of(1, 32, 256), [] {
    std::uint32_t r[2];
    simt::ldmatrix_x2(r, simt::shared_memory<std::uint16_t>() + 8 * (simt::lane_id() + 2));
  });
  CHECK(e3.fault == emu::Fault::smem_out_of_bounds);
  CHECK(has(e3.message, "ldmatrix row address of lane 14"));
}

TEST_CASE("shared memory misaligned") {
  auto e1 = fault_of(cfg_of(1, 4, 64), [] {
    simt::shared_memory<char>().byte_add(2).cast<float>().store(1.f);
  });
  CHECK(e1.fault == emu::Fault::smem_misaligned);
  CHECK(has(e1.message, "not aligned to 4"));

  auto e2 = fault_of(cfg_of(1, 32, 1024), [] {
    std::uint32_t r[4];
    simt::ldmatrix_x4(r, simt::shared_memory<std::uint16_t>() + 4 + 8 * simt::lane_id());
  });
  CHECK(e2.fault == emu::Fault::smem_misaligned);
  CHECK(has(e2.message, "not aligned to 16"));

  auto e3 = fault_of(cfg_of(1, 4, 64), [] {  // 16-byte vector needs 16-byte alignment
    (void)simt::shared_memory<simt::u32x4>().byte_add(8).load();
  });
  CHECK(e3.fault == emu::Fault::smem_misaligned);
}

namespace {
alignas(16) std::uint32_t g_src[64] = {1, 2, 3, 4};
}

TEST_CASE("reading a cp.async target before its wait") {
  // The issuing thread itself.
  auto e1 = fault_of(cfg_of(1, 32, 512), [](const std::uint32_t* src) {
    auto s = simt::shared_memory<std::uint32_t>();
    simt::cp_async_16(s + 4 * simt::thread_rank(), src);
    simt::cp_async_commit();
    std::uint32_t x = s[4 * simt::thread_rank()];
    (void)x;
    simt::cp_async_wait<0>();
  }, static_cast<const std::uint32_t*>(g_src));
  CHECK(e1.fault == emu::Fault::cp_async_not_waited);
  CHECK(e1.thread == simt::dim3(0, 0, 0));
  CHECK(has(e1.message, "ld.shared reads"));

  // Another thread, after a barrier, but before the issuer waited: wait<1> leaves the newest
  // group in flight.
  auto e2 = fault_of(cfg_of(1, 64, 512), [](const std::uint32_t* src) {
    auto s = simt::shared_memory<std::uint32_t>();
    if (simt::thread_rank() == 7) {
      simt::cp_async_16(s, src);
      simt::cp_async_commit();
      simt::cp_async_16(s + 8, src);
      simt::cp_async_commit();
      simt::cp_async_wait<1>();  // the first copy has landed, the second not
    }
    simt::syncthreads();
    if (simt::thread_rank() == 40) {
      CHECK(s[0] == 1u);  // landed: fine
      std::uint32_t x = s[9];
      (void)x;
    }
    simt::syncthreads();
    if (simt::thread_rank() == 7) simt::cp_async_wait<0>();
  }, static_cast<const std::uint32_t*>(g_src));
  CHECK(e2.fault == emu::Fault::cp_async_not_waited);
  CHECK(e2.thread == simt::dim3(40, 0, 0));
  CHECK(has(e2.message, "issued by thread (7,0,0)"));

  // ldmatrix over a pending target.
  auto e3 = fault_of(cfg_of(1, 32, 512), [](const std::uint32_t* src) {
    auto s = simt::shared_memory<std::uint16_t>();
    if (simt::lane_id() == 0) simt::cp_async_16(s + 8 * 3, src);
    std::uint32_t r[1];
    simt::ldmatrix_x1(r, s + 8 * simt::lane_id());
    simt::cp_async_wait_all();
  }, static_cast<const std::uint32_t*>(g_src));
  CHECK(e3.fault == emu::Fault::cp_async_not_waited);
  CHECK(has(e3.message, "ldmatrix row address of lane 3"));
  CHECK(has(e3.message, "not yet committed"));

  // A second cp.async onto a pending target.
  auto e4 = fault_of(cfg_of(1, 1, 64), [](const std::uint32_t* src) {
    auto s = simt::shared_memory<std::uint32_t>();
    simt::cp_async_16(s, src);
    simt::cp_async_16(s, src);
    simt::cp_async_wait_all();
  }, static_cast<const std::uint32_t*>(g_src));
  CHECK(e4.fault == emu::Fault::cp_async_not_waited);
  CHECK(has(e4.message, "cp.async destination writes"));
}

TEST_CASE("cp.async: waited copies and zero fill land correctly") {
  std::vector<std::uint32_t> out(8, 0xdeadbeef);
  emu::launch(1, 1, 64, [](const std::uint32_t* src, std::uint32_t* o) {
    auto s = simt::shared_memory<std::uint32_t>();
    simt::cp_async_16(s, src);
    simt::cp_async_16_zfill(s + 4, src, 8);  // two words copied, two zeroed
    simt::cp_async_wait_all();
    for (int i = 0; i < 8; ++i) o[i] = s[i];
  }, static_cast<const std::uint32_t*>(g_src), out.data());
  const std::vector<std::uint32_t> want = {1, 2, 3, 4, 1, 2, 0, 0};
  CHECK(out == want);
}

TEST_CASE("a thread exiting with cp.async groups in flight") {
  auto e1 = fault_of(cfg_of(1, 32, 512), [](const std::uint32_t* src) {
    if (simt::thread_rank() == 3) {
      simt::cp_async_16(simt::shared_memory<std::uint32_t>(), src);
      simt::cp_async_commit();
    }
  }, static_cast<const std::uint32_t*>(g_src));
  CHECK(e1.fault == emu::Fault::cp_async_in_flight_at_exit);
  CHECK(e1.thread == simt::dim3(3, 0, 0));
  CHECK(has(e1.message, "1 committed groups not waited for"));

  auto e2 = fault_of(cfg_of(1, 1, 64), [](const std::uint32_t* src) {
    simt::cp_async_16(simt::shared_memory<std::uint32_t>(), src);  // never committed
  }, static_cast<const std::uint32_t*>(g_src));
  CHECK(e2.fault == emu::Fault::cp_async_in_flight_at_exit);
  CHECK(has(e2.message, "never committed"));
}

TEST_CASE("cp.async with a misaligned or null global source") {
  auto e1 = fault_of(cfg_of(1, 1, 64), [](const std::uint32_t* src) {
    simt::cp_async_16(simt::shared_memory<std::uint32_t>(), src + 1);
    simt::cp_async_wait_all();
  }, static_cast<const std::uint32_t*>(g_src));
  CHECK(e1.fault == emu::Fault::bad_argument);
  CHECK(has(e1.message, "not 16-byte aligned"));
  auto e2 = fault_of(cfg_of(1, 1, 64), [] {
    simt::cp_async_16(simt::shared_memory<std::uint32_t>(), nullptr);
    simt::cp_async_wait_all();
  });
  CHECK(e2.fault == emu::Fault::bad_argument);
}

TEST_CASE("invalid launches") {
  auto k = [] {};
  CHECK(fault_of(cfg_of(1, 1025), k).fault == emu::Fault::invalid_launch);
  CHECK(fault_of(cfg_of(0, 32), k).fault == emu::Fault::invalid_launch);
  CHECK(fault_of(cfg_of(simt::dim3(1, 70000), 32), k).fault == emu::Fault::invalid_launch);
  CHECK(fault_of(cfg_of(1, 32, 300 * 1024), k).fault == emu::Fault::invalid_launch);
}

TEST_CASE("a kernel that throws") {
  auto e = fault_of(cfg_of(1, 8), [] {
    if (simt::thread_rank() == 6) throw std::runtime_error("boom");
  });
  CHECK(e.fault == emu::Fault::kernel_exception);
  CHECK(e.thread == simt::dim3(6, 0, 0));
  CHECK(has(e.message, "boom"));
}

TEST_CASE("primitives outside a launch throw outside_kernel") {
  CHECK_THROWS_AS(simt::thread_idx(), emu::Error);
  CHECK_THROWS_AS(simt::syncthreads(), emu::Error);
  try {
    (void)simt::shared_memory<float>()[0].load();
  } catch (const emu::Error& err) {
    CHECK(err.fault() == emu::Fault::outside_kernel);
  }
}

TEST_CASE("launch() throws emu::Error; the fault of the lowest failing block is reported") {
  bool thrown = false;
  try {
    emu::launch(simt::dim3(4, 2), 32, 0, [] {
      if (simt::block_idx().y == 1 && simt::thread_rank() == 31) simt::syncwarp(1u);
    });
  } catch (const emu::Error& err) {
    thrown = true;
    CHECK(err.fault() == emu::Fault::bad_argument);
    CHECK(err.error().block == simt::dim3(0, 1, 0));
    CHECK(has(err.what(), "block (0,1,0) thread (31,0,0) (warp 0, lane 31)"));
  }
  CHECK(thrown);
  check_still_usable();
}
