// tests/cuda/gpu_support.hpp: what the GPU suites share (nvcc only): device copies of host
// tensors, whether a GPU is present, and a main() that reports the suite skipped without one.
#pragma once

#include <cstdint>
#include <cstdio>
#include <vector>

#include <cuda_runtime.h>
#include <doctest/doctest.h>

namespace dt {

inline bool have_gpu() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

/// The GPU suites' main: the doctest run (host-side checks run without a GPU too), then exit 77
/// (ctest: skipped, never passed) when no GPU ran the suite.
inline int gpu_suite_main(int argc, char** argv) {
  doctest::Context ctx(argc, argv);
  const int rc = ctx.run();
  if (rc != 0 || ctx.shouldExit()) return rc;
  if (!have_gpu()) {
    std::printf("SKIPPED (not passed): no CUDA device, the GPU suite did not run (the host-side checks passed)\n");
    return 77;
  }
  return 0;
}

/// Device copies of host byte ranges; outputs come back with copy_back(). A range inside one
/// already mirrored maps into that copy, so views that interleave in one host buffer (q1 and q2
/// of the official layout) share one device buffer: mirror their union first (mirror_views).
class DeviceMirror {
 public:
  ~DeviceMirror() {
    for (auto& b : bufs_) cudaFree(b.dev);
  }
  /// Copies [host, host + bytes) to the device (or finds the copy holding it); returns the device
  /// address of `host`.
  void* mirror(const void* host, std::size_t bytes, bool output) {
    if (host == nullptr) return nullptr;
    const auto* h = static_cast<const unsigned char*>(host);
    for (auto& b : bufs_) {
      const auto* bh = static_cast<const unsigned char*>(b.host);
      if (h >= bh && h + bytes <= bh + b.bytes) {
        b.output = b.output || output;
        return static_cast<unsigned char*>(b.dev) + (h - bh);
      }
    }
    void* dev = nullptr;
    REQUIRE(cudaMalloc(&dev, bytes) == cudaSuccess);
    REQUIRE(cudaMemcpy(dev, host, bytes, cudaMemcpyHostToDevice) == cudaSuccess);
    bufs_.push_back({const_cast<void*>(host), dev, bytes, output});
    return dev;
  }
  /// Two views of `bytes1`, `bytes2` bytes from their bases: their union first when they overlap.
  template <class Ptr>  // void* or const void*
  void mirror_views(Ptr& p1, std::size_t bytes1, Ptr& p2, std::size_t bytes2, bool output) {
    const auto a = reinterpret_cast<std::uintptr_t>(p1), b = reinterpret_cast<std::uintptr_t>(p2);
    if (p1 != nullptr && p2 != nullptr && a < b + bytes2 && b < a + bytes1) {
      const std::uintptr_t lo = a < b ? a : b, hi = a + bytes1 > b + bytes2 ? a + bytes1 : b + bytes2;
      mirror(reinterpret_cast<const void*>(lo), hi - lo, output);
    }
    p1 = static_cast<Ptr>(mirror(p1, bytes1, output));
    p2 = static_cast<Ptr>(mirror(p2, bytes2, output));
  }
  void copy_back() {
    for (auto& b : bufs_)
      if (b.output) REQUIRE(cudaMemcpy(b.host, b.dev, b.bytes, cudaMemcpyDeviceToHost) == cudaSuccess);
  }

 private:
  struct Buf { void* host; void* dev; std::size_t bytes; bool output; };
  std::vector<Buf> bufs_;
};

/// Bytes from a strided view's base to one past its last element.
template <class Ref>
std::size_t span_bytes(const Ref& r, std::int64_t B, std::int64_t T, std::int64_t heads, std::int64_t ch, std::size_t esz) {
  return static_cast<std::size_t>((B - 1) * r.stride_b + (T - 1) * r.stride_t + (heads - 1) * r.stride_h + ch) * esz;
}

}  // namespace dt
