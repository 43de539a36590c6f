// The CUDA backward on a real GPU, when one is present: every shipped backward configuration
// through cuda::backward on the cases of tests/cuda/backward_check.hpp (the emulated tests'
// cases). Without a GPU (CI) the host-side checks still run, and the program then exits with
// 77: ctest reports the test as skipped, never as passed.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cuda_runtime.h>

#include <diffattn/cuda/backward.cuh>
#include <diffattn/cuda/forward.cuh>

#include "cuda/backward_check.hpp"
#include "cuda/gpu_support.hpp"

using namespace dt;

namespace {

da::Status backward_on_gpu(const da::BackwardParams& hb) {
  DeviceMirror m;
  da::BackwardParams bp = hb;
  const da::Params& hp = hb.fwd;
  bp.fwd = mirror_params(m, hp, false);
  const i64 B = hp.batch, N = hp.seqlen_q, S = hp.seqlen_k, H = hp.heads, G = hp.kv_heads, d = hp.head_dim,
            dv = hp.value_dim();
  const std::size_t e = da::dtype_size(hp.dtype), f = sizeof(float), rows = B * H * N * f;
  bp.dout.ptr = m.mirror(hb.dout.ptr, span_bytes(hb.dout, B, N, H, dv, e), false);
  const da::SavedTensors& hs = hb.saved;
  bp.saved.lse1 = m.mirror(hs.lse1, rows, false);
  bp.saved.lse2 = m.mirror(hs.lse2, rows, false);
  bp.saved.attn = m.mirror(hs.attn, rows * dv, false);
  bp.saved.o2 = m.mirror(hs.o2, rows * dv, false);
  bp.saved.rstd = m.mirror(hs.rstd, rows, false);
  bp.saved.mean = m.mirror(hs.mean, rows, false);
  const da::Gradients& hg = hb.grad;
  da::Gradients& g = bp.grad;
  m.mirror_views(g.dq1.ptr, span_bytes(hg.dq1, B, N, H, d, e), g.dq2.ptr, span_bytes(hg.dq2, B, N, H, d, e), true);
  if (hg.dk2.ptr != nullptr) {
    m.mirror_views(g.dk1.ptr, span_bytes(hg.dk1, B, S, G, d, e), g.dk2.ptr, span_bytes(hg.dk2, B, S, G, d, e), true);
  } else {
    g.dk1.ptr = m.mirror(hg.dk1.ptr, span_bytes(hg.dk1, B, S, G, d, e), true);
  }
  if (hg.dv_hi.ptr != nullptr) {
    m.mirror_views(g.dv_lo.ptr, span_bytes(hg.dv_lo, B, S, G, d, e), g.dv_hi.ptr, span_bytes(hg.dv_hi, B, S, G, d, e), true);
  } else {
    g.dv_lo.ptr = m.mirror(hg.dv_lo.ptr, span_bytes(hg.dv_lo, B, S, G, d, e), true);
  }
  g.dlogits.ptr = m.mirror(hg.dlogits.ptr, span_bytes(hg.dlogits, B, N, H, 1, f), true);
  const std::size_t lam = (hp.lambda.per_head ? H : 1) * d * f;
  g.dlq1 = m.mirror(hg.dlq1, lam, true);
  g.dlk1 = m.mirror(hg.dlk1, lam, true);
  g.dlq2 = m.mirror(hg.dlq2, lam, true);
  g.dlk2 = m.mirror(hg.dlk2, lam, true);
  g.dgamma = m.mirror(hg.dgamma, 2 * d * f, true);
  g.dbeta = m.mirror(hg.dbeta, 2 * d * f, true);
  return finish(da::cuda::backward(bp, nullptr), m);
}

template <class Elem, int kD>
CudaBackwardCases<Elem, kD> on_gpu() {
  return CudaBackwardCases<Elem, kD>{{backward_on_gpu, forward_on_gpu}};
}

template <int kD, class Elem>
void each(bool small) {
  if constexpr (da::cuda::backward_head_dim_supported(kD)) {
    const auto c = on_gpu<Elem, kD>();
    if (small) {
      c.small();
    } else {
      c.awkward();
      c.layouts_norms();
      c.v2();
      c.chain();
      c.fully_masked();
      c.diffllama();
      c.no_o2();
    }
  }
}

using f16 = da::half;  // the element types by the configuration list's names
using bf16 = da::bfloat16;

}  // namespace

// scripts/gpu_check.sh runs this test case alone under compute-sanitizer (memcheck, racecheck,
// synccheck, initcheck): test_cuda_backward_gpu -tc="*small cases*".
TEST_CASE("cuda backward on a GPU: small cases of every shipped configuration (for compute-sanitizer)") {
  if (!have_gpu()) {
    MESSAGE("SKIPPED: no CUDA device on this machine");
    return;
  }
#define DIFFATTN_X(fmt, d) each<d, fmt>(true);
  DIFFATTN_CUDA_FORWARD_CONFIGS(DIFFATTN_X)
#undef DIFFATTN_X
}

TEST_CASE("cuda backward on a GPU: every shipped configuration, every case of the emulated suite") {
  if (!have_gpu()) {
    MESSAGE("SKIPPED: no CUDA device on this machine (the emulated tests cover the kernels)");
    return;
  }
#define DIFFATTN_X(fmt, d) each<d, fmt>(false);
  DIFFATTN_CUDA_FORWARD_CONFIGS(DIFFATTN_X)
#undef DIFFATTN_X
}

TEST_CASE("cuda backward on a GPU: rejected input launches nothing and writes nothing") {
  // validation happens on the host before any device access, so this runs without a GPU too
  check_backward_bad_input<da::bfloat16, 64>([](const da::BackwardParams& bp) { return da::cuda::backward(bp, nullptr); });
}

int main(int argc, char** argv) { return gpu_suite_main(argc, argv); }
