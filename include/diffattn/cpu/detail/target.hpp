// diffattn/cpu/detail/target.hpp: compiling a region of a header for one instruction set,
// whatever flags the includer's translation unit has.
//
//   DIFFATTN_CPU_TARGET_BEGIN("avx2,fma,f16c")
//   namespace avx2 { ... every function defined here may use AVX2, FMA and F16C ... }
//   DIFFATTN_CPU_TARGET_END
//
// GCC: #pragma GCC push_options / target / pop_options. Clang: #pragma clang attribute push
// of __attribute__((target(...))) onto every function of the region. Templates defined in the
// region keep the target when they are instantiated elsewhere, so the whole kernel of an ISA
// (tiles, softmax, work item) is compiled for it, inlined into itself, while the code that
// chooses the ISA at run time (cpu/isa.hpp) stays at the includer's baseline and never runs
// an instruction the CPU lacks.
//
// DIFFATTN_CPU_X86_TARGETS is 1 where such regions for x86-64 ISAs can be compiled (GCC or
// Clang targeting x86-64); DIFFATTN_CPU_NEON is 1 on aarch64 (NEON is part of its baseline).
#pragma once

#define DIFFATTN_CPU_PRAGMA(x) _Pragma(#x)

#if defined(__clang__)
#define DIFFATTN_CPU_TARGET_BEGIN(isa) \
  DIFFATTN_CPU_PRAGMA(clang attribute push(__attribute__((target(isa))), apply_to = function))
#define DIFFATTN_CPU_TARGET_END DIFFATTN_CPU_PRAGMA(clang attribute pop)
#elif defined(__GNUC__)
#define DIFFATTN_CPU_TARGET_BEGIN(isa) \
  DIFFATTN_CPU_PRAGMA(GCC push_options) DIFFATTN_CPU_PRAGMA(GCC target(isa))
#define DIFFATTN_CPU_TARGET_END DIFFATTN_CPU_PRAGMA(GCC pop_options)
#else
#define DIFFATTN_CPU_TARGET_BEGIN(isa)
#define DIFFATTN_CPU_TARGET_END
#endif

#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__) && !defined(DIFFATTN_CPU_NO_X86_TARGETS)
#define DIFFATTN_CPU_X86_TARGETS 1
#else
#define DIFFATTN_CPU_X86_TARGETS 0
#endif

#if defined(__aarch64__) && defined(__ARM_NEON)
#define DIFFATTN_CPU_NEON 1
#else
#define DIFFATTN_CPU_NEON 0
#endif
