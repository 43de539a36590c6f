// diffattn/cpu/isa.hpp: which instruction set the CPU backend runs, chosen at run time.
//
// Every path is compiled into the includer's translation unit whatever its flags (the x86
// ones through target regions, cpu/detail/target.hpp), and the best one the CPU and the OS
// support is chosen once per process:
//
//   amx         AVX-512 for f32/f16, bfloat16 products on AMX tiles (Intel Sapphire Rapids on)
//   avx512bf16  AVX-512 with AVX512_BF16: bfloat16 decode (at most 16 query rows per sequence)
//               on vdpbf16ps dot products with the keys along the lanes, the rest as avx512
//               (AMD Zen 4 on, Intel Cooper Lake)
//   avx512      AVX-512 F/BW/DQ/VL, 16 lanes, 32 registers (Intel Skylake-SP on, AMD Zen 4 on)
//   avx2      AVX2 + FMA + F16C, 8 lanes, 16 registers (AMD Zen 1-3, Intel Haswell on)
//   neon      aarch64 Advanced SIMD, 4 lanes, 32 registers
//   portable  4-lane GCC/Clang vectors at the includer's own flags, any CPU
//
// The choice can be forced, for tests and for results that must agree bit for bit across
// machines: cpu::Options::isa for one call, or the environment variable DIFFATTN_CPU_ISA
// (one of the names above, or "auto"), read once, for every call that leaves Options::isa at
// Isa::automatic. Forcing a path this CPU cannot run is an error (Status unsupported naming the
// setting), never a silent fallback. Each path is bitwise reproducible for a fixed thread
// count; different paths may differ in the last bits (summation order, exp2 rounding, FMA).
//
// Why target regions rather than Google Highway's dynamic dispatch: Highway compiles each
// target by re-including the code under the same GCC/Clang target pragmas, so the machine code
// would be the same, but its run-time target choice lives in libhwy (a link dependency, which a
// header-only library cannot impose on its includers), and its portable vector API would stand
// between us and the register-blocked tiles that decide the speed: the AVX2 tiles written here
// run at 91% of a Zen 2 core's FMA peak (97 and 98 GFLOP/s against 106; Eigen at the same flags,
// 27). The cost of our way is one small file of primitives per ISA (cpu/isa/*.hpp).
//
//   diffattn::cpu::Isa i = diffattn::cpu::isa();   // what cpu::forward runs here
//   std::printf("%s\n", diffattn::cpu::isa_name(i));
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#include "diffattn/core/config.hpp"
#include "diffattn/core/dtype.hpp"
#include "diffattn/core/status.hpp"
#include "diffattn/cpu/detail/item.hpp"
#include "diffattn/cpu/detail/target.hpp"
#include "diffattn/cpu/isa/amx.hpp"
#include "diffattn/cpu/isa/avx2.hpp"
#include "diffattn/cpu/isa/avx512.hpp"
#include "diffattn/cpu/isa/avx512bf16.hpp"
#include "diffattn/cpu/isa/neon.hpp"
#include "diffattn/cpu/isa/portable.hpp"

#if DIFFATTN_CPU_X86_TARGETS
#include <cpuid.h>
#include <immintrin.h>
#endif

DIFFATTN_NAMESPACE_BEGIN
namespace cpu {

/// The instruction-set paths of the CPU backend (see the top of this file).
enum class Isa : int { automatic = 0, portable, avx2, avx512, amx, neon, avx512bf16, none };

/// "portable", "avx2", "avx512", "avx512bf16", "amx", "neon"; "auto" for Isa::automatic, "none" for none.
inline const char* isa_name(Isa i) {
  switch (i) {
    case Isa::automatic: return "auto";
    case Isa::portable: return "portable";
    case Isa::avx2: return "avx2";
    case Isa::avx512: return "avx512";
    case Isa::avx512bf16: return "avx512bf16";
    case Isa::amx: return "amx";
    case Isa::neon: return "neon";
    default: return "none";
  }
}

/// Every concrete path, best first.
inline constexpr Isa kAllIsas[] = {Isa::amx, Isa::avx512bf16, Isa::avx512, Isa::avx2, Isa::neon, Isa::portable};

namespace detail {

/// What the CPU and the OS support, read once (cpuid, and xgetbv for the register state the OS
/// saves; on Linux the AMX tile state is also requested with arch_prctl).
struct CpuFeatures {
  bool avx2 = false;    ///< AVX2, FMA, F16C, and the OS saves ymm
  bool avx512 = false;  ///< avx2 and AVX-512 F/BW/DQ/VL, the OS saves zmm and opmasks
  bool avx512bf16 = false;  ///< avx512 and AVX512_BF16
  bool amx = false;     ///< avx512, AVX512_BF16, AMX-TILE, AMX-BF16, the OS grants tiles
};

#if DIFFATTN_CPU_X86_TARGETS
__attribute__((target("xsave"))) inline unsigned long long xcr0() { return _xgetbv(0); }
#endif

inline CpuFeatures detect_features() {
  CpuFeatures f;
#if DIFFATTN_CPU_X86_TARGETS
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  const bool fma = c & (1u << 12), osxsave = c & (1u << 27), avx = c & (1u << 28), f16c = c & (1u << 29);
  if (!osxsave || !avx || __get_cpuid_max(0, nullptr) < 7) return f;
  const unsigned long long x = xcr0();
  const bool os_ymm = (x & 0x6) == 0x6, os_zmm = (x & 0xE6) == 0xE6, os_tiles = (x & 0x60000) == 0x60000;
  __cpuid_count(7, 0, a, b, c, d);
  const bool avx2 = b & (1u << 5), avx512f = b & (1u << 16), avx512dq = b & (1u << 17);
  const bool avx512bw = b & (1u << 30), avx512vl = b & (1u << 31);
  const bool amx_bf16 = d & (1u << 22), amx_tile = d & (1u << 24);
  __cpuid_count(7, 1, a, b, c, d);
  const bool avx512bf16 = a & (1u << 5);
  f.avx2 = os_ymm && avx2 && fma && f16c;
  f.avx512 = f.avx2 && os_zmm && avx512f && avx512dq && avx512bw && avx512vl;
  f.avx512bf16 = f.avx512 && avx512bf16;
  f.amx = f.avx512 && avx512bf16 && amx_tile && amx_bf16 && os_tiles && amx_ready();
#endif
  return f;
}

inline const CpuFeatures& cpu_features() {
  static const CpuFeatures f = detect_features();
  return f;
}

/// One ISA's entry points (the Entry struct of cpu/detail/algorithm.inl in its namespace).
struct Kernels {
  Isa isa = Isa::none;
  using ProcessFn = void (*)(const Ctx&, int, std::int64_t, std::int64_t, std::int64_t, int,
                             const ThreadScratch&, const State&);
  ProcessFn process_f32 = nullptr, process_f16 = nullptr, process_bf16 = nullptr;
  void (*merge)(const Ctx&, int, State*) = nullptr;
  void (*exp2_n)(const float*, float*, int) = nullptr;
  void (*max_n)(const float*, const float*, float*, int) = nullptr;
  void (*mask_keys_n)(const float*, const std::int32_t*, const std::int32_t*, std::int32_t, float*, int) = nullptr;
  void (*qk_block64)(const float*, std::int64_t, int, const float*, int, float*) = nullptr;
  void (*pv_block64)(const float*, std::int64_t, int, int, const float*, float*) = nullptr;
  void (*widen_f16)(const half*, float*, std::int64_t) = nullptr;
  void (*widen_bf16)(const bfloat16*, float*, std::int64_t) = nullptr;
  void (*bwd_tile)(const BwdTile&) = nullptr;

  template <class Elem>
  ProcessFn process() const {
    if constexpr (std::is_same_v<Elem, half>) return process_f16;
    else if constexpr (std::is_same_v<Elem, bfloat16>) return process_bf16;
    else return process_f32;
  }
};

// Built here, at the includer's baseline: taking the addresses runs no ISA code.
template <class E>
Kernels kernels_of(Isa i) {
  Kernels k;
  k.isa = i;
  k.process_f32 = &E::template process<float>;
  k.process_f16 = &E::template process<half>;
  k.process_bf16 = &E::template process<bfloat16>;
  k.merge = &E::merge;
  k.exp2_n = &E::exp2_n;
  k.max_n = &E::max_n;
  k.mask_keys_n = &E::mask_keys_n;
  k.qk_block64 = &E::qk_block64;
  k.pv_block64 = &E::pv_block64;
  k.widen_f16 = &E::template widen_n<half>;
  k.widen_bf16 = &E::template widen_n<bfloat16>;
  k.bwd_tile = &E::bwd_tile;
  return k;
}

/// The entry points of a path compiled into this translation unit; nullptr if it is not.
inline const Kernels* kernels(Isa i) {
  switch (i) {
    case Isa::portable: { static const Kernels k = kernels_of<portable::Entry>(i); return &k; }
#if DIFFATTN_CPU_X86_TARGETS
    case Isa::avx2: { static const Kernels k = kernels_of<avx2::Entry>(i); return &k; }
    case Isa::avx512: { static const Kernels k = kernels_of<avx512::Entry>(i); return &k; }
    case Isa::avx512bf16: { static const Kernels k = kernels_of<avx512bf16::Entry>(i); return &k; }
#endif
#if DIFFATTN_CPU_AMX
    case Isa::amx: { static const Kernels k = kernels_of<amx::Entry>(i); return &k; }
#endif
#if DIFFATTN_CPU_NEON
    case Isa::neon: { static const Kernels k = kernels_of<neon::Entry>(i); return &k; }
#endif
    default: return nullptr;
  }
}

}  // namespace detail

namespace detail {
/// True when items of this element type and head dim run their products on AMX tiles on path i
/// (amx::Entry::process), with Geometry::bm = kBlockMAmx.
inline bool amx_items(Isa i, DType t, std::int64_t d) { return i == Isa::amx && t == DType::bf16 && amx_head_dim(d); }
/// True when a sequence of `rows` rows (query tokens x packed heads) of this element type and
/// head dim runs as bfloat16 decode items on path i (avx512bf16::decode_item).
inline bool decode_items(Isa i, DType t, std::int64_t d, std::int64_t rows) {
  return i == Isa::avx512bf16 && t == DType::bf16 && decode_shape(d, rows);
}
}  // namespace detail

/// True when the path is compiled into this build (for this target and compiler).
inline bool isa_compiled(Isa i) { return i != Isa::automatic && detail::kernels(i) != nullptr; }

/// True when the path is compiled and this CPU (and OS) can run it.
inline bool isa_supported(Isa i) {
  if (!isa_compiled(i)) return false;
  const detail::CpuFeatures& f = detail::cpu_features();
  switch (i) {
    case Isa::avx2: return f.avx2;
    case Isa::avx512: return f.avx512;
    case Isa::avx512bf16: return f.avx512bf16;
    case Isa::amx: return f.amx;
    default: return true;  // portable; neon (compiled only for aarch64, where it is baseline)
  }
}

/// The best path this CPU supports.
inline Isa best_isa() {
  for (Isa i : kAllIsas)
    if (isa_supported(i)) return i;
  return Isa::portable;
}

/// Parses a path name ("auto" gives Isa::automatic); names the setting in the error.
inline Status parse_isa(const char* name, Isa* out, const char* setting = "isa") {
  const std::string s = name ? name : "";
  if (s.empty() || s == "auto") { *out = Isa::automatic; return Status::Ok(); }
  for (Isa i : kAllIsas)
    if (s == isa_name(i)) { *out = i; return Status::Ok(); }
  return Status::Invalid(std::string(setting) + "=\"" + s +
                         "\": not a CPU path (auto, amx, avx512bf16, avx512, avx2, neon, portable)");
}

/// The path a call runs: `requested` when it is not Isa::automatic, else the environment
/// variable DIFFATTN_CPU_ISA when set (read once per process), else best_isa(). A path that is
/// not compiled or that this CPU cannot run is an error naming the setting that asked for it.
inline Status select_isa(Isa requested, Isa* chosen) {
  const char* setting = "options.isa";
  Isa want = requested;
  if (want == Isa::automatic) {
    static const char* env = std::getenv("DIFFATTN_CPU_ISA");
    setting = "DIFFATTN_CPU_ISA";
    Status s = parse_isa(env, &want, setting);
    if (!s.ok()) return s;
  }
  if (want == Isa::automatic) { *chosen = best_isa(); return Status::Ok(); }
  if (want == Isa::none) return Status::Invalid(std::string(setting) + ": Isa::none is not a path");
  if (!isa_compiled(want))
    return Status::Unsupported(std::string(setting) + "=" + isa_name(want) +
                               ": this path is not compiled for this target/compiler");
  if (!isa_supported(want))
    return Status::Unsupported(std::string(setting) + "=" + isa_name(want) + ": this CPU (or OS) cannot run it");
  *chosen = want;
  return Status::Ok();
}

/// The path cpu::forward runs with default options (Isa::none when DIFFATTN_CPU_ISA asks for
/// one it cannot run: cpu::forward then returns select_isa()'s error).
inline Isa isa() {
  Isa i = Isa::none;
  return select_isa(Isa::automatic, &i).ok() ? i : Isa::none;
}

}  // namespace cpu
DIFFATTN_NAMESPACE_END
