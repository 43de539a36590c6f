// validate(): every rejected case returns its error, names the argument, and writes nothing.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <set>

#include "support/problem.hpp"

using namespace dt;

namespace {

struct Case {
  const char* what;        // the rule broken
  const char* names;       // a substring the message must contain (the argument)
  da::StatusCode code;
  std::function<void(da::Params&, Problem<float>&, da::BackendCaps&)> mutate;
};

template <class T>
std::vector<unsigned char> bytes_of(const std::vector<T>& v) {
  std::vector<unsigned char> b(v.size() * sizeof(T));
  std::memcpy(b.data(), v.data(), b.size());
  return b;
}

const auto INV = da::StatusCode::invalid_argument;
const auto UNS = da::StatusCode::unsupported;
constexpr i64 kMax = std::numeric_limits<i64>::max();

}  // namespace

TEST_CASE("validate: a valid problem passes, in both layouts") {
  for (bool split : {false, true}) {
    Shape s;
    s.B = 2; s.N = 5; s.S = 7; s.H = 4; s.Hkv = 2; s.d = 8; s.mask = da::MaskKind::causal;
    Problem<float> pr(s, 1, split);
    da::Params p = pr.params();
    const da::Status st = da::validate(p, da::reference::caps());
    CHECK_MESSAGE(st.ok(), st.to_string());
    da::BackwardParams bp = pr.backward_params();
    const da::Status sb = da::validate(bp, da::reference::caps());
    CHECK_MESSAGE(sb.ok(), sb.to_string());  // official dq1/dq2 interleaving is not an overlap
  }
}

TEST_CASE("validate: every bad forward input is rejected, named, and nothing is written") {
  std::vector<Case> cases = {
      {"batch 0", "batch", INV, [](da::Params& p, auto&, auto&) { p.batch = 0; }},
      {"seqlen_q negative", "seqlen_q", INV, [](da::Params& p, auto&, auto&) { p.seqlen_q = -3; }},
      {"seqlen_k 0", "seqlen_k", INV, [](da::Params& p, auto&, auto&) { p.seqlen_k = 0; }},
      {"heads 0", "heads", INV, [](da::Params& p, auto&, auto&) { p.heads = 0; }},
      {"kv_heads 0", "kv_heads", INV, [](da::Params& p, auto&, auto&) { p.kv_heads = 0; }},
      {"head_dim 0", "head_dim", INV, [](da::Params& p, auto&, auto&) { p.head_dim = 0; }},
      {"H % Hkv != 0", "multiple of kv_heads", INV, [](da::Params& p, auto&, auto&) { p.kv_heads = 3; }},
      {"head dim not supported", "head_dim", UNS,
       [](da::Params&, auto&, da::BackendCaps& c) { c.head_dims[0] = 64; c.head_dims[1] = 128; }},
      {"head dim above max", "head_dim", UNS, [](da::Params&, auto&, da::BackendCaps& c) { c.max_head_dim = 4; }},
      {"dtype not supported", "dtype", UNS, [](da::Params&, auto&, da::BackendCaps& c) { c.dtype_mask = 0x6; }},
      {"dtype not an enum value", "dtype", INV, [](da::Params& p, auto&, auto&) { p.dtype = static_cast<da::DType>(9); }},
      {"softmax_scale NaN", "softmax_scale", INV, [](da::Params& p, auto&, auto&) { p.softmax_scale = NAN; }},
      {"softmax_scale negative", "softmax_scale", INV, [](da::Params& p, auto&, auto&) { p.softmax_scale = -0.1; }},
      {"q1 null", "q1", INV, [](da::Params& p, auto&, auto&) { p.q1.ptr = nullptr; }},
      {"q2 null", "q2", INV, [](da::Params& p, auto&, auto&) { p.q2.ptr = nullptr; }},
      {"k1 null", "k1", INV, [](da::Params& p, auto&, auto&) { p.k1.ptr = nullptr; }},
      {"k2 null", "k2", INV, [](da::Params& p, auto&, auto&) { p.k2.ptr = nullptr; }},
      {"v_lo null", "v_lo is null", INV, [](da::Params& p, auto&, auto&) { p.v_lo.ptr = nullptr; }},
      {"v_hi null", "v_hi is null", INV, [](da::Params& p, auto&, auto&) { p.v_hi.ptr = nullptr; }},
      // settings that change results have no silent default
      {"lambda_init unset", "lambda.lambda_init is unset", INV,
       [](da::Params& p, auto&, auto&) { p.lambda.lambda_init = da::LambdaParams{}.lambda_init; }},
      {"norm kind unset", "norm.kind is unset", INV, [](da::Params& p, auto&, auto&) { p.norm.kind = da::NormKind::unset; p.norm.gamma = nullptr; }},
      {"variant not an enum value", "variant", INV, [](da::Params& p, auto&, auto&) { p.variant = static_cast<da::Variant>(3); }},
      {"V1 params asking for V2 (lambda vectors set)", "lambda.lq1 is set, but DIFF V2", INV,
       [](da::Params& p, auto&, auto&) { p.variant = da::Variant::diff_v2; }},
      {"V1 with logits", "only DIFF V2", INV,
       [](da::Params& p, Problem<float>& pr, auto&) { p.lambda.logits = {pr.gamma.data(), 0, 0, 0}; }},
      {"out null", "out is null", INV, [](da::Params& p, auto&, auto&) { p.out.ptr = nullptr; }},
      {"lq1 null", "lambda.lq1", INV, [](da::Params& p, auto&, auto&) { p.lambda.lq1 = nullptr; }},
      {"lk2 null", "lambda.lk2", INV, [](da::Params& p, auto&, auto&) { p.lambda.lk2 = nullptr; }},
      {"lambda_init NaN", "lambda_init", INV, [](da::Params& p, auto&, auto&) { p.lambda.lambda_init = NAN; }},
      {"NaN in lk2", "lambda.lk2", INV, [](da::Params&, Problem<float>& pr, auto&) { pr.lk2[1] = NAN; }},
      {"inf in lq1 (per head)", "lambda.lq1", INV,
       [](da::Params& p, Problem<float>& pr, auto&) {
         pr.lq1.resize(p.heads * p.head_dim, 0.1f);
         pr.lk1.resize(pr.lq1.size(), 0.1f); pr.lq2.resize(pr.lq1.size(), 0.1f); pr.lk2.resize(pr.lq1.size(), 0.1f);
         p.lambda = {pr.lq1.data(), pr.lk1.data(), pr.lq2.data(), pr.lk2.data(), true, 0.2};
         pr.lq1.back() = INFINITY;  // last element of the last head's row
       }},
      {"eps 0", "norm.eps", INV, [](da::Params& p, auto&, auto&) { p.norm.eps = 0; }},
      {"eps negative", "norm.eps", INV, [](da::Params& p, auto&, auto&) { p.norm.eps = -1e-5; }},
      {"norm kind not an enum value", "norm.kind", INV, [](da::Params& p, auto&, auto&) { p.norm.kind = static_cast<da::NormKind>(5); }},
      {"beta with RMSNorm", "norm.beta", INV, [](da::Params& p, Problem<float>& pr, auto&) { p.norm.beta = pr.beta.data(); }},
      {"gamma with no norm", "norm.gamma", INV, [](da::Params& p, auto&, auto&) { p.norm.kind = da::NormKind::none; }},
      {"NaN in gamma", "norm.gamma", INV, [](da::Params&, Problem<float>& pr, auto&) { pr.gamma[3] = NAN; }},
      {"window sizes with no mask", "mask", INV, [](da::Params& p, auto&, auto&) { p.mask = {da::MaskKind::none, 3, -1}; }},
      {"causal with a right window", "causal contradicts", INV, [](da::Params& p, auto&, auto&) { p.mask = {da::MaskKind::causal, -1, 2}; }},
      {"causal with a left window", "causal contradicts", INV, [](da::Params& p, auto&, auto&) { p.mask = {da::MaskKind::causal, 4, 0}; }},
      {"window unbounded both sides", "both sides unbounded", INV, [](da::Params& p, auto&, auto&) { p.mask = {da::MaskKind::window, -1, -1}; }},
      {"window size below -1", "window_left", INV, [](da::Params& p, auto&, auto&) { p.mask = {da::MaskKind::window, -5, 0}; }},
      {"mask kind not an enum value", "mask.kind", INV, [](da::Params& p, auto&, auto&) { p.mask.kind = static_cast<da::MaskKind>(4); }},
      {"negative stride", "q1: strides", INV, [](da::Params& p, auto&, auto&) { p.q1.stride_t = -p.q1.stride_t; }},
      {"out overlaps itself", "out: strides make elements", INV, [](da::Params& p, auto&, auto&) { p.out.stride_h = p.head_dim; }},
      {"out overlaps input q", "out overlaps input q1", INV,
       [](da::Params& p, Problem<float>& pr, auto&) { pr.q.resize(pr.q.size() * 4); pr.out.resize(1); p = pr.params(); p.out.ptr = pr.q.data(); }},
      {"out overlaps input v (interleaved)", "out overlaps input v", INV,
       [](da::Params& p, auto&, auto&) { p.out.ptr = const_cast<void*>(p.v_lo.ptr); }},
      {"lse1 inside out", "overlaps output extras.lse1", INV,
       [](da::Params& p, Problem<float>& pr, auto&) { p.extras.lse1 = pr.out.data() + 4; }},
      {"lse2 == lse1", "extras.lse", INV, [](da::Params& p, auto&, auto&) { p.extras.lse2 = p.extras.lse1; }},
      {"attn overlaps inputs", "extras.attn overlaps input", INV,
       [](da::Params& p, Problem<float>& pr, auto&) { p.extras.attn = pr.gamma.data(); }},
      {"offsets overflow int64", "overflow", INV, [](da::Params& p, auto&, auto&) { p.k1.stride_b = kMax / 2; }},
      {"B*H*N*2d overflows", "overflow", INV,
       [](da::Params& p, auto&, auto&) { p.batch = kMax / 4; p.q1.stride_b = p.q2.stride_b = p.k1.stride_b = p.k2.stride_b = p.v_lo.stride_b = p.v_hi.stride_b = p.out.stride_b = 0; }},
      {"pointer not aligned to its element", "q2 is not aligned", INV,
       [](da::Params& p, auto&, auto&) { p.q2.ptr = static_cast<const char*>(p.q2.ptr) + 2; }},
      {"pointer not aligned as the backend needs", "k1 is not aligned to 16 bytes", INV,
       [](da::Params& p, auto&, da::BackendCaps& c) {
         c.align_bytes = 16;
         p.k1.ptr = static_cast<const float*>(p.k1.ptr) + 1;
       }},
      {"stride not aligned as the backend needs", "v_hi: strides must be multiples of 4 elements", INV,
       [](da::Params& p, auto&, da::BackendCaps& c) { c.align_bytes = 16; p.v_hi.stride_t += 1; }},
      {"sequence longer than the backend allows", "seqlen_q/seqlen_k", UNS,
       [](da::Params&, auto&, da::BackendCaps& c) { c.max_seqlen = 6; }},
      {"lambda vector misaligned", "lambda.lq2 is not aligned", INV,
       [](da::Params& p, auto&, auto&) { p.lambda.lq2 = static_cast<const char*>(p.lambda.lq2) + 1; }},
      // before these were rejected, validation itself overflowed (UB) and read far out of bounds
      {"per-head lambda: heads * head_dim overflows int64", "overflow", INV,
       [](da::Params& p, auto&, auto&) { p.kv_heads = 1; p.heads = kMax / 2; p.lambda.per_head = true; }},
      {"per-head lambda: huge heads, tensors overflow before any lambda is read", "overflow", INV,
       [](da::Params& p, auto&, auto&) { p.kv_heads = 1; p.heads = kMax / 64; p.lambda.per_head = true; }},
      // before: fp32 backends returned inf/NaN where the double reference was finite
      {"lambda: <lq1, lk1> = 100, exp overflows fp32", "<lambda.lq1, lambda.lk1> = 100", INV,
       [](da::Params&, Problem<float>& pr, auto&) {
         for (float& x : pr.lq1) x = std::sqrt(100.0f / 8);
         for (float& x : pr.lk1) x = std::sqrt(100.0f / 8);
       }},
      {"lambda: <lq2, lk2> = 90 (head 3), exp overflows fp32", "(head 3)", INV,
       [](da::Params& p, Problem<float>& pr, auto&) {
         pr.lq1.assign(p.heads * p.head_dim, 0.1f); pr.lk1 = pr.lq1; pr.lq2 = pr.lq1; pr.lk2 = pr.lq1;
         for (i64 x = 3 * p.head_dim; x < 4 * p.head_dim; ++x) pr.lq2[x] = pr.lk2[x] = std::sqrt(90.0f / 8);
         p.lambda = {pr.lq1.data(), pr.lk1.data(), pr.lq2.data(), pr.lk2.data(), true, 0.2};
       }},
      // before: accepted, and the fp32 norm of A = O_1 - lambda O_2 overflowed (inf/NaN out;
      // the two-pass CUDA scale of P became inf at |lambda| >= 2^127)
      {"lambda: e^60 past 2^40", "|lambda| must be at most 2^40", INV,
       [](da::Params&, Problem<float>& pr, auto&) {
         for (float& x : pr.lq1) x = std::sqrt(60.0f / 8);
         for (float& x : pr.lk1) x = std::sqrt(60.0f / 8);
       }},
      {"lambda: -e^30 (head 2) past -2^40", "(head 2): |lambda| must be", INV,
       [](da::Params& p, Problem<float>& pr, auto&) {
         pr.lq1.assign(p.heads * p.head_dim, 0.1f); pr.lk1 = pr.lq1; pr.lq2 = pr.lq1; pr.lk2 = pr.lq1;
         for (i64 x = 2 * p.head_dim; x < 3 * p.head_dim; ++x) pr.lq2[x] = pr.lk2[x] = std::sqrt(30.0f / 8);
         p.lambda = {pr.lq1.data(), pr.lk1.data(), pr.lq2.data(), pr.lk2.data(), true, 0.2};
       }},
      // before: a fully masked row (A = 0) gave 0 * 1/sqrt(eps) = 0 * inf = NaN in fp32
      {"eps below 1e-30", "norm.eps must be finite and >= 1e-30 (got 1e-80", INV, [](da::Params& p, auto&, auto&) { p.norm.eps = 1e-80; }},
      // serving layouts (Params::seq): a backend without them (CUDA today) names the field
      {"seqused_k on a backend without serving layouts", "seq.seqused_k: the reference backend takes the dense layout", UNS,
       [](da::Params& p, auto&, da::BackendCaps& c) {
         static const std::int32_t used[2] = {3, 7};
         p.seq.seqused_k = used;
         c.serving = false;
       }},
      {"num_splits negative", "seq.num_splits", INV, [](da::Params& p, auto&, auto&) { p.seq.num_splits = -1; }},
      {"total_q without cu_seqlens_q", "seq.total_q is set", INV, [](da::Params& p, auto&, auto&) { p.seq.total_q = 10; }},
      {"page_size without a block table", "seq.block_table is null", INV, [](da::Params& p, auto&, auto&) { p.seq.page_size = 16; }},
      {"new keys without append_kv", "seq.append_kv is false", INV, [](da::Params& p, auto&, auto&) { p.seq.new_k1 = p.k1; }},
      {"seqused_k past seqlen_k", "seq.seqused_k", INV,
       [](da::Params& p, auto&, auto&) {
         static const std::int32_t used[2] = {3, 8};  // S = 7
         p.seq.seqused_k = used;
       }},
  };
  CHECK(cases.size() >= 25);
  for (const Case& c : cases) {
    INFO("case: " << std::string(c.what));
    Shape s;
    s.B = 2; s.N = 5; s.S = 7; s.H = 4; s.Hkv = 2; s.d = 8;
    Problem<float> pr(s, 42);
    da::Params p = pr.params();
    da::BackendCaps caps = da::reference::caps();
    c.mutate(p, pr, caps);
    const auto out0 = bytes_of(pr.out), lse0 = bytes_of(pr.lse1), attn0 = bytes_of(pr.attn);
    const da::Status st = da::validate(p, caps);
    CHECK_FALSE(st.ok());
    CHECK(st.code() == c.code);
    CHECK_MESSAGE(st.message().find(c.names) != std::string::npos, "message: " << st.message());
    // the entry point returns the same status and writes nothing
    if (caps.dtype_mask == da::reference::caps().dtype_mask && caps.max_head_dim == 1024 &&
        caps.head_dims[0] == 0 && caps.align_bytes == 0 && caps.max_seqlen == da::reference::caps().max_seqlen &&
        caps.serving == da::reference::caps().serving) {
      const da::Status sf = da::reference::forward<double>(p);
      CHECK(sf.code() == st.code());
      CHECK(sf.message() == st.message());
    }
    if (pr.out.size() > 1) CHECK(bytes_of(pr.out) == out0);
    CHECK(bytes_of(pr.lse1) == lse0);
    CHECK(bytes_of(pr.attn) == attn0);
  }
}

TEST_CASE("validate: lambda is checked in the math of the element type (fp32, or double for f64)") {
  Shape s;
  s.N = 5; s.S = 7; s.d = 8;
  Problem<double> pd(s, 3);
  for (double& x : pd.lq1) x = std::sqrt(100.0 / 8);  // <lq1, lk1> = 100: finite in double, lambda e^100 < 2^488
  for (double& x : pd.lk1) x = std::sqrt(100.0 / 8);
  da::Params p = pd.params();
  CHECK(da::validate(p, da::reference::caps()).ok());
  REQUIRE(da::reference::forward<double>(p).ok());
  for (double x : pd.out) CHECK(std::isfinite(x));
  for (double& x : pd.lq1) x = std::sqrt(800.0 / 8);  // 800: exp overflows double too
  for (double& x : pd.lk1) x = std::sqrt(800.0 / 8);
  const da::Status st = da::validate(p, da::reference::caps());
  CHECK(st.code() == da::StatusCode::invalid_argument);
  CHECK(st.message().find("overflows double") != std::string::npos);
  Problem<float> pf(s, 3);
  for (float& x : pf.lq1) x = std::sqrt(80.0f / 8);  // 80: below fp32's 88.72, but lambda = e^80 > 2^40
  for (float& x : pf.lk1) x = std::sqrt(80.0f / 8);
  da::Params q = pf.params();
  const da::Status sq = da::validate(q, da::reference::caps());
  CHECK(sq.code() == da::StatusCode::invalid_argument);
  CHECK_MESSAGE(sq.message().find("|lambda| must be at most 2^40") != std::string::npos, sq.message());
  for (float& x : pf.lq1) x = std::sqrt(27.5f / 8);  // lambda = e^27.5 + 0.2 - 1 = 8.8e11 < 2^40: accepted
  for (float& x : pf.lk1) x = std::sqrt(27.5f / 8);
  CHECK(da::validate(q, da::reference::caps()).ok());
  p.norm.eps = q.norm.eps = 1e-30;  // the smallest eps accepted
  CHECK(da::validate(q, da::reference::caps()).ok());
}

TEST_CASE("validate: valid padded and interleaved output layouts are accepted") {
  Shape s;
  s.B = 2; s.N = 5; s.S = 7; s.H = 4; s.Hkv = 2; s.d = 8;
  Problem<float> pr(s, 9);
  const i64 dv = 2 * s.d, sh = dv + 8;  // heads padded by 8 elements
  std::vector<float> big(s.B * s.N * s.H * sh * 2);
  da::Params p = pr.params();
  // token stride just covers the last head: (H - 1) * sh + dv, less than H * sh
  p.out = {big.data(), s.N * ((s.H - 1) * sh + dv), (s.H - 1) * sh + dv, sh};
  const da::Status st = da::validate(p, da::reference::caps());
  CHECK_MESSAGE(st.ok(), st.to_string());
  REQUIRE(da::reference::forward<double>(p).ok());
  // a size-1 batch may have any batch stride, even one that breaks the backend's alignment
  Shape s1 = s;
  s1.B = 1;
  Problem<float> one(s1, 10);
  da::Params p1 = one.params();
  p1.q1.stride_b = 3;
  da::BackendCaps caps = da::reference::caps();
  caps.align_bytes = 16;
  const da::Status st1 = da::validate(p1, caps);
  CHECK_MESSAGE(st1.ok(), st1.to_string());
}

TEST_CASE("validate: bad backward inputs are rejected, named, and nothing is written") {
  using BCase = std::pair<const char*, std::function<void(da::BackwardParams&, Problem<float>&)>>;
  std::vector<BCase> cases = {
      {"dout is null", [](da::BackwardParams& b, auto&) { b.dout.ptr = nullptr; }},
      {"grad.dq1 is null", [](da::BackwardParams& b, auto&) { b.grad.dq1.ptr = nullptr; }},
      {"grad.dv_lo is null", [](da::BackwardParams& b, auto&) { b.grad.dv_lo.ptr = nullptr; }},
      {"grad.dv_hi is null", [](da::BackwardParams& b, auto&) { b.grad.dv_hi.ptr = nullptr; }},
      {"grad.dlk2 is null", [](da::BackwardParams& b, auto&) { b.grad.dlk2 = nullptr; }},
      {"grad.dgamma is null but the norm has that weight", [](da::BackwardParams& b, auto&) { b.grad.dgamma = nullptr; }},
      {"overlaps output grad.dq2",
       [](da::BackwardParams& b, Problem<float>& pr) { b.grad.dq2.ptr = pr.dq.data() + 1; }},
      {"grad.dk1 overlaps input k1", [](da::BackwardParams& b, Problem<float>& pr) { b.grad.dk1.ptr = pr.k.data(); }},
      {"overlaps input dout", [](da::BackwardParams& b, Problem<float>& pr) { b.grad.dv_lo.ptr = pr.dout.data(); }},
      {"grad.dlq1", [](da::BackwardParams& b, Problem<float>& pr) { b.grad.dlq1 = pr.dlk1.data(); }},
      {"head_dim must be > 0", [](da::BackwardParams& b, auto&) { b.fwd.head_dim = -1; }},
  };
  for (const auto& [name, mutate] : cases) {
    INFO("case: " << std::string(name));
    Shape s;
    s.B = 1; s.N = 3; s.S = 4; s.H = 2; s.Hkv = 1; s.d = 4;
    Problem<float> pr(s, 43);
    da::BackwardParams bp = pr.backward_params();
    mutate(bp, pr);
    const auto dq0 = bytes_of(pr.dq), dk0 = bytes_of(pr.dk), dv0 = bytes_of(pr.dv), dl0 = bytes_of(pr.dlq1);
    const da::Status st = da::reference::backward<double>(bp);
    CHECK(st.code() == da::StatusCode::invalid_argument);
    CHECK_MESSAGE(st.message().find(name) != std::string::npos, "message: " << st.message());
    CHECK(bytes_of(pr.dq) == dq0);
    CHECK(bytes_of(pr.dk) == dk0);
    CHECK(bytes_of(pr.dv) == dv0);
    CHECK(bytes_of(pr.dlq1) == dl0);
  }
}

TEST_CASE("validate: DIFF V2 params: valid ones pass, V1 fields and bad logits are rejected by name") {
  using VCase = std::pair<const char*, std::function<void(da::Params&, Problem<float>&)>>;
  const std::vector<VCase> cases = {
      {"k2 is set", [](da::Params& p, Problem<float>& pr) { p.k2 = p.k1; (void)pr; }},
      {"v_hi is set", [](da::Params& p, auto&) { p.v_hi = p.v_lo; }},
      {"lambda.lq1 is set", [](da::Params& p, Problem<float>& pr) { p.lambda.lq1 = pr.lq1.data(); }},
      {"lambda.lambda_init is set", [](da::Params& p, auto&) { p.lambda.lambda_init = 0.8; }},
      {"lambda.per_head is set", [](da::Params& p, auto&) { p.lambda.per_head = true; }},
      {"lambda.logits is null", [](da::Params& p, auto&) { p.lambda.logits.ptr = nullptr; }},
      {"lambda.logits contains NaN or infinity (at b = 1, token 3, head 2)",
       [](da::Params& p, Problem<float>& pr) { pr.logits[(1 * p.seqlen_q + 3) * p.heads + 2] = INFINITY; }},
      {"norm.kind: DIFF V2 has no per-head norm", [](da::Params& p, auto&) { p.norm.kind = da::NormKind::rms; }},
      {"out overlaps input lambda.logits",
       [](da::Params& p, Problem<float>& pr) { pr.out.resize(1); p.out.ptr = pr.logits.data(); }},
  };
  Shape s;
  s.B = 2; s.N = 5; s.S = 7; s.H = 4; s.Hkv = 2; s.d = 8; s.v2 = true;
  {
    Problem<float> pr(s, 44);
    const da::Params p = pr.params();
    CHECK(da::validate(p, da::reference::caps()).ok());
    CHECK(da::validate(p, da::cpu::caps()).ok());
  }
  for (const auto& [name, mutate] : cases) {
    INFO("case: " << std::string(name));
    Problem<float> pr(s, 44);
    da::Params p = pr.params();
    mutate(p, pr);
    const auto out0 = bytes_of(pr.out);
    const da::Status st = da::reference::forward<double>(p);
    CHECK(st.code() == da::StatusCode::invalid_argument);
    CHECK_MESSAGE(st.message().find(name) != std::string::npos, "message: " << st.message());
    CHECK(bytes_of(pr.out) == out0);
  }
  // backward: the V1 gradients that V2 does not have, and the one it adds
  const std::vector<std::pair<const char*, std::function<void(da::BackwardParams&, Problem<float>&)>>> bcases = {
      {"grad.dk2 is set", [](da::BackwardParams& b, Problem<float>& pr) { b.grad.dk2 = da::bshd(pr.dq.data(), 1, 1, 1); }},
      {"grad.dv_hi is set", [](da::BackwardParams& b, Problem<float>& pr) { b.grad.dv_hi = da::bshd(pr.dq.data(), 1, 1, 1); }},
      {"grad.dlogits is null", [](da::BackwardParams& b, auto&) { b.grad.dlogits.ptr = nullptr; }},
      {"grad.dlq1 is set", [](da::BackwardParams& b, Problem<float>& pr) { b.grad.dlq1 = pr.dlq1.data(); }},
  };
  for (const auto& [name, mutate] : bcases) {
    INFO("backward case: " << std::string(name));
    Problem<float> pr(s, 45);
    da::BackwardParams bp = pr.backward_params();
    mutate(bp, pr);
    const auto dq0 = bytes_of(pr.dq), dl0 = bytes_of(pr.dlogits);
    const da::Status st = da::reference::backward<double>(bp);
    CHECK(st.code() == da::StatusCode::invalid_argument);
    CHECK_MESSAGE(st.message().find(name) != std::string::npos, "message: " << st.message());
    CHECK(bytes_of(pr.dq) == dq0);
    CHECK(bytes_of(pr.dlogits) == dl0);
  }
}

TEST_CASE("validate: the overlap test never misses a real overlap (brute force, random layouts)") {
  // Two [2, 3, 2, c] tensors of 4-byte elements with random strides and offsets in a small
  // arena: may_overlap must be true whenever the element address sets intersect, and the exact
  // rule for equal strides must accept the interleaved cases it is meant to accept.
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> st(0, 12), off(0, 40), ch(1, 4);
  int accepted_interleaved = 0, exact = 0;
  for (int trial = 0; trial < 20000; ++trial) {
    namespace dd = da::detail;
    dd::Layout a, b;
    a.elem = b.elem = 4;
    a.channels = b.channels = ch(rng);
    const bool same = trial % 2 == 0;
    for (int k = 0; k < 3; ++k) {
      a.size[k] = b.size[k] = 1 + k % 3;
      a.stride[k] = st(rng);
      b.stride[k] = same ? a.stride[k] : st(rng);
    }
    a.addr = 4096 + 4 * off(rng);
    b.addr = 4096 + 4 * off(rng);
    REQUIRE(dd::extent(a).ok());
    REQUIRE(dd::extent(b).ok());
    std::set<std::uintptr_t> ea;
    bool truth = false;
    auto each = [](const dd::Layout& L, auto&& f) {
      for (i64 i = 0; i < L.size[0]; ++i)
        for (i64 j = 0; j < L.size[1]; ++j)
          for (i64 k = 0; k < L.size[2]; ++k)
            for (i64 c = 0; c < L.channels; ++c)
              f(L.addr + 4 * (i * L.stride[0] + j * L.stride[1] + k * L.stride[2] + c));
    };
    each(a, [&](std::uintptr_t x) { ea.insert(x); });
    each(b, [&](std::uintptr_t x) { truth = truth || ea.count(x) > 0; });
    const bool claim = dd::may_overlap(a, b);
    if (truth) REQUIRE_MESSAGE(claim, "missed an overlap at trial " << trial);
    // equal nested strides: the rule is exact (no false alarm either)
    if (same && dd::non_self_overlapping(a, /*strict=*/true)) {
      REQUIRE_MESSAGE(claim == truth, "a false overlap for equal nested layouts at trial " << trial);
      ++exact;
    }
    if (!truth && claim == false && a.hi > b.lo && b.hi > a.lo) ++accepted_interleaved;
  }
  // the exact rule is exercised, not just the byte ranges
  MESSAGE(exact << " exact cases, " << accepted_interleaved << " interleaved pairs accepted");
  CHECK(exact > 1000);
  CHECK(accepted_interleaved > 20);
}
