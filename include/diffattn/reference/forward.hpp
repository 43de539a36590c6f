// diffattn/reference/forward.hpp: the naive forward. Slow, obvious, trusted.
//
//   Status s = diffattn::reference::forward<double>(params);   // accumulate in double
//
// Materialises the [N, S] scores of each (batch, diff head) with Eigen, in precision Acc
// (float or double; double for checking other backends), for f32, f16, bf16 and f64 elements.
// Writes out and every extra requested in params.extras. Single-threaded.
#pragma once

#include <algorithm>
#include <new>
#include <vector>
#include <string>

#include <cstdint>

#include "diffattn/core/params.hpp"
#include "diffattn/core/seq.hpp"
#include "diffattn/core/status.hpp"
#include "diffattn/core/validate.hpp"
#include "diffattn/reference/head.hpp"

DIFFATTN_NAMESPACE_BEGIN
namespace reference {

/// What the reference accepts: every element type, any head dim up to 1024, host memory.
inline BackendCaps caps() {
  BackendCaps c;
  c.name = "reference";
  c.dtype_mask = 0xF;
  c.max_head_dim = 1024;
  c.host_readable = true;
  c.serving = true;
  return c;
}

namespace detail {

/// The reference materialises the N x S scores of a head (and K, V as matrices): when that
/// cannot be allocated it says so. The first head's allocations fail before anything is
/// written (each head allocates the same sizes before it stores).
inline Status out_of_memory(const Params& p) {
  return Status::Unsupported("reference: out of memory for one head's N x S matrices (N = " +
                             std::to_string(p.seqlen_q) + ", S = " + std::to_string(p.seqlen_k) +
                             "): the reference materialises them; cpu::forward streams them");
}

template <class Elem, class Acc>
void forward_impl(const Params& p) {
  using P = param_t<Elem>;
  const std::int64_t N = p.seqlen_q, H = p.heads, dv = p.value_dim();
  const Acc out_scale = static_cast<Acc>(p.out_scale());
  const ForwardExtras& x = p.extras;
  for (std::int64_t b = 0; b < p.batch; ++b) {
    for (std::int64_t h = 0; h < H; ++h) {
      const HeadForward<Acc> f = head_forward<Elem, Acc>(p, b, h);
      store_head<Elem>(p.out, b, h, Mat<Acc>(out_scale * f.y));
      const std::int64_t row0 = (b * H + h) * N;  // first row of this head in [B, H, N]
      for (std::int64_t i = 0; i < N; ++i) {
        if (x.lse1) static_cast<P*>(x.lse1)[row0 + i] = static_cast<P>(f.lse1(i));
        if (x.lse2) static_cast<P*>(x.lse2)[row0 + i] = static_cast<P>(f.lse2(i));
        if (x.rstd) static_cast<P*>(x.rstd)[row0 + i] = static_cast<P>(f.rstd(i));
        if (x.mean) static_cast<P*>(x.mean)[row0 + i] = static_cast<P>(f.mean(i));
        for (std::int64_t c = 0; c < dv; ++c) {
          if (x.attn) static_cast<P*>(x.attn)[(row0 + i) * dv + c] = static_cast<P>(f.a(i, c));
          if (x.o2) static_cast<P*>(x.o2)[(row0 + i) * dv + c] = static_cast<P>(f.o2(i, c));
        }
      }
    }
  }
}

/// The serving layouts (Params::seq), in the oracle's form: the append first, then each
/// sequence as its own dense problem of batch 1 (N_b queries, S_b keys gathered into contiguous
/// rows, the mask aligned to its own S_b - N_b), its rows of the extras written where
/// Params::row_index() says. What every other backend's paged and varlen paths are checked by.
template <class Elem, class Acc>
void forward_seq_impl(const Params& p) {
  using P = param_t<Elem>;
  seq_detail::append_new_keys(p);
  const std::int64_t H = p.heads, G = p.kv_heads, d = p.head_dim, dv = p.value_dim();
  const Acc out_scale = static_cast<Acc>(p.out_scale());
  const ForwardExtras& x = p.extras;
  std::vector<Elem> gathered[4];
  for (std::int64_t b = 0; b < p.batch; ++b) {
    const std::int64_t N = p.q_len(b), S = p.k_len(b);
    if (N == 0) continue;
    Params ps = p;
    ps.seq = SeqParams{};
    ps.batch = 1;
    ps.seqlen_q = N;
    ps.seqlen_k = S;
    ps.extras = {};
    auto shift = [&](auto& t) { t.ptr = static_cast<const Elem*>(t.ptr) + p.q_offset(t, b); t.stride_b = 0; };
    shift(ps.q1);
    shift(ps.q2);
    ps.out.ptr = static_cast<Elem*>(p.out.ptr) + p.q_offset(p.out, b);
    ps.out.stride_b = 0;
    if (p.is_v2()) {
      ps.lambda.logits.ptr = static_cast<const P*>(p.lambda.logits.ptr) + p.q_offset(p.lambda.logits, b);
      ps.lambda.logits.stride_b = 0;
    }
    // K_1, K_2, V's halves of this sequence, contiguous [S, G, d]
    ConstTensorRef* to[4] = {&ps.k1, &ps.k2, &ps.v_lo, &ps.v_hi};
    const ConstTensorRef* from[4] = {&p.k1, &p.k2, &p.v_lo, &p.v_hi};
    for (int t = 0; t < 4; ++t) {
      if (from[t]->ptr == nullptr) continue;
      std::vector<Elem>& buf = gathered[t];
      buf.assign(static_cast<std::size_t>(std::max<std::int64_t>(S, 1) * G * d), Elem{});
      for (std::int64_t j = 0; j < S; ++j)
        for (std::int64_t g = 0; g < G; ++g) {
          const Elem* src = static_cast<const Elem*>(from[t]->ptr) + p.k_offset(*from[t], b, j) + g * from[t]->stride_h;
          std::copy(src, src + d, buf.data() + (j * G + g) * d);
        }
      *to[t] = {buf.data(), 0, G * d, d};
    }
    for (std::int64_t h = 0; h < H; ++h) {
      const HeadForward<Acc> f = head_forward<Elem, Acc>(ps, 0, h);
      store_head<Elem>(ps.out, 0, h, Mat<Acc>(out_scale * f.y));
      for (std::int64_t i = 0; i < N; ++i) {
        const std::int64_t r = p.row_index(b, h, i);
        if (x.lse1) static_cast<P*>(x.lse1)[r] = static_cast<P>(f.lse1(i));
        if (x.lse2) static_cast<P*>(x.lse2)[r] = static_cast<P>(f.lse2(i));
        if (x.rstd) static_cast<P*>(x.rstd)[r] = static_cast<P>(f.rstd(i));
        if (x.mean) static_cast<P*>(x.mean)[r] = static_cast<P>(f.mean(i));
        for (std::int64_t c = 0; c < dv; ++c) {
          if (x.attn) static_cast<P*>(x.attn)[r * dv + c] = static_cast<P>(f.a(i, c));
          if (x.o2) static_cast<P*>(x.o2)[r * dv + c] = static_cast<P>(f.o2(i, c));
        }
      }
    }
  }
}

}  // namespace detail

/// The reference forward. Validates first; on error returns the status and writes nothing.
/// Acc: the accumulation type, float or double.
template <class Acc = double>
Status forward(const Params& p) {
  static_assert(std::is_same_v<Acc, float> || std::is_same_v<Acc, double>,
                "reference::forward<Acc>: Acc must be float or double");
  Status s = validate(p, caps());
  if (!s.ok()) return s;
  try {
    visit_dtype(p.dtype, [&](auto elem) {
      if (p.seq.any())
        detail::forward_seq_impl<decltype(elem), Acc>(p);
      else
        detail::forward_impl<decltype(elem), Acc>(p);
    });
  } catch (const std::bad_alloc&) {  // no exception leaves a public entry point
    return detail::out_of_memory(p);
  }
  return Status::Ok();
}

}  // namespace reference
DIFFATTN_NAMESPACE_END
