// Compile-only (nvcc, every CMAKE_CUDA_ARCHITECTURES entry, 80 and 90 by default): the simt
// primitives as real PTX, through the GEMM test kernel in all four configurations and the
// layout probe. Nothing here runs in CI.
#include "diffattn/simt/simt.hpp"
#include "gemm_kernel.hpp"
#include "probe_kernels.hpp"

namespace simt = diffattn::simt;

template <simt::fmt16 F, bool kBKN>
cudaError_t launch_gemm(const std::uint16_t* A, const std::uint16_t* B, float* C, int M, int N,
                        int K, cudaStream_t stream) {
  using Kernel = simt_test::GemmKernel<F, kBKN>;
  return simt::launch_device(simt::dim3(N / 64, M / 64), Kernel::kThreads, Kernel::kSmemBytes,
                             stream, Kernel{}, A, B, C, M, N, K);
}

template cudaError_t launch_gemm<simt::fmt16::f16, false>(const std::uint16_t*, const std::uint16_t*, float*, int, int, int, cudaStream_t);
template cudaError_t launch_gemm<simt::fmt16::f16, true>(const std::uint16_t*, const std::uint16_t*, float*, int, int, int, cudaStream_t);
template cudaError_t launch_gemm<simt::fmt16::bf16, false>(const std::uint16_t*, const std::uint16_t*, float*, int, int, int, cudaStream_t);
template cudaError_t launch_gemm<simt::fmt16::bf16, true>(const std::uint16_t*, const std::uint16_t*, float*, int, int, int, cudaStream_t);

// Every reduction and the remaining primitives, so that all of them go through ptxas.
struct EverythingKernel {
  DIFFATTN_DEVICE void operator()(float* out, const simt::u32x4* src) const {
    auto s = simt::shared_memory<float>();
    const unsigned rank = simt::thread_rank();
    float v = simt::exp2_approx(static_cast<float>(rank));
    v = simt::warp_allreduce<4>(v, simt::op_max{});
    v = simt::block_allreduce<4>(v, simt::op_sum{}, s, rank);
    v += simt::shfl_up_sync(simt::kFullMask, v, 1u);
    v += static_cast<float>(simt::shfl_sync(simt::kFullMask, 1.0, 3));
    auto sv = simt::shared_memory<simt::u32x4>() + 8;
    simt::cp_async_16_zfill(sv + rank, src + rank, rank % 2 ? 16 : 0);
    simt::cp_async_wait_all();
    simt::syncthreads();
    std::uint32_t r1[1], r2[2];
    simt::ldmatrix_x1(r1, sv + (rank & 31u));
    simt::ldmatrix_x1_trans(r1, sv + (rank & 31u));
    simt::ldmatrix_x2_trans(r2, sv + (rank & 31u));
    float lo, hi;
    simt::unpack2<simt::fmt16::bf16>(r1[0] ^ r2[1], lo, hi);
    v += lo + hi + simt::bits16_to_float<simt::fmt16::f16>(simt::float_to_bits16<simt::fmt16::f16>(v));
    v += static_cast<float>(simt::shared_memory_bytes() + simt::lane_id() + simt::grid_dim().x);
    out[simt::block_idx().x * simt::block_dim().x + rank] = v;
  }
};

cudaError_t launch_everything(float* out, const simt::u32x4* src, cudaStream_t stream) {
  return simt::launch_device(1, 128, 4096, stream, EverythingKernel{}, out, src);
}

cudaError_t launch_probe(std::uint32_t* out, cudaStream_t stream) {
  return simt::launch_device(1, 32, simt_test::kProbeSmemBytes, stream, simt_test::ProbeKernel{}, out);
}
