#!/usr/bin/env bash
# Builds and runs examples/quickstart (the README's first command). No GPU needed; CUDA parts
# are built when nvcc is found (DIFFATTN_CUDA=OFF in the environment turns them off).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
"$root/scripts/deps.sh"
build="${BUILD_DIR:-$root/build}"
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DDIFFATTN_CUDA="${DIFFATTN_CUDA:-AUTO}" \
      -DDIFFATTN_BUILD_TESTS=OFF -DDIFFATTN_BUILD_BENCH=OFF -DDIFFATTN_BUILD_EXAMPLES=ON
cmake --build "$build" --target quickstart -j "$(nproc)"
"$build/examples/quickstart"
