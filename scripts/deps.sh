#!/usr/bin/env bash
# Installs the Debian packages diffattn needs (Eigen, doctest, Google Benchmark, CMake, g++)
# when they are missing. Runs apt-get as root (directly, or through sudo when available).
# On x86-64 hosts also the aarch64 cross compiler and qemu-user for test_cpu_aarch64_qemu
# (DIFFATTN_CROSS=OFF leaves them out); failing to get those is not fatal: that test then skips.
set -euo pipefail
need=()
[ -f /usr/include/eigen3/Eigen/Core ] || need+=(libeigen3-dev)
[ -f /usr/include/doctest/doctest.h ] || need+=(doctest-dev)
{ [ -f /usr/include/benchmark/benchmark.h ] || [ -f /usr/local/include/benchmark/benchmark.h ]; } || need+=(libbenchmark-dev)
command -v cmake >/dev/null || need+=(cmake)
command -v g++ >/dev/null || need+=(g++)
command -v make >/dev/null || need+=(make)
# python3 -m venv: the SASS model's disassemblers (PyPI) and the PyTorch peer live in venvs
python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
cross=()
if [ "$(uname -m)" = x86_64 ] && [ "${DIFFATTN_CROSS:-ON}" != OFF ]; then
  command -v aarch64-linux-gnu-g++ >/dev/null || cross+=(g++-aarch64-linux-gnu)
  { command -v qemu-aarch64 >/dev/null || command -v qemu-aarch64-static >/dev/null; } || cross+=(qemu-user)
fi
if [ ${#need[@]} -eq 0 ] && [ ${#cross[@]} -eq 0 ]; then exit 0; fi
echo "diffattn: installing missing Debian packages: $(echo ${need[*]} ${cross[*]})"
if [ "$(id -u)" -eq 0 ]; then SUDO=""; elif command -v sudo >/dev/null; then SUDO="sudo"; else
  if [ ${#need[@]} -eq 0 ]; then
    echo "diffattn: warning: no root to install ${cross[*]}: test_cpu_aarch64_qemu will skip" >&2; exit 0
  fi
  echo "diffattn: need root to install ${need[*]} (apt-get install ${need[*]})" >&2; exit 1
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq || [ ${#need[@]} -eq 0 ]
if [ ${#need[@]} -gt 0 ]; then $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"; fi
if [ ${#cross[@]} -gt 0 ]; then
  $SUDO apt-get install -y -qq --no-install-recommends "${cross[@]}" ||
    echo "diffattn: warning: could not install ${cross[*]}: test_cpu_aarch64_qemu will skip" >&2
fi
