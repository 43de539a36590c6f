// diffattn/simt/emu/runtime.hpp: the host emulator behind the simt primitives.
//
// A launch runs every block of the grid; a block runs on one OS thread, each of its CUDA threads
// a fiber (emu/context.hpp). Independent blocks are spread over worker threads. Within a block a
// fiber runs until it blocks (block barrier, warp collective), exits, or, in the random schedule,
// is preempted at a yield point (every shared-memory access, cp.async operation, barrier and
// collective). The schedule is deterministic by default: a FIFO run queue, the last thread to
// arrive at a barrier continues.
//
// Warp collectives (shuffles, __syncwarp, ldmatrix, mma) deposit-then-compute: every lane of the
// mask deposits its inputs and blocks; the last to arrive computes every lane's result and
// releases the others, which pick up their part.
//
// Strict where the hardware is undefined; each of these stops the launch with an error that
// names the block, the thread (warp, lane) and the fault (simt::emu::Fault):
//   deadlock                  a barrier or collective that not all its threads can reach
//                             (threads exited, threads waiting elsewhere)
//   divergent_collective      lanes of one warp in different collectives, or with different masks
//   bad_argument              a mask without the caller or naming missing lanes, a bad width,
//                             a misaligned/null cp.async source, a shuffle from a lane outside
//                             the mask
//   smem_out_of_bounds        a shared access outside [0, dynamic shared bytes)
//   smem_misaligned           a shared access not aligned to its size (ldmatrix rows and cp.async
//                             destinations: 16 bytes)
//   cp_async_not_waited       touching shared bytes a cp.async is still writing (its destination
//                             is poisoned, 0xFF bytes, until the issuing thread waits for it)
//   cp_async_in_flight_at_exit  a thread returning with cp.async copies not waited for
//   kernel_exception          the kernel body threw
//   invalid_launch            bad grid/block/shared-memory sizes
//   outside_kernel            a simt primitive called on the host outside a launch
// After a fault the other fibers of the block are abandoned where they stand (objects on their
// stacks are not destroyed), the remaining blocks are skipped, and launch() throws emu::Error
// (try_launch() returns it). The emulator stays usable.
//
// Environment: DIFFATTN_SIMT_SCHEDULE=deterministic|random|random:<seed>, DIFFATTN_SIMT_SEED=<n>
// (implies random), DIFFATTN_SIMT_WORKERS=<n> (OS threads; default: hardware threads),
// DIFFATTN_SIMT_STACK_KIB=<n> (fiber stack size, default 256). A LaunchConfig field that is set
// overrides the environment. A fiber stack overflow prints the block and thread and aborts
// (a SIGSEGV handler active during launches; DIFFATTN_SIMT_SEGV_HANDLER=0 disables it).
#pragma once

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "diffattn/core/dtype.hpp"
#include "diffattn/simt/config.hpp"
#include "diffattn/simt/emu/context.hpp"
#include "diffattn/simt/layout.hpp"

DIFFATTN_NAMESPACE_BEGIN
namespace simt {
namespace emu {

/// What went wrong in an emulated launch.
enum class Fault : int {
  none = 0,
  invalid_launch,
  deadlock,
  divergent_collective,
  bad_argument,
  smem_out_of_bounds,
  smem_misaligned,
  cp_async_not_waited,
  cp_async_in_flight_at_exit,
  kernel_exception,
  outside_kernel,
};

inline const char* fault_name(Fault f) {
  switch (f) {
    case Fault::none: return "none";
    case Fault::invalid_launch: return "invalid_launch";
    case Fault::deadlock: return "deadlock";
    case Fault::divergent_collective: return "divergent_collective";
    case Fault::bad_argument: return "bad_argument";
    case Fault::smem_out_of_bounds: return "smem_out_of_bounds";
    case Fault::smem_misaligned: return "smem_misaligned";
    case Fault::cp_async_not_waited: return "cp_async_not_waited";
    case Fault::cp_async_in_flight_at_exit: return "cp_async_in_flight_at_exit";
    case Fault::kernel_exception: return "kernel_exception";
    case Fault::outside_kernel: return "outside_kernel";
  }
  return "unknown";
}

/// The first fault of a launch: where it happened and a message that says what to fix.
struct LaunchError {
  Fault fault = Fault::none;
  dim3 block{0, 0, 0};
  dim3 thread{0, 0, 0};
  bool has_block = false;   // false for invalid_launch / outside_kernel
  bool has_thread = false;  // false for faults found by the scheduler (deadlock of a whole block)
  std::string message;      // full text, starting with "simt emulator: <fault>: block (..) ..."
};

/// Thrown by launch() (and by primitives called outside a launch).
class Error : public std::runtime_error {
 public:
  explicit Error(LaunchError e) : std::runtime_error(e.message), err_(std::move(e)) {}
  const LaunchError& error() const noexcept { return err_; }
  Fault fault() const noexcept { return err_.fault; }

 private:
  LaunchError err_;
};

/// Result of try_launch(): ok() or the first fault.
struct LaunchResult {
  LaunchError error;
  bool ok() const { return error.fault == Fault::none; }
  explicit operator bool() const { return ok(); }
};

/// How the fibers of a block are interleaved.
enum class Schedule : int {
  from_env = 0,   ///< DIFFATTN_SIMT_SCHEDULE / DIFFATTN_SIMT_SEED, else deterministic
  deterministic,  ///< FIFO run queue, run until blocked: the same interleaving every run
  random,         ///< seeded random pick and random preemption at every yield point
};

/// A launch: sizes (as <<<grid, block, smem_bytes>>>) and emulator options.
struct LaunchConfig {
  dim3 grid{1, 1, 1};
  dim3 block{1, 1, 1};
  std::size_t smem_bytes = 0;  ///< dynamic shared memory per block, bytes
  Schedule schedule = Schedule::from_env;
  std::uint64_t seed = 0;  ///< random schedule seed (0: from the environment, else 1)
  int workers = 0;         ///< OS threads running blocks (0: environment, else hardware threads)
  std::size_t stack_bytes = 0;                 ///< per fiber (0: environment, else 256 KiB)
  std::size_t max_smem_bytes = 227 * 1024;     ///< sm_90 opt-in limit; use 163 KiB for sm_80
};

namespace detail {

/// Thrown inside a fiber by a failed check; caught at the bottom of the fiber.
struct KernelFault {
  Fault fault;
  std::string what;
};

inline std::string dim_str(const dim3& d) {
  return "(" + std::to_string(d.x) + "," + std::to_string(d.y) + "," + std::to_string(d.z) + ")";
}
inline std::string hex32(std::uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08x", v);
  return buf;
}

struct EnvSettings {
  Schedule schedule = Schedule::deterministic;
  std::uint64_t seed = 1;
  int workers = 0;
  std::size_t stack_bytes = 256 * 1024;
};

inline EnvSettings read_env() {
  EnvSettings s;
  if (const char* v = std::getenv("DIFFATTN_SIMT_SCHEDULE")) {
    std::string str(v);
    if (str.rfind("random", 0) == 0) {
      s.schedule = Schedule::random;
      auto colon = str.find(':');
      if (colon != std::string::npos) s.seed = std::strtoull(str.c_str() + colon + 1, nullptr, 0);
    }
  }
  if (const char* v = std::getenv("DIFFATTN_SIMT_SEED")) {
    s.schedule = Schedule::random;
    s.seed = std::strtoull(v, nullptr, 0);
  }
  if (const char* v = std::getenv("DIFFATTN_SIMT_WORKERS")) s.workers = std::atoi(v);
  if (const char* v = std::getenv("DIFFATTN_SIMT_STACK_KIB")) {
    long kib = std::atol(v);
    if (kib >= 16) s.stack_bytes = static_cast<std::size_t>(kib) * 1024;
  }
  return s;
}

inline const EnvSettings& env_settings() {
  static const EnvSettings s = read_env();
  return s;
}

/// The kernel body with its arguments, type-erased: invoke(payload) runs one CUDA thread.
struct KernelFn {
  void (*invoke)(const void*) = nullptr;
  const void* payload = nullptr;
};

enum class WaitKind : std::uint8_t { running, runnable, barrier, collective, exited };

struct CpAsyncCopy {
  std::uint32_t dst;
  std::uint32_t src_bytes;  // 0..16; the rest of the 16 bytes is zero-filled
  const unsigned char* src;
  std::uint64_t group;  // number of commit_group calls before it was issued
};

class BlockRunner;

struct Fiber {
  Context ctx;
  Stack stack;
  BlockRunner* blk = nullptr;
  std::uint32_t tid = 0;  // linear index in the block
  dim3 idx;               // threadIdx
  WaitKind wait = WaitKind::runnable;
  std::vector<CpAsyncCopy> copies;  // issued, not yet waited for
  std::uint64_t committed = 0;      // commit_group calls so far
};

enum Op : std::uint32_t { op_none = 0, op_syncwarp, op_shfl, op_ldmatrix, op_mma, op_vote };

/// Shuffle modes (as PTX shfl.sync).
enum ShflMode : std::uint32_t { shfl_idx = 0, shfl_up = 1, shfl_down = 2, shfl_bfly = 3 };

inline constexpr int kCollectiveInWords = 10;  // mma: a[4], b[2], c[4]

struct WarpSlot {
  std::uint32_t op = op_none;
  std::uint32_t mask = 0;
  std::uint32_t param = 0;
  std::uint32_t arrived = 0;  // lane bits
  std::uint32_t in[32][kCollectiveInWords];
  std::uint32_t out[32][4];
};

inline std::string op_desc(std::uint32_t op, std::uint32_t param) {
  switch (op) {
    case op_syncwarp: return "__syncwarp";
    case op_shfl: {
      static const char* modes[] = {"idx", "up", "down", "bfly"};
      return std::string("shfl.sync.") + modes[param & 3] + " (width " +
             std::to_string(param >> 8) + ")";
    }
    case op_ldmatrix:
      return "ldmatrix.x" + std::to_string(param & 7) + ((param & 8) ? ".trans" : "");
    case op_mma: return std::string("mma.m16n8k16.") + ((param == 1) ? "bf16" : "f16");
    case op_vote: return "vote.sync.any";
    default: return "nothing";
  }
}

inline std::string lane_list(std::uint32_t bits) {
  std::string s;
  for (int l = 0; l < 32; ++l) {
    if (!(bits >> l & 1u)) continue;
    int e = l;
    while (e + 1 < 32 && (bits >> (e + 1) & 1u)) ++e;
    if (!s.empty()) s += ",";
    s += std::to_string(l);
    if (e > l) s += "-" + std::to_string(e);
    l = e;
  }
  return s.empty() ? "none" : s;
}

inline float unpack16(std::uint32_t word, int half, int fmt) {
  auto bits = static_cast<std::uint16_t>(half ? (word >> 16) : (word & 0xffffu));
  if (fmt == 1) {
    std::uint32_t f = std::uint32_t{bits} << 16;
    float out;
    std::memcpy(&out, &f, 4);
    return out;
  }
  return static_cast<float>(Eigen::numext::bit_cast<diffattn::half>(bits));
}

inline thread_local Fiber* tls_fiber = nullptr;

inline void ensure_alt_stack();

struct BlockParams {
  dim3 grid, block;
  std::size_t smem_bytes = 0;
  bool random = false;
  std::uint64_t seed = 1;
  std::size_t stack_bytes = 256 * 1024;
  KernelFn fn;
};

inline void fiber_main(void* p);

/// Runs blocks of one launch, one at a time, on the calling OS thread.
class BlockRunner {
 public:
  explicit BlockRunner(const BlockParams& p)
      : p_(p), nthreads_(static_cast<std::uint32_t>(p.block.volume())) {
    ensure_alt_stack();
    fibers_.resize(nthreads_);
    for (std::uint32_t t = 0; t < nthreads_; ++t) {
      Fiber& f = fibers_[t];
      f.blk = this;
      f.tid = t;
      f.idx = dim3(t % p.block.x, (t / p.block.x) % p.block.y, t / (p.block.x * p.block.y));
      f.stack = StackPool::instance().acquire(p.stack_bytes);
    }
    queue_.resize(nthreads_);
    bar_waiters_.reserve(nthreads_);
    warps_.resize((nthreads_ + 31) / 32);
    smem_.resize(p.smem_bytes);
    shadow_.resize(p.smem_bytes);
  }
  BlockRunner(const BlockRunner&) = delete;
  BlockRunner& operator=(const BlockRunner&) = delete;
  ~BlockRunner() {
    for (Fiber& f : fibers_) StackPool::instance().release(f.stack);
  }

  /// Runs block `bidx` to completion or to its first fault (then failed() is true).
  void run_block(const dim3& bidx, std::uint64_t linear) {
    block_idx_ = bidx;
    aborted_ = false;
    error_ = LaunchError{};
    exited_ = 0;
    bar_arrived_ = 0;
    bar_waiters_.clear();
    for (WarpSlot& w : warps_) {
      w.op = op_none;
      w.arrived = 0;
    }
    std::fill(smem_.begin(), smem_.end(), static_cast<unsigned char>(0xff));  // like garbage
    std::fill(shadow_.begin(), shadow_.end(), static_cast<unsigned char>(0));
    poisoned_ = 0;
    rng_ = p_.seed * 0x9E3779B97F4A7C15ull + linear * 0xD1B54A32D192ED03ull + 1;
    q_head_ = 0;
    q_count_ = 0;
    for (Fiber& f : fibers_) {
      f.wait = WaitKind::runnable;
      f.copies.clear();
      f.committed = 0;
      context_make(f.ctx, f.stack, &fiber_main, &f);
      push(f.tid);
    }
    Fiber* first = pop();
    first->wait = WaitKind::running;
    tls_fiber = first;
    sched_ctx_.stack = thread_stack_bounds();  // this OS thread's stack (ASan's fiber annotations)
    context_switch(sched_ctx_, first->ctx);
    tls_fiber = nullptr;
    if (!aborted_ && exited_ != nthreads_) report_deadlock();
  }

  bool failed() const { return aborted_; }
  const LaunchError& error() const { return error_; }

  // ---- what the primitives call (f is the running fiber) ------------------------------------

  const dim3& block_idx() const { return block_idx_; }
  const BlockParams& params() const { return p_; }
  unsigned char* smem_base() { return smem_.data(); }

  void syncthreads(Fiber* f) {
    maybe_yield(f);
    if (exited_ > 0) {
      throw KernelFault{Fault::deadlock,
                        "__syncthreads reached after " + std::to_string(exited_) + " of the " +
                            std::to_string(nthreads_) + " threads of the block exited (" +
                            exited_list() + "): they can never arrive"};
    }
    if (++bar_arrived_ == nthreads_) {
      bar_arrived_ = 0;
      for (std::uint32_t t : bar_waiters_) wake(t);
      bar_waiters_.clear();
      if (p_.random) yield(f);
      return;
    }
    bar_waiters_.push_back(f->tid);
    f->wait = WaitKind::barrier;
    switch_from(f);
  }

  /// Deposit-then-compute warp collective. Returns this lane's 4 output words.
  template <class Compute>
  const std::uint32_t* collective(Fiber* f, std::uint32_t op, std::uint32_t mask,
                                  std::uint32_t param, const std::uint32_t* in, int nin,
                                  Compute&& compute) {
    maybe_yield(f);
    const int lane = static_cast<int>(f->tid & 31u);
    const std::uint32_t warp = f->tid >> 5;
    WarpSlot& w = warps_[warp];
    const std::uint32_t bit = 1u << lane;
    if (!(mask & bit)) {
      throw KernelFault{Fault::bad_argument, op_desc(op, param) + " with mask " + hex32(mask) +
                                                 " that does not include the calling lane " +
                                                 std::to_string(lane)};
    }
    if (w.op == op_none) {
      const std::uint32_t present = present_lanes(warp);
      if (mask & ~present) {
        throw KernelFault{Fault::bad_argument,
                          op_desc(op, param) + " with mask " + hex32(mask) + " naming lanes " +
                              lane_list(mask & ~present) + " that do not exist (the block has " +
                              std::to_string(nthreads_) + " threads)"};
      }
      std::uint32_t gone = 0;
      for (int l = 0; l < 32; ++l) {
        if ((mask >> l & 1u) && fibers_[warp * 32 + l].wait == WaitKind::exited) gone |= 1u << l;
      }
      if (gone) {
        throw KernelFault{Fault::deadlock, op_desc(op, param) + " with mask " + hex32(mask) +
                                               " but lanes " + lane_list(gone) +
                                               " of the warp have exited: they can never arrive"};
      }
      w.op = op;
      w.mask = mask;
      w.param = param;
      w.arrived = 0;
    } else if (w.op != op || w.mask != mask || w.param != param) {
      throw KernelFault{Fault::divergent_collective,
                        "lane " + std::to_string(lane) + " calls " + op_desc(op, param) +
                            " with mask " + hex32(mask) + " while lanes " +
                            lane_list(w.arrived) + " of its warp wait in " +
                            op_desc(w.op, w.param) + " with mask " + hex32(w.mask)};
    }
    std::memcpy(w.in[lane], in, sizeof(std::uint32_t) * static_cast<std::size_t>(nin));
    w.arrived |= bit;
    if (w.arrived == w.mask) {
      compute(w, warp);
      const std::uint32_t others = w.mask & ~bit;
      w.op = op_none;
      w.arrived = 0;
      for (int l = 0; l < 32; ++l) {
        if (others >> l & 1u) wake(warp * 32 + static_cast<std::uint32_t>(l));
      }
      if (p_.random) yield(f);
      return w.out[lane];
    }
    f->wait = WaitKind::collective;
    switch_from(f);
    return w.out[lane];
  }

  /// Checked pointer to `size` bytes of shared memory at byte offset `off`.
  unsigned char* smem_access(Fiber* f, std::int64_t off, std::size_t size, std::size_t align,
                             bool write, const char* what) {
    maybe_yield(f);
    return smem_check(off, size, align, write, what);
  }

  /// As smem_access, without a yield point (for use inside a collective's compute step).
  unsigned char* smem_check(std::int64_t off, std::size_t size, std::size_t align, bool write,
                            const char* what) {
    check_range(off, size, align, what);
    if (poisoned_) check_poison(off, size, write ? "writes" : "reads", what);
    return smem_.data() + off;
  }

  void cp_async(Fiber* f, std::int64_t dst, const void* src, std::uint32_t src_bytes) {
    maybe_yield(f);
    check_range(dst, 16, 16, "cp.async destination");
    if (poisoned_) check_poison(dst, 16, "writes", "cp.async destination");
    if (src_bytes > 16) {
      throw KernelFault{Fault::bad_argument,
                        "cp.async src-size " + std::to_string(src_bytes) + " > 16"};
    }
    if (src_bytes > 0 && (src == nullptr || reinterpret_cast<std::uintptr_t>(src) % 16 != 0)) {
      std::ostringstream os;
      os << "cp.async global source " << src << " is " << (src ? "not 16-byte aligned" : "null");
      throw KernelFault{Fault::bad_argument, os.str()};
    }
    std::memset(smem_.data() + dst, 0xff, 16);
    std::memset(shadow_.data() + dst, 1, 16);
    poisoned_ += 16;
    f->copies.push_back(CpAsyncCopy{static_cast<std::uint32_t>(dst), src_bytes,
                                    static_cast<const unsigned char*>(src), f->committed});
  }

  void cp_async_commit(Fiber* f) {
    maybe_yield(f);
    ++f->committed;
  }

  /// cp.async.wait_group n: completes every copy of all but the n most recent committed groups.
  void cp_async_wait(Fiber* f, std::uint64_t n) {
    maybe_yield(f);
    if (f->committed < n) return;
    const std::uint64_t limit = f->committed - n;
    std::size_t keep = 0;
    for (std::size_t i = 0; i < f->copies.size(); ++i) {
      const CpAsyncCopy& c = f->copies[i];
      if (c.group < limit) {
        unsigned char* d = smem_.data() + c.dst;
        if (c.src_bytes) std::memcpy(d, c.src, c.src_bytes);
        std::memset(d + c.src_bytes, 0, 16 - c.src_bytes);
        std::memset(shadow_.data() + c.dst, 0, 16);
        poisoned_ -= 16;
      } else {
        f->copies[keep++] = c;
      }
    }
    f->copies.resize(keep);
  }

  // ---- fiber lifecycle -----------------------------------------------------------------------

  void run_thread(Fiber* f) {
    try {
      p_.fn.invoke(p_.fn.payload);
      if (!f->copies.empty()) {
        std::uint64_t groups = f->committed - f->copies.front().group;
        throw KernelFault{Fault::cp_async_in_flight_at_exit,
                          "thread exits with " + std::to_string(f->copies.size()) +
                              " cp.async copies in flight (" +
                              (f->copies.back().group == f->committed
                                   ? std::string("some never committed, ")
                                   : std::string()) +
                              std::to_string(groups) +
                              " committed groups not waited for): wait with "
                              "cp_async_wait<0>() / cp_async_wait_all() before returning"};
      }
    } catch (const KernelFault& e) {
      record(f, e.fault, e.what);
    } catch (const std::exception& e) {
      record(f, Fault::kernel_exception, std::string("the kernel threw: ") + e.what());
    } catch (...) {
      record(f, Fault::kernel_exception, "the kernel threw a non-std exception");
    }
  }

  [[noreturn]] void exit_thread(Fiber* f) {
    if (!aborted_) {
      f->wait = WaitKind::exited;
      ++exited_;
      const int lane = static_cast<int>(f->tid & 31u);
      const WarpSlot& w = warps_[f->tid >> 5];
      if (bar_arrived_ > 0) {
        record(f, Fault::deadlock,
               "thread exits while " + std::to_string(bar_arrived_) + " of the " +
                   std::to_string(nthreads_) +
                   " threads wait at __syncthreads: it can never arrive");
      } else if (w.op != op_none && (w.mask >> lane & 1u) && !(w.arrived >> lane & 1u)) {
        record(f, Fault::deadlock,
               "lane " + std::to_string(lane) + " exits while lanes " + lane_list(w.arrived) +
                   " of its warp wait for it in " + op_desc(w.op, w.param) + " with mask " +
                   hex32(w.mask));
      }
    }
    switch_from(f);
    std::abort();  // an exited fiber is never resumed
  }

 private:
  // ---- run queue -----------------------------------------------------------------------------
  void push(std::uint32_t t) {
    std::uint32_t pos = q_head_ + q_count_;
    if (pos >= nthreads_) pos -= nthreads_;
    queue_[pos] = t;
    ++q_count_;
  }
  Fiber* pop() {
    if (q_count_ == 0) return nullptr;
    if (p_.random && q_count_ > 1) {
      std::uint32_t r = static_cast<std::uint32_t>(next_random() % q_count_);
      std::uint32_t pos = q_head_ + r;
      if (pos >= nthreads_) pos -= nthreads_;
      std::swap(queue_[q_head_], queue_[pos]);
    }
    std::uint32_t t = queue_[q_head_];
    if (++q_head_ == nthreads_) q_head_ = 0;
    --q_count_;
    return &fibers_[t];
  }
  void wake(std::uint32_t t) {
    fibers_[t].wait = WaitKind::runnable;
    push(t);
  }
  std::uint64_t next_random() {  // splitmix64
    std::uint64_t z = (rng_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }

  /// Leaves fiber `self` (already marked blocked/exited/queued) for the next runnable fiber,
  /// or for the scheduler when none is left or the block aborted.
  void switch_from(Fiber* self) {
    Fiber* next = aborted_ ? nullptr : pop();
    if (next == self) {
      self->wait = WaitKind::running;
      return;
    }
    if (next == nullptr) {
      context_switch(self->ctx, sched_ctx_);
    } else {
      next->wait = WaitKind::running;
      tls_fiber = next;
      context_switch(self->ctx, next->ctx);
    }
    tls_fiber = self;
  }
  void yield(Fiber* f) {
    f->wait = WaitKind::runnable;
    push(f->tid);
    switch_from(f);
  }
  void maybe_yield(Fiber* f) {
    if (p_.random && (next_random() & 3u) == 0) yield(f);
  }

  // ---- checks --------------------------------------------------------------------------------
  std::uint32_t present_lanes(std::uint32_t warp) const {
    std::uint32_t n = nthreads_ - warp * 32;
    return n >= 32 ? 0xffffffffu : ((1u << n) - 1u);
  }

  void check_range(std::int64_t off, std::size_t size, std::size_t align, const char* what) {
    if (off < 0 || static_cast<std::uint64_t>(off) + size > smem_.size()) {
      throw KernelFault{Fault::smem_out_of_bounds,
                        std::string(what) + " of " + std::to_string(size) +
                            " bytes at shared offset " + std::to_string(off) +
                            " is outside the block's dynamic shared memory of " +
                            std::to_string(smem_.size()) + " bytes"};
    }
    if (align > 1 && off % static_cast<std::int64_t>(align) != 0) {
      throw KernelFault{Fault::smem_misaligned,
                        std::string(what) + " of " + std::to_string(size) +
                            " bytes at shared offset " + std::to_string(off) +
                            " is not aligned to " + std::to_string(align) + " bytes"};
    }
  }

  void check_poison(std::int64_t off, std::size_t size, const char* verb, const char* what) {
    for (std::size_t i = 0; i < size; ++i) {
      if (!shadow_[static_cast<std::size_t>(off) + i]) continue;
      const auto byte = static_cast<std::uint32_t>(off + static_cast<std::int64_t>(i));
      std::string who = "another thread";
      for (const Fiber& g : fibers_) {
        for (const CpAsyncCopy& c : g.copies) {
          if (byte >= c.dst && byte < c.dst + 16) {
            who = "thread " + dim_str(g.idx) + " (group " + std::to_string(c.group) +
                  (c.group == g.committed ? ", not yet committed" : "") + ")";
          }
        }
      }
      throw KernelFault{Fault::cp_async_not_waited,
                        std::string(what) + " " + verb + " shared bytes [" +
                            std::to_string(off) + ", " +
                            std::to_string(off + static_cast<std::int64_t>(size)) +
                            ") while byte " + std::to_string(byte) +
                            " is the target of a cp.async issued by " + who +
                            " that has not been waited for (cp.async.wait_group, then "
                            "__syncthreads if another thread issued it)"};
    }
  }

  std::string exited_list() const {
    std::string s;
    int shown = 0;
    for (const Fiber& f : fibers_) {
      if (f.wait != WaitKind::exited) continue;
      if (shown++ == 4) {
        s += ", ...";
        break;
      }
      if (!s.empty()) s += ", ";
      s += "thread " + dim_str(f.idx);
    }
    return s;
  }

  std::string prefix() const {
    return std::string("simt emulator: ");
  }

  void record(Fiber* f, Fault fault, const std::string& what) {
    if (aborted_) return;
    aborted_ = true;
    error_.fault = fault;
    error_.block = block_idx_;
    error_.has_block = true;
    error_.message = prefix() + fault_name(fault) + ": block " + dim_str(block_idx_);
    if (f) {
      error_.thread = f->idx;
      error_.has_thread = true;
      error_.message += " thread " + dim_str(f->idx) + " (warp " + std::to_string(f->tid >> 5) +
                        ", lane " + std::to_string(f->tid & 31u) + ")";
    }
    error_.message += ": " + what;
  }

  void report_deadlock() {
    // Summarise every thread's state, runs of equal states joined.
    std::string summary;
    std::uint32_t t = 0;
    auto state_of = [&](const Fiber& f) -> std::string {
      switch (f.wait) {
        case WaitKind::exited: return "exited";
        case WaitKind::barrier: return "wait at __syncthreads";
        case WaitKind::collective: {
          const WarpSlot& w = warps_[f.tid >> 5];
          return "wait in " + op_desc(w.op, w.param) + " (mask " + hex32(w.mask) + ")";
        }
        default: return "runnable";
      }
    };
    while (t < nthreads_) {
      std::string st = state_of(fibers_[t]);
      std::uint32_t e = t;
      while (e + 1 < nthreads_ && state_of(fibers_[e + 1]) == st) ++e;
      if (!summary.empty()) summary += "; ";
      summary += "threads " + std::to_string(t) + (e > t ? "-" + std::to_string(e) : "") + " " + st;
      t = e + 1;
    }
    record(nullptr, Fault::deadlock, "no thread can make progress: " + summary);
  }

  BlockParams p_;
  std::uint32_t nthreads_;
  std::vector<Fiber> fibers_;
  std::vector<std::uint32_t> queue_;
  std::uint32_t q_head_ = 0, q_count_ = 0;
  std::vector<std::uint32_t> bar_waiters_;
  std::uint32_t bar_arrived_ = 0;
  std::uint32_t exited_ = 0;
  std::vector<WarpSlot> warps_;
  std::vector<unsigned char> smem_;
  std::vector<unsigned char> shadow_;  // 1: target of a cp.async in flight
  std::size_t poisoned_ = 0;
  std::uint64_t rng_ = 1;
  dim3 block_idx_;
  Context sched_ctx_;
  bool aborted_ = false;
  LaunchError error_;
};

inline void fiber_main(void* p) {
#if !DIFFATTN_SIMT_UCONTEXT
  asan_after_switch(nullptr);  // a new fiber (the ucontext entry does this itself)
#endif
  Fiber* f = static_cast<Fiber*>(p);
  f->blk->run_thread(f);
  f->blk->exit_thread(f);
}

// ---- fiber stack overflow: a message that names the thread instead of a bare SIGSEGV ----------
// A fiber that overflows its stack touches the guard page below it. While a launch runs, a
// SIGSEGV handler (on an alternate signal stack per worker thread) prints which block and thread
// overflowed, then aborts; any other fault is handed to the previous handler, which is restored
// when the last running launch ends. DIFFATTN_SIMT_SEGV_HANDLER=0 leaves SIGSEGV alone.

inline void sig_append(char*& p, const char* s) {
  while (*s) *p++ = *s++;
}
inline void sig_append(char*& p, unsigned long v) {
  char tmp[24];
  int n = 0;
  do {
    tmp[n++] = static_cast<char>('0' + v % 10);
    v /= 10;
  } while (v);
  while (n) *p++ = tmp[--n];
}
inline void sig_append(char*& p, const dim3& d) {
  sig_append(p, "(");
  sig_append(p, static_cast<unsigned long>(d.x));
  sig_append(p, ",");
  sig_append(p, static_cast<unsigned long>(d.y));
  sig_append(p, ",");
  sig_append(p, static_cast<unsigned long>(d.z));
  sig_append(p, ")");
}

struct SegvState {
  std::mutex mu;
  int active = 0;
  struct sigaction prev {};
};
inline SegvState& segv_state() {
  static SegvState* s = new SegvState();  // never destroyed
  return *s;
}

inline void segv_handler(int, siginfo_t* si, void*) {
  Fiber* f = tls_fiber;
  if (f != nullptr) {
    const auto* a = static_cast<const unsigned char*>(si->si_addr);
    // The guard page, or a large frame that jumped just past it.
    if (a < f->stack.base && a + 64 * 1024 >= f->stack.base) {
      char buf[512];
      char* p = buf;
      sig_append(p, "simt emulator: fiber stack overflow: block ");
      sig_append(p, f->blk->block_idx());
      sig_append(p, " thread ");
      sig_append(p, f->idx);
      sig_append(p, " (warp ");
      sig_append(p, static_cast<unsigned long>(f->tid >> 5));
      sig_append(p, ", lane ");
      sig_append(p, static_cast<unsigned long>(f->tid & 31u));
      sig_append(p, ") exhausted its ");
      sig_append(p, static_cast<unsigned long>(f->stack.size / 1024));
      sig_append(p, " KiB stack: raise DIFFATTN_SIMT_STACK_KIB or LaunchConfig::stack_bytes, or "
                    "shrink the kernel's local arrays\n");
      ssize_t ignored = ::write(2, buf, static_cast<std::size_t>(p - buf));
      (void)ignored;
      std::abort();
    }
  }
  // Not ours: hand the fault to the previous disposition (the faulting access repeats).
  ::sigaction(SIGSEGV, &segv_state().prev, nullptr);
}

/// An alternate signal stack for the calling thread (the handler cannot run on a full fiber
/// stack); freed when the thread ends. Keeps one that is already installed.
inline void ensure_alt_stack() {
  struct AltStack {
    void* mem = nullptr;
    AltStack() {
      stack_t cur{};
      if (::sigaltstack(nullptr, &cur) == 0 && !(cur.ss_flags & SS_DISABLE)) return;
      const std::size_t size = 64 * 1024;
      mem = std::malloc(size);
      if (mem == nullptr) return;
      stack_t ss{};
      ss.ss_sp = mem;
      ss.ss_size = size;
      ss.ss_flags = 0;
      if (::sigaltstack(&ss, nullptr) != 0) {
        std::free(mem);
        mem = nullptr;
      }
    }
    ~AltStack() {
      if (mem == nullptr) return;
      stack_t ss{};
      ss.ss_flags = SS_DISABLE;
      ::sigaltstack(&ss, nullptr);
      std::free(mem);
    }
  };
  thread_local AltStack alt;
  (void)alt;
}

/// Installs the handler for the duration of a launch (nested/concurrent launches counted).
class SegvGuard {
 public:
  SegvGuard() {
    const char* v = std::getenv("DIFFATTN_SIMT_SEGV_HANDLER");
    enabled_ = !(v != nullptr && v[0] == '0');
    if (!enabled_) return;
    SegvState& st = segv_state();
    std::lock_guard<std::mutex> lock(st.mu);
    if (st.active++ == 0) {
      struct sigaction sa {};
      sa.sa_sigaction = &segv_handler;
      sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
      sigemptyset(&sa.sa_mask);
      ::sigaction(SIGSEGV, &sa, &st.prev);
    }
  }
  ~SegvGuard() {
    if (!enabled_) return;
    SegvState& st = segv_state();
    std::lock_guard<std::mutex> lock(st.mu);
    if (--st.active == 0) ::sigaction(SIGSEGV, &st.prev, nullptr);
  }
  SegvGuard(const SegvGuard&) = delete;
  SegvGuard& operator=(const SegvGuard&) = delete;

 private:
  bool enabled_ = true;
};

inline Fiber& current(const char* what) {
  Fiber* f = tls_fiber;
  if (f == nullptr) {
    LaunchError e;
    e.fault = Fault::outside_kernel;
    e.message = std::string("simt emulator: outside_kernel: ") + what +
                " called outside an emulated kernel (simt::emu::launch)";
    throw Error(std::move(e));
  }
  return *f;
}

inline LaunchResult invalid_launch(const std::string& what) {
  LaunchResult r;
  r.error.fault = Fault::invalid_launch;
  r.error.message = "simt emulator: invalid_launch: " + what;
  return r;
}

/// Runs every block of the grid (the non-template part of launch).
inline LaunchResult run_grid(const LaunchConfig& cfg, KernelFn fn) {
  const EnvSettings& env = env_settings();
  const std::uint64_t nthreads = cfg.block.volume();
  const std::uint64_t nblocks = cfg.grid.volume();
  if (nthreads == 0 || nblocks == 0) {
    return invalid_launch("empty grid " + dim_str(cfg.grid) + " or block " + dim_str(cfg.block));
  }
  if (nthreads > 1024 || cfg.block.z > 64) {
    return invalid_launch("block " + dim_str(cfg.block) +
                          " exceeds 1024 threads (or 64 in z)");
  }
  if (cfg.grid.y > 65535 || cfg.grid.z > 65535 || cfg.grid.x > 0x7fffffffu) {
    return invalid_launch("grid " + dim_str(cfg.grid) + " exceeds (2^31-1, 65535, 65535)");
  }
  if (cfg.smem_bytes > cfg.max_smem_bytes) {
    return invalid_launch(std::to_string(cfg.smem_bytes) +
                          " bytes of dynamic shared memory exceed the limit of " +
                          std::to_string(cfg.max_smem_bytes));
  }
  BlockParams bp;
  bp.grid = cfg.grid;
  bp.block = cfg.block;
  bp.smem_bytes = cfg.smem_bytes;
  Schedule sched = cfg.schedule == Schedule::from_env ? env.schedule : cfg.schedule;
  bp.random = sched == Schedule::random;
  bp.seed = cfg.seed ? cfg.seed : env.seed;
  bp.stack_bytes = cfg.stack_bytes ? cfg.stack_bytes : env.stack_bytes;
  bp.fn = fn;

  int workers = cfg.workers > 0 ? cfg.workers : env.workers;
  if (workers <= 0) workers = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  if (static_cast<std::uint64_t>(workers) > nblocks) workers = static_cast<int>(nblocks);

  SegvGuard segv_guard;
  std::atomic<std::uint64_t> next{0};
  std::atomic<bool> stop{false};
  std::mutex mu;
  LaunchResult result;
  std::uint64_t err_block = ~std::uint64_t{0};
  std::exception_ptr internal;

  auto work = [&] {
    try {
      BlockRunner runner(bp);
      for (;;) {
        if (stop.load(std::memory_order_relaxed)) break;
        const std::uint64_t b = next.fetch_add(1, std::memory_order_relaxed);
        if (b >= nblocks) break;
        const std::uint64_t gx = cfg.grid.x, gxy = gx * cfg.grid.y;
        dim3 bidx(static_cast<unsigned>(b % gx), static_cast<unsigned>((b / gx) % cfg.grid.y),
                  static_cast<unsigned>(b / gxy));
        runner.run_block(bidx, b);
        if (runner.failed()) {
          std::lock_guard<std::mutex> lock(mu);
          if (b < err_block) {
            err_block = b;
            result.error = runner.error();
          }
          stop = true;
        }
      }
    } catch (...) {  // e.g. out of memory for stacks
      std::lock_guard<std::mutex> lock(mu);
      if (!internal) internal = std::current_exception();
      stop = true;
    }
  };
  if (workers == 1) {
    work();
  } else {
    std::vector<std::thread> pool;
    pool.reserve(static_cast<std::size_t>(workers - 1));
    for (int i = 1; i < workers; ++i) pool.emplace_back(work);
    work();
    for (std::thread& th : pool) th.join();
  }
  if (internal) std::rethrow_exception(internal);
  return result;
}

template <class K, class Tuple>
struct Payload {
  K kernel;
  Tuple args;
  static void invoke(const void* p) {
    const auto& self = *static_cast<const Payload*>(p);
    K k = self.kernel;  // each CUDA thread gets its own copy of the parameters
    std::apply([&](auto... a) { k(a...); }, self.args);
  }
};

}  // namespace detail

/// Runs `kernel(args...)` on every thread of every block, like kernel<<<grid, block, smem>>>,
/// with the options of `cfg`; returns the first fault instead of throwing. The kernel is a
/// functor (or function pointer); it and the arguments are copied, once per CUDA thread, as
/// CUDA passes them by value. Returns when every block has finished.
template <class K, class... Args>
LaunchResult try_launch(const LaunchConfig& cfg, K&& kernel, Args&&... args) {
  using P = detail::Payload<std::decay_t<K>, std::tuple<std::decay_t<Args>...>>;
  P payload{std::forward<K>(kernel), std::tuple<std::decay_t<Args>...>(std::forward<Args>(args)...)};
  return detail::run_grid(cfg, detail::KernelFn{&P::invoke, &payload});
}

/// As try_launch, but throws emu::Error on a fault.
template <class K, class... Args>
void launch(const LaunchConfig& cfg, K&& kernel, Args&&... args) {
  LaunchResult r = try_launch(cfg, std::forward<K>(kernel), std::forward<Args>(args)...);
  if (!r.ok()) throw Error(std::move(r.error));
}

/// launch(grid, block, smem_bytes, kernel, args...): the emulator's kernel<<<grid, block,
/// smem_bytes>>>(args...), with the schedule from the environment. Throws emu::Error on a fault.
template <class K, class... Args>
void launch(dim3 grid, dim3 block, std::size_t smem_bytes, K&& kernel, Args&&... args) {
  LaunchConfig cfg;
  cfg.grid = grid;
  cfg.block = block;
  cfg.smem_bytes = smem_bytes;
  launch(cfg, std::forward<K>(kernel), std::forward<Args>(args)...);
}

}  // namespace emu
}  // namespace simt
DIFFATTN_NAMESPACE_END
