// mem_cpu_forward: peak resident memory of cpu::forward beyond its inputs and outputs.
//
//   mem_cpu_forward [N=32768] [d=64] [threads=0] [dtype=f32|bf16|f16]
//
// Allocates and touches q, k, v, out and LSE (B = 1, H = 8, N = S, causal), reads the peak
// resident set (getrusage ru_maxrss) before and after one cpu::forward call, and prints both
// and their difference: the memory the kernel itself needed (workspace, thread stacks).
#include <sys/resource.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <diffattn/cpu/forward.hpp>

namespace da = diffattn;

static long max_rss_kib() {
  rusage u;
  getrusage(RUSAGE_SELF, &u);
  return u.ru_maxrss;
}

template <class T>
static int run(std::int64_t N, std::int64_t d, int threads) {
  const std::int64_t H = 8, S = N;
  std::vector<T> q(N * 2 * H * d, T(0.5f)), k(S * 2 * H * d, T(0.25f)), v(S * H * 2 * d, T(1.0f)),
      out(N * H * 2 * d, T(0.0f));
  std::vector<float> lam(d, 0.05f), gamma(2 * d, 1.0f), lse1(H * N, 0.0f), lse2(H * N, 0.0f);
  for (std::size_t i = 0; i < q.size(); i += 7) q[i] = T(-0.5f);  // not all equal
  da::Params p = da::make_official_params<T>(1, N, S, H, H, d, q.data(), k.data(), v.data(), out.data());
  p.mask.kind = da::MaskKind::causal;
  p.lambda = {lam.data(), lam.data(), lam.data(), lam.data(), false, 0.8};
  p.norm.kind = da::NormKind::rms;
  p.norm.gamma = gamma.data();
  p.extras.lse1 = lse1.data();
  p.extras.lse2 = lse2.data();
  const double io_mib = double((q.size() + k.size() + v.size() + out.size()) * sizeof(T) +
                               (lse1.size() + lse2.size()) * 4) / (1 << 20);
  const long before = max_rss_kib();
  da::cpu::Options o;
  o.num_threads = threads;
  const da::Status s = da::cpu::forward(p, o);
  const long after = max_rss_kib();
  if (!s.ok()) {
    std::fprintf(stderr, "%s\n", s.to_string().c_str());
    return 1;
  }
  std::printf("N = S = %lld, H = 8, d = %lld, causal, threads %d: inputs+outputs %.1f MiB, "
              "workspace_bytes %.2f MiB\n", (long long)N, (long long)d, threads, io_mib,
              double(da::cpu::workspace_bytes(p, o)) / (1 << 20));
  std::printf("peak RSS before %.1f MiB, after %.1f MiB: the forward added %.1f MiB\n",
              before / 1024.0, after / 1024.0, (after - before) / 1024.0);
  std::printf("check: out[0] = %g, lse1[last] = %g\n", double(float(out[0])), double(lse1.back()));
  return 0;
}

int main(int argc, char** argv) {
  const std::int64_t N = argc > 1 ? std::atoll(argv[1]) : 32768;
  const std::int64_t d = argc > 2 ? std::atoll(argv[2]) : 64;
  const int threads = argc > 3 ? std::atoi(argv[3]) : 0;
  const std::string dt = argc > 4 ? argv[4] : "f32";
  if (dt == "bf16") return run<da::bfloat16>(N, d, threads);
  if (dt == "f16") return run<da::half>(N, d, threads);
  return run<float>(N, d, threads);
}
