// The doctest main of the CPU suite: says which path (cpu/isa.hpp) the run exercises, and exits
// with 77 (ctest's SKIP_RETURN_CODE: reported as skipped, never as passed) when the path forced
// through DIFFATTN_CPU_ISA is one this CPU cannot run. A misspelt path name fails the run.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cstdio>

#include <diffattn/cpu/isa.hpp>

int main(int argc, char** argv) {
  namespace cpu = diffattn::cpu;
  cpu::Isa isa = cpu::Isa::none;
  const diffattn::Status s = cpu::select_isa(cpu::Isa::automatic, &isa);
  if (s.code() == diffattn::StatusCode::unsupported) {
    std::printf("SKIPPED (not passed): %s\n", s.message().c_str());
    return 77;
  }
  if (!s.ok()) {
    std::printf("FAILED: %s\n", s.message().c_str());
    return 1;
  }
  std::printf("cpu path under test: %s (best on this CPU: %s)\n", cpu::isa_name(isa), cpu::isa_name(cpu::best_isa()));
  doctest::Context ctx(argc, argv);
  return ctx.run();
}
