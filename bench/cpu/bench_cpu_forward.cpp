// bench_cpu_forward: the tiled CPU forward beside the naive reference (reference::forward<float>)
// on the same problems, in one process, plus this machine's fp32 FMA peak and Eigen's sgemm
// (2048^3) on the same threads, so every figure of a run can be compared side by side.
// The context of the run (printed first, and in the JSON) names the CPU, the path cpu::forward
// runs (cpu/isa.hpp; DIFFATTN_CPU_ISA forces one) and the ISA the peak loop used: the best
// this CPU has, whatever flags this file was compiled with.
//
// Runs are named <backend>_forward/<dtype>/<mask>/d:<d>/N:<N> (backend cpu or reference) and
// report `flops` as a rate (FLOP/s) from diffattn::forward_flops (docs/SPEC.md: 12 N S d per head,
// visible pairs only). B = 1, H = 8, N = S. DIFF V2 runs beside them at the same model width,
// <backend>_forward_v2/...: H = 16 output heads of d (32 query heads, 16 KV heads), 8 N S d per
// head, so a V2 layer does 4/3 the FLOPs of the V1 layer of the same width. Options
// (environment, to keep the command line Google Benchmark's own):
//   DIFFATTN_BENCH_THREADS  threads for cpu::forward, the peak and sgemm (default: all cores)
//   DIFFATTN_BENCH_MAX_N    largest N for the tiled kernel (default 8192)
//   DIFFATTN_BENCH_REF_MAX_N  largest N for the reference (default 2048: it materialises N x S)
// The fused backward runs beside them, <backend>_backward/... and <backend>_backward_v2/...
// (cpu::backward from cpu::forward's saved tensors, or reference::backward<float>), with
// `flops` from diffattn::backward_flops (20 N S d per head, V2 16):
//   DIFFATTN_BENCH_BWD_MAX_N      largest N for cpu::backward (default 4096)
//   DIFFATTN_BENCH_REF_BWD_MAX_N  largest N for the reference backward (default 1024)
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <cstdlib>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif
#if defined(__aarch64__)
#include <arm_neon.h>
#endif

#include <Eigen/Core>

#include <diffattn/cpu/backward.hpp>
#include <diffattn/cpu/forward.hpp>
#include <diffattn/cpu/isa.hpp>
#include <diffattn/diffattn.hpp>

namespace da = diffattn;

namespace {

long env_long(const char* name, long dflt) {
  const char* v = std::getenv(name);
  return v ? std::atol(v) : dflt;
}
int bench_threads() {
  const long t = env_long("DIFFATTN_BENCH_THREADS", 0);
  return t > 0 ? static_cast<int>(t) : static_cast<int>(std::thread::hardware_concurrency());
}

/// Buffers of one benchmark problem in the official layout, random inputs; DIFF V2 at the same
/// model width (2H output heads of d) when v2.
template <class T>
struct BenchProblem {
  std::vector<T> q, k, v, out;
  std::vector<float> lq1, lk1, lq2, lk2, gamma, lse1, lse2, logits;
  da::Params p;
  BenchProblem(std::int64_t N, std::int64_t d, da::MaskKind mask, bool v2 = false) {
    const std::int64_t B = 1, H = 8, S = N;
    std::mt19937 rng(42);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    auto fill = [&](auto& vec, std::size_t n, float sc) {
      vec.resize(n);
      for (auto& x : vec) x = static_cast<typename std::decay_t<decltype(vec)>::value_type>(nd(rng) * sc);
    };
    if (v2) {
      const std::int64_t H2 = 2 * H;
      fill(q, B * N * 2 * H2 * d, 1.0f);
      fill(k, B * S * H2 * d, 1.0f);
      fill(v, B * S * H2 * d, 1.0f);
      fill(logits, B * N * H2, 1.5f);
      out.assign(B * N * H2 * d, T(0.0f));
      lse1.assign(B * H2 * N, 0.0f);
      lse2.assign(B * H2 * N, 0.0f);
      p = da::make_diff_v2_params(B, N, S, H2, H2, d, q.data(), k.data(), v.data(), logits.data(), out.data());
      p.mask.kind = mask;
      if (mask == da::MaskKind::window) { p.mask.window_left = 256; p.mask.window_right = 0; }
      p.extras.lse1 = lse1.data();
      p.extras.lse2 = lse2.data();
      return;
    }
    fill(q, B * N * 2 * H * d, 1.0f);
    fill(k, B * S * 2 * H * d, 1.0f);
    fill(v, B * S * H * 2 * d, 1.0f);
    out.assign(B * N * H * 2 * d, T(0.0f));
    fill(lq1, d, 0.1f); fill(lk1, d, 0.1f); fill(lq2, d, 0.1f); fill(lk2, d, 0.1f);
    gamma.assign(2 * d, 1.0f);
    lse1.assign(B * H * N, 0.0f);
    lse2.assign(B * H * N, 0.0f);
    p = da::make_official_params(B, N, S, H, H, d, q.data(), k.data(), v.data(), out.data());
    p.mask.kind = mask;
    if (mask == da::MaskKind::window) { p.mask.window_left = 256; p.mask.window_right = 0; }
    p.lambda = {lq1.data(), lk1.data(), lq2.data(), lk2.data(), false, da::lambda_init_for_depth(3)};
    p.norm.kind = da::NormKind::rms;
    p.norm.gamma = gamma.data();
    p.extras.lse1 = lse1.data();
    p.extras.lse2 = lse2.data();
  }
};

template <class T>
void bm_forward(benchmark::State& state, bool cpu, std::int64_t N, std::int64_t d, da::MaskKind mask, bool v2) {
  BenchProblem<T> pr(N, d, mask, v2);
  da::cpu::Options opt;
  opt.num_threads = bench_threads();
  for (auto _ : state) {
    const da::Status s = cpu ? da::cpu::forward(pr.p, opt) : da::reference::forward<float>(pr.p);
    if (!s.ok()) {
      state.SkipWithError(s.to_string().c_str());
      break;
    }
    benchmark::DoNotOptimize(pr.out.data());
    benchmark::ClobberMemory();
  }
  state.counters["flops"] = benchmark::Counter(da::forward_flops(pr.p), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["threads"] = cpu ? opt.num_threads : 1;
}

/// A backward problem: BenchProblem's forward run once by cpu::forward to save what the
/// backward reads, random dout, gradients in the official layout.
template <class T>
struct BenchBackward {
  BenchProblem<T> fw;
  std::vector<float> attn, o2, rstd, dlq1, dlk1, dlq2, dlk2, dgamma, dlogits;
  std::vector<T> dout, dq, dk, dv;
  da::BackwardParams bp;
  BenchBackward(std::int64_t N, std::int64_t d, da::MaskKind mask, bool v2) : fw(N, d, mask, v2) {
    da::Params& p = fw.p;
    const std::int64_t B = 1, H = p.heads, G = p.kv_heads, S = p.seqlen_k, dvc = p.value_dim();
    const std::size_t rows = static_cast<std::size_t>(B * H * N);
    attn.assign(rows * dvc, 0.0f);
    o2.assign(rows * dvc, 0.0f);
    rstd.assign(rows, 0.0f);
    p.extras.attn = attn.data();
    p.extras.o2 = o2.data();
    if (!v2) p.extras.rstd = rstd.data();
    std::mt19937 rng(7);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    dout.resize(rows * dvc);
    for (auto& x : dout) x = T(nd(rng));
    const da::Status s = da::cpu::forward(p);
    if (!s.ok()) std::fprintf(stderr, "bench backward: forward failed: %s\n", s.to_string().c_str());
    bp.fwd = p;
    bp.dout = da::bshd(dout.data(), N, H, dvc);
    bp.saved = da::saved_from(p.extras);
    dq.assign(B * N * 2 * H * d, T(0.0f));
    dk.assign(B * S * (v2 ? 1 : 2) * G * d, T(0.0f));
    dv.assign(B * S * G * dvc, T(0.0f));
    bp.grad.dq1 = {dq.data(), N * 2 * H * d, 2 * H * d, 2 * d};
    bp.grad.dq2 = {dq.data() + d, N * 2 * H * d, 2 * H * d, 2 * d};
    if (v2) {
      bp.grad.dk1 = da::bshd(dk.data(), S, G, d);
      bp.grad.dv_lo = da::bshd(dv.data(), S, G, d);
      dlogits.assign(rows, 0.0f);
      bp.grad.dlogits = {dlogits.data(), N * H, H, 1};
    } else {
      bp.grad.dk1 = {dk.data(), S * 2 * G * d, 2 * G * d, 2 * d};
      bp.grad.dk2 = {dk.data() + d, S * 2 * G * d, 2 * G * d, 2 * d};
      bp.set_dv(da::bshd(dv.data(), S, G, 2 * d));
      for (auto* t : {&dlq1, &dlk1, &dlq2, &dlk2}) t->assign(d, 0.0f);
      dgamma.assign(2 * d, 0.0f);
      bp.grad.dlq1 = dlq1.data(); bp.grad.dlk1 = dlk1.data();
      bp.grad.dlq2 = dlq2.data(); bp.grad.dlk2 = dlk2.data();
      bp.grad.dgamma = dgamma.data();
    }
  }
};

template <class T>
void bm_backward(benchmark::State& state, bool cpu, std::int64_t N, std::int64_t d, da::MaskKind mask, bool v2) {
  BenchBackward<T> pr(N, d, mask, v2);
  da::cpu::Options opt;
  opt.num_threads = bench_threads();
  for (auto _ : state) {
    const da::Status s = cpu ? da::cpu::backward(pr.bp, opt) : da::reference::backward<float>(pr.bp);
    if (!s.ok()) {
      state.SkipWithError(s.to_string().c_str());
      break;
    }
    benchmark::DoNotOptimize(pr.dq.data());
    benchmark::ClobberMemory();
  }
  state.counters["flops"] = benchmark::Counter(da::backward_flops(pr.bp.fwd), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["threads"] = cpu ? opt.num_threads : 1;
}

// fp32 FMA peak: independent chains of vector FMAs per thread (more than latency x ports on
// every core we know), with the widest FMA the CPU has, whatever this file's flags.
#if defined(__x86_64__)
__attribute__((target("avx512f"))) float fma_loop_avx512(long iters) {
  __m512 a[16];
  for (int i = 0; i < 16; ++i) a[i] = _mm512_set1_ps(1.0f + i * 1e-3f);
  const __m512 b = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-7f);
  for (long it = 0; it < iters; ++it) {
#pragma GCC unroll 16
    for (int i = 0; i < 16; ++i) a[i] = _mm512_fmadd_ps(a[i], b, c);
  }
  float s = 0, t[16];
  for (int i = 0; i < 16; ++i) { _mm512_storeu_ps(t, a[i]); s += t[0]; }
  return s;
}
__attribute__((target("avx2,fma"))) float fma_loop_avx2(long iters) {
  __m256 a[12];
  for (int i = 0; i < 12; ++i) a[i] = _mm256_set1_ps(1.0f + i * 1e-3f);
  const __m256 b = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
  for (long it = 0; it < iters; ++it) {
#pragma GCC unroll 12
    for (int i = 0; i < 12; ++i) a[i] = _mm256_fmadd_ps(a[i], b, c);
  }
  float s = 0, t[8];
  for (int i = 0; i < 12; ++i) { _mm256_storeu_ps(t, a[i]); s += t[0]; }
  return s;
}
#endif
#if defined(__aarch64__)
float fma_loop_neon(long iters) {
  float32x4_t a[16];
  for (int i = 0; i < 16; ++i) a[i] = vdupq_n_f32(1.0f + i * 1e-3f);
  const float32x4_t b = vdupq_n_f32(0.999999f), c = vdupq_n_f32(1e-7f);
  for (long it = 0; it < iters; ++it) {
#pragma GCC unroll 16
    for (int i = 0; i < 16; ++i) a[i] = vfmaq_f32(c, a[i], b);
  }
  float s = 0;
  for (int i = 0; i < 16; ++i) s += vgetq_lane_f32(a[i], 0);
  return s;
}
#endif

/// The widest FMA loop this CPU runs: its name, FLOP per iteration, and the loop.
struct FmaLoop {
  const char* isa;
  double flop_per_iter;
  float (*run)(long);
};
FmaLoop best_fma_loop() {
#if defined(__x86_64__)
  if (da::cpu::detail::cpu_features().avx512) return {"avx512", 2.0 * 16 * 16, fma_loop_avx512};
  if (da::cpu::detail::cpu_features().avx2) return {"avx2", 2.0 * 8 * 12, fma_loop_avx2};
#endif
#if defined(__aarch64__)
  return {"neon", 2.0 * 4 * 16, fma_loop_neon};
#endif
  return {"scalar", 2.0, [](long iters) {
            float a = 1.0f;
            for (long it = 0; it < iters; ++it) a = a * 0.999999f + 1e-7f;
            return a;
          }};
}

void bm_fma_peak(benchmark::State& state) {
  const int threads = bench_threads();
  const FmaLoop loop = best_fma_loop();
  const long iters = 20'000'000;
  for (auto _ : state) {
    std::vector<std::thread> th;
    std::vector<float> sink(threads);
    for (int t = 0; t < threads; ++t) th.emplace_back([&, t] { sink[t] = loop.run(iters); });
    for (auto& x : th) x.join();
    benchmark::DoNotOptimize(sink.data());
  }
  state.counters["flops"] = benchmark::Counter(loop.flop_per_iter * iters * threads, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["threads"] = threads;
  state.SetLabel(loop.isa);
}

// Eigen sgemm 2048^3, the columns of C split over the threads (Eigen itself is built without
// OpenMP here, so this is how it uses several cores).
void bm_eigen_sgemm(benchmark::State& state) {
  const int n = 2048, threads = bench_threads();
  using M = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic>;
  M a = M::Random(n, n), b = M::Random(n, n), c(n, n);
  for (auto _ : state) {
    std::vector<std::thread> th;
    for (int t = 0; t < threads; ++t)
      th.emplace_back([&, t] {
        const int c0 = n * t / threads, c1 = n * (t + 1) / threads;
        c.middleCols(c0, c1 - c0).noalias() = a * b.middleCols(c0, c1 - c0);
      });
    for (auto& x : th) x.join();
    benchmark::DoNotOptimize(c.data());
  }
  state.counters["flops"] = benchmark::Counter(2.0 * n * n * n, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["threads"] = threads;
}

// The memory system's bandwidth on the same threads, for the decode figures: `copy` memcpy of a
// 256 MiB buffer (each thread its slice; bytes = read + written, STREAM's convention) and `read`
// a sum over 256 MiB (bytes read), both far past any cache.
void bm_bandwidth(benchmark::State& state, bool copy) {
  const int threads = bench_threads();
  const std::size_t n = std::size_t{256} << 20;
  static std::vector<char> src(n, 1), dst(n, 0);
  for (auto _ : state) {
    std::vector<std::thread> th;
    std::vector<double> sink(threads * 8);
    for (int t = 0; t < threads; ++t)
      th.emplace_back([&, t] {
        const std::size_t a = n * t / threads, b = n * (t + 1) / threads;
        if (copy) {
          std::memcpy(dst.data() + a, src.data() + a, b - a);
        } else {
          const std::uint64_t* p = reinterpret_cast<const std::uint64_t*>(src.data() + a);
          std::uint64_t acc[8] = {};
          for (std::size_t i = 0; i + 8 <= (b - a) / 8; i += 8)
            for (int k = 0; k < 8; ++k) acc[k] += p[i + k];
          sink[t * 8] = static_cast<double>(acc[0] + acc[1] + acc[2] + acc[3] + acc[4] + acc[5] + acc[6] + acc[7]);
        }
      });
    for (auto& x : th) x.join();
    benchmark::DoNotOptimize(dst.data());
    benchmark::DoNotOptimize(sink.data());
  }
  state.counters["bytes"] = benchmark::Counter(static_cast<double>(copy ? 2 * n : n), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["threads"] = threads;
}

// Decoding: B sequences of one new query token each over a paged KV cache of S keys (pages of
// 64 rows, in shuffled order), H = 16 diff heads over Hkv = 2 KV groups (GQA 8:1), d = 64,
// causal, the official lambda/RMSNorm; cpu::forward with its split-KV heuristic. Enough
// replicas of the cache (at least 256 MiB in all) are cycled through that every step reads its
// keys from memory, not from a cache level. Counters: `tokens` (B per step), `bytes` (the K_1,
// K_2 and V bytes of the step: B S Hkv 4 d elements; V2: B S Hkv 2 d), and `flops`.
template <class T>
void bm_decode(benchmark::State& state, std::int64_t B, std::int64_t S, bool v2) {
  const std::int64_t H = 16, G = 2, d = 64, page = 64, dv = v2 ? d : 2 * d, kh = v2 ? G : 2 * G;
  const std::int64_t pages_per_seq = (S + page - 1) / page;
  const std::int64_t step_bytes = B * S * G * (v2 ? 2 : 4) * d * static_cast<std::int64_t>(sizeof(T));
  // DIFFATTN_BENCH_DECODE_REPS overrides the replica count (1: a cache that may stay in L3)
  const long reps_env = env_long("DIFFATTN_BENCH_DECODE_REPS", 0);
  const std::int64_t reps = reps_env > 0 ? reps_env : std::max<std::int64_t>(1, ((std::int64_t{256} << 20) + step_bytes - 1) / step_bytes);
  const std::int64_t num_pages = reps * B * pages_per_seq;
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<T> kc(static_cast<std::size_t>(num_pages * page * kh * d)), vc(static_cast<std::size_t>(num_pages * page * G * dv));
  for (auto& x : kc) x = T(nd(rng));
  for (auto& x : vc) x = T(nd(rng));
  std::vector<T> q(static_cast<std::size_t>(B * 2 * H * d)), out(static_cast<std::size_t>(B * H * dv));
  for (auto& x : q) x = T(nd(rng));
  std::vector<float> lam(d, 0.1f), gamma(dv, 1.0f), logits(B * H, 0.5f);
  std::vector<std::int32_t> ids(static_cast<std::size_t>(num_pages)), used(B, static_cast<std::int32_t>(S));
  for (std::size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<std::int32_t>(i);
  std::shuffle(ids.begin(), ids.end(), rng);  // replica r's tables: pages [r B P, (r + 1) B P) of the shuffle
  da::Params p;
  p.batch = B; p.seqlen_q = 1; p.seqlen_k = S; p.heads = H; p.kv_heads = G; p.head_dim = d;
  p.dtype = da::dtype_of_v<T>;
  p.q1 = {q.data(), 2 * H * d, 2 * H * d, 2 * d};
  p.q2 = {q.data() + d, 2 * H * d, 2 * H * d, 2 * d};
  p.out = {out.data(), H * dv, H * dv, dv};
  p.k1 = {kc.data(), page * kh * d, kh * d, v2 ? d : 2 * d};
  p.v_lo = {vc.data(), page * G * dv, G * dv, dv};
  if (v2) {
    p.variant = da::Variant::diff_v2;
    p.lambda.logits = {logits.data(), H, H, 1};
    p.norm.kind = da::NormKind::none;
  } else {
    p.k2 = {kc.data() + d, page * kh * d, kh * d, 2 * d};
    p.v_hi = {vc.data() + d, page * G * dv, G * dv, dv};
    p.lambda = {lam.data(), lam.data(), lam.data(), lam.data(), false, da::lambda_init_for_depth(3)};
    p.norm.kind = da::NormKind::rms;
    p.norm.gamma = gamma.data();
  }
  p.mask.kind = da::MaskKind::causal;
  p.seq.seqused_k = used.data();
  p.seq.page_size = page;
  p.seq.max_pages = pages_per_seq;
  p.seq.num_pages = num_pages;
  da::cpu::Options opt;
  opt.num_threads = bench_threads();
  std::int64_t r = 0;
  for (auto _ : state) {
    p.seq.block_table = ids.data() + r * B * pages_per_seq;
    r = (r + 1) % reps;
    const da::Status st = da::cpu::forward(p, opt);
    if (!st.ok()) {
      state.SkipWithError(st.to_string().c_str());
      break;
    }
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  state.counters["tokens"] = benchmark::Counter(static_cast<double>(B), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["bytes"] = benchmark::Counter(static_cast<double>(step_bytes), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["flops"] = benchmark::Counter(static_cast<double>(B * H * S * (v2 ? 8 : 12) * d), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["threads"] = opt.num_threads;
}

// The tile products of one 64-query block against 64 keys (d = 64, dv = 128), single thread:
// the micro-tiles of a CPU path (cpu/detail/algorithm.inl, through its entry points) against
// Eigen on the same row-major operands, to show which one the kernel should use at these sizes.
void bm_tile(benchmark::State& state, da::cpu::Isa isa, bool qk) {
  constexpr int nq = 64, nj = 64, d = 64, dv = 128;
  using RM = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  RM k = RM::Random(nj, d), qt = RM::Random(d, nq), st(nj, nq);
  RM v = RM::Random(nj, dv), pt = RM::Random(nj, nq), ot = RM::Zero(dv, nq);
  const da::cpu::detail::Kernels* kern = isa == da::cpu::Isa::none ? nullptr : da::cpu::detail::kernels(isa);
  for (auto _ : state) {
    if (qk) {
      if (kern) kern->qk_block64(k.data(), d, nj, qt.data(), d, st.data());
      else st.noalias() = k * qt;
      benchmark::DoNotOptimize(st.data());
    } else {
      if (kern) kern->pv_block64(v.data(), dv, nj, dv, pt.data(), ot.data());
      else ot.noalias() += v.transpose() * pt;
      benchmark::DoNotOptimize(ot.data());
    }
    benchmark::ClobberMemory();
  }
  const double flops = qk ? 2.0 * nj * nq * d : 2.0 * dv * nq * nj;
  state.counters["flops"] = benchmark::Counter(flops, benchmark::Counter::kIsIterationInvariantRate);
}

/// The CPU's model name (/proc/cpuinfo on Linux).
std::string cpu_model() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("model name", 0) == 0 && line.find(':') != std::string::npos) return line.substr(line.find(':') + 2);
  return "unknown";
}

const char* mask_name(da::MaskKind m) {
  return m == da::MaskKind::none ? "none" : m == da::MaskKind::causal ? "causal" : "window";
}

template <class T>
void register_dtype(const char* dname) {
  const long max_n = env_long("DIFFATTN_BENCH_MAX_N", 8192), ref_max_n = env_long("DIFFATTN_BENCH_REF_MAX_N", 2048);
  for (da::MaskKind m : {da::MaskKind::none, da::MaskKind::causal})
    for (std::int64_t d : {64, 128})
      for (std::int64_t N = 512; N <= max_n; N *= 2)
        for (bool v2 : {false, true})
          for (bool cpu : {false, true}) {
            if (!cpu && N > ref_max_n) continue;
            const std::string name = std::string(cpu ? "cpu" : "reference") + (v2 ? "_forward_v2/" : "_forward/") +
                                     dname + "/" + mask_name(m) + "/d:" + std::to_string(d) + "/N:" + std::to_string(N);
            benchmark::RegisterBenchmark(name.c_str(), [=](benchmark::State& s) { bm_forward<T>(s, cpu, N, d, m, v2); })
                ->Unit(benchmark::kMillisecond)
                ->UseRealTime();
          }
  const long bwd_max_n = env_long("DIFFATTN_BENCH_BWD_MAX_N", 4096), ref_bwd_max_n = env_long("DIFFATTN_BENCH_REF_BWD_MAX_N", 1024);
  for (da::MaskKind m : {da::MaskKind::none, da::MaskKind::causal})
    for (std::int64_t d : {64, 128})
      for (std::int64_t N = 512; N <= bwd_max_n; N *= 2)
        for (bool v2 : {false, true})
          for (bool cpu : {false, true}) {
            if (!cpu && N > ref_bwd_max_n) continue;
            const std::string name = std::string(cpu ? "cpu" : "reference") + (v2 ? "_backward_v2/" : "_backward/") +
                                     dname + "/" + mask_name(m) + "/d:" + std::to_string(d) + "/N:" + std::to_string(N);
            benchmark::RegisterBenchmark(name.c_str(), [=](benchmark::State& s) { bm_backward<T>(s, cpu, N, d, m, v2); })
                ->Unit(benchmark::kMillisecond)
                ->UseRealTime();
          }
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::RegisterBenchmark("peak/fma_f32", bm_fma_peak)->Unit(benchmark::kMillisecond)->UseRealTime();
  benchmark::RegisterBenchmark("peak/eigen_sgemm/N:2048", bm_eigen_sgemm)->Unit(benchmark::kMillisecond)->UseRealTime();
  for (bool qk : {true, false}) {
    for (da::cpu::Isa i : da::cpu::kAllIsas)
      if (da::cpu::isa_supported(i) && i != da::cpu::Isa::amx && i != da::cpu::Isa::avx512bf16)  // the avx512 tiles for fp32
        benchmark::RegisterBenchmark((std::string("tile/") + da::cpu::isa_name(i) + (qk ? "_qk" : "_pv") + "/d:64").c_str(),
                                     [=](benchmark::State& s) { bm_tile(s, i, qk); });
    benchmark::RegisterBenchmark((std::string("tile/eigen") + (qk ? "_qk" : "_pv") + "/d:64").c_str(),
                                 [=](benchmark::State& s) { bm_tile(s, da::cpu::Isa::none, qk); });
  }
  const da::cpu::Isa isa = da::cpu::isa();
  benchmark::AddCustomContext("cpu_model", cpu_model());
  benchmark::AddCustomContext("cpu_isa", da::cpu::isa_name(isa));
  benchmark::AddCustomContext("cpu_isa_best", da::cpu::isa_name(da::cpu::best_isa()));
  benchmark::AddCustomContext("fma_peak_isa", best_fma_loop().isa);
  benchmark::AddCustomContext("bench_threads", std::to_string(bench_threads()));
  if (isa == da::cpu::Isa::none) {
    da::cpu::Isa i;
    std::fprintf(stderr, "bench_cpu_forward: %s\n", da::cpu::select_isa(da::cpu::Isa::automatic, &i).to_string().c_str());
    return 1;
  }
  benchmark::RegisterBenchmark("peak/copy_bandwidth", [](benchmark::State& s) { bm_bandwidth(s, true); })
      ->Unit(benchmark::kMillisecond)->UseRealTime();
  benchmark::RegisterBenchmark("peak/read_bandwidth", [](benchmark::State& s) { bm_bandwidth(s, false); })
      ->Unit(benchmark::kMillisecond)->UseRealTime();
  for (std::int64_t B : {1, 16, 64})
    for (std::int64_t S : {1024, 8192, 32768})
      for (bool v2 : {false, true}) {
        if (B * S > 16 * 32768) continue;  // the cache replicas of B = 64, S = 32k: 1 GiB each
        const std::string tail = "/B:" + std::to_string(B) + "/S:" + std::to_string(S);
        const char* fam = v2 ? "cpu_decode_v2/" : "cpu_decode/";
        benchmark::RegisterBenchmark((fam + std::string("bf16") + tail).c_str(),
                                     [=](benchmark::State& s) { bm_decode<da::bfloat16>(s, B, S, v2); })
            ->Unit(benchmark::kMillisecond)->UseRealTime();
        if (B * S > 16 * 8192) continue;  // f32 at the largest sizes: 1 GiB per step, bf16 says it
        benchmark::RegisterBenchmark((fam + std::string("f32") + tail).c_str(),
                                     [=](benchmark::State& s) { bm_decode<float>(s, B, S, v2); })
            ->Unit(benchmark::kMillisecond)->UseRealTime();
      }
  register_dtype<float>("f32");
  register_dtype<da::bfloat16>("bf16");
  register_dtype<da::half>("f16");
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
