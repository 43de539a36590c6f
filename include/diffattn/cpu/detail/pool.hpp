// diffattn/cpu/detail/pool.hpp: a small persistent thread pool for the CPU kernels, shared by
// concurrent callers.
//
// One process-wide pool (a function-local static) whose workers sleep on a condition variable
// between jobs. run(n, fn) calls fn(0) .. fn(n - 1) concurrently and returns when all have
// finished: fn(0) on the calling thread, fn(1) .. fn(n - 1) queued as tasks for the workers.
// Several threads may call run() at once (an engine with a thread per request): their tasks
// share the queue and the workers, and a caller that has finished fn(0) runs any of its own
// tasks no worker has taken yet, so every call makes progress however busy the workers are.
// The kernels hand out their work items through an atomic counter inside fn, so which thread
// runs a task does not change any result.
//
// Workspaces: acquire(bytes) lends a 64-byte aligned buffer of at least `bytes` (reused from
// earlier calls when one is free, allocated otherwise) and release() takes it back, so
// concurrent calls never share one and a steady stream of calls allocates nothing.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <system_error>
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

  /// Calls fn(t) for t in [0, n), fn(0) on the calling thread; returns when all have returned.
  /// Safe to call from several threads at once.
  void run(int n, const std::function<void(int)>& fn) {
    if (n <= 1) {
      fn(0);
      return;
    }
    Job job{&fn, n - 1};
    bool queued = true;
    {
      std::lock_guard<std::mutex> g(m_);
      grow_locked(n - 1);
      const std::size_t before = queue_.size();
      try {
        for (int t = 1; t < n; ++t) queue_.push_back({&job, t});
      } catch (const std::bad_alloc&) {  // no room to queue: take the tasks back, run them all here
        queue_.resize(before);
        job.pending = 0;
        queued = false;
      }
    }
    // (a local: workers update job.pending under the mutex once the tasks are queued)
    if (!queued) {
      for (int t = 0; t < n; ++t) fn(t);
      return;
    }
    cv_.notify_all();
    fn(0);
    // run our own tasks that no worker has started, then wait for the ones they have
    for (;;) {
      Task mine{nullptr, 0};
      {
        std::lock_guard<std::mutex> g(m_);
        for (auto it = queue_.begin(); it != queue_.end(); ++it)
          if (it->job == &job) {
            mine = *it;
            queue_.erase(it);
            break;
          }
      }
      if (mine.job == nullptr) break;
      execute(mine);
    }
    std::unique_lock<std::mutex> g(m_);
    done_cv_.wait(g, [&] { return job.pending == 0; });
  }

  /// Lends a 64-byte aligned workspace of at least `bytes`; give it back with release().
  void* acquire(std::size_t bytes) {
    std::unique_ptr<Buffer> b;
    {
      std::lock_guard<std::mutex> g(ws_m_);
      for (auto it = free_.begin(); it != free_.end(); ++it)
        if ((*it)->bytes >= bytes) {
          b = std::move(*it);
          free_.erase(it);
          break;
        }
      if (!b && !free_.empty()) {  // grow the largest free one rather than keep it too
        b = std::move(free_.back());
        free_.pop_back();
      }
    }
    if (!b) b.reset(new Buffer);
    if (b->bytes < bytes) {
      b->data.reset(new unsigned char[bytes + 64]);
      b->bytes = bytes;
    }
    const std::uintptr_t a = reinterpret_cast<std::uintptr_t>(b->data.get());
    void* p = b->data.get() + ((64 - a % 64) % 64);
    std::lock_guard<std::mutex> g(ws_m_);
    lent_.push_back(std::move(b));
    return p;
  }
  /// Takes back a workspace lent by acquire().
  void release(void* p) {
    std::lock_guard<std::mutex> g(ws_m_);
    for (auto it = lent_.begin(); it != lent_.end(); ++it) {
      const std::uintptr_t a = reinterpret_cast<std::uintptr_t>((*it)->data.get());
      if ((*it)->data.get() + ((64 - a % 64) % 64) == p) {
        free_.push_back(std::move(*it));
        lent_.erase(it);
        return;
      }
    }
  }

 private:
  struct Job {
    const std::function<void(int)>* fn;
    int pending;  ///< tasks not finished yet (guarded by m_)
  };
  struct Task {
    Job* job;
    int tid;
  };
  struct Buffer {
    std::unique_ptr<unsigned char[]> data;
    std::size_t bytes = 0;
  };

  ThreadPool() = default;

  // Starts workers up to n. Where the system will not start more (std::system_error from
  // std::thread: a thread or address-space limit) the pool keeps the workers it has: run()'s
  // caller executes every task no worker takes, so the result is the same, only slower.
  void grow_locked(int n) {
    try {
      while (static_cast<int>(workers_.size()) < n) workers_.emplace_back([this] { loop(); });
    } catch (const std::system_error&) {
    } catch (const std::bad_alloc&) {
    }
  }

  void execute(const Task& t) {
    (*t.job->fn)(t.tid);
    std::lock_guard<std::mutex> g(m_);
    if (--t.job->pending == 0) done_cv_.notify_all();
  }

  void loop() {
    for (;;) {
      Task t{nullptr, 0};
      {
        std::unique_lock<std::mutex> g(m_);
        cv_.wait(g, [&] { return stop_ || !queue_.empty(); });
        if (stop_) return;
        t = queue_.front();
        queue_.pop_front();
      }
      execute(t);
    }
  }

  std::mutex m_;
  std::condition_variable cv_, done_cv_;
  std::vector<std::thread> workers_;
  std::deque<Task> queue_;
  bool stop_ = false;
  std::mutex ws_m_;
  std::vector<std::unique_ptr<Buffer>> free_, lent_;
};

/// A workspace lent by the pool for the duration of one call (RAII).
class PooledWorkspace {
 public:
  PooledWorkspace(ThreadPool& pool, std::size_t bytes) : pool_(pool), p_(pool.acquire(bytes)) {}
  ~PooledWorkspace() { pool_.release(p_); }
  PooledWorkspace(const PooledWorkspace&) = delete;
  PooledWorkspace& operator=(const PooledWorkspace&) = delete;
  void* get() const { return p_; }

 private:
  ThreadPool& pool_;
  void* p_;
};

}  // namespace detail
}  // namespace cpu
DIFFATTN_NAMESPACE_END
