// probe_layouts: runs the layout probe (probe_kernels.hpp) and writes its dump.
//
//   built by nvcc (simt_probe_layouts_gpu): runs on the GPU; on a machine with one, regenerate
//     the golden file with   simt_probe_layouts_gpu tests/simt/golden/probe_layouts_sm<NN>.txt
//   built by a host compiler (probe_layouts_host.cpp includes this file): the emulator.
// Usage: probe_layouts [output file]   (stdout when omitted)
#include <cstdio>
#include <string>
#include <vector>

#include "probe_kernels.hpp"

namespace {

int write_dump(const std::string& text, int argc, char** argv) {
  if (argc < 2) {
    std::fputs(text.c_str(), stdout);
    return 0;
  }
  std::FILE* f = std::fopen(argv[1], "w");
  if (!f) {
    std::fprintf(stderr, "probe_layouts: cannot write %s\n", argv[1]);
    return 1;
  }
  std::fputs(text.c_str(), f);
  std::fclose(f);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::uint32_t> result(simt_test::kProbeWords, 0u);
#if defined(__CUDACC__)
  std::uint32_t* d = nullptr;
  if (cudaMalloc(&d, result.size() * 4) != cudaSuccess) {
    std::fprintf(stderr, "probe_layouts: cudaMalloc failed (no GPU?)\n");
    return 1;
  }
  cudaError_t e = diffattn::simt::launch_device(1, 32, simt_test::kProbeSmemBytes, nullptr,
                                                simt_test::ProbeKernel{}, d);
  if (e == cudaSuccess) e = cudaDeviceSynchronize();
  if (e == cudaSuccess) e = cudaMemcpy(result.data(), d, result.size() * 4, cudaMemcpyDeviceToHost);
  cudaFree(d);
  if (e != cudaSuccess) {
    std::fprintf(stderr, "probe_layouts: %s\n", cudaGetErrorString(e));
    return 1;
  }
  int dev = 0;
  cudaDeviceProp prop{};
  cudaGetDevice(&dev);
  cudaGetDeviceProperties(&prop, dev);
  std::fprintf(stderr, "probe_layouts: ran on %s (sm_%d%d)\n", prop.name, prop.major, prop.minor);
#else
  diffattn::simt::emu::launch(1, 32, simt_test::kProbeSmemBytes, simt_test::ProbeKernel{},
                              result.data());
#endif
  return write_dump(simt_test::probe_dump(result.data()), argc, argv);
}
