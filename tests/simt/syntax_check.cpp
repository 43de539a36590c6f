// One TU with every simt header and the test kernels, compiled -fsyntax-only by each host
// compiler found (ctest simt_syntax_<compiler>): the kernel sources stay valid C++17 for both
// g++ and clang++, whichever builds the tests.
#include "diffattn/simt/simt.hpp"
#include "gemm_kernel.hpp"
#include "probe_kernels.hpp"

template struct simt_test::GemmKernel<diffattn::simt::fmt16::f16, false>;
template struct simt_test::GemmKernel<diffattn::simt::fmt16::bf16, true>;

void syntax_check_instantiate() {
  std::uint32_t r[4] = {};
  simt_test::ProbeKernel{}(r);
  simt_test::GemmKernel<diffattn::simt::fmt16::f16, false>{}(nullptr, nullptr, nullptr, 64, 64, 64);
  simt_test::GemmKernel<diffattn::simt::fmt16::bf16, true>{}(nullptr, nullptr, nullptr, 64, 64, 64);
}

// The shared-memory proxy's copy, assignment and compound operators (host side).
void syntax_check_smem_proxy() {
  namespace simt = diffattn::simt;
  simt::smem_ptr<float> s = simt::shared_memory<float>();
  s[0] = s[1];
  auto r = s[2];
  float x = r;
  s[3] += x;
  s[4] = x * 2.f;
  simt::smem_ptr<simt::u32x4> v = s.cast<simt::u32x4>() + 1;
  v.store(v.load());
}
