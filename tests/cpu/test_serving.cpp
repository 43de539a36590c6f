// The serving layouts of Params::seq (variable-length batches, seqused_k, paged KV caches,
// in-place append, split-KV) in cpu::forward and in the reference's oracle path, against the
// equivalent dense problems: each sequence is its own Problem (batch 1, N_b queries, S_b keys,
// official layout), and the test lays their numbers out packed and paged by its own index math
// (not Params::k_offset). Every element of out and of the packed extras is checked per sequence
// with the rule of test_forward.cpp (at most 2x the naive fp32 computation's error against the
// double reference, plus 1e-6 of the largest |value|, and one 16-bit unit roundoff for 16-bit
// outputs). Storage rows past a sequence's keys (unused cache rows and pages) hold NaN, so a
// kernel that reads a key it should not fails; outputs start poisoned. Bad tables are rejected
// with named errors and nothing written.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <random>

#include <diffattn/cpu/forward.hpp>

#include "support/serving.hpp"

using namespace dt;

namespace {

template <class Elem>
void run_serving(const Serve& s, std::uint64_t seed) {
  INFO(da::dtype_name(da::dtype_of_v<Elem>) << " seed " << seed << " " << s.str() << " path "
       << da::cpu::isa_name(da::cpu::isa()));
  const Served<Elem> proto(s, seed);
  const Expected<Elem> e = expected(proto);
  // the oracle: the reference's own serving path, the same numbers as the dense problems
  {
    Served<Elem> r(s, seed);
    da::Params p = r.params();
    const da::Status st = da::reference::forward<float>(p);
    REQUIRE_MESSAGE(st.ok(), st.to_string());
    check_served(r, e);
    if (s.append) check_append(r, proto.kc, proto.vc);
  }
  std::vector<Elem> first;
  for (int threads : {1, 2, 3}) {
    INFO("threads " << threads);
    Served<Elem> c(s, seed);
    da::Params p = c.params();
    da::cpu::Options o;
    o.num_threads = threads;
    const da::Status st = da::cpu::forward(p, o);
    REQUIRE_MESSAGE(st.ok(), st.to_string());
    check_served(c, e);
    if (s.append) check_append(c, proto.kc, proto.vc);
    Served<Elem> again(s, seed);
    da::Params p2 = again.params();
    REQUIRE(da::cpu::forward(p2, o).ok());
    CHECK(std::memcmp(c.out.data(), again.out.data(), c.out.size() * sizeof(Elem)) == 0);
  }
}

}  // namespace

TEST_CASE("serving: ragged varlen batches (empty and length-1 sequences), every mask, dense keys with seqused_k") {
  std::uint64_t seed = 9100;
  for (da::MaskKind m : {da::MaskKind::none, da::MaskKind::causal, da::MaskKind::window}) {
    Serve s;
    s.nq = {5, 0, 1, 70, 3};
    s.nk = {9, 4, 1, 130, 0};
    s.mask = m;
    if (m == da::MaskKind::window) { s.wl = 6; s.wr = 2; }
    run_serving<float>(s, ++seed);
    s.varlen_k = true;
    run_serving<da::bfloat16>(s, ++seed);
  }
}

TEST_CASE("serving: paged KV, pages in random order and shared, page sizes 1, 16, 64, 100") {
  std::uint64_t seed = 9200;
  for (i64 ps : {1, 16, 64, 100}) {
    Serve s;
    s.nq = {1, 2, 1, 4};
    s.nk = {300, 333, 129, 64};
    s.page_size = ps;
    s.Hkv = 1; s.H = 4;  // GQA 4:1
    s.share_page = ps <= 64;
    run_serving<float>(s, ++seed);
    s.mask = da::MaskKind::none;
    run_serving<da::half>(s, ++seed);
  }
}

TEST_CASE("serving: in-place append (decode and chunked prefill), paged and dense, V1 and V2") {
  std::uint64_t seed = 9300;
  Serve s;
  s.nq = {1, 3, 1, 8};
  s.nk = {200, 65, 1, 8};  // the third sequence's cache is empty before its first token
  s.append = true;
  s.page_size = 16;
  run_serving<float>(s, ++seed);
  run_serving<da::bfloat16>(s, ++seed);
  s.page_size = 0;  // dense cache [B, capacity]
  s.varlen_q = false;
  s.nq = {2, 2, 2, 2};
  s.nk = {40, 2, 90, 7};
  run_serving<float>(s, ++seed);
  s.v2 = true;
  s.varlen_q = true;
  s.page_size = 32;
  s.nq = {1, 5};
  s.nk = {77, 40};
  run_serving<float>(s, ++seed);
}

TEST_CASE("serving: GQA 1:1 to 8:1, norms, V2, split-KV decoding (num_splits)") {
  std::uint64_t seed = 9400;
  for (i64 rep : {1, 2, 8}) {
    Serve s;
    s.H = 8; s.Hkv = 8 / rep;
    s.nq = {1, 1, 2};
    s.nk = {700, 1, 257};
    s.page_size = 64;
    s.norm = rep == 2 ? da::NormKind::group : da::NormKind::rms;
    s.beta = true;
    s.num_splits = rep == 8 ? 5 : 0;
    run_serving<float>(s, ++seed);
  }
  Serve s;
  s.v2 = true;
  s.nq = {3, 1, 0, 6};
  s.nk = {50, 1000, 3, 6};
  s.varlen_k = true;
  s.num_splits = 64;  // more parts than key blocks: empty parts merge to nothing
  run_serving<float>(s, ++seed);
  s.d = 64;
  s.num_splits = 2;
  run_serving<da::bfloat16>(s, ++seed);
  s.seqused = false;  // the lengths of cu_seqlens_k are the keys
  s.num_splits = 0;
  run_serving<da::half>(s, ++seed);
}

TEST_CASE("serving: bad tables are rejected with named errors and nothing is written") {
  Serve s;
  s.nq = {1, 2, 3};
  s.nk = {20, 33, 3};
  s.page_size = 8;
  s.append = true;
  auto expect_rejected = [&](const char* what, const std::function<void(Served<float>&, da::Params&)>& mutate,
                             const char* needle) {
    INFO(what);
    for (int backend = 0; backend < 2; ++backend) {
      Served<float> c(s, 77);
      da::Params p = c.params();
      mutate(c, p);
      const std::vector<float> kc0 = c.kc, out0 = c.out;
      const da::Status st = backend == 0 ? da::cpu::forward(p) : da::reference::forward<double>(p);
      REQUIRE_FALSE(st.ok());
      CHECK_MESSAGE(st.message().find(needle) != std::string::npos, st.to_string());
      CHECK(std::memcmp(c.kc.data(), kc0.data(), kc0.size() * sizeof(float)) == 0);  // no append
      CHECK(std::memcmp(c.out.data(), out0.data(), out0.size() * sizeof(float)) == 0);
    }
  };
  expect_rejected("page out of range", [](Served<float>& c, da::Params&) { c.table[1 * c.max_pages + 2] = static_cast<std::int32_t>(c.num_pages); },
                  "seq.block_table[1][2]");
  expect_rejected("negative page", [](Served<float>& c, da::Params&) { c.table[0] = -1; }, "seq.block_table[0][0]");
  expect_rejected("lengths past the table", [](Served<float>& c, da::Params&) { c.used[1] = static_cast<std::int32_t>(c.max_pages * 8); },
                  "seq.seqused_k");
  expect_rejected("cu_seqlens_q not increasing", [](Served<float>& c, da::Params&) { c.cu_q[2] = c.cu_q[1] - 1; },
                  "seq.cu_seqlens_q");
  expect_rejected("cu_seqlens_q from 1", [](Served<float>& c, da::Params&) { c.cu_q[0] = 1; }, "seq.cu_seqlens_q[0]");
  expect_rejected("total_q wrong", [](Served<float>&, da::Params& p) { p.seq.total_q += 1; }, "seq.total_q");
  expect_rejected("a sequence longer than seqlen_q", [](Served<float>&, da::Params& p) { p.seqlen_q = 2; }, "seqlen_q");
  expect_rejected("S_b above seqlen_k", [](Served<float>&, da::Params& p) { p.seqlen_k = 30; }, "seqlen_k");
  expect_rejected("negative seqused_k", [](Served<float>& c, da::Params&) { c.used[2] = -1; }, "seq.seqused_k");
  expect_rejected("append without seqused_k", [](Served<float>&, da::Params& p) { p.seq.seqused_k = nullptr; }, "seq.append_kv");
  expect_rejected("both cu_seqlens_k and a table", [](Served<float>& c, da::Params& p) {
    p.seq.cu_seqlens_k = c.cu_q.data(); p.seq.total_k = 6; }, "seq.cu_seqlens_k");
  expect_rejected("page_size 0", [](Served<float>&, da::Params& p) { p.seq.page_size = 0; }, "seq.page_size");
  expect_rejected("num_splits too many", [](Served<float>&, da::Params& p) { p.seq.num_splits = 65; }, "seq.num_splits");
  expect_rejected("new keys missing", [](Served<float>&, da::Params& p) { p.seq.new_v_hi = {}; }, "seq.new_v_hi");
  expect_rejected("new keys inside the cache", [](Served<float>& c, da::Params& p) { p.seq.new_k1.ptr = c.kc.data(); },
                  "overlaps");
  // the backward takes the dense layout only
  Served<float> c(s, 78);
  da::BackwardParams bp;
  bp.fwd = c.params();
  const da::Status st = da::reference::backward<double>(bp);
  CHECK_MESSAGE(st.code() == da::StatusCode::unsupported, st.to_string());
  CHECK(st.message().find("fwd.seq") != std::string::npos);
}
