#!/usr/bin/env bash
# Builds every test and runs them through ctest (the README's second command, and CI's).
# No GPU needed: CUDA sources are compiled when nvcc is found (DIFFATTN_CUDA=OFF turns that off)
# and CUDA kernels run under the host emulator.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
"$root/scripts/deps.sh"
build="${BUILD_DIR:-$root/build}"
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DDIFFATTN_CUDA="${DIFFATTN_CUDA:-AUTO}" \
      -DDIFFATTN_BUILD_TESTS=ON -DDIFFATTN_BUILD_BENCH=ON -DDIFFATTN_BUILD_EXAMPLES=ON
cmake --build "$build" -j "$(nproc)"
ctest --test-dir "$build" --output-on-failure -j "$(nproc)" "$@"
# ASan + UBSan and TSan builds of the host suites (DIFFATTN_SANITIZE=OFF skips them)
if [ "${DIFFATTN_SANITIZE:-ON}" != OFF ]; then "$root/scripts/sanitize.sh"; fi
