// diffattn/core/mask.hpp: which keys a query row sees. Host/device; no backend in it.
//
// All masks are bottom-right aligned (docs/SPEC.md): with diag = S - N, query i sits over key i + diag.
//   none:    every key
//   causal:  j <= i + diag
//   window:  i + diag - window_left <= j <= i + diag + window_right   (-1: unbounded side)
// Rows that see no key at all (e.g. causal with N > S, first N - S rows) are "fully masked".
#pragma once

#include <cstdint>

#include "diffattn/core/config.hpp"
#include "diffattn/core/params.hpp"

DIFFATTN_NAMESPACE_BEGIN

/// The mask reduced to two optional bounds around the diagonal; cheap to copy into kernels.
struct RowMask {
  std::int64_t seqlen_k = 0;
  std::int64_t diag = 0;       ///< S - N
  std::int64_t left = -1;      ///< keys allowed before the diagonal, -1: unbounded
  std::int64_t right = -1;     ///< keys allowed after the diagonal, -1: unbounded

  /// First key (inclusive) that query row i may see, clipped to [0, S].
  DIFFATTN_HD std::int64_t key_begin(std::int64_t i) const {
    if (left < 0) return 0;
    const std::int64_t b = i + diag - left;
    return b < 0 ? 0 : (b > seqlen_k ? seqlen_k : b);
  }
  /// One past the last key that query row i may see, clipped to [0, S].
  DIFFATTN_HD std::int64_t key_end(std::int64_t i) const {
    if (right < 0) return seqlen_k;
    const std::int64_t e = i + diag + right + 1;
    return e < 0 ? 0 : (e > seqlen_k ? seqlen_k : e);
  }
  DIFFATTN_HD bool visible(std::int64_t i, std::int64_t j) const {
    return j >= key_begin(i) && j < key_end(i);
  }
  /// Number of keys row i sees (0 for a fully masked row).
  DIFFATTN_HD std::int64_t row_count(std::int64_t i) const {
    const std::int64_t b = key_begin(i), e = key_end(i);
    return e > b ? e - b : 0;
  }
};

/// Reduce the params' mask to a RowMask (validate() first: it rejects contradictory windows).
/// A window side of N + S or more reaches past every key: it is stored as unbounded (-1), so the
/// index arithmetic above cannot overflow int64 whatever size the caller passes.
/// With N and S: the mask of one sequence of N queries over S keys (Params::seq's per-sequence
/// lengths, bottom-right aligned to that sequence).
inline RowMask make_row_mask(const Params& p, std::int64_t N, std::int64_t S) {
  RowMask m;
  m.seqlen_k = S;
  m.diag = S - N;
  const std::int64_t reach = N + S;  // no window side needs more
  auto side = [reach](std::int64_t w) { return w >= reach ? std::int64_t{-1} : w; };
  switch (p.mask.kind) {
    case MaskKind::none: break;
    case MaskKind::causal: m.left = -1; m.right = 0; break;
    case MaskKind::window: m.left = side(p.mask.window_left); m.right = side(p.mask.window_right); break;
  }
  return m;
}
inline RowMask make_row_mask(const Params& p) { return make_row_mask(p, p.seqlen_q, p.seqlen_k); }

/// Exact number of visible (query, key) pairs of one head: sum over rows of row_count(i).
/// Closed form per run of rows would be faster; N is at most millions, so a loop is fine.
inline std::int64_t visible_pairs(const RowMask& m, std::int64_t seqlen_q) {
  if (m.left < 0 && m.right < 0) return seqlen_q * m.seqlen_k;
  std::int64_t total = 0;
  for (std::int64_t i = 0; i < seqlen_q; ++i) total += m.row_count(i);
  return total;
}

DIFFATTN_NAMESPACE_END
