// diffattn/simt/emu/context.hpp: fibers for the host emulator: a hand-written stack switch and a
// pool of guarded stacks.
//
// Each emulated CUDA thread is a fiber. glibc's swapcontext makes a signal-mask system call per
// switch (measured 16k block barriers per second with 128 threads); the switch below saves only
// the callee-saved registers and the x87/MXCSR control words (System V x86-64 ABI), a few ns.
// Other ISAs fall back to ucontext (correct, slower); define DIFFATTN_SIMT_USE_UCONTEXT to force
// the fallback on x86-64 too.
//
// Stacks come from mmap with one PROT_NONE guard page below each, so an overflow faults at once
// instead of corrupting a neighbour. They are pooled process-wide and reused across blocks and
// launches.
//
// This header (with the rest of simt/) is the only place in diffattn with inline assembly.
#pragma once

#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <new>
#include <vector>

#include "diffattn/simt/config.hpp"

// AddressSanitizer must be told about every stack switch (otherwise it reports false errors: an
// exception thrown on a fiber stack, a reused stack still poisoned by frames that never returned).
#if defined(__SANITIZE_ADDRESS__)
#define DIFFATTN_SIMT_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define DIFFATTN_SIMT_ASAN 1
#endif
#endif
#ifndef DIFFATTN_SIMT_ASAN
#define DIFFATTN_SIMT_ASAN 0
#endif
#if DIFFATTN_SIMT_ASAN
#include <pthread.h>
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

#if !defined(__x86_64__) || defined(DIFFATTN_SIMT_USE_UCONTEXT)
#define DIFFATTN_SIMT_UCONTEXT 1
#include <ucontext.h>
#else
#define DIFFATTN_SIMT_UCONTEXT 0
#endif

DIFFATTN_NAMESPACE_BEGIN
namespace simt {
namespace emu {
namespace detail {

/// A fiber stack: usable bytes [base, base + size); a guard page lies just below base.
struct Stack {
  unsigned char* base = nullptr;
  std::size_t size = 0;
};

inline std::size_t page_size() {
  static const std::size_t p = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  return p;
}

/// Process-wide pool of guarded stacks, bucketed by size. Thread-safe; stacks live until exit.
class StackPool {
 public:
  static StackPool& instance() {
    static StackPool* pool = new StackPool();  // never destroyed: worker threads may outlive main
    return *pool;
  }
  /// A stack of at least `bytes` usable bytes (rounded up to pages), from the pool if possible.
  Stack acquire(std::size_t bytes) {
    const std::size_t ps = page_size();
    bytes = (bytes + ps - 1) / ps * ps;
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (std::size_t i = free_.size(); i-- > 0;) {
        if (free_[i].size == bytes) {
          Stack s = free_[i];
          free_[i] = free_.back();
          free_.pop_back();
          return s;
        }
      }
    }
    void* p = ::mmap(nullptr, bytes + ps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                     -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    if (::mprotect(p, ps, PROT_NONE) != 0) {
      ::munmap(p, bytes + ps);
      throw std::bad_alloc();
    }
    return Stack{static_cast<unsigned char*>(p) + ps, bytes};
  }
  void release(Stack s) {
    if (!s.base) return;
    std::lock_guard<std::mutex> lock(mu_);
    free_.push_back(s);
  }

 private:
  StackPool() = default;
  std::mutex mu_;
  std::vector<Stack> free_;
};

using FiberEntry = void (*)(void*);

/// The stack a context runs on, for AddressSanitizer's fiber annotations (unused without ASan).
struct StackBounds {
  const void* bottom = nullptr;
  std::size_t size = 0;
};

/// The calling OS thread's own stack (where the scheduler runs), once per thread.
inline StackBounds thread_stack_bounds() {
  thread_local StackBounds b = [] {
    StackBounds r;
#if DIFFATTN_SIMT_ASAN
    pthread_attr_t attr;
    if (pthread_getattr_np(pthread_self(), &attr) == 0) {
      void* addr = nullptr;
      std::size_t size = 0;
      if (pthread_attr_getstack(&attr, &addr, &size) == 0) r = StackBounds{addr, size};
      pthread_attr_destroy(&attr);
    }
#endif
    return r;
  }();
  return b;
}

/// Before a switch to a context on `to` (ASan: start_switch_fiber; `fake` keeps this context's
/// fake stack, nullptr when this context never resumes).
inline void asan_before_switch(void** fake, const StackBounds& to) {
#if DIFFATTN_SIMT_ASAN
  __sanitizer_start_switch_fiber(fake, to.bottom, to.size);
#else
  (void)fake, (void)to;
#endif
}
/// After a context resumes (or a fiber starts: fake == nullptr).
inline void asan_after_switch(void* fake) {
#if DIFFATTN_SIMT_ASAN
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#else
  (void)fake;
#endif
}
/// A reused stack may still be poisoned by frames of a fiber that never returned (a faulted
/// block): clear it before a new fiber runs on it.
inline void asan_fresh_stack(const Stack& s) {
#if DIFFATTN_SIMT_ASAN
  __asan_unpoison_memory_region(s.base, s.size);
#else
  (void)s;
#endif
}

#if !DIFFATTN_SIMT_UCONTEXT

/// Saves the callee-saved registers and control words on the current stack, stores the stack
/// pointer to *save_sp, loads load_sp and restores what it saved there. Returns into the other
/// context.
__attribute__((naked, noinline)) inline void switch_stack(void** /*save_sp*/, void* /*load_sp*/) {
  asm volatile(
      "pushq %rbp\n\t"
      "pushq %rbx\n\t"
      "pushq %r12\n\t"
      "pushq %r13\n\t"
      "pushq %r14\n\t"
      "pushq %r15\n\t"
      "subq $8, %rsp\n\t"
      "stmxcsr (%rsp)\n\t"
      "fnstcw 4(%rsp)\n\t"
      "movq %rsp, (%rdi)\n\t"
      "movq %rsi, %rsp\n\t"
      "ldmxcsr (%rsp)\n\t"
      "fldcw 4(%rsp)\n\t"
      "addq $8, %rsp\n\t"
      "popq %r15\n\t"
      "popq %r14\n\t"
      "popq %r13\n\t"
      "popq %r12\n\t"
      "popq %rbx\n\t"
      "popq %rbp\n\t"
      "retq\n\t");
}

/// First code a new fiber runs (switch_stack "returns" here): entry(arg) with arg in r12 and
/// entry in r13, on a 16-byte aligned stack. entry never returns.
__attribute__((naked, noinline)) inline void fiber_trampoline() {
  asm volatile(
      "movq %r12, %rdi\n\t"
      "callq *%r13\n\t"
      "ud2\n\t");
}

/// A suspended execution context.
struct Context {
  void* sp = nullptr;
  StackBounds stack = thread_stack_bounds();  // a fiber's stack after context_make
};

/// Prepares `c` so that switching to it calls entry(arg) on `stack`, with the current thread's
/// MXCSR and x87 control word.
inline void context_make(Context& c, const Stack& stack, FiberEntry entry, void* arg) {
  auto top = reinterpret_cast<std::uintptr_t>(stack.base + stack.size);
  top &= ~std::uintptr_t{15};
  top -= 16;  // keep a little room above the first frame
  auto* w = reinterpret_cast<std::uint64_t*>(top);
  w[-1] = reinterpret_cast<std::uint64_t>(&fiber_trampoline);  // return address
  w[-2] = 0;                                                     // rbp
  w[-3] = 0;                                                     // rbx
  w[-4] = reinterpret_cast<std::uint64_t>(arg);                  // r12
  w[-5] = reinterpret_cast<std::uint64_t>(entry);                // r13
  w[-6] = 0;                                                     // r14
  w[-7] = 0;                                                     // r15
  std::uint32_t mxcsr = 0;
  std::uint16_t fpucw = 0;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fpucw));
  std::uint64_t ctl = mxcsr | (std::uint64_t{fpucw} << 32);
  std::memcpy(&w[-8], &ctl, sizeof ctl);
  c.sp = &w[-8];
  c.stack = StackBounds{stack.base, stack.size};
  asan_fresh_stack(stack);
}

/// Suspends the running context into `from` and resumes `to`.
inline void context_switch(Context& from, Context& to) {
  void* fake = nullptr;
  asan_before_switch(&fake, to.stack);
  switch_stack(&from.sp, to.sp);
  asan_after_switch(fake);
}

#else  // ucontext fallback

struct Context {
  ucontext_t uc;
  StackBounds stack = thread_stack_bounds();
};

inline void ucontext_entry(unsigned f_lo, unsigned f_hi, unsigned a_lo, unsigned a_hi);

inline void context_make(Context& c, const Stack& stack, FiberEntry entry, void* arg) {
  ::getcontext(&c.uc);
  c.uc.uc_stack.ss_sp = stack.base;
  c.uc.uc_stack.ss_size = stack.size;
  c.uc.uc_link = nullptr;
  auto p = reinterpret_cast<std::uintptr_t>(arg);
  auto fn = reinterpret_cast<std::uintptr_t>(entry);
  // makecontext passes int arguments: split both pointers into halves.
  ::makecontext(&c.uc, reinterpret_cast<void (*)()>(&ucontext_entry), 4,
                static_cast<unsigned>(fn & 0xffffffffu), static_cast<unsigned>(fn >> 32),
                static_cast<unsigned>(p & 0xffffffffu), static_cast<unsigned>(p >> 32));
  c.stack = StackBounds{stack.base, stack.size};
  asan_fresh_stack(stack);
}
inline void context_switch(Context& from, Context& to) {
  void* fake = nullptr;
  asan_before_switch(&fake, to.stack);
  ::swapcontext(&from.uc, &to.uc);
  asan_after_switch(fake);
}
inline void ucontext_entry(unsigned f_lo, unsigned f_hi, unsigned a_lo, unsigned a_hi) {
  asan_after_switch(nullptr);  // a new fiber: nothing of its own to restore
  auto fn = reinterpret_cast<FiberEntry>((std::uintptr_t{f_hi} << 32) | f_lo);
  fn(reinterpret_cast<void*>((std::uintptr_t{a_hi} << 32) | a_lo));
}

#endif

}  // namespace detail
}  // namespace emu
}  // namespace simt
DIFFATTN_NAMESPACE_END
