// diffattn/core/seq.hpp: host helpers for Params::seq's serving layouts: the key-side views
// with their appended counterparts (the host backends' append below, and the CUDA append
// kernel's arguments), and the in-place append of new keys into a KV cache (reference, cpu).
#pragma once

#include <cstdint>
#include <cstring>

#include "diffattn/core/config.hpp"
#include "diffattn/core/dtype.hpp"
#include "diffattn/core/params.hpp"

DIFFATTN_NAMESPACE_BEGIN
namespace seq_detail {

/// The key-side views of the params with their appended counterparts: K_1, K_2, V's halves
/// (V2: k2 and v_hi null, skipped).
struct KeyViews {
  const ConstTensorRef* cache[4];
  const ConstTensorRef* fresh[4];
  int n = 0;
};
inline KeyViews key_views(const Params& p) {
  KeyViews v;
  const ConstTensorRef* c[4] = {&p.k1, &p.k2, &p.v_lo, &p.v_hi};
  const ConstTensorRef* f[4] = {&p.seq.new_k1, &p.seq.new_k2, &p.seq.new_v_lo, &p.seq.new_v_hi};
  for (int i = 0; i < 4; ++i) {
    if (c[i]->ptr == nullptr) continue;  // V2's k2 and v_hi
    v.cache[v.n] = c[i];
    v.fresh[v.n] = f[i];
    ++v.n;
  }
  return v;
}

/// SeqParams::append_kv: copies the N_b new keys of each sequence b (new_k1 ... new_v_hi, token
/// i at q_offset + i stride_t) into its cache rows seqused_k[b] + i, bit for bit, every KV
/// head. Validated params only (the tables checked, the cache rows inside the storage).
inline void append_new_keys(const Params& p) {
  if (!p.seq.append_kv) return;
  const std::int64_t esz = static_cast<std::int64_t>(dtype_size(p.dtype));
  const std::size_t row_bytes = static_cast<std::size_t>(p.head_dim * esz);
  const KeyViews kv = key_views(p);
  for (std::int64_t b = 0; b < p.batch; ++b) {
    const std::int64_t n = p.q_len(b), j0 = p.seq.seqused_k[b];
    for (int t = 0; t < kv.n; ++t) {
      const ConstTensorRef& dst = *kv.cache[t];
      const ConstTensorRef& src = *kv.fresh[t];
      for (std::int64_t i = 0; i < n; ++i)
        for (std::int64_t g = 0; g < p.kv_heads; ++g) {
          // the cache is written through its const view: append_kv says the caller lends it
          char* to = const_cast<char*>(static_cast<const char*>(dst.ptr)) +
                     (p.k_offset(dst, b, j0 + i) + g * dst.stride_h) * esz;
          const char* from = static_cast<const char*>(src.ptr) + (p.q_offset(src, b) + i * src.stride_t + g * src.stride_h) * esz;
          std::memcpy(to, from, row_bytes);
        }
    }
  }
}

}  // namespace seq_detail
DIFFATTN_NAMESPACE_END
