// diffattn/cpu/forward.hpp: the tiled CPU forward (FlashAttention-style, fully fused).
//
//   diffattn::cpu::Options opt;
//   opt.num_threads = 4;                         // 0: std::thread::hardware_concurrency()
//   diffattn::Status s = diffattn::cpu::forward(params, opt);
//
// Same params and results as reference::forward, with O(N) extra memory: blocks of kBlockM = 128
// queries (64 on AMX) stream the visible blocks of kBlockN = 64 keys once, with both online softmaxes
// fused, and the lambda combination, the norm, gamma and (1 - lambda_init) in the epilogue
// (cpu/detail/item.hpp, cpu/detail/algorithm.inl). Math is fp32 for every element type: each
// key block of K_1, K_2, V is copied (half and bfloat16 widened exactly) into a per-thread
// scratch with padded rows; except that bfloat16 on AMX tiles, and bfloat16 decode items (at
// most 16 query rows per sequence) on the avx512bf16 path, multiply bf16 pairs with fp32 sums
// and round P to bf16 for P V (bf16_rounds_p). The inner loops are compiled for every instruction set the target
// has (cpu/isa/), whatever the includer's flags, and the best one the CPU runs is chosen at
// run time (cpu/isa.hpp; Options::isa or DIFFATTN_CPU_ISA force one).
//
// Parallel over batch x heads x query blocks (dynamic scheduling, largest items first; each
// item is computed by one thread in a fixed order, so results are bitwise identical run to run
// and, when no split is made, for every thread count). When there are fewer items than 2 x
// threads (decoding, short prompts), the keys of each query block are split into up to
// 4 x threads / items parts whose partial softmax states are merged in a fixed order
// (deterministic for a fixed thread count).
//
// Memory: per thread O(kBlockM * d) floats of scratch (about 0.6 MiB at d = 128), plus, when
// keys are split, one state per split; no allocation per call once the pool's workspaces have
// grown (or none at all with Options::scratch).
//
// Thread safety: cpu::forward may be called from several threads at once (one per request or
// model replica); the calls run concurrently, sharing the pool's workers, each with its own
// workspace, and each result is the same bits it would be alone.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cmath>
#include <optional>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "diffattn/core/config.hpp"
#include "diffattn/core/dtype.hpp"
#include "diffattn/core/mask.hpp"
#include "diffattn/core/params.hpp"
#include "diffattn/core/seq.hpp"
#include "diffattn/core/status.hpp"
#include "diffattn/core/validate.hpp"
#include "diffattn/cpu/detail/item.hpp"
#include "diffattn/cpu/detail/pool.hpp"
#include "diffattn/cpu/isa.hpp"

DIFFATTN_NAMESPACE_BEGIN
namespace cpu {

/// Run options of cpu::forward.
struct Options {
  /// Threads to run on; 0: std::thread::hardware_concurrency(). Results are bitwise
  /// reproducible for a fixed value.
  /// At most kMaxThreads.
  int num_threads = 0;
  /// Optional caller workspace of at least workspace_bytes(params, options) bytes (any
  /// alignment). nullptr: a workspace owned by the library's thread pool, kept between calls.
  void* scratch = nullptr;
  /// Size of `scratch` in bytes.
  std::size_t scratch_bytes = 0;
  /// Instruction-set path (cpu/isa.hpp); Isa::automatic: the environment variable
  /// DIFFATTN_CPU_ISA if set, else the best this CPU supports. A path the CPU cannot run is an
  /// error (unsupported), not a fallback.
  Isa isa = Isa::automatic;
};

/// The largest Options::num_threads accepted.
inline constexpr int kMaxThreads = 4096;

namespace detail {
/// The checks of Options shared by cpu::forward and cpu::backward that need no problem.
inline Status check_options(const Options& o) {
  if (o.num_threads < 0 || o.num_threads > kMaxThreads)
    return Status::Invalid("options.num_threads = " + std::to_string(o.num_threads) + ": must be in [0, " +
                           std::to_string(kMaxThreads) + "] (0: hardware concurrency)");
  return Status::Ok();
}
/// Borrows `bytes` of workspace from the pool into `lent` unless the caller brought scratch.
inline Status lend_workspace(const Options& o, std::size_t bytes, const char* entry,
                             std::optional<PooledWorkspace>& lent) {
  if (o.scratch != nullptr) return Status::Ok();
  try {
    lent.emplace(ThreadPool::instance(), bytes);
  } catch (const std::bad_alloc&) {
    return Status::Unsupported(std::string(entry) + ": cannot allocate its " + std::to_string(bytes) +
                               "-byte workspace (pass options.scratch)");
  }
  return Status::Ok();
}
}  // namespace detail

/// What the CPU backend accepts: f32, f16 and bf16 elements, any head dim up to 256.
inline BackendCaps caps() {
  BackendCaps c;
  c.name = "cpu";
  c.dtype_mask = (1u << static_cast<int>(DType::f32)) | (1u << static_cast<int>(DType::f16)) |
                 (1u << static_cast<int>(DType::bf16));
  c.max_head_dim = 256;
  c.host_readable = true;
  c.max_seqlen = std::int64_t{1} << 30;  // key indices inside a work item are int
  c.serving = true;
  return c;
}

namespace detail {

/// How one call is cut up: threads, key splits, workspace.
struct Plan {
  int threads = 1;
  int nsplit = 1;
  std::int64_t pack = 1;   ///< query heads per work item (Ctx::pack)
  std::int64_t nqb = 0;    ///< query blocks of the longest sequence
  std::int64_t blocks = 0; ///< (sequence, query block) pairs: B * nqb, or their sum over varlen sequences
  std::int64_t units = 0;  ///< H * blocks work units (before key splits)
  std::vector<std::int64_t> qb_prefix;  ///< varlen queries: first block of each sequence (B + 1)
  /// (sequence b, query block qb) of block t: qb-major when dense, sequence-major when varlen.
  void block_of(std::int64_t t, std::int64_t batch, std::int64_t* b, std::int64_t* qb) const {
    if (qb_prefix.empty()) { *qb = t / batch; *b = t % batch; return; }
    *b = static_cast<std::int64_t>(std::upper_bound(qb_prefix.begin(), qb_prefix.end(), t) - qb_prefix.begin()) - 1;
    *qb = t - qb_prefix[static_cast<std::size_t>(*b)];
  }
  Geometry geo;
  std::size_t thread_bytes = 0, split_bytes = 0;
  std::size_t bytes() const { return 64 + static_cast<std::size_t>(threads) * thread_bytes + split_bytes; }
};

/// Query heads per work item (Ctx::pack) on path isa with bm rows per item.
/// GQA packing: with fewer query tokens than a column group (decoding, speculative decoding),
/// the n_rep heads of a KV group share one item, so that each block of K_1, K_2 and V is
/// packed and read once per group instead of once per head (the rows of one item fill the
/// vector lanes the lone token of a head would leave empty). Decode items (one query token per
/// sequence, paths with decode items) take the heads of as many whole KV groups as kDecodeRows
/// holds: one thread then reads whole rows of a cache that stores the groups side by side
/// (measured on Zen 4, 2 threads, pages of 64 rows in random order: each thread reading its
/// group's half of every row, 16 GB/s; each reading whole rows, 27 GB/s).
inline std::int64_t item_pack(const Params& p, std::int64_t bm, Isa isa) {
  const std::int64_t rep = p.n_rep();
  if (p.seqlen_q == 1 && decode_items(isa, p.dtype, p.head_dim, rep)) {
    std::int64_t ng = 1;
    for (std::int64_t n = 2; n <= p.kv_heads && rep * n <= kDecodeRows; ++n)
      if (p.kv_heads % n == 0) ng = n;
    return rep * ng;
  }
  return rep > 1 && p.seqlen_q < kColGroup && p.seqlen_q * rep <= bm ? rep : 1;
}

inline Plan make_plan(const Params& p, const Options& o, Isa isa) {
  Plan pl;
  int t = o.num_threads > 0 ? o.num_threads : static_cast<int>(std::thread::hardware_concurrency());
  t = std::max(t, 1);
  pl.geo.d = p.head_dim;
  pl.geo.dv = p.value_dim();
  pl.geo.bm = amx_items(isa, p.dtype, p.head_dim) ? kBlockMAmx : kBlockM;
  pl.pack = item_pack(p, pl.geo.bm, isa);
  pl.nqb = (p.seqlen_q * pl.pack + pl.geo.bm - 1) / pl.geo.bm;
  if (p.seq.varlen_q()) {  // validated tables: lengths in [0, seqlen_q]
    pl.qb_prefix.resize(static_cast<std::size_t>(p.batch) + 1);
    pl.qb_prefix[0] = 0;
    for (std::int64_t b = 0; b < p.batch; ++b)
      pl.qb_prefix[static_cast<std::size_t>(b) + 1] =
          pl.qb_prefix[static_cast<std::size_t>(b)] + (p.q_len(b) * pl.pack + pl.geo.bm - 1) / pl.geo.bm;
    pl.blocks = pl.qb_prefix.back();
  } else {
    pl.blocks = p.batch * pl.nqb;
  }
  pl.units = p.heads / pl.pack * pl.blocks;
  const std::int64_t key_blocks = (p.seqlen_k + kBlockN - 1) / kBlockN;
  if (p.seq.num_splits > 0) {
    pl.nsplit = p.seq.num_splits;  // the caller's (at most kMaxSplits), even past the key blocks
  } else if (pl.units < 2 * t && key_blocks > 1) {
    const std::int64_t want = (4 * static_cast<std::int64_t>(t) + pl.units - 1) / pl.units;
    pl.nsplit = static_cast<int>(std::min<std::int64_t>({want, key_blocks, kMaxSplits}));
  }
  pl.threads = static_cast<int>(std::max<std::int64_t>(1, std::min<std::int64_t>(t, pl.units * pl.nsplit)));
  pl.thread_bytes = static_cast<std::size_t>(round16(pl.geo.thread_floats())) * sizeof(float);
  pl.split_bytes = pl.nsplit > 1 ? static_cast<std::size_t>(pl.units * pl.nsplit * pl.geo.state_floats()) * sizeof(float) : 0;
  return pl;
}

template <class Elem>
void run_typed(const Params& p, const Plan& pl, const Kernels& kern, void* ws_raw) {
  Ctx cx;
  cx.p = &p;
  cx.geo = pl.geo;
  cx.N = p.seqlen_q;
  cx.S = p.seqlen_k;
  cx.H = p.heads;
  cx.rep = p.n_rep();
  cx.c = static_cast<float>(p.scale() * 1.44269504088896340736);
  cx.mask = make_row_mask(p);
  cx.masked = p.mask.kind != MaskKind::none;
  cx.nqb = pl.nqb;
  cx.nsplit = pl.nsplit;
  cx.pack = pl.pack;

  const std::uintptr_t a = reinterpret_cast<std::uintptr_t>(ws_raw);
  float* ws = reinterpret_cast<float*>(static_cast<unsigned char*>(ws_raw) + (64 - a % 64) % 64);
  const std::int64_t tfl = static_cast<std::int64_t>(pl.thread_bytes / sizeof(float));
  float* split_base = ws + pl.threads * tfl;
  const std::int64_t sfl = pl.geo.state_floats();
  const std::int64_t n_items = pl.units * pl.nsplit;

  // work unit u = t * U + k: heads [k pack, (k + 1) pack) of block t (Plan::block_of), U = H / pack;
  // items from the last block (most keys under a causal mask), each unit's splits adjacent
  const std::int64_t U = p.heads / pl.pack;
  auto nv_of = [&](const Ctx& c, std::int64_t qb) {
    const std::int64_t nr = std::min<std::int64_t>(pl.geo.bm, c.rows() - qb * pl.geo.bm);
    return static_cast<int>((nr + kColGroup - 1) / kColGroup);
  };
  const Kernels::ProcessFn process = kern.process<Elem>();
  // the split state of (unit u, split s)
  auto split_state = [&](std::int64_t u, int s) { return State::at(split_base + (u * pl.nsplit + s) * sfl, pl.geo); };

  std::atomic<std::int64_t> next{0};
  ThreadPool& pool = ThreadPool::instance();
  pool.run(pl.threads, [&](int tid) {
    const ThreadScratch ts = ThreadScratch::at(ws + tid * tfl, pl.geo);
    for (;;) {
      const std::int64_t k = next.fetch_add(1, std::memory_order_relaxed);
      if (k >= n_items) break;
      const std::int64_t u = pl.units - 1 - k / pl.nsplit, h = u % U * pl.pack;
      const int s = static_cast<int>(k % pl.nsplit);
      std::int64_t b, qb;
      pl.block_of(u / U, p.batch, &b, &qb);
      const Ctx cb = cx.for_sequence(b);
      const int nv = nv_of(cb, qb);
      if (pl.nsplit == 1) {
        process(cb, nv, b, h, qb, s, ts, ts.state);
        epilogue<Elem>(cb, b, h, qb, nv, ts.state, ts.arow);
      } else {
        process(cb, nv, b, h, qb, s, ts, split_state(u, s));
      }
    }
  });
  if (pl.nsplit == 1) return;

  std::atomic<std::int64_t> next2{0};
  pool.run(pl.threads, [&](int tid) {
    const ThreadScratch ts = ThreadScratch::at(ws + tid * tfl, pl.geo);
    State states[kMaxSplits];
    for (;;) {
      const std::int64_t u = next2.fetch_add(1, std::memory_order_relaxed);
      if (u >= pl.units) break;
      const std::int64_t h = u % U * pl.pack;
      std::int64_t b, qb;
      pl.block_of(u / U, p.batch, &b, &qb);
      const Ctx cb = cx.for_sequence(b);
      for (int s = 0; s < pl.nsplit; ++s) states[s] = split_state(u, s);
      const int nv = nv_of(cb, qb);
      kern.merge(cb, nv, states);
      epilogue<Elem>(cb, b, h, qb, nv, states[0], ts.arow);
    }
  });
}

}  // namespace detail

/// Bytes of workspace cpu::forward needs for these params and options (pass at least this
/// much as Options::scratch_bytes when providing Options::scratch).
inline std::size_t workspace_bytes(const Params& p, const Options& o = {}) {
  Isa isa = Isa::none;
  if (!select_isa(o.isa, &isa).ok()) isa = best_isa();  // forward() will report the error
  return detail::make_plan(p, o, isa).bytes();
}

/// True when bfloat16 inputs of head dim d run their products on AMX tiles with these options
/// (the AMX path, cpu/isa.hpp, and d a multiple of 32; P is then rounded to bfloat16 for P V);
/// false: fp32 FMA math as for f32 and f16.
inline bool bf16_uses_amx(std::int64_t d, const Options& o = {}) {
  Isa i = Isa::none;
  return select_isa(o.isa, &i).ok() && detail::amx_items(i, DType::bf16, d);
}

/// True when cpu::forward rounds P_1 and P_2 to bfloat16 before P V in sequence b (0 <= b <
/// batch; validated params) with these options: bfloat16 items on AMX tiles (bf16_uses_amx), and
/// bfloat16 decode items on the avx512bf16 path (at most 16 rows, query tokens x the packed heads
/// of a GQA group, and d a multiple of 32). Elsewhere P stays fp32 (relative error 2^-9 per term
/// against 2^-24).
inline bool bf16_rounds_p(const Params& p, std::int64_t b = 0, const Options& o = {}) {
  Isa i = Isa::none;
  if (p.dtype != DType::bf16 || !select_isa(o.isa, &i).ok()) return false;
  if (detail::amx_items(i, DType::bf16, p.head_dim)) return true;
  return detail::decode_items(i, DType::bf16, p.head_dim, p.q_len(b) * detail::item_pack(p, detail::kBlockM, i));
}

/// The tiled CPU forward. Validates first (validate(p, cpu::caps())); on error returns that
/// status and writes nothing. Also rejects num_threads outside [0, kMaxThreads], a caller scratch smaller than
/// workspace_bytes(p, o), and an ISA path (options.isa or DIFFATTN_CPU_ISA) this CPU cannot run. Writes out and every extra requested in p.extras.
inline Status forward(const Params& p, const Options& o = {}) {
  Status s = validate(p, caps());
  if (!s.ok()) return s;
  if (!(s = detail::check_options(o)).ok()) return s;
  Isa isa = Isa::none;
  const Status si = select_isa(o.isa, &isa);
  if (!si.ok()) return si;
  const detail::Kernels& kern = *detail::kernels(isa);
  const detail::Plan pl = detail::make_plan(p, o, isa);
  if (o.scratch != nullptr && o.scratch_bytes < pl.bytes())
    return Status::Invalid("options.scratch: " + std::to_string(o.scratch_bytes) +
                           " bytes given, cpu::workspace_bytes() says " + std::to_string(pl.bytes()) +
                           " are needed");
  std::optional<detail::PooledWorkspace> lent;  // concurrent calls each get their own
  if (!(s = detail::lend_workspace(o, pl.bytes(), "cpu::forward", lent)).ok()) return s;
  void* ws = o.scratch != nullptr ? o.scratch : lent->get();
  seq_detail::append_new_keys(p);  // SeqParams::append_kv: the cache rows first
  switch (p.dtype) {
    case DType::f16: detail::run_typed<half>(p, pl, kern, ws); break;
    case DType::bf16: detail::run_typed<bfloat16>(p, pl, kern, ws); break;
    default: detail::run_typed<float>(p, pl, kern, ws); break;
  }
  return Status::Ok();
}

}  // namespace cpu
DIFFATTN_NAMESPACE_END
