// bench_cuda_forward.cuh: the body of bench_cuda_forward, included by one generated TU per
// shipped configuration (register_config<Traits>()), so each TU compiles one kernel.
//
// bench_cuda_forward: TFLOP/s of the fused CUDA forward (docs/SPEC.md's FLOP count), per shipped
// configuration, N = S from 1k to 16k, causal and not. B * H fills the GPU: B = 32768 / N
// sequences, H = 16 diff heads at d <= 64 and 8 above (the DIFF paper's 2048-dim model),
// so every input is far larger than L2. Timed with CUDA events around each launch after a
// warm-up (Google Benchmark's manual time). Without a GPU each run reports an error and skips.
//
// Run names: cuda_forward/<dtype>/<mask>/d:<d>/N:<N>; counter `flops` (FLOP/s). DIFF V2 at the
// same model width: cuda_forward_v2/..., 2H output heads of d (4H query heads, 2H KV heads),
// counted 8 N S d per head.
//
// The backward (every head dim, cuda/backward_kernel.hpp; from the saved O_2 at d <= 64, without
// it, as the two-pass forward saves, above) on the same problems:
// cuda_backward[_v2]/<dtype>/<mask>/d:<d>/N:<N> (dQ by atomics) and cuda_backward_det[_v2]/...
// (the deterministic option), counted by docs/SPEC.md's backward count (20 N S d per head, V2
// 16), timed over the four kernels of one call, from the saved tensors of one forward.
//
// Decoding over a paged cache (d = 64): cuda_decode[_v2]/<dtype>/B:<B>/S:<S> (cuda::forward: the
// decoding path), cuda_decode_fused[_v2]/<dtype>/B:16/S:8192 (the fused kernel on the same call),
// counters `bytes` (K and V read per second), `tokens`, `flops`, beside peak/cuda_copy.
#pragma once

#include <benchmark/benchmark.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <map>
#include <random>
#include <string>
#include <vector>

#include <diffattn/cuda/backward.cuh>
#include <diffattn/cuda/dispatch.hpp>
#include <diffattn/cuda/forward.cuh>
#include <diffattn/diffattn.hpp>

namespace da = diffattn;

namespace diffattn_bench {

inline bool have_gpu() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

/// The host values of fill_device(n, seed, scale), generated once and kept (one set per element
/// type and seed, the latest n and scale): Google Benchmark calls a run's body several times
/// (growing iteration counts) and every run of a head dim asks for the same ~67M values per
/// tensor, whose generation took seconds per call. The values are those of a fresh generation.
template <class Elem>
const std::vector<Elem>& host_values(std::size_t n, std::uint64_t seed, float scale) {
  struct Values { std::size_t n = 0; float scale = 0; std::vector<Elem> v; };
  static std::map<std::uint64_t, Values> kept;
  Values& k = kept[seed];
  if (k.v.size() != n || k.n != n || k.scale != scale) {
    k.v.assign(n, Elem(0.f));
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> nd(0.f, scale);
    for (auto& x : k.v) x = Elem(nd(rng));
    k.n = n;
    k.scale = scale;
  }
  return k.v;
}

template <class Elem>
void fill_device(void* dev, std::size_t n, std::uint64_t seed, float scale) {
  const std::vector<Elem>& h = host_values<Elem>(n, seed, scale);
  cudaMemcpy(dev, h.data(), n * sizeof(Elem), cudaMemcpyHostToDevice);
}

/// Times `launch()` with CUDA events, one call per iteration.
template <class Launch>
void time_launches(benchmark::State& state, Launch&& launch) {
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  for (auto _ : state) {
    cudaEventRecord(e0);
    launch();
    cudaEventRecord(e1);
    cudaEventSynchronize(e1);
    float ms = 0;
    cudaEventElapsedTime(&ms, e0, e1);
    state.SetIterationTime(ms * 1e-3);
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
}

/// The forward's run (or, with `backward`, the backward's, after one forward that saves).
template <class Traits>
void bm_forward(benchmark::State& state, da::MaskKind mask, int backward = 0) {
  using Elem = typename Traits::Elem;
  const int d = Traits::kHeadDim;
  if (!have_gpu()) {
    state.SkipWithError("no CUDA device");
    return;
  }
  const std::int64_t N = state.range(0), B = std::max<std::int64_t>(1, 32768 / N), H = d <= 64 ? 16 : 8;
  const std::int64_t H2 = 2 * H;  // V2's output heads at the same model width
  const std::int64_t nq = B * N * 2 * (Traits::kV2 ? H2 : H) * d, nk = Traits::kV2 ? nq / 2 : nq, nv = nk,
                     no = Traits::kV2 ? nq / 2 : nq;
  void *q, *k, *v, *out, *lam, *gamma;
  cudaMalloc(&q, nq * 2); cudaMalloc(&k, nk * 2); cudaMalloc(&v, nv * 2); cudaMalloc(&out, no * 2);
  cudaMalloc(&lam, (Traits::kV2 ? B * N * H2 : 4 * d) * sizeof(float)); cudaMalloc(&gamma, 2 * d * sizeof(float));
  fill_device<Elem>(q, nq, 1, 1.f); fill_device<Elem>(k, nk, 2, 1.f); fill_device<Elem>(v, nv, 3, 1.f);
  fill_device<float>(lam, Traits::kV2 ? B * N * H2 : 4 * d, 4, Traits::kV2 ? 1.5f : 0.1f);
  fill_device<float>(gamma, 2 * d, 5, 1.f);
  da::Params p;
  const float* l = static_cast<const float*>(lam);
  if constexpr (Traits::kV2) {
    p = da::make_diff_v2_params(B, N, N, H2, H2, d, static_cast<const Elem*>(q), static_cast<const Elem*>(k),
                                static_cast<const Elem*>(v), l, static_cast<Elem*>(out));
  } else {
    p = da::make_official_params(B, N, N, H, H, d, static_cast<const Elem*>(q), static_cast<const Elem*>(k),
                                 static_cast<const Elem*>(v), static_cast<Elem*>(out));
    p.lambda = {l, l + d, l + 2 * d, l + 3 * d, false, da::lambda_init_for_depth(4)};
    p.norm.kind = da::NormKind::rms;
    p.norm.gamma = gamma;
  }
  p.mask.kind = mask;
  if (mask == da::MaskKind::window) p.mask = {mask, 256, 0};
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  const std::string label = std::string(prop.name) + " B=" + std::to_string(B) + " H=" + std::to_string(Traits::kV2 ? H2 : H);
  if (!backward) {
    // validated once (forward_config), then timed launches of this configuration alone
    const da::Status s = da::cuda::forward_config<Traits>(p, nullptr);  // warm-up
    if (!s.ok()) {
      state.SkipWithError(s.to_string().c_str());
    } else {
      time_launches(state, [&] { (void)da::cuda::detail::launch_forward<Traits>(p, nullptr); });
      state.counters["flops"] = benchmark::Counter(da::forward_flops(p), benchmark::Counter::kIsIterationInvariantRate);
      state.SetLabel(label);
    }
  } else if constexpr (da::cuda::backward_head_dim_supported(Traits::kHeadDim)) {
    using BT = da::cuda::BackwardTraits<Traits::kFmt, Traits::kHeadDim, Traits::kV2>;
    const std::int64_t Hd = Traits::kV2 ? H2 : H, dv = Traits::kV2 ? d : 2 * d, rows = B * Hd * N;
    std::vector<void*> bufs;
    auto alloc = [&](std::size_t bytes) { void* x = nullptr; cudaMalloc(&x, bytes); bufs.push_back(x); return x; };
    float* lse1 = static_cast<float*>(alloc(rows * 4)); float* lse2 = static_cast<float*>(alloc(rows * 4));
    float* attn = static_cast<float*>(alloc(rows * dv * 4)); float* o2 = static_cast<float*>(alloc(rows * dv * 4));
    float* rstd = static_cast<float*>(alloc(rows * 4));
    // the two-pass forward (d > 64) saves no O_2: the backward then computes <dA, O_2> from LSE_2
    p.extras = {lse1, lse2, attn, Traits::kSinglePass ? o2 : nullptr, Traits::kV2 ? nullptr : rstd, nullptr};
    const da::Status fs = da::cuda::forward_config<Traits>(p, nullptr);
    da::BackwardParams bp;
    bp.fwd = p;
    bp.fwd.extras = {};
    bp.saved = da::saved_from(p.extras);
    bp.deterministic = backward == 2;
    void* dout = alloc(no * 2);
    fill_device<Elem>(dout, no, 6, 1.f);
    bp.dout = p.out;
    bp.dout.ptr = dout;
    void* dq = alloc(nq * 2); void* dk = alloc(nk * 2); void* dvb = alloc(nv * 2);
    // gradients in the layouts of q, k, v (the same strides)
    bp.grad.dq1 = {dq, p.q1.stride_b, p.q1.stride_t, p.q1.stride_h};
    bp.grad.dq2 = {static_cast<char*>(dq) + (static_cast<const char*>(p.q2.ptr) - static_cast<const char*>(p.q1.ptr)),
                   p.q2.stride_b, p.q2.stride_t, p.q2.stride_h};
    bp.grad.dk1 = {dk, p.k1.stride_b, p.k1.stride_t, p.k1.stride_h};
    if constexpr (Traits::kV2) {
      bp.grad.dv_lo = {dvb, p.v_lo.stride_b, p.v_lo.stride_t, p.v_lo.stride_h};
      bp.grad.dlogits = {alloc(B * N * H2 * 4), p.lambda.logits.stride_b, p.lambda.logits.stride_t, p.lambda.logits.stride_h};
    } else {
      bp.grad.dk2 = {static_cast<char*>(dk) + (static_cast<const char*>(p.k2.ptr) - static_cast<const char*>(p.k1.ptr)),
                     p.k2.stride_b, p.k2.stride_t, p.k2.stride_h};
      bp.set_dv({dvb, p.v_lo.stride_b, p.v_lo.stride_t, p.v_lo.stride_h});
      float* side = static_cast<float*>(alloc(6 * d * 4));
      bp.grad.dlq1 = side; bp.grad.dlk1 = side + d; bp.grad.dlq2 = side + 2 * d; bp.grad.dlk2 = side + 3 * d;
      bp.grad.dgamma = side + 4 * d;
    }
    const std::size_t wsb = da::cuda::backward_workspace_bytes(bp);
    void* ws = alloc(wsb > 0 ? wsb : 256);
    const da::Status bs = fs.ok() ? da::cuda::backward_config<BT>(bp, ws, wsb, nullptr) : fs;  // validated, warm-up
    const bool ran = bs.ok() && cudaDeviceSynchronize() == cudaSuccess;
    if (!ran) {
      state.SkipWithError(bs.ok() ? "cuda backward failed on the device" : bs.to_string().c_str());
    } else {
      const da::cuda::BackwardPlan pl = da::cuda::make_backward_plan<BT>(bp.fwd, bp.deterministic, da::cuda::detail::device_sm_count());
      time_launches(state, [&] { (void)da::cuda::detail::launch_backward<BT>(bp, pl, ws, wsb, nullptr); });
      state.counters["flops"] = benchmark::Counter(da::backward_flops(bp.fwd), benchmark::Counter::kIsIterationInvariantRate);
      state.SetLabel(label + " splits=" + std::to_string(pl.nsplit));
    }
    for (void* x : bufs) cudaFree(x);
  }
  cudaFree(q); cudaFree(k); cudaFree(v); cudaFree(out); cudaFree(lam); cudaFree(gamma);
}

inline const char* mask_name(da::MaskKind m) {
  return m == da::MaskKind::none ? "none" : (m == da::MaskKind::causal ? "causal" : "window");
}

/// Decoding (issue-13 serving layouts): B sequences of one query token over a paged cache of S
/// keys (pages of 64 rows in shuffled order), H = 16 diff heads over Hkv = 2 KV groups (GQA 8:1),
/// causal, the official lambda/RMSNorm; counters `bytes` (K_1, K_2 and V read: B S Hkv 4 d
/// elements; V2 2 d), `tokens` (B per call) and `flops`. Beside it, peak/cuda_copy: a 1 GiB
/// device-to-device copy (bytes read + written) on the same GPU.
template <class Traits>
void bm_decode(benchmark::State& state, std::int64_t B, std::int64_t S, bool fused = false) {
  using Elem = typename Traits::Elem;
  if (!have_gpu()) {
    state.SkipWithError("no CUDA device");
    return;
  }
  constexpr bool v2 = Traits::kV2;
  const std::int64_t H = 16, G = 2, d = Traits::kHeadDim, page = 64, dv = v2 ? d : 2 * d, kh = v2 ? G : 2 * G;
  const std::int64_t ppseq = (S + page - 1) / page, num_pages = B * ppseq;
  void *q, *kc, *vc, *out, *lam, *gamma, *table, *used;
  cudaMalloc(&q, B * 2 * H * d * 2); cudaMalloc(&out, B * H * dv * 2);
  cudaMalloc(&kc, num_pages * page * kh * d * 2); cudaMalloc(&vc, num_pages * page * G * dv * 2);
  cudaMalloc(&lam, (v2 ? B * H : 4 * d) * sizeof(float)); cudaMalloc(&gamma, dv * sizeof(float));
  cudaMalloc(&table, num_pages * 4); cudaMalloc(&used, B * 4);
  fill_device<Elem>(q, B * 2 * H * d, 11, 1.f);
  fill_device<Elem>(kc, num_pages * page * kh * d, 12, 1.f);
  fill_device<Elem>(vc, num_pages * page * G * dv, 13, 1.f);
  fill_device<float>(lam, v2 ? B * H : 4 * d, 14, v2 ? 1.5f : 0.1f);
  fill_device<float>(gamma, dv, 15, 1.f);
  std::vector<std::int32_t> ids(static_cast<std::size_t>(num_pages)), lens(static_cast<std::size_t>(B), static_cast<std::int32_t>(S));
  for (std::size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<std::int32_t>(i);
  std::shuffle(ids.begin(), ids.end(), std::mt19937(7));
  cudaMemcpy(table, ids.data(), ids.size() * 4, cudaMemcpyHostToDevice);
  cudaMemcpy(used, lens.data(), lens.size() * 4, cudaMemcpyHostToDevice);
  da::Params p;
  p.batch = B; p.seqlen_q = 1; p.seqlen_k = S; p.heads = H; p.kv_heads = G; p.head_dim = d;
  p.dtype = Traits::kDType;
  const Elem* qe = static_cast<const Elem*>(q);
  const Elem* ke = static_cast<const Elem*>(kc);
  const Elem* ve = static_cast<const Elem*>(vc);
  p.q1 = {qe, 2 * H * d, 2 * H * d, 2 * d};
  p.q2 = {qe + d, 2 * H * d, 2 * H * d, 2 * d};
  p.out = {out, H * dv, H * dv, dv};
  p.k1 = {ke, page * kh * d, kh * d, v2 ? d : 2 * d};
  p.v_lo = {ve, page * G * dv, G * dv, dv};
  const float* l = static_cast<const float*>(lam);
  if constexpr (v2) {
    p.variant = da::Variant::diff_v2;
    p.lambda.logits = {l, H, H, 1};
    p.norm.kind = da::NormKind::none;
  } else {
    p.k2 = {ke + d, page * kh * d, kh * d, 2 * d};
    p.v_hi = {ve + d, page * G * dv, G * dv, dv};
    p.lambda = {l, l + d, l + 2 * d, l + 3 * d, false, da::lambda_init_for_depth(4)};
    p.norm.kind = da::NormKind::rms;
    p.norm.gamma = gamma;
  }
  p.mask.kind = da::MaskKind::causal;
  p.seq.block_table = static_cast<const std::int32_t*>(table);
  p.seq.seqused_k = static_cast<const std::int32_t*>(used);
  p.seq.max_pages = ppseq; p.seq.page_size = page; p.seq.num_pages = num_pages;
  // cuda::forward (the decoding path: GQA packing, split-KV) in a workspace allocated once, or
  // (fused) the fused kernel of Traits, one block of 128 rows per head, for comparison
  const std::size_t ws_bytes = fused ? 0 : da::cuda::forward_workspace_bytes(p);
  void* ws = nullptr;
  if (ws_bytes > 0) cudaMalloc(&ws, ws_bytes);
  const da::Status s = fused ? da::cuda::forward_config<Traits>(p, nullptr) : da::cuda::forward(p, ws, ws_bytes, nullptr);
  if (!s.ok()) {
    state.SkipWithError(s.to_string().c_str());
  } else {
    time_launches(state, [&] {
      if (fused) (void)da::cuda::detail::launch_forward<Traits>(p, nullptr);
      else (void)da::cuda::forward(p, ws, ws_bytes, nullptr);
    });
    const double bytes = static_cast<double>(B * S * G * (v2 ? 2 : 4) * d * 2);
    state.counters["bytes"] = benchmark::Counter(bytes, benchmark::Counter::kIsIterationInvariantRate);
    state.counters["tokens"] = benchmark::Counter(static_cast<double>(B), benchmark::Counter::kIsIterationInvariantRate);
    state.counters["flops"] = benchmark::Counter(static_cast<double>(B * H * S * (v2 ? 8 : 12) * d),
                                                 benchmark::Counter::kIsIterationInvariantRate);
  }
  for (void* x : {q, kc, vc, out, lam, gamma, table, used, ws}) cudaFree(x);
}

/// peak/cuda_copy: a 1 GiB device-to-device cudaMemcpy (bytes read + written per second).
inline void bm_cuda_copy(benchmark::State& state) {
  if (!have_gpu()) {
    state.SkipWithError("no CUDA device");
    return;
  }
  const std::size_t n = std::size_t{1} << 30;
  void *a, *b;
  cudaMalloc(&a, n); cudaMalloc(&b, n);
  cudaMemset(a, 1, n);
  time_launches(state, [&] { cudaMemcpyAsync(b, a, n, cudaMemcpyDeviceToDevice, nullptr); });
  state.counters["bytes"] = benchmark::Counter(2.0 * n, benchmark::Counter::kIsIterationInvariantRate);
  cudaFree(a); cudaFree(b);
}

/// Registers the runs of one configuration: cuda_forward/<dtype>/<mask>/d:<d>[/<variant>]/N:<N>,
/// with variant "m<BlockM>_n<BlockN>_1p" or "m<BlockM>_n<BlockN>_2p_p1n<BlockN1>" for the tuning
/// candidates.
template <class Traits>
void register_config(bool variant = false) {
  const char* dtype = Traits::kFmt == da::simt::fmt16::f16 ? "f16" : "bf16";
  const std::string tag = variant ? "/m" + std::to_string(Traits::kBlockM) + "_n" + std::to_string(Traits::kBlockN) +
                                        (Traits::kSinglePass ? std::string("_1p") : "_2p_p1n" + std::to_string(Traits::kBlockN1))
                                  : std::string();
  if (!variant && Traits::kHeadDim == 64) {  // the decode runs: d = 64, B 1 to 64, S 1k to 32k
    for (std::int64_t B : {1, 16, 64})
      for (std::int64_t S : {1024, 8192, 32768}) {
        const std::string name = std::string(Traits::kV2 ? "cuda_decode_v2/" : "cuda_decode/") + dtype + "/B:" +
                                 std::to_string(B) + "/S:" + std::to_string(S);
        benchmark::RegisterBenchmark(name.c_str(), [=](benchmark::State& st) { bm_decode<Traits>(st, B, S); })
            ->UseManualTime()->Unit(benchmark::kMicrosecond);
      }
    // the fused kernel on the same call (what cuda::forward ran before its decoding path)
    const std::string fname = std::string(Traits::kV2 ? "cuda_decode_fused_v2/" : "cuda_decode_fused/") + dtype + "/B:16/S:8192";
    benchmark::RegisterBenchmark(fname.c_str(), [=](benchmark::State& st) { bm_decode<Traits>(st, 16, 8192, true); })
        ->UseManualTime()->Unit(benchmark::kMicrosecond);
    if (Traits::kFmt == da::simt::fmt16::bf16 && !Traits::kV2)
      benchmark::RegisterBenchmark("peak/cuda_copy", bm_cuda_copy)->UseManualTime()->Unit(benchmark::kMillisecond);
  }
  for (da::MaskKind m : {da::MaskKind::none, da::MaskKind::causal}) {
    const std::string name = std::string(Traits::kV2 ? "cuda_forward_v2/" : "cuda_forward/") + dtype + "/" + mask_name(m) + "/d:" +
                             std::to_string(Traits::kHeadDim) + tag;
    benchmark::RegisterBenchmark(name.c_str(), [=](benchmark::State& st) { bm_forward<Traits>(st, m); })
        ->ArgName("N")->RangeMultiplier(2)->Range(1024, 16384)->UseManualTime()->Unit(benchmark::kMillisecond);
    if (variant || !da::cuda::backward_head_dim_supported(Traits::kHeadDim)) continue;
    for (int bwd : {1, 2}) {
      const std::string bname = std::string(bwd == 1 ? "cuda_backward" : "cuda_backward_det") + (Traits::kV2 ? "_v2/" : "/") +
                                dtype + "/" + mask_name(m) + "/d:" + std::to_string(Traits::kHeadDim);
      benchmark::RegisterBenchmark(bname.c_str(), [=](benchmark::State& st) { bm_forward<Traits>(st, m, bwd); })
          ->ArgName("N")->RangeMultiplier(2)->Range(1024, 16384)->UseManualTime()->Unit(benchmark::kMillisecond);
    }
  }
}

}  // namespace diffattn_bench

