// diffattn/cpu/backward.hpp: the fused CPU backward (FlashAttention-2 style, both softmaxes in
// one pass, no atomics).
//
//   diffattn::Params p = ...;  p.extras = {lse1, lse2, attn, o2, rstd, mean};  // fp32 buffers
//   cpu::forward(p);                                  // saves what the backward reads
//   diffattn::BackwardParams bp;
//   bp.fwd = p; bp.dout = ...; bp.saved = diffattn::saved_from(p.extras); bp.grad = ...;
//   diffattn::Status s = diffattn::cpu::backward(bp);   // cpu::Options as for forward
//
// Same gradients as reference::backward (docs/SPEC.md, "Backward"), from the forward's saved
// LSE_1, LSE_2, A, O_2 and the norm's rstd (and mean), with O(N) extra memory:
//   1. per query row (parallel over row blocks): dA through the norm's backward, the row dot
//      products D_1 = <dA, A + lambda O_2> and D_2 = -lambda <dA, O_2>, the partial sums of
//      dlambda, dgamma and dbeta (V2: dlogits directly);
//   1b. without a saved O_2 (saved.o2 null: [B, H, N, dv] fp32 less to keep per layer), per row
//      block: <dA, O_2> = sum over the row's keys of P_2 dP_1, P_2 from S_2 and LSE_2 and
//      dP_1 = dA V^T (6 N S d FLOPs more), then the row's statistics as in 1;
//   2. per (batch, KV group, chunk of key blocks) (parallel, dynamic): each block of 64 keys
//      of K_1, K_2 and V is packed once and streams every query row of the group's n_rep
//      heads that can see it, in tiles of 64 rows (cpu/detail/backward.inl): dK_1, dK_2 and
//      dV of the block accumulate in fp32 and are written once; dQ_1, dQ_2 accumulate into a
//      fp32 buffer of the chunk. Since dP_2 = -lambda dP_1, one product dA V^T serves both
//      components, and dV takes one product of (P_1 - lambda P_2)^T with dA: 10 products of
//      2 N S d FLOPs in all (8 for V2), the backward count of core/flops.hpp;
//   3. dQ_c = the chunks' buffers summed in chunk order, in the element type; the lambda and
//      norm-weight gradients from the partial sums, in block order.
// Every sum has a fixed order, so the gradients are bitwise reproducible run to run for a fixed
// thread count, and for every thread count while B * Hkv >= 4 x threads (one chunk per group).
// Below that, the keys of each group are cut into up to 4 x threads / (B * Hkv) chunks so that
// every thread has work.
//
// Memory: fp32 dA and row statistics (B H N (dv + 5) floats), the dQ buffers (chunks x B H N x
// 2 x round16(d) floats), and per thread about (10 d + 4 dv + 200) x 64 floats of tiles.
// bp.deterministic is accepted and changes nothing here: this backward is always reproducible.
#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "diffattn/core/config.hpp"
#include "diffattn/core/dtype.hpp"
#include "diffattn/core/lambda.hpp"
#include "diffattn/core/mask.hpp"
#include "diffattn/core/params.hpp"
#include "diffattn/core/status.hpp"
#include "diffattn/core/validate.hpp"
#include "diffattn/cpu/detail/item.hpp"
#include "diffattn/cpu/detail/pool.hpp"
#include "diffattn/cpu/forward.hpp"
#include "diffattn/cpu/isa.hpp"

DIFFATTN_NAMESPACE_BEGIN
namespace cpu {

/// What cpu::backward accepts: cpu::caps(), and it reads the forward's saved tensors.
inline BackendCaps backward_caps() {
  BackendCaps c = caps();
  c.backward_needs_saved = true;
  c.backward_o2_optional = true;  // stage 1b recomputes <dA, O_2> from LSE_2 when saved.o2 is null
  return c;
}

namespace detail {

/// How one backward call is cut up, and where each buffer lies in the workspace.
struct BwdPlan {
  int threads = 1;
  std::int64_t nchunk = 1, kb_per_chunk = 1, nkb = 0, units = 0;
  std::int64_t nrb = 0, blocks1 = 0;  ///< row blocks per head, and in all (stages 1 and 3)
  std::int64_t d = 0, dv = 0, dpad = 0;
  std::size_t off_da = 0, off_stat = 0, off_dq = 0, off_part = 0, off_thread = 0;  ///< bytes
  std::size_t thread_bytes = 0, total = 0;
  std::int64_t part_doubles() const { return 1 + 2 * dv; }  ///< per row block: dlambda, dgamma, dbeta
  std::int64_t thread_floats() const {
    const std::int64_t L = kBlockN, M = kBwdBlockM;
    return 2 * L * dpad + 2 * d * L + dv * L + 2 * d * L + dv * L + 2 * M * dpad + 2 * M * L + M * L + 2 * M + 64;
  }
};

inline std::size_t align64(std::size_t n) { return (n + 63) / 64 * 64; }

inline BwdPlan make_bwd_plan(const Params& p, const Options& o) {
  BwdPlan pl;
  int t = o.num_threads > 0 ? o.num_threads : static_cast<int>(std::thread::hardware_concurrency());
  t = std::max(t, 1);
  pl.d = p.head_dim;
  pl.dv = p.value_dim();
  pl.dpad = round16(p.head_dim);
  pl.nkb = (p.seqlen_k + kBlockN - 1) / kBlockN;
  const std::int64_t groups = p.batch * p.kv_heads;
  if (groups < 4 * static_cast<std::int64_t>(t)) {
    const std::int64_t want = (4 * static_cast<std::int64_t>(t) + groups - 1) / groups;
    pl.nchunk = std::min(want, pl.nkb);
  }
  pl.kb_per_chunk = (pl.nkb + pl.nchunk - 1) / pl.nchunk;
  pl.nchunk = (pl.nkb + pl.kb_per_chunk - 1) / pl.kb_per_chunk;  // no empty chunk
  pl.units = groups * pl.nchunk;
  pl.nrb = (p.seqlen_q + kBwdBlockM - 1) / kBwdBlockM;
  pl.blocks1 = p.batch * p.heads * pl.nrb;
  pl.threads = static_cast<int>(std::min<std::int64_t>(t, std::max(pl.units, pl.blocks1)));
  const std::size_t rows = static_cast<std::size_t>(p.batch * p.heads * p.seqlen_q);
  std::size_t off = 64;  // room to align the base
  pl.off_da = off; off += align64(rows * static_cast<std::size_t>(pl.dv) * sizeof(float));
  pl.off_stat = off; off += align64(rows * kBwdStat * sizeof(float));
  pl.off_dq = off; off += align64(static_cast<std::size_t>(pl.nchunk) * rows * 2 * static_cast<std::size_t>(pl.dpad) * sizeof(float));
  pl.off_part = off; off += align64(static_cast<std::size_t>(pl.blocks1 * pl.part_doubles()) * sizeof(double));
  pl.thread_bytes = align64(static_cast<std::size_t>(pl.thread_floats()) * sizeof(float));
  pl.off_thread = off; off += static_cast<std::size_t>(pl.threads) * pl.thread_bytes;
  pl.total = off;
  return pl;
}

/// First i in [lo, hi) with pred(i) true, for a predicate false then true along i (hi if none).
template <class F>
std::int64_t first_true(std::int64_t lo, std::int64_t hi, F pred) {
  while (lo < hi) {
    const std::int64_t mid = lo + (hi - lo) / 2;
    if (pred(mid)) hi = mid; else lo = mid + 1;
  }
  return lo;
}

template <class Elem>
inline float elem_to_float(Elem x) { return static_cast<float>(x); }

template <class Elem>
void run_backward(const BackwardParams& bp, const BwdPlan& pl, const Kernels& kern, void* ws_raw) {
  const Params& p = bp.fwd;
  const Gradients& gr = bp.grad;
  const SavedTensors& sv = bp.saved;
  const std::int64_t B = p.batch, N = p.seqlen_q, S = p.seqlen_k, H = p.heads, rep = p.n_rep();
  const std::int64_t d = pl.d, dv = pl.dv, dpad = pl.dpad;
  const bool v2 = p.is_v2();
  const NormKind norm = p.norm_kind();
  const double scale = p.scale(), out_scale = p.out_scale();
  const double log2e = 1.44269504088896340736;
  const RowMask mask = make_row_mask(p);
  const std::int64_t rows_per_chunk = B * H * N;

  unsigned char* base = static_cast<unsigned char*>(ws_raw);
  base += (64 - reinterpret_cast<std::uintptr_t>(base) % 64) % 64;
  float* ws_da = reinterpret_cast<float*>(base + pl.off_da - 64);
  float* ws_stat = reinterpret_cast<float*>(base + pl.off_stat - 64);
  float* ws_dq = reinterpret_cast<float*>(base + pl.off_dq - 64);
  double* ws_part = reinterpret_cast<double*>(base + pl.off_part - 64);
  unsigned char* ws_thread = base + pl.off_thread - 64;
  ThreadPool& pool = ThreadPool::instance();

  // lambda of a V1 head (its set of vectors), in double then fp32 as the forward uses it
  auto head_lambda = [&](std::int64_t h) {
    const std::int64_t off = p.lambda.per_head ? h * d : 0;
    const LambdaTerms<double> lt = lambda_terms<double>(
        static_cast<const float*>(p.lambda.lq1) + off, static_cast<const float*>(p.lambda.lk1) + off,
        static_cast<const float*>(p.lambda.lq2) + off, static_cast<const float*>(p.lambda.lk2) + off, d);
    return lt;
  };
  const float* gamma = static_cast<const float*>(p.norm.gamma);

  // The row statistics of row i of head (b, h) from its dA (in ws_da) and dot = <dA, O_2>:
  // lse1, lse2 in base 2, D_1 = scale (<dA, A> + lambda dot), D_2 = -scale lambda dot, lambda;
  // and dot's share of dlambda (V1, into the row block's partial sums) or dlogits (V2).
  auto row_stats = [&](std::int64_t b, std::int64_t h, std::int64_t i, float lam_head, double dot, double* part) {
    const std::int64_t row = (b * H + h) * N + i;
    const float* a = static_cast<const float*>(sv.attn) + row * dv;
    const float* darow = ws_da + row * dv;
    double daa = 0;
    for (std::int64_t c = 0; c < dv; ++c) daa += static_cast<double>(darow[c]) * a[c];
    float lam = lam_head;
    if (v2) {
      const float z = static_cast<const float*>(p.lambda.logits.ptr)[b * p.lambda.logits.stride_b +
                                                                    i * p.lambda.logits.stride_t +
                                                                    h * p.lambda.logits.stride_h];
      lam = static_cast<float>(1.0 / (1.0 + std::exp(-static_cast<double>(z))));
      float* dz = static_cast<float*>(gr.dlogits.ptr);
      dz[b * gr.dlogits.stride_b + i * gr.dlogits.stride_t + h * gr.dlogits.stride_h] =
          static_cast<float>(-dot * lam * (1.0 - lam));
    } else {
      part[0] -= dot;
    }
    float* st = ws_stat + row * kBwdStat;
    const float l1 = static_cast<const float*>(sv.lse1)[row], l2 = static_cast<const float*>(sv.lse2)[row];
    st[0] = static_cast<float>(l1 * log2e);  // -inf stays -inf
    st[1] = static_cast<float>(l2 * log2e);
    st[2] = static_cast<float>(scale * (daa + lam * dot));
    st[3] = static_cast<float>(scale * (-lam * dot));
    st[4] = lam;
  };

  // ---- stage 1: dA, row statistics (with a saved O_2), partial sums; zero the dQ buffers
  {
    std::atomic<std::int64_t> next{0};
    const int nt = static_cast<int>(std::min<std::int64_t>(pl.threads, pl.blocks1));
    pool.run(nt, [&](int) {
      std::vector<double> dy(static_cast<std::size_t>(dv)), dab(static_cast<std::size_t>(dv));
      for (;;) {
        const std::int64_t blk = next.fetch_add(1, std::memory_order_relaxed);
        if (blk >= pl.blocks1) break;
        const std::int64_t bh = blk / pl.nrb, rb = blk % pl.nrb, b = bh / H, h = bh % H;
        double* part = ws_part + blk * pl.part_doubles();
        std::fill(part, part + pl.part_doubles(), 0.0);
        const float lam_head = v2 ? 0.0f : static_cast<float>(head_lambda(h).value(p.lambda.lambda_init));
        const Elem* dout = static_cast<const Elem*>(bp.dout.ptr) + b * bp.dout.stride_b + h * bp.dout.stride_h;
        const std::int64_t i_end = std::min(N, (rb + 1) * kBwdBlockM);
        for (std::int64_t i = rb * kBwdBlockM; i < i_end; ++i) {
          const std::int64_t row = bh * N + i;
          const float* a = static_cast<const float*>(sv.attn) + row * dv;
          const Elem* dorow = dout + i * bp.dout.stride_t;
          for (std::int64_t c = 0; c < dv; ++c) dy[c] = out_scale * static_cast<double>(elem_to_float(dorow[c]));
          if (norm == NormKind::none) {
            for (std::int64_t c = 0; c < dv; ++c) dab[c] = dy[c];
          } else {
            const double r = static_cast<const float*>(sv.rstd)[row];
            if (norm == NormKind::rms) {
              double mean_ga = 0;
              for (std::int64_t c = 0; c < dv; ++c) {
                const double gg = dy[c] * (gamma ? gamma[c] : 1.0f);
                part[1 + c] += dy[c] * a[c] * r;
                mean_ga += gg * a[c];
              }
              mean_ga /= static_cast<double>(dv);
              for (std::int64_t c = 0; c < dv; ++c)
                dab[c] = r * dy[c] * (gamma ? gamma[c] : 1.0f) - r * r * r * mean_ga * a[c];
            } else {
              const double mu = static_cast<const float*>(sv.mean)[row];
              double mg = 0, mgx = 0;
              for (std::int64_t c = 0; c < dv; ++c) {
                const double xh = (a[c] - mu) * r, gg = dy[c] * (gamma ? gamma[c] : 1.0f);
                part[1 + c] += dy[c] * xh;
                part[1 + dv + c] += dy[c];
                mg += gg;
                mgx += gg * xh;
              }
              mg /= static_cast<double>(dv);
              mgx /= static_cast<double>(dv);
              for (std::int64_t c = 0; c < dv; ++c)
                dab[c] = r * (dy[c] * (gamma ? gamma[c] : 1.0f) - mg - (a[c] - mu) * r * mgx);
            }
          }
          float* darow = ws_da + row * dv;
          for (std::int64_t c = 0; c < dv; ++c) darow[c] = static_cast<float>(dab[c]);
          if (sv.o2 != nullptr) {
            const float* o2 = static_cast<const float*>(sv.o2) + row * dv;
            double dot = 0;
            for (std::int64_t c = 0; c < dv; ++c) dot += static_cast<double>(darow[c]) * o2[c];
            row_stats(b, h, i, lam_head, dot, part);
          }
          for (std::int64_t ch = 0; ch < pl.nchunk; ++ch) {
            float* q = ws_dq + (ch * rows_per_chunk + row) * 2 * dpad;
            std::fill(q, q + 2 * dpad, 0.0f);
          }
        }
      }
    });
  }

  // ---- stage 1b, without a saved O_2: <dA, O_2> = sum over the row's keys of P_2 dP_1 (P_2 from
  // S_2 and LSE_2, dP_1 = dA V^T), per row block of stage 1 (whose partial sums it adds to), key
  // blocks in order: 6 N S d FLOPs more (S_2 and dP_1 products, and their elementwise product)
  if (sv.o2 == nullptr) {
    std::atomic<std::int64_t> next{0};
    const int nt = static_cast<int>(std::min<std::int64_t>(pl.threads, pl.blocks1));
    const float cexp = static_cast<float>(scale * log2e);
    pool.run(nt, [&](int tid) {
      constexpr int L = kBlockN, M = kBwdBlockM;
      static_assert(M == 64, "stage 1b: one qk_block64 column block per row block");
      float* f = reinterpret_cast<float*>(ws_thread + static_cast<std::size_t>(tid) * pl.thread_bytes);
      float* qt = f; f += d * M;     // Q_2^T of the row block (d x M), zero past its rows
      float* dat = f; f += dv * M;   // dA^T (dv x M)
      float* kb = f; f += L * d;     // K_2 rows of the key block
      float* vb = f; f += L * dv;    // V rows (both halves for V1)
      float* st = f; f += L * M;     // S_2^T (raw products)
      float* dpt = f; f += L * M;    // dP_1^T
      float* x = f; f += M;
      float* y = f; f += M;
      float* acc = f; f += M;
      float* l2 = f; f += M;
      std::int32_t* kbeg = reinterpret_cast<std::int32_t*>(f); f += M;
      std::int32_t* kend = reinterpret_cast<std::int32_t*>(f);
      const ConstTensorRef& k2 = p.key2();
      const ConstTensorRef* vv[2] = {&p.v_lo, &p.v_hi};
      double dot[M];
      for (;;) {
        const std::int64_t blk = next.fetch_add(1, std::memory_order_relaxed);
        if (blk >= pl.blocks1) break;
        const std::int64_t bh = blk / pl.nrb, rb = blk % pl.nrb, b = bh / H, h = bh % H, g = h / rep;
        const std::int64_t i0 = rb * M;
        const int nr = static_cast<int>(std::min<std::int64_t>(M, N - i0));
        std::fill(qt, qt + d * M, 0.0f);
        std::fill(dat, dat + dv * M, 0.0f);
        const Elem* q2 = static_cast<const Elem*>(p.q2.ptr) + b * p.q2.stride_b + h * p.q2.stride_h;
        std::int64_t jlo = S, jhi = 0;
        for (int i = 0; i < M; ++i) {
          dot[i] = 0;
          if (i >= nr) { kbeg[i] = 0; kend[i] = 0; l2[i] = 0.0f; continue; }
          const std::int64_t row = bh * N + i0 + i;
          const Elem* qr = q2 + (i0 + i) * p.q2.stride_t;
          for (std::int64_t c = 0; c < d; ++c) qt[c * M + i] = elem_to_float(qr[c]);
          const float* darow = ws_da + row * dv;
          for (std::int64_t c = 0; c < dv; ++c) dat[c * M + i] = darow[c];
          const std::int64_t kb0 = std::clamp<std::int64_t>(mask.key_begin(i0 + i), 0, S);
          const std::int64_t ke0 = std::clamp<std::int64_t>(mask.key_end(i0 + i), 0, S);
          kbeg[i] = static_cast<std::int32_t>(kb0);
          kend[i] = static_cast<std::int32_t>(ke0);
          l2[i] = static_cast<float>(static_cast<const float*>(sv.lse2)[row] * log2e);
          if (kb0 < ke0) { jlo = std::min(jlo, kb0); jhi = std::max(jhi, ke0); }
        }
        for (std::int64_t j0 = jlo / L * L; j0 < jhi; j0 += L) {
          const int nj = static_cast<int>(std::min<std::int64_t>(L, S - j0));
          const Elem* kr0 = static_cast<const Elem*>(k2.ptr) + b * k2.stride_b + g * k2.stride_h;
          for (int j = 0; j < nj; ++j) {
            const Elem* kr = kr0 + (j0 + j) * k2.stride_t;
            for (std::int64_t c = 0; c < d; ++c) kb[j * d + c] = elem_to_float(kr[c]);
          }
          for (int hv = 0; hv < (v2 ? 1 : 2); ++hv) {
            const Elem* vr0 = static_cast<const Elem*>(vv[hv]->ptr) + b * vv[hv]->stride_b + g * vv[hv]->stride_h;
            for (int j = 0; j < nj; ++j) {
              const Elem* vr = vr0 + (j0 + j) * vv[hv]->stride_t;
              for (std::int64_t c = 0; c < d; ++c) vb[j * dv + hv * d + c] = elem_to_float(vr[c]);
            }
          }
          kern.qk_block64(kb, d, nj, qt, static_cast<int>(d), st);
          kern.qk_block64(vb, dv, nj, dat, static_cast<int>(dv), dpt);
          std::fill(acc, acc + M, 0.0f);
          for (int j = 0; j < nj; ++j) {
            const std::int32_t jj = static_cast<std::int32_t>(j0 + j);
            for (int i = 0; i < M; ++i)
              x[i] = jj >= kbeg[i] && jj < kend[i] ? st[j * M + i] * cexp - l2[i]
                                                   : -std::numeric_limits<float>::infinity();
            kern.exp2_n(x, y, M);
            for (int i = 0; i < M; ++i) acc[i] += y[i] * dpt[j * M + i];
          }
          for (int i = 0; i < M; ++i) dot[i] += acc[i];
        }
        double* part = ws_part + blk * pl.part_doubles();
        const float lam_head = v2 ? 0.0f : static_cast<float>(head_lambda(h).value(p.lambda.lambda_init));
        for (int i = 0; i < nr; ++i) row_stats(b, h, i0 + i, lam_head, dot[i], part);
      }
    });
  }

  // ---- stage 2: per (batch, group, chunk of key blocks): dK, dV; dQ into the chunk's buffer
  {
    std::atomic<std::int64_t> next{0};
    const int nt = static_cast<int>(std::min<std::int64_t>(pl.threads, pl.units));
    const float cexp = static_cast<float>(scale * log2e);
    const int nk = v2 ? 1 : 2;
    pool.run(nt, [&](int tid) {
      constexpr std::int64_t L = kBlockN, M = kBwdBlockM;
      float* f = reinterpret_cast<float*>(ws_thread + static_cast<std::size_t>(tid) * pl.thread_bytes);
      float* kp[2]; float* kt[2]; float* dkt[2]; float* qb[2]; float* sb[2];
      kp[0] = f; f += L * dpad; kp[1] = f; f += L * dpad;
      kt[0] = f; f += d * L; kt[1] = f; f += d * L;
      float* vt = f; f += dv * L;
      dkt[0] = f; f += d * L; dkt[1] = f; f += d * L;
      float* dvt = f; f += dv * L;
      qb[0] = f; f += M * dpad; qb[1] = f; f += M * dpad;
      sb[0] = f; f += M * L; sb[1] = f; f += M * L;
      float* dpb = f; f += M * L;
      std::int32_t* lo = reinterpret_cast<std::int32_t*>(f); f += M;
      std::int32_t* hi = reinterpret_cast<std::int32_t*>(f);
      const ConstTensorRef* kv[2] = {&p.k1, &p.key2()};
      const ConstTensorRef* vv[2] = {&p.v_lo, &p.v_hi};
      const ConstTensorRef* qv[2] = {&p.q1, &p.q2};
      const TensorRef* dkv[2] = {&gr.dk1, &gr.dk2};
      const TensorRef* dvv[2] = {&gr.dv_lo, &gr.dv_hi};
      for (;;) {
        const std::int64_t u = next.fetch_add(1, std::memory_order_relaxed);
        if (u >= pl.units) break;
        const std::int64_t chunk = u % pl.nchunk, bg = u / pl.nchunk, b = bg / p.kv_heads, g = bg % p.kv_heads;
        const std::int64_t kb_end = std::min(pl.nkb, (chunk + 1) * pl.kb_per_chunk);
        for (std::int64_t kb = chunk * pl.kb_per_chunk; kb < kb_end; ++kb) {
          const std::int64_t j0 = kb * L;
          const int nj = static_cast<int>(std::min<std::int64_t>(L, S - j0));
          // pack K_c (rows and transposed) and V^T of the block
          for (int c = 0; c < nk; ++c) {
            const Elem* k = static_cast<const Elem*>(kv[c]->ptr) + b * kv[c]->stride_b + g * kv[c]->stride_h;
            std::fill(kt[c], kt[c] + d * L, 0.0f);
            for (int j = 0; j < nj; ++j) {
              const Elem* kr = k + (j0 + j) * kv[c]->stride_t;
              float* row = kp[c] + j * dpad;
              for (std::int64_t x = 0; x < d; ++x) {
                const float val = elem_to_float(kr[x]);
                row[x] = val;
                kt[c][x * L + j] = val;
              }
              for (std::int64_t x = d; x < dpad; ++x) row[x] = 0.0f;
            }
          }
          std::fill(vt, vt + dv * L, 0.0f);
          for (int hv = 0; hv < (v2 ? 1 : 2); ++hv) {
            const Elem* vb = static_cast<const Elem*>(vv[hv]->ptr) + b * vv[hv]->stride_b + g * vv[hv]->stride_h;
            for (int j = 0; j < nj; ++j) {
              const Elem* vr = vb + (j0 + j) * vv[hv]->stride_t;
              for (std::int64_t x = 0; x < d; ++x) vt[(hv * d + x) * L + j] = elem_to_float(vr[x]);
            }
          }
          std::fill(dkt[0], dkt[0] + d * L, 0.0f);
          std::fill(dkt[1], dkt[1] + d * L, 0.0f);
          std::fill(dvt, dvt + dv * L, 0.0f);
          // the rows that see a key of the block: key_end(i) > j0 and key_begin(i) < j0 + nj
          const std::int64_t ilo = first_true(0, N, [&](std::int64_t i) { return mask.key_end(i) > j0; });
          const std::int64_t ihi = first_true(ilo, N, [&](std::int64_t i) { return mask.key_begin(i) >= j0 + nj; });
          BwdTile t;
          t.nj = nj; t.d = static_cast<int>(d); t.dv = static_cast<int>(dv); t.dpad = static_cast<int>(dpad);
          t.lo = lo; t.hi = hi;
          t.q[0] = qb[0]; t.q[1] = qb[1]; t.ldq = dpad;
          t.kp[0] = kp[0]; t.kp[1] = kp[nk - 1];
          t.kt[0] = kt[0]; t.kt[1] = kt[nk - 1];
          t.vt = vt;
          t.dkt[0] = dkt[0]; t.dkt[1] = dkt[nk - 1];
          t.dvt = dvt;
          t.lddq = 2 * dpad;
          t.s[0] = sb[0]; t.s[1] = sb[1]; t.dp = dpb;
          t.c = cexp;
          t.scale = static_cast<float>(scale);
          for (std::int64_t h = g * rep; h < (g + 1) * rep; ++h) {
            const std::int64_t bh = b * H + h;
            for (std::int64_t i0 = ilo; i0 < ihi; i0 += M) {
              const int nr = static_cast<int>(std::min<std::int64_t>(M, ihi - i0));
              for (int c = 0; c < 2; ++c) {
                const Elem* q = static_cast<const Elem*>(qv[c]->ptr) + b * qv[c]->stride_b + h * qv[c]->stride_h;
                for (int i = 0; i < nr; ++i) {
                  const Elem* qr = q + (i0 + i) * qv[c]->stride_t;
                  float* row = qb[c] + i * dpad;
                  for (std::int64_t x = 0; x < d; ++x) row[x] = elem_to_float(qr[x]);
                }
              }
              t.nr = nr;
              t.full = nj == L && mask.key_begin(i0 + nr - 1) <= j0 && mask.key_end(i0) >= j0 + L;
              if (!t.full)
                for (int i = 0; i < nr; ++i) {
                  const std::int64_t a = mask.key_begin(i0 + i) - j0, e = mask.key_end(i0 + i) - j0;
                  lo[i] = static_cast<std::int32_t>(std::clamp<std::int64_t>(a, 0, nj));
                  hi[i] = static_cast<std::int32_t>(std::clamp<std::int64_t>(e, 0, nj));
                }
              t.da = ws_da + (bh * N + i0) * dv;
              t.stat = ws_stat + (bh * N + i0) * kBwdStat;
              t.dq[0] = ws_dq + (chunk * rows_per_chunk + bh * N + i0) * 2 * dpad;
              t.dq[1] = t.dq[0] + dpad;
              kern.bwd_tile(t);
            }
          }
          // write the block's dK_c and dV (every key row, zero where no query sees it)
          for (int c = 0; c < nk; ++c) {
            Elem* dk = static_cast<Elem*>(dkv[c]->ptr) + b * dkv[c]->stride_b + g * dkv[c]->stride_h;
            for (int j = 0; j < nj; ++j) {
              Elem* r = dk + (j0 + j) * dkv[c]->stride_t;
              for (std::int64_t x = 0; x < d; ++x) r[x] = Elem(dkt[c][x * L + j]);
            }
          }
          for (int hv = 0; hv < (v2 ? 1 : 2); ++hv) {
            Elem* dvb = static_cast<Elem*>(dvv[hv]->ptr) + b * dvv[hv]->stride_b + g * dvv[hv]->stride_h;
            for (int j = 0; j < nj; ++j) {
              Elem* r = dvb + (j0 + j) * dvv[hv]->stride_t;
              for (std::int64_t x = 0; x < d; ++x) r[x] = Elem(dvt[(hv * d + x) * L + j]);
            }
          }
        }
      }
    });
  }

  // ---- stage 3: dQ_c in the element type, the chunks summed in order
  {
    std::atomic<std::int64_t> next{0};
    const int nt = static_cast<int>(std::min<std::int64_t>(pl.threads, pl.blocks1));
    const TensorRef* dqv[2] = {&gr.dq1, &gr.dq2};
    pool.run(nt, [&](int) {
      for (;;) {
        const std::int64_t blk = next.fetch_add(1, std::memory_order_relaxed);
        if (blk >= pl.blocks1) break;
        const std::int64_t bh = blk / pl.nrb, rb = blk % pl.nrb, b = bh / H, h = bh % H;
        const std::int64_t i_end = std::min(N, (rb + 1) * kBwdBlockM);
        for (std::int64_t i = rb * kBwdBlockM; i < i_end; ++i) {
          const float* acc = ws_dq + (bh * N + i) * 2 * dpad;
          for (int c = 0; c < 2; ++c) {
            Elem* out = static_cast<Elem*>(dqv[c]->ptr) + b * dqv[c]->stride_b + i * dqv[c]->stride_t + h * dqv[c]->stride_h;
            for (std::int64_t x = 0; x < d; ++x) {
              float sum = acc[c * dpad + x];
              for (std::int64_t ch = 1; ch < pl.nchunk; ++ch) sum += acc[ch * rows_per_chunk * 2 * dpad + c * dpad + x];
              out[x] = Elem(sum);
            }
          }
        }
      }
    });
  }

  // ---- the side gradients, from the partial sums in block order
  if (v2) return;
  const std::int64_t nsets = p.lambda.per_head ? H : 1;
  for (std::int64_t set = 0; set < nsets; ++set) {
    double dl = 0;
    for (std::int64_t blk = 0; blk < pl.blocks1; ++blk) {
      const std::int64_t h = blk / pl.nrb % H;
      if (!p.lambda.per_head || h == set) dl += ws_part[blk * pl.part_doubles()];
    }
    const LambdaTerms<double> t = head_lambda(set);
    const std::int64_t off = set * d;
    const float* lq1 = static_cast<const float*>(p.lambda.lq1) + off;
    const float* lk1 = static_cast<const float*>(p.lambda.lk1) + off;
    const float* lq2 = static_cast<const float*>(p.lambda.lq2) + off;
    const float* lk2 = static_cast<const float*>(p.lambda.lk2) + off;
    for (std::int64_t c = 0; c < d; ++c) {
      static_cast<float*>(gr.dlq1)[off + c] = static_cast<float>(dl * t.e1 * lk1[c]);
      static_cast<float*>(gr.dlk1)[off + c] = static_cast<float>(dl * t.e1 * lq1[c]);
      static_cast<float*>(gr.dlq2)[off + c] = static_cast<float>(-dl * t.e2 * lk2[c]);
      static_cast<float*>(gr.dlk2)[off + c] = static_cast<float>(-dl * t.e2 * lq2[c]);
    }
  }
  for (int w = 0; w < 2; ++w) {
    float* dst = static_cast<float*>(w == 0 ? gr.dgamma : gr.dbeta);
    if (!dst) continue;
    for (std::int64_t c = 0; c < dv; ++c) {
      double sum = 0;
      for (std::int64_t blk = 0; blk < pl.blocks1; ++blk) sum += ws_part[blk * pl.part_doubles() + 1 + w * dv + c];
      dst[c] = static_cast<float>(sum);
    }
  }
}

/// A spot check that the saved tensors come from a forward of these params: LSE_1, LSE_2 and A
/// of two rows (the last row of the first head, the first row of the last head) recomputed in
/// double from the inputs, O(S d) work. It catches saved tensors of another call, layer, mask or
/// scale (off by far more than rounding), not a corruption of some other row. Tolerances: 1e-2
/// + 1e-3 |LSE| on the LSEs; on A, 2e-2 (1 + |lambda|) max |V| of the row's group (every kernel's
/// A is within 1e-2 of that scale, bfloat16 on AMX tiles included).
template <class Elem>
Status check_saved_rows(const BackwardParams& bp) {
  const Params& p = bp.fwd;
  const SavedTensors& sv = bp.saved;
  const std::int64_t N = p.seqlen_q, H = p.heads, d = p.head_dim, dv = p.value_dim();
  const RowMask mask = make_row_mask(p);
  const std::int64_t picks[2][3] = {{0, 0, N - 1}, {p.batch - 1, H - 1, 0}};
  auto at = [](const ConstTensorRef& t, std::int64_t b, std::int64_t j, std::int64_t h) {
    return static_cast<const Elem*>(t.ptr) + b * t.stride_b + j * t.stride_t + h * t.stride_h;
  };
  for (const auto& pk : picks) {
    const std::int64_t b = pk[0], h = pk[1], i = pk[2], g = p.kv_group(h);
    const std::int64_t row = (b * H + h) * N + i;
    const std::int64_t j0 = mask.key_begin(i), j1 = mask.key_end(i);
    double lse[2];
    std::vector<double> o[2] = {std::vector<double>(static_cast<std::size_t>(dv), 0.0),
                                std::vector<double>(static_cast<std::size_t>(dv), 0.0)};
    double vmax = 0;
    for (int c = 0; c < 2; ++c) {
      const Elem* q = at(c == 0 ? p.q1 : p.q2, b, i, h);
      const ConstTensorRef& kt = c == 0 ? p.k1 : p.key2();
      std::vector<double> sc;
      double mx = -std::numeric_limits<double>::infinity();
      for (std::int64_t j = j0; j < j1; ++j) {
        const Elem* k = at(kt, b, j, g);
        double acc = 0;
        for (std::int64_t x = 0; x < d; ++x) acc += static_cast<double>(elem_to_float(q[x])) * elem_to_float(k[x]);
        sc.push_back(acc * p.scale());
        mx = std::max(mx, sc.back());
      }
      double sum = 0;
      for (double x : sc) sum += std::exp(x - mx);
      lse[c] = sc.empty() ? -std::numeric_limits<double>::infinity() : mx + std::log(sum);
      for (std::int64_t j = j0; j < j1; ++j) {
        const double w = std::exp(sc[static_cast<std::size_t>(j - j0)] - lse[c]);
        for (int hv = 0; hv < (p.is_v2() ? 1 : 2); ++hv) {
          const Elem* v = at(hv == 0 ? p.v_lo : p.v_hi, b, j, g);
          for (std::int64_t x = 0; x < d; ++x) {
            const double vx = elem_to_float(v[x]);
            o[c][static_cast<std::size_t>(hv * d + x)] += w * vx;
            vmax = std::max(vmax, std::fabs(vx));
          }
        }
      }
    }
    double lam;
    if (p.is_v2()) {
      const float z = static_cast<const float*>(p.lambda.logits.ptr)[b * p.lambda.logits.stride_b +
                                                                    i * p.lambda.logits.stride_t + h * p.lambda.logits.stride_h];
      lam = 1.0 / (1.0 + std::exp(-static_cast<double>(z)));
    } else {
      const std::int64_t off = p.lambda.per_head ? h * d : 0;
      lam = lambda_terms<double>(static_cast<const float*>(p.lambda.lq1) + off, static_cast<const float*>(p.lambda.lk1) + off,
                                 static_cast<const float*>(p.lambda.lq2) + off, static_cast<const float*>(p.lambda.lk2) + off, d)
                .value(p.lambda.lambda_init);
    }
    const std::string where = " (b = " + std::to_string(b) + ", head " + std::to_string(h) + ", row " + std::to_string(i) + ")";
    const char* ln[2] = {"saved.lse1", "saved.lse2"};
    const void* lp[2] = {sv.lse1, sv.lse2};
    for (int c = 0; c < 2; ++c) {
      const double got = static_cast<const float*>(lp[c])[row];
      const bool both_masked = std::isinf(lse[c]) && got == lse[c];
      if (!both_masked && !(std::fabs(got - lse[c]) <= 1e-2 + 1e-3 * std::fabs(lse[c])))
        return Status::Invalid(std::string(ln[c]) + " does not match these params" + where + ": saved " + std::to_string(got) +
                               ", recomputed " + std::to_string(lse[c]) +
                               " (saved by a forward with other inputs, mask or scale?)");
    }
    const float* a = static_cast<const float*>(sv.attn) + row * dv;
    const double tol = 2e-2 * (1.0 + std::fabs(lam)) * std::max(vmax, 1e-30);
    for (std::int64_t x = 0; x < dv; ++x) {
      const double want = o[0][static_cast<std::size_t>(x)] - lam * o[1][static_cast<std::size_t>(x)];
      if (!(std::fabs(a[x] - want) <= tol))
        return Status::Invalid("saved.attn does not match these params" + where + ", channel " + std::to_string(x) +
                               ": saved " + std::to_string(a[x]) + ", recomputed " + std::to_string(want) +
                               " (saved by a forward with other inputs, lambda or mask?)");
    }
  }
  return Status::Ok();
}

}  // namespace detail

/// Bytes of workspace cpu::backward needs for these params and options (pass at least this
/// much as Options::scratch_bytes when providing Options::scratch).
inline std::size_t backward_workspace_bytes(const BackwardParams& bp, const Options& o = {}) {
  return detail::make_bwd_plan(bp.fwd, o).total;
}

/// The fused CPU backward. Validates first (validate(bp, cpu::backward_caps()): the saved
/// tensors lse1, lse2, attn, and rstd / mean where the norm has them, are required, o2 is optional
/// (null: <dA, O_2> is recomputed from LSE_2 per row, 6 N S d FLOPs more); then
/// detail::check_saved_rows recomputes two rows' LSEs and A to catch saved tensors of another
/// call); on error returns that status and writes nothing. Also rejects num_threads outside [0, kMaxThreads], a caller scratch
/// smaller than backward_workspace_bytes(bp, o), and an ISA path this CPU cannot run. Writes
/// every gradient of bp.grad (overwritten, never accumulated into).
inline Status backward(const BackwardParams& bp, const Options& o = {}) {
  Status s = validate(bp, backward_caps());
  if (!s.ok()) return s;
  if (!(s = detail::check_options(o)).ok()) return s;
  Isa isa = Isa::none;
  const Status si = select_isa(o.isa, &isa);
  if (!si.ok()) return si;
  const Status rows = bp.fwd.dtype == DType::f16    ? detail::check_saved_rows<half>(bp)
                      : bp.fwd.dtype == DType::bf16 ? detail::check_saved_rows<bfloat16>(bp)
                                                    : detail::check_saved_rows<float>(bp);
  if (!rows.ok()) return rows;
  const detail::Kernels& kern = *detail::kernels(isa);
  const detail::BwdPlan pl = detail::make_bwd_plan(bp.fwd, o);
  if (o.scratch != nullptr && o.scratch_bytes < pl.total)
    return Status::Invalid("options.scratch: " + std::to_string(o.scratch_bytes) +
                           " bytes given, cpu::backward_workspace_bytes() says " + std::to_string(pl.total) +
                           " are needed");
  std::optional<detail::PooledWorkspace> lent;
  if (!(s = detail::lend_workspace(o, pl.total, "cpu::backward", lent)).ok()) return s;
  void* ws = o.scratch != nullptr ? o.scratch : lent->get();
  switch (bp.fwd.dtype) {
    case DType::f16: detail::run_backward<half>(bp, pl, kern, ws); break;
    case DType::bf16: detail::run_backward<bfloat16>(bp, pl, kern, ws); break;
    default: detail::run_backward<float>(bp, pl, kern, ws); break;
  }
  return Status::Ok();
}

}  // namespace cpu
DIFFATTN_NAMESPACE_END
