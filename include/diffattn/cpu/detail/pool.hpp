// diffattn/cpu/detail/pool.hpp: a small persistent thread pool for the CPU kernels.
//
// One process-wide pool (a function-local static) whose workers sleep on a condition variable
// between calls; run(n, fn) calls fn(0) .. fn(n - 1) concurrently, fn(0) on the calling thread,
// and returns when all have finished. Calls are serialised by a mutex that the caller holds
// for the whole forward (lock()), which also guards the pool's workspace.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "diffattn/core/config.hpp"

DIFFATTN_NAMESPACE_BEGIN
namespace cpu {
namespace detail {

class ThreadPool {
 public:
  /// The process-wide pool.
  static ThreadPool& instance() {
    static ThreadPool pool;
    return pool;
  }
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;
  ~ThreadPool() {
    {
      std::lock_guard<std::mutex> g(m_);
      stop_ = true;
    }
    cv_.notify_all();
    for (std::thread& t : workers_) t.join();
  }

  /// Held by a forward call for its whole duration (pool and workspace belong to it).
  std::unique_lock<std::mutex> lock() { return std::unique_lock<std::mutex>(call_m_); }

  /// Calls fn(t) for t in [0, n), fn(0) on the calling thread. Requires lock() held.
  void run(int n, const std::function<void(int)>& fn) {
    if (n <= 1) {
      fn(0);
      return;
    }
    grow(n - 1);
    {
      std::lock_guard<std::mutex> g(m_);
      fn_ = &fn;
      active_ = n - 1;
      pending_ = n - 1;
      ++generation_;
    }
    cv_.notify_all();
    fn(0);
    std::unique_lock<std::mutex> g(m_);
    done_cv_.wait(g, [&] { return pending_ == 0; });
    fn_ = nullptr;
  }

  /// A 64-byte aligned workspace of at least `bytes`, kept between calls (grows only).
  /// Requires lock() held.
  void* workspace(std::size_t bytes) {
    if (bytes > ws_bytes_) {
      ws_.reset(new unsigned char[bytes + 64]);
      ws_bytes_ = bytes;
    }
    const std::uintptr_t a = reinterpret_cast<std::uintptr_t>(ws_.get());
    return ws_.get() + ((64 - a % 64) % 64);
  }

 private:
  ThreadPool() = default;

  void grow(int n) {
    while (static_cast<int>(workers_.size()) < n) {
      const int id = static_cast<int>(workers_.size()) + 1;
      workers_.emplace_back([this, id] { loop(id); });
    }
  }

  void loop(int id) {
    std::uint64_t seen = 0;
    {
      std::lock_guard<std::mutex> g(m_);
      seen = generation_;  // a worker created for this call must still take part in it
      if (fn_ != nullptr) --seen;
    }
    for (;;) {
      const std::function<void(int)>* fn;
      {
        std::unique_lock<std::mutex> g(m_);
        cv_.wait(g, [&] { return stop_ || generation_ != seen; });
        if (stop_) return;
        seen = generation_;
        if (id > active_) continue;
        fn = fn_;
      }
      (*fn)(id);
      {
        std::lock_guard<std::mutex> g(m_);
        if (--pending_ == 0) done_cv_.notify_one();
      }
    }
  }

  std::mutex call_m_;
  std::mutex m_;
  std::condition_variable cv_, done_cv_;
  std::vector<std::thread> workers_;
  const std::function<void(int)>* fn_ = nullptr;
  int active_ = 0, pending_ = 0;
  std::uint64_t generation_ = 0;
  bool stop_ = false;
  std::unique_ptr<unsigned char[]> ws_;
  std::size_t ws_bytes_ = 0;
};

}  // namespace detail
}  // namespace cpu
DIFFATTN_NAMESPACE_END
