// tests/cuda/gpu_support.hpp: what the GPU suites share (nvcc only): device copies of host
// tensors, whether a GPU is present, and a main() that reports the suite skipped without one.
#pragma once

#include <cstdint>
#include <cstdio>
#include <vector>

#include <cuda_runtime.h>
#include <doctest/doctest.h>

#include <diffattn/cuda/forward.cuh>
#include <diffattn/diffattn.hpp>

namespace dt {

inline bool have_gpu() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

/// The GPU suites' main: the doctest run (host-side checks run without a GPU too), then exit 77
/// (ctest: skipped, never passed) when no GPU ran the suite.
inline int gpu_suite_main(int argc, char** argv) {
  doctest::Context ctx(argc, argv);
  const int rc = ctx.run();
  if (rc != 0 || ctx.shouldExit()) return rc;
  if (!have_gpu()) {
    std::printf("SKIPPED (not passed): no CUDA device, the GPU suite did not run (the host-side checks passed)\n");
    return 77;
  }
  return 0;
}

/// Device copies of host byte ranges; outputs come back with copy_back(). A range inside one
/// already mirrored maps into that copy, so views that interleave in one host buffer (q1 and q2
/// of the official layout) share one device buffer: mirror their union first (mirror_views).
class DeviceMirror {
 public:
  ~DeviceMirror() {
    for (auto& b : bufs_) cudaFree(b.dev);
  }
  /// Copies [host, host + bytes) to the device (or finds the copy holding it); returns the device
  /// address of `host`.
  void* mirror(const void* host, std::size_t bytes, bool output) {
    if (host == nullptr) return nullptr;
    const auto* h = static_cast<const unsigned char*>(host);
    for (auto& b : bufs_) {
      const auto* bh = static_cast<const unsigned char*>(b.host);
      if (h >= bh && h + bytes <= bh + b.bytes) {
        b.output = b.output || output;
        return static_cast<unsigned char*>(b.dev) + (h - bh);
      }
    }
    void* dev = nullptr;
    REQUIRE(cudaMalloc(&dev, bytes) == cudaSuccess);
    REQUIRE(cudaMemcpy(dev, host, bytes, cudaMemcpyHostToDevice) == cudaSuccess);
    bufs_.push_back({const_cast<void*>(host), dev, bytes, output});
    return dev;
  }
  /// Two views of `bytes1`, `bytes2` bytes from their bases: their union first when they overlap.
  template <class Ptr>  // void* or const void*
  void mirror_views(Ptr& p1, std::size_t bytes1, Ptr& p2, std::size_t bytes2, bool output) {
    const auto a = reinterpret_cast<std::uintptr_t>(p1), b = reinterpret_cast<std::uintptr_t>(p2);
    if (p1 != nullptr && p2 != nullptr && a < b + bytes2 && b < a + bytes1) {
      const std::uintptr_t lo = a < b ? a : b, hi = a + bytes1 > b + bytes2 ? a + bytes1 : b + bytes2;
      mirror(reinterpret_cast<const void*>(lo), hi - lo, output);
    }
    p1 = static_cast<Ptr>(mirror(p1, bytes1, output));
    p2 = static_cast<Ptr>(mirror(p2, bytes2, output));
  }
  void copy_back() {
    for (auto& b : bufs_)
      if (b.output) REQUIRE(cudaMemcpy(b.host, b.dev, b.bytes, cudaMemcpyDeviceToHost) == cudaSuccess);
  }

 private:
  struct Buf { void* host; void* dev; std::size_t bytes; bool output; };
  std::vector<Buf> bufs_;
};

/// Bytes from a strided view's base to one past its last element.
template <class Ref>
std::size_t span_bytes(const Ref& r, std::int64_t B, std::int64_t T, std::int64_t heads, std::int64_t ch, std::size_t esz) {
  return static_cast<std::size_t>((B - 1) * r.stride_b + (T - 1) * r.stride_t + (heads - 1) * r.stride_h + ch) * esz;
}

namespace da = diffattn;

/// Synchronises after a launch and brings the outputs back (when it succeeded).
inline da::Status finish(da::Status s, DeviceMirror& m) {
  if (!s.ok()) return s;
  const cudaError_t err = cudaDeviceSynchronize();
  if (err != cudaSuccess) return da::Status::Internal(cudaGetErrorString(err));
  m.copy_back();
  return s;
}

/// The device copies of the side inputs (lambda vectors, gamma, beta) and, with rows > 0, of the
/// extras of `rows` rows (LSE_1, LSE_2, rstd, mean; A and O_2 of dv channels), outputs.
inline void mirror_side(DeviceMirror& m, da::Params& p, const da::Params& hp, std::size_t rows) {
  const std::int64_t H = hp.heads, d = hp.head_dim, dv = hp.value_dim();
  const std::size_t f = sizeof(float), lam = static_cast<std::size_t>((hp.lambda.per_head ? H : 1) * d) * f;
  p.lambda.lq1 = m.mirror(hp.lambda.lq1, lam, false);
  p.lambda.lk1 = m.mirror(hp.lambda.lk1, lam, false);
  p.lambda.lq2 = m.mirror(hp.lambda.lq2, lam, false);
  p.lambda.lk2 = m.mirror(hp.lambda.lk2, lam, false);
  p.norm.gamma = m.mirror(hp.norm.gamma, 2 * d * f, false);
  p.norm.beta = m.mirror(hp.norm.beta, 2 * d * f, false);
  if (rows == 0) return;
  p.extras.lse1 = m.mirror(hp.extras.lse1, rows * f, true);
  p.extras.lse2 = m.mirror(hp.extras.lse2, rows * f, true);
  p.extras.rstd = m.mirror(hp.extras.rstd, rows * f, true);
  p.extras.mean = m.mirror(hp.extras.mean, rows * f, true);
  p.extras.attn = m.mirror(hp.extras.attn, rows * dv * f, true);
  p.extras.o2 = m.mirror(hp.extras.o2, rows * dv * f, true);
}

/// The device copies of a forward's inputs (and of its outputs when `outputs`).
inline da::Params mirror_params(DeviceMirror& m, const da::Params& hp, bool outputs) {
  da::Params p = hp;
  const std::int64_t B = p.batch, N = p.seqlen_q, S = p.seqlen_k, H = p.heads, G = p.kv_heads, d = p.head_dim, dv = hp.value_dim();
  const std::size_t e = da::dtype_size(p.dtype), f = sizeof(float);
  m.mirror_views(p.q1.ptr, span_bytes(hp.q1, B, N, H, d, e), p.q2.ptr, span_bytes(hp.q2, B, N, H, d, e), false);
  const std::size_t kb = span_bytes(hp.k1, B, S, G, d, e);
  if (hp.k2.ptr != nullptr) {
    m.mirror_views(p.k1.ptr, kb, p.k2.ptr, span_bytes(hp.k2, B, S, G, d, e), false);
  } else {
    p.k1.ptr = m.mirror(hp.k1.ptr, kb, false);
  }
  if (hp.v_hi.ptr != nullptr) {
    m.mirror_views(p.v_lo.ptr, span_bytes(hp.v_lo, B, S, G, d, e), p.v_hi.ptr, span_bytes(hp.v_hi, B, S, G, d, e), false);
  } else {
    p.v_lo.ptr = m.mirror(hp.v_lo.ptr, span_bytes(hp.v_lo, B, S, G, d, e), false);
  }
  p.lambda.logits.ptr = m.mirror(hp.lambda.logits.ptr, span_bytes(hp.lambda.logits, B, N, H, 1, f), false);
  if (outputs) {
    p.out.ptr = m.mirror(hp.out.ptr, span_bytes(hp.out, B, N, H, dv, e), true);
    mirror_side(m, p, hp, static_cast<std::size_t>(B * H * N));
  } else {
    mirror_side(m, p, hp, 0);  // the side inputs only
  }
  return p;
}

/// The device copies of a serving call's inputs and outputs (Params::seq: packed queries,
/// packed or paged or dense caches, the int32 tables; the cache is an output with append_kv).
/// The tables are read on the host here (host params) to size the packed and paged views.
inline da::Params mirror_serving_params(DeviceMirror& m, const da::Params& hp) {
  da::Params p = hp;
  const da::SeqParams& sq = hp.seq;
  const std::int64_t B = p.batch, H = p.heads, G = p.kv_heads, d = p.head_dim, dv = hp.value_dim();
  const std::size_t e = da::dtype_size(p.dtype), f = sizeof(float), i4 = sizeof(std::int32_t);
  // query-side views: [B, N] dense or [total_q] packed (batch stride 0)
  const std::int64_t qb = sq.varlen_q() ? 1 : B, qt = sq.varlen_q() ? sq.total_q : p.seqlen_q;
  auto qspan = [&](const da::ConstTensorRef& r, std::int64_t heads, std::int64_t ch) {
    return qt > 0 ? span_bytes(r, qb, qt, heads, ch, e) : 0;
  };
  // key-side views: pages, packed keys, or B dense caches of seqlen_k rows
  auto kspan = [&](const da::ConstTensorRef& r, std::int64_t ch) {
    if (sq.paged()) return span_bytes(r, sq.num_pages, sq.page_size, G, ch, e);
    if (sq.varlen_k()) return span_bytes(r, 1, sq.total_k, G, ch, e);
    return span_bytes(r, B, p.seqlen_k, G, ch, e);
  };
  m.mirror_views(p.q1.ptr, qspan(hp.q1, H, d), p.q2.ptr, qspan(hp.q2, H, d), false);
  if (hp.k2.ptr != nullptr) m.mirror_views(p.k1.ptr, kspan(hp.k1, d), p.k2.ptr, kspan(hp.k2, d), sq.append_kv);
  else p.k1.ptr = m.mirror(hp.k1.ptr, kspan(hp.k1, d), sq.append_kv);
  if (hp.v_hi.ptr != nullptr) m.mirror_views(p.v_lo.ptr, kspan(hp.v_lo, d), p.v_hi.ptr, kspan(hp.v_hi, d), sq.append_kv);
  else p.v_lo.ptr = m.mirror(hp.v_lo.ptr, kspan(hp.v_lo, d), sq.append_kv);
  if (sq.append_kv) {
    m.mirror_views(p.seq.new_k1.ptr, qspan(sq.new_k1, G, d), p.seq.new_k2.ptr, qspan(sq.new_k2, G, d), false);
    m.mirror_views(p.seq.new_v_lo.ptr, qspan(sq.new_v_lo, G, d), p.seq.new_v_hi.ptr, qspan(sq.new_v_hi, G, d), false);
  }
  p.seq.cu_seqlens_q = static_cast<const std::int32_t*>(m.mirror(sq.cu_seqlens_q, (B + 1) * i4, false));
  p.seq.cu_seqlens_k = static_cast<const std::int32_t*>(m.mirror(sq.cu_seqlens_k, (B + 1) * i4, false));
  p.seq.seqused_k = static_cast<const std::int32_t*>(m.mirror(sq.seqused_k, B * i4, false));
  p.seq.block_table = static_cast<const std::int32_t*>(
      m.mirror(sq.block_table, static_cast<std::size_t>((B - 1) * sq.table_stride() + sq.max_pages) * i4, false));
  p.lambda.logits.ptr = m.mirror(hp.lambda.logits.ptr, qspan(hp.lambda.logits, H, 1) / e * f, false);
  p.out.ptr = m.mirror(hp.out.ptr, qspan(hp.out, H, dv), true);
  mirror_side(m, p, hp, static_cast<std::size_t>(H * (sq.varlen_q() ? sq.total_q : B * p.seqlen_q)));
  return p;
}

/// The CUDA forward of a serving call on device copies of host params (outputs and, with
/// append_kv, the cache copied back).
inline da::Status serving_forward_on_gpu(const da::Params& hp) {
  DeviceMirror m;
  const da::Params p = mirror_serving_params(m, hp);
  return finish(da::cuda::forward(p, nullptr), m);
}

/// The CUDA forward on device copies of host params (outputs copied back).
inline da::Status forward_on_gpu(const da::Params& hp) {
  DeviceMirror m;
  const da::Params p = mirror_params(m, hp, true);
  return finish(da::cuda::forward(p, nullptr), m);
}

}  // namespace dt
