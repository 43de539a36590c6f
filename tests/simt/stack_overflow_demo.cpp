// Overflows one fiber's stack on purpose: the emulator must say which thread did it and abort.
// Run by ctest (simt_stack_overflow_message), which checks the message.
#include <cstdio>

#include "diffattn/simt/simt.hpp"

namespace {
__attribute__((noinline)) int deep(int n) {
  volatile char frame[4096];
  frame[0] = static_cast<char>(n);
  frame[4095] = 1;
  return n == 0 ? frame[0] : deep(n - 1) + frame[4095] + frame[0];
}
}  // namespace

int main() {
  int out = 0;
  diffattn::simt::emu::launch(diffattn::simt::dim3(2), 8, 0, [](int* o) {
    if (diffattn::simt::block_idx().x == 1 && diffattn::simt::thread_rank() == 3) *o = deep(1000);
  }, &out);
  std::printf("no overflow: %d\n", out);
  return 0;
}
