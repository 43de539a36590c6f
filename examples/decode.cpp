// examples/decode.cpp: the README's serving examples, run: a few decode steps over a paged bf16
// KV cache (each step appends its new key and value in place, then attends), then a ragged
// prefill batch packed FlashAttention-style; each checked against the reference's oracle on
// the same inputs. Exit code 0 when every step agrees within bf16 rounding.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <numeric>
#include <random>
#include <vector>

#include <diffattn/diffattn.hpp>

namespace da = diffattn;
using bf16 = da::bfloat16;

int main() {
  const std::int64_t B = 3, H = 8, Hkv = 2, d = 64, page_size = 16, max_pages = 8, layer = 4;
  const std::int64_t num_pages = B * max_pages;
  std::mt19937 rng(1);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  auto randv = [&](std::size_t n, float sc) {
    std::vector<bf16> v(n);
    for (auto& x : v) x = bf16(nd(rng) * sc);
    return v;
  };
  std::vector<float> lq1(d), lk1(d), lq2(d), lk2(d), gamma(2 * d, 1.0f);
  for (auto* v : {&lq1, &lk1, &lq2, &lk2})
    for (auto& x : *v) x = 0.1f * nd(rng);

  // the pools and the block table: sequence b owns pages b, b + B, b + 2B, ... (any order works)
  std::vector<bf16> k_pages(num_pages * page_size * 2 * Hkv * d), v_pages(num_pages * page_size * Hkv * 2 * d);
  std::vector<std::int32_t> table(B * max_pages), cache_len = {37, 0, 90};
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t k = 0; k < max_pages; ++k) table[b * max_pages + k] = static_cast<std::int32_t>(k * B + b);
  for (auto& x : k_pages) x = bf16(nd(rng));  // the cached keys (rows past cache_len are never read)
  for (auto& x : v_pages) x = bf16(nd(rng));
  const std::int64_t max_cache = max_pages * page_size - 4;

  int bad = 0;
  for (int step = 0; step < 4; ++step) {
    std::vector<bf16> q = randv(B * 2 * H * d, 1.0f), k_new = randv(B * 2 * Hkv * d, 1.0f), v_new = randv(B * Hkv * 2 * d, 1.0f);
    std::vector<bf16> out(B * H * 2 * d), out_ref(B * H * 2 * d);
    std::vector<bf16> k_ref = k_pages, v_ref = v_pages;  // the oracle appends into its own copy
    // --- the README's decode step
    da::Params p = da::make_official_params(B, 1, max_cache + 1, H, Hkv, d, q.data(), k_pages.data(), v_pages.data(), out.data());
    for (auto* t : {&p.k1, &p.k2, &p.v_lo, &p.v_hi}) t->stride_b = t->stride_t * page_size;  // page stride
    p.mask.kind = da::MaskKind::causal;
    p.lambda = {lq1.data(), lk1.data(), lq2.data(), lk2.data(), false, da::lambda_init_for_depth(layer)};
    p.norm.kind = da::NormKind::rms;
    p.norm.gamma = gamma.data();
    p.seq.block_table = table.data();
    p.seq.max_pages = max_pages; p.seq.page_size = page_size; p.seq.num_pages = num_pages;
    p.seq.seqused_k = cache_len.data();
    p.seq.append_kv = true;
    p.seq.new_k1 = {k_new.data(), 2 * Hkv * d, 2 * Hkv * d, 2 * d};
    p.seq.new_k2 = {k_new.data() + d, 2 * Hkv * d, 2 * Hkv * d, 2 * d};
    p.seq.new_v_lo = {v_new.data(), Hkv * 2 * d, Hkv * 2 * d, 2 * d};
    p.seq.new_v_hi = {v_new.data() + d, Hkv * 2 * d, Hkv * 2 * d, 2 * d};
    da::Status s = da::cpu::forward(p);
    // ---
    if (!s.ok()) { std::printf("decode step %d: %s\n", step, s.to_string().c_str()); return 1; }
    da::Params r = p;
    r.out.ptr = out_ref.data();
    for (auto* t : {&r.k1, &r.k2}) t->ptr = k_ref.data() + (t == &r.k2 ? d : 0);
    r.v_lo.ptr = v_ref.data();
    r.v_hi.ptr = v_ref.data() + d;
    if (!(s = da::reference::forward<double>(r)).ok()) { std::printf("reference: %s\n", s.to_string().c_str()); return 1; }
    double worst = 0, scale = 0;
    for (std::size_t i = 0; i < out.size(); ++i) {
      worst = std::max(worst, std::fabs(double(float(out[i])) - double(float(out_ref[i]))));
      scale = std::max(scale, std::fabs(double(float(out_ref[i]))));
    }
    const bool same_cache = k_pages.size() == k_ref.size() &&
                            std::equal(k_pages.begin(), k_pages.end(), k_ref.begin(), [](bf16 a, bf16 b) { return float(a) == float(b) || (a != a && b != b); });
    std::printf("decode step %d: cache lengths %d %d %d -> +1, max |out - reference| = %.3g (|out| up to %.3g)%s\n", step,
                cache_len[0], cache_len[1], cache_len[2], worst, scale, same_cache ? "" : ", caches differ");
    bad += !(worst <= 2 * 0x1p-8 * scale) || !same_cache;  // two bf16 roundings of out at most
    for (auto& c : cache_len) ++c;
  }

  // --- the README's ragged prefill batch (lengths 5, 1, 12; keys 5, 9, 12)
  const std::vector<std::int32_t> cu_q = {0, 5, 6, 18}, cu_k = {0, 5, 14, 26};
  const std::int64_t total_q = 18, total_k = 26, max_len_q = 12, max_len_k = 12;
  std::vector<bf16> q = randv(total_q * 2 * H * d, 1.0f), k = randv(total_k * 2 * Hkv * d, 1.0f), v = randv(total_k * Hkv * 2 * d, 1.0f);
  std::vector<bf16> out(total_q * H * 2 * d), out_ref(out.size());
  da::Params p = da::make_official_params(B, max_len_q, max_len_k, H, Hkv, d, q.data(), k.data(), v.data(), out.data());
  for (auto* t : {&p.q1, &p.q2, &p.k1, &p.k2, &p.v_lo, &p.v_hi}) t->stride_b = 0;
  p.out.stride_b = 0;
  p.seq.cu_seqlens_q = cu_q.data(); p.seq.total_q = total_q;
  p.seq.cu_seqlens_k = cu_k.data(); p.seq.total_k = total_k;
  p.mask.kind = da::MaskKind::causal;
  p.lambda = {lq1.data(), lk1.data(), lq2.data(), lk2.data(), false, da::lambda_init_for_depth(layer)};
  p.norm.kind = da::NormKind::rms;
  p.norm.gamma = gamma.data();
  da::Status s = da::cpu::forward(p);
  if (!s.ok()) { std::printf("varlen: %s\n", s.to_string().c_str()); return 1; }
  da::Params r = p;
  r.out.ptr = out_ref.data();
  if (!(s = da::reference::forward<double>(r)).ok()) { std::printf("reference: %s\n", s.to_string().c_str()); return 1; }
  double worst = 0, scale = 0;
  for (std::size_t i = 0; i < out.size(); ++i) {
    worst = std::max(worst, std::fabs(double(float(out[i])) - double(float(out_ref[i]))));
    scale = std::max(scale, std::fabs(double(float(out_ref[i]))));
  }
  std::printf("varlen prefill (3 sequences, 18 tokens): max |out - reference| = %.3g (|out| up to %.3g)\n", worst, scale);
  bad += !(worst <= 2 * 0x1p-8 * scale);
  std::printf("%s\n", bad ? "FAILED" : "ok");
  return bad ? 1 : 0;
}
