// The CUDA forward on a real GPU, when one is present: every shipped configuration through
// cuda::forward on the same suite of cases as the emulated tests. Without a GPU (CI) the
// host-side checks still run, and the program then exits with 77: ctest reports the test as
// skipped, never as passed, since the GPU suite did not run.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cuda_runtime.h>

#include <diffattn/cuda/forward.cuh>

#include "cuda/forward_check.hpp"
#include "cuda/gpu_support.hpp"

using namespace dt;

namespace {

da::Status run_on_gpu(const da::Params& hp) { return forward_on_gpu(hp); }

template <class Traits>
void gpu_suite() {
  ErrorStats st;
  check_forward_suite<Traits>(run_on_gpu, st);
  MESSAGE(std::string(da::dtype_name(Traits::kDType)) << " d=" << Traits::kHeadDim << " on GPU: worst |out - ref| "
                                                      << st.kernel_err << ", ratio to naive: out " << st.out_ratio
                                                      << ", A " << st.attn_ratio);
}

template <class Traits>
void gpu_small_cases() {
  ErrorStats st;
  check_forward_small_cases<Traits>(run_on_gpu, st);
}

}  // namespace

// scripts/gpu_check.sh runs this test case alone under compute-sanitizer (memcheck, racecheck,
// synccheck, initcheck): test_cuda_forward_gpu -tc="*small cases*".
TEST_CASE("cuda forward on a GPU: small cases of every shipped configuration (for compute-sanitizer)") {
  if (!have_gpu()) {
    MESSAGE("SKIPPED: no CUDA device on this machine");
    return;
  }
#define DIFFATTN_X(fmt, d)                                        \
  gpu_small_cases<da::cuda::ForwardTraits<da::simt::fmt16::fmt, d>>(); \
  gpu_small_cases<da::cuda::ForwardTraitsV2<da::simt::fmt16::fmt, d>>();
  DIFFATTN_CUDA_FORWARD_CONFIGS(DIFFATTN_X)
#undef DIFFATTN_X
}

TEST_CASE("cuda forward on a GPU: every shipped configuration") {
  if (!have_gpu()) {
    MESSAGE("SKIPPED: no CUDA device on this machine (the emulated tests cover the kernels)");
    return;
  }
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  MESSAGE("device: " << prop.name << " (sm_" << prop.major << prop.minor << ")");
#define DIFFATTN_X(fmt, d)                                  \
  gpu_suite<da::cuda::ForwardTraits<da::simt::fmt16::fmt, d>>(); \
  gpu_suite<da::cuda::ForwardTraitsV2<da::simt::fmt16::fmt, d>>();
  DIFFATTN_CUDA_FORWARD_CONFIGS(DIFFATTN_X)
#undef DIFFATTN_X
}

TEST_CASE("cuda forward on a GPU: serving layouts, the decoding path (GQA packing, split-KV) and its exact merge") {
  if (!have_gpu()) {
    MESSAGE("SKIPPED: no CUDA device on this machine (the emulated tests cover the kernels)");
    return;
  }
#define DIFFATTN_X(fmt, d)                                                                         \
  check_forward_serving<da::cuda::ForwardTraits<da::simt::fmt16::fmt, d>>(serving_forward_on_gpu);   \
  check_forward_serving<da::cuda::ForwardTraitsV2<da::simt::fmt16::fmt, d>>(serving_forward_on_gpu); \
  check_forward_exact_p<da::cuda::ForwardTraits<da::simt::fmt16::fmt, d>>(serving_forward_on_gpu);   \
  check_forward_exact_p<da::cuda::ForwardTraitsV2<da::simt::fmt16::fmt, d>>(serving_forward_on_gpu);
  DIFFATTN_CUDA_FORWARD_CONFIGS(DIFFATTN_X)
#undef DIFFATTN_X
}

TEST_CASE("cuda forward on a GPU: rejected input launches nothing and writes nothing") {
  // validation happens on the host before any device access, so this runs without a GPU too
  Shape s;
  s.N = 9; s.S = 9; s.d = 64;
  Problem<da::half> pr(s, 1);
  da::Params p = pr.params();
  p.extras.o2 = nullptr;
  p.head_dim = 48;
  const da::Status st = da::cuda::forward(p, nullptr);
  CHECK(st.code() == da::StatusCode::unsupported);
  for (auto x : pr.out) REQUIRE(std::isnan(static_cast<float>(x)));
}

TEST_CASE("cuda forward on a GPU: forward_config validates like forward (odd strides, wrong head dim)") {
  // forward_config<Traits> is the entry for a user's own configuration: it used to launch
  // without validation, so an odd stride faulted at cp.async and at the 4-byte output stores
  using Tr = da::cuda::ForwardTraits<da::simt::fmt16::f16, 64>;
  Shape s;
  s.N = 9; s.S = 9; s.d = 64;
  Problem<da::half> pr(s, 1);
  da::Params p = pr.params();
  p.extras.o2 = nullptr;
  p.out.stride_t += 1;  // not a multiple of 8 elements (16 bytes)
  da::Status st = da::cuda::forward_config<Tr>(p, nullptr);
  CHECK(st.code() == da::StatusCode::invalid_argument);
  CHECK(st.message().find("out") != std::string::npos);
  p = pr.params();
  p.extras.o2 = nullptr;
  p.head_dim = 32;  // not this configuration's
  const da::Status st2 = da::cuda::forward_config<Tr>(p, nullptr);
  CHECK(!st2.ok());
  for (auto x : pr.out) REQUIRE(std::isnan(static_cast<float>(x)));
}

int main(int argc, char** argv) { return gpu_suite_main(argc, argv); }
