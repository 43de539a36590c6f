// bench_cuda_forward: main. The runs are registered by one generated TU per shipped
// configuration (bench_cuda_forward.cuh has the benchmark body and documentation).
#include <benchmark/benchmark.h>

#include <diffattn/cuda/dispatch.hpp>

#define DIFFATTN_X(fmt, d) void diffattn_bench_register_##fmt##_##d();
DIFFATTN_CUDA_FORWARD_CONFIGS(DIFFATTN_X)
#undef DIFFATTN_X

#ifdef DIFFATTN_BENCH_TUNING
void diffattn_bench_register_variants();
#endif

int main(int argc, char** argv) {
#define DIFFATTN_X(fmt, d) diffattn_bench_register_##fmt##_##d();
  DIFFATTN_CUDA_FORWARD_CONFIGS(DIFFATTN_X)
#undef DIFFATTN_X
#ifdef DIFFATTN_BENCH_TUNING
  diffattn_bench_register_variants();
#endif
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
