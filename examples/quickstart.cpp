// quickstart: the library's main job on the official layer of the DIFF Transformer paper's
// example (embed 1024, H = 8 diff heads, d = 64, dv = 128), B = 2, N = 512, causal, depth 0:
// the tiled CPU kernel (on the instruction set chosen at run time) beside the reference on the
// same inputs (time, speedup, max error); then the CUDA kernel under the host emulator (the
// same source nvcc compiles) on a small bf16 problem, against the double reference.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include <diffattn/diffattn.hpp>
#include <diffattn/cuda/emulated.hpp>

int main() {
  namespace da = diffattn;
  const std::int64_t B = 2, N = 512, H = 8, Hkv = 8, d = 64;  // embed = 2 * H * d = 1024

  // Official interleaved layout: q [B,N,2H,d], k [B,N,2Hkv,d], v [B,N,Hkv,2d], out [B,N,H,2d].
  std::mt19937 rng(2025);
  std::normal_distribution<float> normal(0.f, 1.f), lam_init(0.f, 0.1f);
  std::vector<float> q(B * N * 2 * H * d), k(B * N * 2 * Hkv * d), v(B * N * Hkv * 2 * d);
  std::vector<float> out(B * N * H * 2 * d), gamma(2 * d, 1.f);
  std::vector<float> lq1(d), lk1(d), lq2(d), lk2(d);
  for (auto* t : {&q, &k, &v}) for (float& x : *t) x = normal(rng);
  for (auto* t : {&lq1, &lk1, &lq2, &lk2}) for (float& x : *t) x = lam_init(rng);  // N(0, 0.1)

  da::Params p = da::make_official_params(B, N, N, H, Hkv, d, q.data(), k.data(), v.data(), out.data());
  p.mask.kind = da::MaskKind::causal;
  p.lambda = {lq1.data(), lk1.data(), lq2.data(), lk2.data(), /*per_head=*/false,
              da::lambda_init_for_depth(0)};
  // fields every call sets (validation names them when unset): norm.kind, and lambda_init
  p.norm.kind = da::NormKind::rms;  // RMSNorm over 2d channels, eps 1e-5
  p.norm.gamma = gamma.data();

  const auto t0 = std::chrono::steady_clock::now();
  const da::Status s = da::reference::forward<float>(p);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (!s.ok()) {
    std::fprintf(stderr, "forward failed: %s\n", s.to_string().c_str());
    return 1;
  }

  double lam = 0, dot1 = 0, dot2 = 0;
  for (int i = 0; i < d; ++i) { dot1 += lq1[i] * lk1[i]; dot2 += lq2[i] * lk2[i]; }
  lam = std::exp(dot1) - std::exp(dot2) + p.lambda.lambda_init;
  double sum = 0, sum_abs = 0;
  for (float x : out) { sum += x; sum_abs += std::fabs(x); }

  std::printf("diffattn quickstart: reference forward, float accumulation\n");
  std::printf("  q   [%lld, %lld, %lld, %lld]  (B, N, 2H, d)\n", (long long)B, (long long)N, (long long)(2 * H), (long long)d);
  std::printf("  k   [%lld, %lld, %lld, %lld]  (B, S, 2Hkv, d)\n", (long long)B, (long long)N, (long long)(2 * Hkv), (long long)d);
  std::printf("  v   [%lld, %lld, %lld, %lld]  (B, S, Hkv, 2d)\n", (long long)B, (long long)N, (long long)Hkv, (long long)(2 * d));
  std::printf("  out [%lld, %lld, %lld, %lld]  (B, N, H, 2d)\n", (long long)B, (long long)N, (long long)H, (long long)(2 * d));
  std::printf("  mask causal, lambda_init %.6f (depth 0), lambda %.6f\n", p.lambda.lambda_init, lam);
  std::printf("  checksum: sum %.6f, sum|out| %.6f\n", sum, sum_abs);
  std::printf("  time %.3f ms, %.2f GFLOP/s (docs/SPEC.md count, causal)\n", secs * 1e3,
              da::forward_flops(p) / secs * 1e-9);

  // The same problem on the tiled CPU kernel, writing a second output.
  std::vector<float> out_cpu(out.size());
  da::Params pc = p;
  pc.out.ptr = out_cpu.data();
  double best = 1e30;
  for (int rep = 0; rep < 3; ++rep) {  // the first call also starts the thread pool
    const auto c0 = std::chrono::steady_clock::now();
    const da::Status sc = da::cpu::forward(pc);
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - c0).count());
    if (!sc.ok()) {
      std::fprintf(stderr, "cpu::forward failed: %s\n", sc.to_string().c_str());
      return 1;
    }
  }
  double max_diff = 0;
  for (std::size_t i = 0; i < out.size(); ++i) max_diff = std::max(max_diff, double(std::fabs(out[i] - out_cpu[i])));
  std::printf("diffattn quickstart: cpu::forward, path %s, all cores\n", da::cpu::isa_name(da::cpu::isa()));
  std::printf("  time %.3f ms, %.2f GFLOP/s: %.1fx the reference; max |out - reference| %.2e\n", best * 1e3,
              da::forward_flops(pc) / best * 1e-9, secs / best, max_diff);
  if (!(max_diff < 1e-4)) return 1;

  // The CUDA kernel (bf16, d = 64: the configuration an H100 runs) under the simt emulator,
  // on a small problem: every thread a fiber, every mma.sync / ldmatrix / cp.async emulated.
  using Traits = da::cuda::ForwardTraits<da::simt::fmt16::bf16, 64>;
  const std::int64_t n = 80, h = 2;
  std::vector<da::bfloat16> qb(n * 2 * h * d), kb(n * 2 * h * d), vb(n * h * 2 * d), ob(n * h * 2 * d);
  std::vector<double> qd(qb.size()), kd(kb.size()), vd(vb.size()), od(ob.size());
  std::vector<double> l1(lq1.begin(), lq1.end()), l2(lk1.begin(), lk1.end()), l3(lq2.begin(), lq2.end()),
      l4(lk2.begin(), lk2.end()), gd(gamma.begin(), gamma.end());
  auto fill = [&](std::vector<da::bfloat16>& b, std::vector<double>& w) {
    for (std::size_t i = 0; i < b.size(); ++i) { b[i] = da::bfloat16(normal(rng)); w[i] = float(b[i]); }
  };
  fill(qb, qd); fill(kb, kd); fill(vb, vd);
  da::Params pe = da::make_official_params(1, n, n, h, h, d, qb.data(), kb.data(), vb.data(), ob.data());
  pe.mask.kind = da::MaskKind::causal;
  pe.lambda = p.lambda;
  pe.norm = p.norm;
  da::Params pd = da::make_official_params(1, n, n, h, h, d, qd.data(), kd.data(), vd.data(), od.data());
  pd.mask = pe.mask;
  pd.lambda = {l1.data(), l2.data(), l3.data(), l4.data(), false, p.lambda.lambda_init};
  pd.norm = p.norm;
  pd.norm.gamma = gd.data();
  da::Status se = da::validate(pe, da::cuda::emulated_caps());
  const auto e0 = std::chrono::steady_clock::now();
  if (se.ok()) se = da::cuda::emulated_run_forward<Traits>(pe, {});
  const double esecs = std::chrono::duration<double>(std::chrono::steady_clock::now() - e0).count();
  const da::Status sd = da::reference::forward<double>(pd);
  if (!se.ok() || !sd.ok()) {
    std::fprintf(stderr, "emulated cuda forward failed: %s / %s\n", se.to_string().c_str(), sd.to_string().c_str());
    return 1;
  }
  double emax = 0, omax = 0;
  for (std::size_t i = 0; i < ob.size(); ++i) {
    emax = std::max(emax, std::fabs(double(float(ob[i])) - od[i]));
    omax = std::max(omax, std::fabs(od[i]));
  }
  std::printf("diffattn quickstart: cuda forward under the emulator (bf16, d %d, %d-row blocks, %s)\n",
              Traits::kHeadDim, Traits::kBlockM, Traits::kSinglePass ? "single pass" : "two pass");
  std::printf("  N = S = %lld, H = %lld, causal: %.2f s (emulated threads; a GPU runs it in microseconds)\n",
              (long long)n, (long long)h, esecs);
  std::printf("  max |out - double reference| %.2e (max |out| %.2f; bf16 has 8 significant bits)\n", emax, omax);
  return emax < 0.05 * omax ? 0 : 1;
}
