// A 64 x 64 tile GEMM written on simt: cp.async (two stages) -> ldmatrix -> mma -> store.
// C[M][N] (f32) = A[M][K] * B, with B stored [N][K] (kBKN = false, ldmatrix) or [K][N]
// (kBKN = true, ldmatrix .trans). M, N multiples of 64 (grid = (N/64, M/64)), K a multiple of
// 32; 128 threads (4 warps, each 16 rows x 64 columns). Compiled by g++/clang++ (emulator) and
// by nvcc (sm_80, sm_90).
#pragma once

#include <cstdint>

#include "diffattn/simt/simt.hpp"

namespace simt_test {

namespace simt = diffattn::simt;

template <simt::fmt16 F, bool kBKN>
struct GemmKernel {
  static constexpr int kTileM = 64, kTileN = 64, kTileK = 32, kThreads = 128, kStages = 2;
  static constexpr int kStageHalves = kTileM * kTileK + kTileK * kTileN;  // A + B per stage
  static constexpr std::size_t kSmemBytes = std::size_t{kStages} * kStageHalves * 2;
  static_assert(kTileM == 16 * (kThreads / 32), "one warp per 16 rows");

  DIFFATTN_DEVICE void load_tile(const std::uint16_t* A, const std::uint16_t* B, int N, int K,
                                 int m0, int n0, int k0, simt::smem_ptr<std::uint16_t> sA,
                                 simt::smem_ptr<std::uint16_t> sB, unsigned tid) const {
    // A: (kTileM, kTileK), 4 chunks of 8 halves per row.
    for (unsigned c = tid; c < kTileM * kTileK / 8; c += kThreads) {
      const int row = static_cast<int>(c / 4), ch = static_cast<int>(c % 4);
      simt::cp_async_16(sA + row * kTileK + ch * 8, A + (m0 + row) * K + k0 + ch * 8);
    }
    if constexpr (!kBKN) {  // B as [n][k]: (kTileN, kTileK)
      for (unsigned c = tid; c < kTileN * kTileK / 8; c += kThreads) {
        const int n = static_cast<int>(c / 4), ch = static_cast<int>(c % 4);
        simt::cp_async_16(sB + n * kTileK + ch * 8, B + (n0 + n) * K + k0 + ch * 8);
      }
    } else {  // B as [k][n]: (kTileK, kTileN)
      for (unsigned c = tid; c < kTileK * kTileN / 8; c += kThreads) {
        const int k = static_cast<int>(c / 8), ch = static_cast<int>(c % 8);
        simt::cp_async_16(sB + k * kTileN + ch * 8, B + (k0 + k) * N + n0 + ch * 8);
      }
    }
  }

  DIFFATTN_DEVICE void operator()(const std::uint16_t* A, const std::uint16_t* B, float* C,
                                  int M, int N, int K) const {
    (void)M;
    const unsigned tid = simt::thread_rank();
    const int lane = static_cast<int>(simt::lane_id());
    const int warp = static_cast<int>(simt::warp_id());
    const int m0 = static_cast<int>(simt::block_idx().y) * kTileM;
    const int n0 = static_cast<int>(simt::block_idx().x) * kTileN;
    simt::smem_ptr<std::uint16_t> smem = simt::shared_memory<std::uint16_t>();
    auto sA = [&](int s) { return smem + s * kStageHalves; };
    auto sB = [&](int s) { return smem + s * kStageHalves + kTileM * kTileK; };

    float acc[kTileN / 8][4];  // (n-tile, fragment element) of the warp's 16 x 64 rows
    for (auto& t : acc) {
      for (float& x : t) x = 0.f;
    }
    const int num_k = K / kTileK;
    load_tile(A, B, N, K, m0, n0, 0, sA(0), sB(0), tid);
    simt::cp_async_commit();
    for (int kt = 0; kt < num_k; ++kt) {
      const int s = kt % kStages;
      if (kt + 1 < num_k) {
        load_tile(A, B, N, K, m0, n0, (kt + 1) * kTileK, sA(1 - s), sB(1 - s), tid);
        simt::cp_async_commit();
        simt::cp_async_wait<1>();
      } else {
        simt::cp_async_wait<0>();
      }
      simt::syncthreads();
      for (int ks = 0; ks < kTileK / 16; ++ks) {
        std::uint32_t a[4];
        // Matrices: (rows 0-7, k 0-7), (rows 8-15, k 0-7), (rows 0-7, k 8-15), (rows 8-15, k 8-15).
        const int a_row = 16 * warp + (lane % 8) + 8 * ((lane / 8) % 2);
        const int a_col = 16 * ks + 8 * (lane / 16);
        simt::ldmatrix_x4(a, sA(s) + a_row * kTileK + a_col);
        if constexpr (!kBKN) {
          for (int nt = 0; nt < kTileN / 8; ++nt) {
            std::uint32_t b[2];
            // Matrices: (n 0-7, k 0-7), (n 0-7, k 8-15); lanes 16-31 are ignored.
            const int n = 8 * nt + (lane % 8);
            const int k = 16 * ks + 8 * ((lane / 8) % 2);
            simt::ldmatrix_x2(b, sB(s) + n * kTileK + k);
            simt::mma_m16n8k16<F>(acc[nt], a, b, acc[nt]);
          }
        } else {
          for (int np = 0; np < kTileN / 16; ++np) {
            std::uint32_t b[4];
            // Matrices: (k 0-7, n-tile 2np), (k 8-15, 2np), (k 0-7, 2np+1), (k 8-15, 2np+1).
            const int k = 16 * ks + (lane % 8) + 8 * ((lane / 8) % 2);
            const int n = 16 * np + 8 * (lane / 16);
            simt::ldmatrix_x4_trans(b, sB(s) + k * kTileN + n);
            const std::uint32_t b0[2] = {b[0], b[1]}, b1[2] = {b[2], b[3]};
            simt::mma_m16n8k16<F>(acc[2 * np], a, b0, acc[2 * np]);
            simt::mma_m16n8k16<F>(acc[2 * np + 1], a, b1, acc[2 * np + 1]);
          }
        }
      }
      simt::syncthreads();  // the stage is refilled next iteration
    }
    for (int nt = 0; nt < kTileN / 8; ++nt) {
      for (int i = 0; i < 4; ++i) {
        const simt::frag_coord c = simt::mma_c_coord(lane, i);
        C[(m0 + 16 * warp + c.row) * N + n0 + 8 * nt + c.col] = acc[nt][i];
      }
    }
  }
};

}  // namespace simt_test
