#!/usr/bin/env bash
# Installs the Debian packages diffattn needs (Eigen, doctest, Google Benchmark, CMake, g++)
# when they are missing. Runs apt-get as root (directly, or through sudo when available).
set -euo pipefail
need=()
[ -f /usr/include/eigen3/Eigen/Core ] || need+=(libeigen3-dev)
[ -f /usr/include/doctest/doctest.h ] || need+=(doctest-dev)
{ [ -f /usr/include/benchmark/benchmark.h ] || [ -f /usr/local/include/benchmark/benchmark.h ]; } || need+=(libbenchmark-dev)
command -v cmake >/dev/null || need+=(cmake)
command -v g++ >/dev/null || need+=(g++)
command -v make >/dev/null || need+=(make)
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
echo "diffattn: installing missing Debian packages: ${need[*]}"
if [ "$(id -u)" -eq 0 ]; then SUDO=""; elif command -v sudo >/dev/null; then SUDO="sudo"; else
  echo "diffattn: need root to install ${need[*]} (apt-get install ${need[*]})" >&2; exit 1
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
