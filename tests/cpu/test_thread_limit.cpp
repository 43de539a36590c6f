// cpu::forward and cpu::backward with more threads than the system will start.
//
// Its own process, so that the address-space limit set at the start of main (before any
// thread exists) binds only here: RLIMIT_AS = what the process has mapped + 1 GiB, so that
// std::thread fails after about a hundred 8 MiB stacks (the workspace of 4096 threads still fits). A call asking for kMaxThreads threads must
// still succeed, and give the bits of the same call on one thread (8192 query blocks: no key
// splits, so the thread count does not change the result). Before the pool caught it,
// std::thread's std::system_error left cpu::forward. num_threads past kMaxThreads is rejected.
// Not built under the sanitizers (their shadow memory cannot live under an address limit).
// support/problem.hpp uses doctest's checks; this file has its own main, so it holds doctest's
// implementation without doctest's main.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>
#include <sys/resource.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>

#include <diffattn/cpu/backward.hpp>
#include <diffattn/cpu/forward.hpp>

#include "support/problem.hpp"

using namespace dt;

namespace {

int failures = 0;
void check(bool ok, const std::string& what) {
  std::printf("%s: %s\n", ok ? "ok  " : "FAIL", what.c_str());
  if (!ok) ++failures;
}

long mapped_bytes() {  // VmSize of /proc/self/status, in bytes
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("VmSize:", 0) == 0) return std::stol(line.substr(7)) * 1024;
  return -1;
}

template <class T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

}  // namespace

int main() {
  Shape s;
  s.B = 64; s.H = 128; s.Hkv = 32; s.N = 17; s.S = 40; s.d = 8; s.mask = da::MaskKind::causal;
  Problem<float> one(s, 5), many(s, 5), back1(s, 6), backn(s, 6);
  const long vm = mapped_bytes();
  if (vm <= 0) {
    std::printf("FAIL: cannot read VmSize from /proc/self/status\n");
    return 1;
  }
  rlimit lim{};
  lim.rlim_cur = lim.rlim_max = static_cast<rlim_t>(vm) + (1L << 30);
  if (setrlimit(RLIMIT_AS, &lim) != 0) {
    std::printf("FAIL: setrlimit(RLIMIT_AS) failed\n");
    return 1;
  }
  da::cpu::Options o1, on;
  o1.num_threads = 1;
  on.num_threads = da::cpu::kMaxThreads;
  da::Params p1 = one.params(), pn = many.params();
  const da::Status s1 = da::cpu::forward(p1, o1);
  check(s1.ok(), "forward, 1 thread: " + s1.to_string());
  const da::Status sn = da::cpu::forward(pn, on);
  check(sn.ok(), "forward, kMaxThreads threads under the limit: " + sn.to_string());
  check(same_bits(one.out, many.out) && same_bits(one.lse1, many.lse1) && same_bits(one.o2, many.o2),
        "forward: the same bits as on 1 thread");

  // the backward of the same problem (its saved tensors from the forward)
  da::Params f1 = back1.params(), fn = backn.params();
  check(da::cpu::forward(f1, o1).ok() && da::cpu::forward(fn, o1).ok(), "forward for the backward");
  da::BackwardParams b1 = back1.backward_params(), bn = backn.backward_params();
  b1.saved = da::saved_from(f1.extras);
  bn.saved = da::saved_from(fn.extras);
  const da::Status t1 = da::cpu::backward(b1, o1);
  check(t1.ok(), "backward, 1 thread: " + t1.to_string());
  const da::Status tn = da::cpu::backward(bn, on);
  check(tn.ok(), "backward, kMaxThreads threads under the limit: " + tn.to_string());
  check(same_bits(back1.dq, backn.dq) && same_bits(back1.dk, backn.dk) && same_bits(back1.dv, backn.dv),
        "backward: the same bits as on 1 thread");

  da::cpu::Options over;
  over.num_threads = da::cpu::kMaxThreads + 1;
  const da::Status so = da::cpu::forward(p1, over);
  check(so.code() == da::StatusCode::invalid_argument && so.message().find("options.num_threads") != std::string::npos,
        "num_threads = kMaxThreads + 1 rejected by forward: " + so.to_string());
  const da::Status bo = da::cpu::backward(b1, over);
  check(bo.code() == da::StatusCode::invalid_argument && bo.message().find("options.num_threads") != std::string::npos,
        "num_threads = kMaxThreads + 1 rejected by backward: " + bo.to_string());
  std::printf("%s\n", failures == 0 ? "all passed" : "FAILED");
  return failures == 0 ? 0 : 1;
}
