// diffattn/core/config.hpp: compiler macros shared by every layer.
//
// DIFFATTN_HD marks code that runs on both sides (index math, masks, lambda, online softmax
// rescaling). Under nvcc it is __host__ __device__ and forced inline; with a host compiler it
// collapses to plain `inline`, so the same tile math is compiled and tested by g++/clang++.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define DIFFATTN_HD __host__ __device__ __forceinline__
#define DIFFATTN_DEVICE __device__ __forceinline__
#define DIFFATTN_HOST_DEVICE_ENABLED 1
#else
#define DIFFATTN_HD inline
#define DIFFATTN_DEVICE inline
#define DIFFATTN_HOST_DEVICE_ENABLED 0
#endif

// Fully unroll the next loop under nvcc (fragment arrays must stay in registers); nothing on
// the host, where g++ would warn about an unknown pragma.
// DIFFATTN_NO_UNROLL keeps the next loop rolled under nvcc (where unrolling costs registers).
#if defined(__CUDACC__)
#define DIFFATTN_UNROLL _Pragma("unroll")
#define DIFFATTN_NO_UNROLL _Pragma("unroll 1")
#else
#define DIFFATTN_UNROLL
#define DIFFATTN_NO_UNROLL
#endif

// True only in nvcc's device compilation pass: the one place real PTX may be emitted
// (include/diffattn/simt/ checks it; nothing else may use inline asm).
#if defined(__CUDA_ARCH__)
#define DIFFATTN_DEVICE_PASS 1
#else
#define DIFFATTN_DEVICE_PASS 0
#endif

// The library namespace can be wrapped (CUB_NAMESPACE_BEGIN style) so that two copies built
// for different GPU architectures or versions can be linked into one program: define
// DIFFATTN_NAMESPACE_SUFFIX to a unique token (e.g. sm90_v1) before including any header.
#if defined(DIFFATTN_NAMESPACE_SUFFIX)
#define DIFFATTN_PP_CAT2(a, b) a##b
#define DIFFATTN_PP_CAT(a, b) DIFFATTN_PP_CAT2(a, b)
#define DIFFATTN_NAMESPACE_BEGIN \
  namespace diffattn {           \
  inline namespace DIFFATTN_PP_CAT(ns_, DIFFATTN_NAMESPACE_SUFFIX) {
#define DIFFATTN_NAMESPACE_END \
  }                            \
  }
#else
#define DIFFATTN_NAMESPACE_BEGIN namespace diffattn {
#define DIFFATTN_NAMESPACE_END }
#endif

#define DIFFATTN_VERSION_MAJOR 0
#define DIFFATTN_VERSION_MINOR 1
#define DIFFATTN_VERSION_PATCH 0
