#!/usr/bin/env bash
# The sanitizer stage of the README's test command (scripts/test.sh runs it after the main suite;
# DIFFATTN_SANITIZE=OFF skips it). Two builds beside the main one, host compiler only:
#   ASan + UBSan (no recovery: the first report fails the test): the core, reference, CPU (on the
#     best path) and simt suites, one emulated CUDA configuration (bf16, d = 64: the forward
#     and the backward kernels under the emulator's fibers), and the fuzz tests (10 s each);
#   TSan: the CPU suite's concurrency tests (concurrent callers sharing the thread pool).
# About 10 minutes on 2 cores.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build="${BUILD_DIR:-$root/build}"
jobs="$(nproc)"

configure() {  # dir, flags
  # -O1 -g1: line tables for the reports at a fraction of -O2 -g's compile time
  cmake -S "$root" -B "$1" -DCMAKE_BUILD_TYPE=None -DDIFFATTN_CUDA=OFF \
        -DDIFFATTN_BUILD_TESTS=ON -DDIFFATTN_BUILD_BENCH=OFF -DDIFFATTN_BUILD_EXAMPLES=OFF \
        -DDIFFATTN_CUDA_HEAD_DIMS=64 -DDIFFATTN_CUDA_DTYPES=bf16 \
        "-DCMAKE_CXX_FLAGS=-O1 -g1 $2 -fno-omit-frame-pointer" "-DCMAKE_EXE_LINKER_FLAGS=$2" >/dev/null
}

echo "== sanitizers: ASan + UBSan"
asan="$build-asan"
configure "$asan" "-fsanitize=address,undefined -fno-sanitize-recover=all"
simt="simt_test_emu_basics simt_test_layouts simt_test_gemm simt_test_reduce simt_test_faults simt_test_probe"
# shellcheck disable=SC2086
cmake --build "$asan" -j "$jobs" --target test_core test_reference test_cpu $simt test_cuda_forward_emulated_bf16_d64 test_cuda_backward_emulated_bf16_d64 test_fuzz
# allocator_may_return_null: the reference's out-of-memory test needs operator new to throw
DIFFATTN_FUZZ_SECONDS="${DIFFATTN_FUZZ_SECONDS:-10}" \
ASAN_OPTIONS="detect_leaks=1:allocator_may_return_null=1:abort_on_error=0" \
UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
  ctest --test-dir "$asan" --output-on-failure -j "$jobs" \
        -R '^(test_core|test_reference|test_cpu|simt_test_(emu_basics|layouts|gemm|reduce|faults|probe)|test_cuda_(forward|backward)_emulated_bf16_d64|test_fuzz)$'

echo "== sanitizers: TSan (concurrent cpu::forward callers)"
tsan="$build-tsan"
configure "$tsan" "-fsanitize=thread"
cmake --build "$tsan" -j "$jobs" --target test_cpu
TSAN_OPTIONS="halt_on_error=1" "$tsan/tests/cpu/test_cpu" -tc='*concurrent*,*held up*'
