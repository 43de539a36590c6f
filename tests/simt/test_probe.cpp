// The layout probe under the emulator, compared with the ISA formulas (isa_formulas.hpp) and,
// when tests/simt/golden/ holds dumps taken on a GPU, with those, bit for bit.
#include <doctest/doctest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "diffattn/simt/simt.hpp"
#include "isa_formulas.hpp"
#include "simt/probe_kernels.hpp"

namespace simt = diffattn::simt;

namespace {

std::uint32_t fbits(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

// What the probe must produce, from the formulas alone.
std::vector<std::uint32_t> expected_probe() {
  std::vector<std::uint32_t> r(simt_test::kProbeWords, 0);
  for (int lane = 0; lane < 32; ++lane) {
    std::uint32_t* o = &r[lane * simt_test::kProbeWordsPerLane];
    for (bool trans : {false, true}) {
      for (int n : {1, 2, 4}) {
        for (int j = 0; j < n; ++j) {
          std::uint32_t w = 0;
          for (int h = 0; h < 2; ++h) {
            const isa::RC e = trans ? isa::ldm_trans(lane, h) : isa::ldm(lane, h);
            w |= std::uint32_t{simt_test::ldm_id(8 * j + e.row, e.col)} << (16 * h);
          }
          *o++ = w;
        }
      }
    }
    for (int fmt = 0; fmt < 2; ++fmt) {
      // A probe: A(row, col) = 8 * lane' + i' where (lane', i') holds (row, col); D(r, n) of
      // mma h = A(r, n + 8h).
      auto a_id = [](int row, int col) {
        for (int l = 0; l < 32; ++l) {
          for (int i = 0; i < 8; ++i) {
            if (isa::mma_a(l, i).row == row && isa::mma_a(l, i).col == col) return 8 * l + i;
          }
        }
        return -1;
      };
      auto b_id = [](int k, int n) {
        for (int l = 0; l < 32; ++l) {
          for (int i = 0; i < 4; ++i) {
            if (isa::mma_b(l, i).row == k && isa::mma_b(l, i).col == n) return 4 * l + i;
          }
        }
        return -1;
      };
      for (int h = 0; h < 2; ++h) {
        for (int i = 0; i < 4; ++i) {
          const isa::RC c = isa::mma_c(lane, i);
          *o++ = fbits(static_cast<float>(a_id(c.row, c.col + 8 * h)));
        }
      }
      for (int i = 0; i < 4; ++i) {
        const isa::RC c = isa::mma_c(lane, i);
        *o++ = fbits(static_cast<float>(b_id(c.row, c.col)));
      }
      for (int i = 0; i < 4; ++i) {
        const isa::RC c = isa::mma_c(lane, i);
        *o++ = fbits(1024.f * static_cast<float>(4 * lane + i) + 8.f * c.row + c.col);
      }
    }
    for (int s = 0; s < simt_test::kNumShfl; ++s) {
      const simt_test::ShflCase sc = simt_test::shfl_case(s);
      const int arg = sc.mode == 0 ? sc.arg * lane + 1 : sc.arg;
      *o++ = 0xabc00u + static_cast<std::uint32_t>(isa::shfl_src(sc.mode, lane, arg, sc.width));
    }
  }
  return r;
}

std::string emulator_dump() {
  std::vector<std::uint32_t> result(simt_test::kProbeWords, 0);
  simt::emu::launch(1, 32, simt_test::kProbeSmemBytes, simt_test::ProbeKernel{}, result.data());
  return simt_test::probe_dump(result.data());
}

// First differing line of two dumps, for the failure message.
std::string first_difference(const std::string& a, const std::string& b) {
  std::istringstream sa(a), sb(b);
  std::string la, lb;
  int n = 0;
  while (true) {
    const bool ga = static_cast<bool>(std::getline(sa, la));
    const bool gb = static_cast<bool>(std::getline(sb, lb));
    ++n;
    if (!ga && !gb) return "identical";
    if (la != lb || ga != gb) {
      return "line " + std::to_string(n) + ":\n  emulator: " + (ga ? la : "<eof>") +
             "\n  golden:   " + (gb ? lb : "<eof>");
    }
  }
}

}  // namespace

TEST_CASE("layout probe: emulator matches the ISA formulas") {
  const std::vector<std::uint32_t> want = expected_probe();
  CHECK(emulator_dump() == simt_test::probe_dump(want.data()));
}

TEST_CASE("layout probe: emulator matches the GPU golden dumps") {
  namespace fs = std::filesystem;
  const fs::path dir = DIFFATTN_SIMT_GOLDEN_DIR;
  std::vector<fs::path> goldens;
  if (fs::is_directory(dir)) {
    for (const auto& e : fs::directory_iterator(dir)) {
      if (e.path().extension() == ".txt" && e.path().filename().string().rfind("probe_layouts", 0) == 0) {
        goldens.push_back(e.path());
      }
    }
  }
  if (goldens.empty()) {
    MESSAGE("SKIPPED golden comparison: no GPU dumps in " << dir.string()
            << " (run simt_probe_layouts_gpu on a GPU and commit its output there; until then "
               "the emulator is checked against the ISA formulas only)");
    return;
  }
  const std::string emu = emulator_dump();
  for (const fs::path& g : goldens) {
    std::ifstream in(g);
    std::stringstream ss;
    ss << in.rdbuf();
    CHECK_MESSAGE(emu == ss.str(), g.string() << " differs from the emulator at "
                                              << first_difference(emu, ss.str()));
  }
}
