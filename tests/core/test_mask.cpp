// RowMask and the FLOP count against docs/SPEC.md's mask predicates, brute force.
#include <doctest/doctest.h>

#include "support/problem.hpp"

using namespace dt;

TEST_CASE("RowMask == docs/SPEC.md's predicate for every (i, j), random shapes and windows") {
  std::mt19937 rng(11);
  std::uniform_int_distribution<int> len(1, 40), win(-1, 12), kind(0, 2);
  for (int trial = 0; trial < 3000; ++trial) {
    Shape s;
    s.N = len(rng); s.S = len(rng);
    s.mask = static_cast<da::MaskKind>(kind(rng));
    if (s.mask == da::MaskKind::window) {
      do { s.wl = win(rng); s.wr = win(rng); } while (s.wl < 0 && s.wr < 0);
    }
    da::Params p;
    p.seqlen_q = s.N; p.seqlen_k = s.S;
    p.mask = {s.mask, s.wl, s.wr};
    const da::RowMask m = da::make_row_mask(p);
    const auto vis = spec_mask(s);
    i64 pairs = 0;
    for (i64 i = 0; i < s.N; ++i) {
      i64 row = 0;
      for (i64 j = 0; j < s.S; ++j) {
        REQUIRE_MESSAGE(m.visible(i, j) == vis(i, j), s.str() << " i=" << i << " j=" << j);
        row += vis(i, j);
      }
      REQUIRE(m.row_count(i) == row);
      REQUIRE(m.key_begin(i) >= 0);
      REQUIRE(m.key_end(i) <= s.S);
      pairs += row;
    }
    REQUIRE(da::visible_pairs(m, s.N) == pairs);
  }
}

TEST_CASE("FLOP count: 12 N S d per diff head, exact under masks") {
  da::Params p;
  p.batch = 3; p.heads = 8; p.kv_heads = 2; p.head_dim = 64; p.seqlen_q = 2048; p.seqlen_k = 2048;
  CHECK(da::forward_flops(p) == 12.0 * 2048 * 2048 * 64 * 3 * 8);
  p.mask.kind = da::MaskKind::causal;  // N (N + 1) / 2 pairs
  CHECK(da::forward_flops(p) == 12.0 * (2048.0 * 2049 / 2) * 64 * 3 * 8);
  p.seqlen_q = 1; p.seqlen_k = 4096;   // decoding: the one row sees every key
  CHECK(da::forward_flops(p) == 12.0 * 4096 * 64 * 3 * 8);
  p.seqlen_q = 10; p.seqlen_k = 4;     // N > S causal: rows 0-5 see nothing, row 6+r sees r+1
  CHECK(da::forward_flops(p) == 12.0 * (1 + 2 + 3 + 4) * 64 * 3 * 8);
  CHECK(da::backward_flops(p) == 20.0 * (1 + 2 + 3 + 4) * 64 * 3 * 8);  // docs/SPEC.md: 20 N S d
  // a diff head at d = 64 costs 1.5 ordinary heads at D = 128 (4 N S D): docs/SPEC.md
  p.mask.kind = da::MaskKind::none; p.seqlen_q = p.seqlen_k = 1000; p.batch = 1; p.heads = 1;
  CHECK(da::forward_flops(p) == 1.5 * (4.0 * 1000 * 1000 * 128));
}

TEST_CASE("make_diffllama_params and make_diff_v2_params: strides of their layouts") {
  // DiffLlama: q [B, N, Hq, d], k and v [B, S, Hkvq, d]: Hq = 8 -> H = 4, Hkvq = 4 -> Hkv = 2
  std::vector<float> q(2 * 5 * 8 * 64), k(2 * 7 * 4 * 64), v(2 * 7 * 4 * 64), o(2 * 5 * 4 * 128), z(2 * 5 * 4);
  const da::Params p = da::make_diffllama_params<float>(2, 5, 7, 8, 4, 64, q.data(), k.data(), v.data(), o.data());
  CHECK(p.heads == 4);
  CHECK(p.kv_heads == 2);
  CHECK(p.q1.stride_t == 8 * 64);
  CHECK(p.q1.stride_h == 64);
  CHECK(static_cast<const float*>(p.q2.ptr) - q.data() == 4 * 64);   // query head i + H
  CHECK(static_cast<const float*>(p.k2.ptr) - k.data() == 2 * 64);   // KV head g + Hkvq / 2
  CHECK(static_cast<const float*>(p.v_lo.ptr) == v.data());
  CHECK(static_cast<const float*>(p.v_hi.ptr) - v.data() == 2 * 64);
  CHECK(p.v_hi.stride_t == 4 * 64);
  CHECK(p.v_hi.stride_h == 64);
  CHECK(p.out.stride_t == 4 * 128);
  CHECK(p.value_dim() == 128);
  // DIFF V2: q [B, N, 2H, d], k and v [B, S, Hkv, d], logits [B, N, H], out [B, N, H, d]
  const da::Params p2 = da::make_diff_v2_params<float>(2, 5, 7, 4, 2, 64, q.data(), k.data(), v.data(), z.data(), o.data());
  CHECK(p2.is_v2());
  CHECK(p2.value_dim() == 64);
  CHECK(p2.q1.stride_h == 128);
  CHECK(static_cast<const float*>(p2.q2.ptr) - q.data() == 64);
  CHECK(p2.k1.stride_t == 2 * 64);
  CHECK(p2.k2.ptr == nullptr);
  CHECK(p2.key2().ptr == p2.k1.ptr);
  CHECK(p2.v_hi.ptr == nullptr);
  CHECK(p2.out.stride_t == 4 * 64);
  CHECK(p2.lambda.logits.stride_t == 4);
  CHECK(p2.out_scale() == 1.0);
  CHECK(p2.norm_kind() == da::NormKind::none);
  // V2's count: 8 d per visible pair and head (two Q K^T and two P V of d channels)
  da::Params f = p2;
  f.seqlen_q = f.seqlen_k = 1000; f.batch = 1; f.heads = 1;
  CHECK(da::forward_flops(f) == 8.0 * 1000 * 1000 * 64);
  CHECK(da::backward_flops(f) == 16.0 * 1000 * 1000 * 64);
}

TEST_CASE("make_official_params: strides of the interleaved layout") {
  std::vector<float> q(2 * 5 * 8 * 64), k(2 * 7 * 4 * 64), v(2 * 7 * 2 * 128), o(2 * 5 * 4 * 128);
  const da::Params p = da::make_official_params<float>(2, 5, 7, 4, 2, 64, q.data(), k.data(), v.data(), o.data());
  CHECK(p.q1.stride_b == 5 * 8 * 64);
  CHECK(p.q1.stride_t == 8 * 64);
  CHECK(p.q1.stride_h == 128);  // diff head h: query heads 2h, 2h+1
  CHECK(static_cast<const float*>(p.q2.ptr) - static_cast<const float*>(p.q1.ptr) == 64);
  CHECK(p.k1.stride_t == 4 * 64);
  CHECK(p.v_lo.stride_t == 2 * 128);
  CHECK(p.v_hi.stride_t == 2 * 128);
  CHECK(static_cast<const float*>(p.v_hi.ptr) - static_cast<const float*>(p.v_lo.ptr) == 64);  // set_v
  CHECK(p.out.stride_t == 4 * 128);
  CHECK(p.dtype == da::DType::f32);
  CHECK(p.n_rep() == 2);
  CHECK(p.kv_group(3) == 1);
  CHECK(p.scale() == doctest::Approx(0.125));
}

TEST_CASE("window sides of N + S or more (even INT64_MAX) mean unbounded, without overflow") {
  for (i64 big : {i64{40}, i64{1} << 40, std::numeric_limits<i64>::max()}) {
    da::Params p;
    p.seqlen_q = 17; p.seqlen_k = 23;
    p.mask = {da::MaskKind::window, big, 0};  // = causal
    const da::RowMask m = da::make_row_mask(p);
    da::Params c = p;
    c.mask = {da::MaskKind::causal, -1, -1};
    const da::RowMask mc = da::make_row_mask(c);
    for (i64 i = 0; i < p.seqlen_q; ++i) {
      REQUIRE(m.key_begin(i) == mc.key_begin(i));
      REQUIRE(m.key_end(i) == mc.key_end(i));
    }
    p.mask = {da::MaskKind::window, 3, big};  // right side unbounded
    const da::RowMask m2 = da::make_row_mask(p);
    for (i64 i = 0; i < p.seqlen_q; ++i) REQUIRE(m2.key_end(i) == p.seqlen_k);
  }
}
