#!/usr/bin/env bash
# scripts/gpu_check.sh: the one command for a machine with an NVIDIA GPU. Builds the CUDA tests,
# layout probe and benchmark for this GPU's architecture only, runs the GPU test suite, the
# compute-sanitizer tools on small cases, the layout probe, the benchmark and the PyTorch peer,
# and writes everything (logs, JSON, env.json, summary.md) into one folder.
#
#   scripts/gpu_check.sh [--part all|build|test|sanitize|probe|bench|peer[,...]] [--out DIR]
#                        [--build DIR] [--quick] [--python PY] [--deps DIR] [--archive FILE]
#   scripts/gpu_check.sh --fetch-deps DIR
#
#   --part     parts to run, comma separated (default all = build,test,sanitize,probe,bench,peer);
#              every part runs even when another failed; the exit code is 1 if any failed
#   --out      results folder (default bench/results/gpu-<device name>/, e.g. gpu-nvidia-h100-80gb-hbm3);
#              a later call with other parts adds to the same summary.md
#   --build    CMake build folder (default build-gpu/); the parts after build use its binaries
#   --quick    fewer benchmark sizes (N = 2048, 8192) for the benchmark and the peer
#   --python   interpreter with torch for the peer (default python3); without torch with CUDA
#              the peer part is skipped and says so
#   --deps     a prefix holding Eigen, doctest and Google Benchmark (as --fetch-deps makes it),
#              for machines that cannot apt-get; otherwise missing ones are installed by
#              scripts/deps.sh
#   --archive  also write the results folder as a .tar.gz after each part
#   Environment: DIFFATTN_SANITIZE_TOOLS (default "memcheck racecheck synccheck initcheck"),
#   DIFFATTN_BENCH_MIN_TIME (seconds per benchmark run; Google Benchmark's default 0.5).
#   DIFFATTN_SANITIZE_STEP_S (each sanitizer run's limit, default 170 s), DIFFATTN_BENCH_FILTER
#   (the benchmark's --benchmark_filter regex, in place of --quick's).
#   --fetch-deps DIR  (on a Debian/Ubuntu machine with network, no GPU needed) downloads the
#              Debian packages of Eigen, doctest and Google Benchmark and unpacks them into DIR
#
# Where each command may run only ~10 minutes: --part build,test in one call, then
# --part sanitize,probe,bench,peer in the next on the same machine (the build folder is reused as
# it is, nothing needs copying between the calls; with the same --out, summary.md covers both).
#
# Without a GPU (no nvidia-smi, or it lists no device) it says "no CUDA GPU found" and exits 2;
# without nvcc (when building) it says so and exits 3; bad arguments exit 64.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
all_parts="build test sanitize probe bench peer"

usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//'; }
die_usage() { echo "gpu_check: $*" >&2; echo "run scripts/gpu_check.sh --help for the options" >&2; exit 64; }

out="" parts="all" build="" quick=0 python="python3" deps="" archive="" fetch=""
while [ $# -gt 0 ]; do
  case "$1" in
    --out) [ $# -ge 2 ] || die_usage "--out needs a folder"; out="$2"; shift 2 ;;
    --out=*) out="${1#*=}"; shift ;;
    --part|--parts) [ $# -ge 2 ] || die_usage "--part needs a value"; parts="$2"; shift 2 ;;
    --part=*|--parts=*) parts="${1#*=}"; shift ;;
    --build) [ $# -ge 2 ] || die_usage "--build needs a folder"; build="$2"; shift 2 ;;
    --build=*) build="${1#*=}"; shift ;;
    --quick) quick=1; shift ;;
    --python) [ $# -ge 2 ] || die_usage "--python needs an interpreter"; python="$2"; shift 2 ;;
    --python=*) python="${1#*=}"; shift ;;
    --deps) [ $# -ge 2 ] || die_usage "--deps needs a folder"; deps="$2"; shift 2 ;;
    --deps=*) deps="${1#*=}"; shift ;;
    --archive) [ $# -ge 2 ] || die_usage "--archive needs a file"; archive="$2"; shift 2 ;;
    --archive=*) archive="${1#*=}"; shift ;;
    --fetch-deps) [ $# -ge 2 ] || die_usage "--fetch-deps needs a folder"; fetch="$2"; shift 2 ;;
    --fetch-deps=*) fetch="${1#*=}"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die_usage "unknown argument: $1" ;;
  esac
done

abspath() { case "$1" in /*) printf '%s\n' "$1" ;; *) printf '%s/%s\n' "$PWD" "$1" ;; esac; }

# ---- --fetch-deps: the Debian packages, unpacked (no root, no GPU needed) ----------------------
if [ -n "$fetch" ]; then
  if ! command -v apt-get >/dev/null || ! command -v dpkg >/dev/null; then
    echo "gpu_check: --fetch-deps needs apt-get and dpkg (Debian or Ubuntu)" >&2; exit 1
  fi
  fetch="$(abspath "$fetch")"
  # the runtime library's package name differs between releases (libbenchmark1debian, libbenchmark1, ...)
  benchlib="$(apt-cache depends libbenchmark-dev 2>/dev/null | sed -n 's/^ *Depends: \(libbenchmark[0-9][^ ]*\)$/\1/p' | head -1)"
  pkgs=(libeigen3-dev doctest-dev libbenchmark-dev ${benchlib:+"$benchlib"})
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  echo "gpu_check: downloading ${pkgs[*]}"
  (cd "$tmp" && apt-get download "${pkgs[@]}") ||
    { echo "gpu_check: apt-get download failed (run apt-get update first?)" >&2; exit 1; }
  mkdir -p "$fetch"
  for f in "$tmp"/*.deb; do dpkg -x "$f" "$fetch"; done
  rm -rf "$fetch/usr/share/doc"
  echo "gpu_check: unpacked into $fetch ($(du -sh "$fetch" | cut -f1)); use it with --deps $fetch"
  exit 0
fi

# ---- parts -----------------------------------------------------------------------------------
[ "$parts" = all ] && parts="$all_parts"
parts="${parts//,/ }"
for p in $parts; do
  case " $all_parts " in *" $p "*) ;; *) die_usage "unknown part '$p' (parts: ${all_parts// /, }, all)" ;; esac
done
wants() { case " $parts " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

# ---- the GPU ---------------------------------------------------------------------------------
no_gpu() {
  echo "gpu_check: no CUDA GPU found: $*" >&2
  echo "gpu_check: this script needs an NVIDIA GPU (sm_80 or newer) and its driver; nothing was run." >&2
  echo "gpu_check: without a GPU, ./scripts/test.sh runs the CUDA kernels under the host emulator." >&2
  exit 2
}
command -v nvidia-smi >/dev/null || no_gpu "nvidia-smi is not on the PATH (no NVIDIA driver here)"
gpu_index=0
if [[ "${CUDA_VISIBLE_DEVICES:-}" =~ ^[0-9]+$ ]]; then gpu_index="$CUDA_VISIBLE_DEVICES"; fi
if ! smi="$(nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv,noheader 2>&1)"; then
  case "$smi" in
    *"not a valid field"*) no_gpu "this driver's nvidia-smi cannot report compute_cap (too old a driver?): $(printf '%s\n' "$smi" | head -1)" ;;
    *) no_gpu "nvidia-smi failed: $(printf '%s\n' "$smi" | head -1)" ;;
  esac
fi
gpu_count="$(printf '%s\n' "$smi" | grep -c . || true)"
[ "$gpu_count" -gt 0 ] || no_gpu "nvidia-smi lists no device"
line="$(printf '%s\n' "$smi" | sed -n "$((gpu_index + 1))p")"
[ -n "$line" ] || line="$(printf '%s\n' "$smi" | head -1)"
trim() { local s="$1"; s="${s#"${s%%[![:space:]]*}"}"; printf '%s' "${s%"${s##*[![:space:]]}"}"; }
IFS=, read -r gpu_name gpu_cc gpu_driver gpu_mem <<<"$line"
gpu_name="$(trim "$gpu_name")" gpu_cc="$(trim "$gpu_cc")" gpu_driver="$(trim "$gpu_driver")" gpu_mem="$(trim "$gpu_mem")"
[[ "$gpu_cc" =~ ^[0-9]+\.[0-9]+$ ]] || no_gpu "nvidia-smi gave no compute capability for '$gpu_name' ($line)"
arch="${gpu_cc/./}"   # 9.0 -> 90 (plain sm_90: the kernels use mma.sync, nothing of sm_90a)
if [ "${gpu_cc%%.*}" -lt 8 ]; then
  no_gpu "$gpu_name is sm_$arch; the CUDA kernels need sm_80 or newer"
fi
slug="$(printf '%s' "$gpu_name" | tr '[:upper:]' '[:lower:]' | sed -e 's/[^a-z0-9]\{1,\}/-/g' -e 's/^-//' -e 's/-$//')"

# ---- tools -----------------------------------------------------------------------------------
nvcc="${CUDACXX:-}"
[ -n "$nvcc" ] || nvcc="$(command -v nvcc || true)"
[ -n "$nvcc" ] || { [ -x /usr/local/cuda/bin/nvcc ] && nvcc=/usr/local/cuda/bin/nvcc; } || true
if wants build && { [ -z "$nvcc" ] || [ ! -x "$nvcc" ]; }; then
  echo "gpu_check: nvcc (the CUDA compiler) not found: put it on the PATH or set CUDACXX=/path/to/nvcc" >&2
  echo "gpu_check: found $gpu_name (sm_$arch), but nothing can be built without nvcc; nothing was run." >&2
  exit 3
fi
sanitizer="$(command -v compute-sanitizer || true)"
if [ -z "$sanitizer" ] && [ -n "$nvcc" ]; then
  for c in "$(dirname "$nvcc")/compute-sanitizer" "$(dirname "$nvcc")/../compute-sanitizer/compute-sanitizer"; do
    if [ -x "$c" ]; then sanitizer="$c"; break; fi
  done
fi
[ -n "$sanitizer" ] || { [ -x /usr/local/cuda/compute-sanitizer/compute-sanitizer ] &&
                         sanitizer=/usr/local/cuda/compute-sanitizer/compute-sanitizer; } || true

out="$(abspath "${out:-$root/bench/results/gpu-$slug}")"
build="$(abspath "${build:-$root/build-gpu}")"
[ -z "$deps" ] || deps="$(abspath "$deps")"
[ -z "$archive" ] || archive="$(abspath "$archive")"
jobs="$(nproc 2>/dev/null || echo 4)"
logs="$out/logs"
mkdir -p "$logs"
touch "$out/parts.tsv" "$out/steps.tsv"
exec 3>&1   # the console; a part's own output goes to its log

# ---- env.json / env.txt ----------------------------------------------------------------------
first_line() { "$@" 2>/dev/null | head -1 || true; }
json_str() { local s="$1"; s="${s//\\/\\\\}"; s="${s//\"/\\\"}"; s="${s//$'\t'/ }"; s="${s//$'\n'/ }"; printf '"%s"' "$s"; }
write_env() {
  local commit branch dirty cpu nvcc_v cmake_v cxx_v san_v torch_v
  commit="$(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)"
  branch="$(git -C "$root" rev-parse --abbrev-ref HEAD 2>/dev/null || echo unknown)"
  dirty="$(git -C "$root" status --porcelain --untracked-files=no 2>/dev/null | grep -q . && echo yes || echo no)"
  cpu="$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo 2>/dev/null | head -1)"
  nvcc_v="$( { [ -n "$nvcc" ] && "$nvcc" --version 2>/dev/null; } | sed -n 's/.*release \([^,]*\), \(V[^ ]*\).*/\1 (\2)/p' | head -1 || true)"
  cmake_v="$(first_line cmake --version)"
  cxx_v="$(first_line "${CXX:-c++}" --version)"
  san_v="$( { [ -n "$sanitizer" ] && "$sanitizer" --version 2>/dev/null; } | grep -i version | head -1 | sed 's/^ *//' || true)"
  torch_v="$(timeout 60 "$python" -c 'import torch; print(torch.__version__, "cuda", torch.version.cuda)' 2>/dev/null || echo none)"
  local -a kv=(
    date_utc "$(date -u +%Y-%m-%dT%H:%M:%SZ)" host "$(hostname 2>/dev/null || echo unknown)"
    gpu_name "$gpu_name" gpu_compute_cap "$gpu_cc" cuda_arch "$arch" gpu_driver "$gpu_driver"
    gpu_memory "$gpu_mem" gpu_count "$gpu_count" gpu_index "$gpu_index"
    nvcc "${nvcc_v:-not found}" nvcc_path "${nvcc:-}" compute_sanitizer "${san_v:-not found}"
    cmake "$cmake_v" cxx "$cxx_v" cpu "${cpu:-unknown}" cpu_cores "$jobs"
    python "$python" torch "$torch_v" git_commit "$commit" git_branch "$branch" git_dirty "$dirty"
    build_dir "$build" quick "$quick" parts "$parts")
  local i sep=""
  { echo "{"
    for ((i = 0; i < ${#kv[@]}; i += 2)); do
      printf '%s  %s: %s' "$sep" "$(json_str "${kv[i]}")" "$(json_str "${kv[i + 1]}")"; sep=$',\n'
    done
    printf '\n}\n'; } >"$out/env.json"
  { for ((i = 0; i < ${#kv[@]}; i += 2)); do printf '%s: %s\n' "${kv[i]}" "${kv[i + 1]}"; done
    echo; echo "nvidia-smi:"; nvidia-smi 2>&1 || true; } >"$out/env.txt"
}
write_env

# ---- bookkeeping: steps and parts, timed ------------------------------------------------------
now_ds() { local t; t="$(date +%s%N)"; echo $((t / 100000000)); }      # tenths of a second
fmt_ds() { printf '%d.%d' $(($1 / 10)) $(($1 % 10)); }
drop_rows() { local f="$1" p="$2"; awk -F'\t' -v p="$p" '$1 != p' "$f" >"$f.tmp" && mv "$f.tmp" "$f"; }
cur_part=""
# step <name> <timeout s> <command...>: runs the command into the part's log, records status and time
step() {
  local name="$1" limit="$2" t0 rc=0 st
  shift 2
  t0="$(now_ds)"
  echo "=== $cur_part/$name: $*"
  if command -v timeout >/dev/null; then timeout -k 15 "$limit" "$@" || rc=$?; else "$@" || rc=$?; fi
  local dt=$(($(now_ds) - t0))
  case "$rc" in 0) st=ok ;; 124|137) st=timeout ;; *) st=failed ;; esac
  [ "$st" = timeout ] && echo "=== $cur_part/$name: stopped after ${limit} s"
  echo "=== $cur_part/$name: $st (exit $rc, $(fmt_ds "$dt") s)"
  printf '%s\t%s\t%s\t%s\t%s\n' "$cur_part" "$name" "$st" "$(fmt_ds "$dt")" "exit $rc" >>"$out/steps.tsv"
  printf '  %-9s %-22s %-7s %6s s\n' "$cur_part" "$name" "$st" "$(fmt_ds "$dt")" >&3
  return "$rc"
}
note() { echo "note: $*"; printf '%s; ' "$*" >>"$out/.note.$cur_part"; }
SKIP=3   # a part returns 3 when it was skipped (with a note saying why)
need_file() {
  if [ ! -x "$1" ]; then note "missing $1 (run --part build first, with the same --build)"; return 1; fi
}

# ---- the parts -------------------------------------------------------------------------------
ctest_dir="$build"
test_exe="$build/tests/cuda/test_cuda_forward_gpu"
bwd_test_exe="$build/tests/cuda/test_cuda_backward_gpu"
probe_gpu="$build/tests/simt/simt_probe_layouts_gpu"
probe_host="$build/tests/simt/simt_probe_layouts_host"
probe_test="$build/tests/simt/simt_test_probe"
bench_exe="$build/bench/cuda/bench_cuda_forward"
ns_quick="2048,8192"

have_deps() {  # the checks of scripts/deps.sh
  [ -f /usr/include/eigen3/Eigen/Core ] && [ -f /usr/include/doctest/doctest.h ] &&
    { [ -f /usr/include/benchmark/benchmark.h ] || [ -f /usr/local/include/benchmark/benchmark.h ]; } &&
    command -v cmake >/dev/null
}

part_build() {
  local prefix=""
  local -a cfg=()
  if [ -n "$deps" ]; then
    prefix="$deps"; [ -d "$deps/usr" ] && prefix="$deps/usr"
    note "dependencies from $prefix"
  elif ! have_deps; then
    if ! step deps 300 env DIFFATTN_CROSS=OFF "$root/scripts/deps.sh"; then
      note "Eigen, doctest or Google Benchmark missing and scripts/deps.sh could not install them (no root or no network?); where apt works: scripts/gpu_check.sh --fetch-deps .deps, then bring .deps here and pass --deps .deps"
      return 1
    fi
  fi
  if [ ! -f "$build/CMakeCache.txt" ] && command -v ninja >/dev/null; then cfg+=(-G Ninja); fi
  cfg+=(-S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DDIFFATTN_CUDA=ON
        "-DCMAKE_CUDA_COMPILER=$nvcc" "-DCMAKE_CUDA_ARCHITECTURES=$arch"
        -DDIFFATTN_BUILD_TESTS=ON -DDIFFATTN_BUILD_BENCH=ON -DDIFFATTN_BUILD_EXAMPLES=OFF
        -DDIFFATTN_CUDA_TUNING=ON -DCMAKE_CUDA_FLAGS=-lineinfo)
  [ -z "$prefix" ] || cfg+=("-DCMAKE_PREFIX_PATH=$prefix")
  step configure 300 cmake "${cfg[@]}" || return 1
  if ! grep -q '^DIFFATTN_CUDA_TUNING:' "$build/CMakeCache.txt"; then
    note "DIFFATTN_CUDA_TUNING is not an option of this checkout (CMake ignored it): the benchmark has the shipped configurations only"
  fi
  # the GPU suite first: its one translation unit (every configuration) is the longest
  step compile 560 cmake --build "$build" -j "$jobs" --target test_cuda_forward_gpu test_cuda_backward_gpu bench_cuda_forward \
    simt_probe_layouts_gpu simt_probe_layouts_host simt_test_probe
}

part_test() {
  need_file "$test_exe" || return 1
  local rc=0
  step ctest_cuda_gpu 560 ctest --test-dir "$ctest_dir" -L cuda-gpu -V --output-on-failure --no-tests=error || rc=1
  if grep -q '\*\*\*Skipped\|(not passed): no CUDA device' "$logs/test.log"; then
    note "the GPU suite reported itself skipped: the test program saw no CUDA device"; rc=1
  fi
  return "$rc"
}

part_sanitize() {
  need_file "$test_exe" || return 1
  need_file "$bwd_test_exe" || return 1
  if [ -z "$sanitizer" ]; then note "compute-sanitizer not found (it ships with the CUDA toolkit)"; return $SKIP; fi
  local tool rc=0 log exe name
  local -a extra
  # tools outer, programs inner: where time is short (a capped call), each tool covers both
  for tool in ${DIFFATTN_SANITIZE_TOOLS:-memcheck racecheck synccheck initcheck}; do
    for exe in "$test_exe" "$bwd_test_exe"; do
      name="$(basename "$exe")"
      extra=()
      [ "$tool" = memcheck ] && extra=(--leak-check full)
      log="$logs/sanitize-$name-$tool.log"
      echo "=== output of $tool on $name in $log"
      if ! step "$name-$tool" "${DIFFATTN_SANITIZE_STEP_S:-170}" "$sanitizer" --tool "$tool" "${extra[@]}" --error-exitcode 86 --print-limit 30 \
           "$exe" '-tc=*small cases*' >"$log" 2>&1; then
        rc=1; tail -n 25 "$log"
      elif ! grep -Eq 'test cases: *[1-9][0-9]* *\| *[1-9][0-9]* passed' "$log"; then
        note "$tool on $name: no test case ran (the filter '*small cases*' matched nothing)"; rc=1
      fi
      grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|test cases:' "$log" || true
    done
  done
  return "$rc"
}

part_probe() {
  need_file "$probe_gpu" || return 1
  local golden="probe_layouts_sm$arch.txt" rc=0 repo_golden="$root/tests/simt/golden/probe_layouts_sm$arch.txt"
  step gpu_dump 120 "$probe_gpu" "$out/$golden" || return 1
  if [ -f "$repo_golden" ] && ! cmp -s "$repo_golden" "$out/$golden"; then
    note "the committed tests/simt/golden/$golden differs from this GPU's dump (replaced; diff in the log)"
    diff -u "$repo_golden" "$out/$golden" | head -50 || true
  fi
  mkdir -p "$(dirname "$repo_golden")"
  if cp "$out/$golden" "$repo_golden"; then echo "wrote $repo_golden"; else note "could not write $repo_golden"; rc=1; fi
  if [ -x "$probe_host" ]; then
    step emulator_dump 120 "$probe_host" "$out/probe_layouts_emulator.txt" || rc=1
    if [ "$rc" = 0 ]; then
      step compare 30 diff -u "$out/probe_layouts_emulator.txt" "$out/$golden" || {
        rc=1; note "the emulator's dump differs from the GPU's (first lines of the diff in the log)"; }
    fi
  fi
  # the repository's own comparison: the emulator against every golden file in tests/simt/golden/
  if [ -x "$probe_test" ]; then step simt_test_probe 120 "$probe_test" || rc=1; fi
  return "$rc"
}

part_bench() {
  need_file "$bench_exe" || return 1
  local -a args=("--benchmark_out=$out/bench_cuda_forward.json" --benchmark_out_format=json
                 --benchmark_counters_tabular=true)
  if [ -n "${DIFFATTN_BENCH_FILTER:-}" ]; then args+=("--benchmark_filter=$DIFFATTN_BENCH_FILTER")
  elif [ "$quick" = 1 ]; then
    # the forward at the quick sizes, and the decode runs of the issue's goal (B = 16, S = 8192)
    # with the fused kernel on the same call and the copy bandwidth beside them
    args+=("--benchmark_filter=/N:(${ns_quick//,/|})(/|\$)|cuda_decode.*/B:16/S:8192|peak/cuda_copy")
  fi
  # DIFFATTN_BENCH_MIN_TIME: seconds of timed launches per run (Google Benchmark's default 0.5)
  [ -z "${DIFFATTN_BENCH_MIN_TIME:-}" ] || args+=("--benchmark_min_time=$DIFFATTN_BENCH_MIN_TIME")
  rm -f "$out/bench_cuda_forward.json"
  local rc=0
  step bench_cuda_forward "$([ "$quick" = 1 ] && echo 300 || echo 560)" "$bench_exe" "${args[@]}" || rc=1
  if [ ! -f "$out/bench_cuda_forward.json" ]; then
    note "no bench_cuda_forward.json was written"; rc=1
  elif command -v python3 >/dev/null; then
    local check
    check="$(python3 "$root/scripts/gpu_check_summary.py" --check-bench "$out/bench_cuda_forward.json")" || {
      rc=1; note "$(printf '%s\n' "$check" | head -1)"; }
    printf '%s\n' "$check"
  fi
  return "$rc"
}

part_peer() {
  local script="$root/bench/pytorch_composition.py"
  if ! command -v "$python" >/dev/null; then note "no interpreter '$python' (--python)"; return $SKIP; fi
  if ! timeout 120 "$python" -c 'import torch' 2>/dev/null; then
    note "torch cannot be imported by $python (pip install torch, or --python PY)"; return $SKIP
  fi
  if ! timeout 120 "$python" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    note "torch in $python sees no CUDA device (a CPU-only build?)"; return $SKIP
  fi
  local rc=0
  local -a ns=()
  [ "$quick" = 1 ] && ns=(--ns "$ns_quick")
  rm -f "$out/pytorch_cuda.json"
  step check 240 env PYTHONUNBUFFERED=1 "$python" "$script" --device cuda --check || rc=1
  step bench 420 env PYTHONUNBUFFERED=1 "$python" "$script" --device cuda "${ns[@]}" \
    --out "$out/pytorch_cuda.json" || rc=1
  return "$rc"
}

# ---- run -------------------------------------------------------------------------------------
summarize() {
  if command -v python3 >/dev/null; then
    if python3 "$root/scripts/gpu_check_summary.py" "$out" >/dev/null 2>"$logs/summary.err"; then
      rm -f "$logs/summary.err"; return 0
    fi
    echo "gpu_check: summary.md by the fallback (gpu_check_summary.py failed: $(head -c 300 "$logs/summary.err"))" >&3
  fi
  { echo "# GPU check: $gpu_name (sm_$arch)"; echo
    echo "| part | status | seconds | note |"; echo "| --- | --- | --- | --- |"
    awk -F'\t' '{ printf "| %s | %s | %s | %s |\n", $1, $2, $3, $4 }' "$out/parts.tsv"; } >"$out/summary.md"
}
make_archive() {
  [ -n "$archive" ] || return 0
  mkdir -p "$(dirname "$archive")"
  if tar -czf "$archive.tmp" -C "$(dirname "$out")" "$(basename "$out")"; then mv "$archive.tmp" "$archive"; fi
}

echo "gpu_check: $gpu_name (sm_$arch, driver $gpu_driver, $gpu_mem), nvcc ${nvcc:-not found}, $jobs cores"
echo "gpu_check: parts: $parts; results in $out; build in $build"
failed=""
for p in $parts; do
  cur_part="$p"
  rm -f "$out/.note.$p"
  drop_rows "$out/steps.tsv" "$p"
  echo "gpu_check: [$p] ... (log: $logs/$p.log)"
  t0="$(now_ds)"
  set +e
  ( set -eo pipefail; "part_$p" ) >"$logs/$p.log" 2>&1
  rc=$?
  set -e
  dt=$(($(now_ds) - t0))
  case "$rc" in 0) st=ok ;; "$SKIP") st=skipped ;; *) st=failed; failed="$failed $p" ;; esac
  nt="$(cat "$out/.note.$p" 2>/dev/null || true)"; rm -f "$out/.note.$p"
  nt="${nt%; }"
  drop_rows "$out/parts.tsv" "$p"
  printf '%s\t%s\t%s\t%s\n' "$p" "$st" "$(fmt_ds "$dt")" "${nt//$'\t'/ }" >>"$out/parts.tsv"
  echo "gpu_check: [$p] $st in $(fmt_ds "$dt") s${nt:+ ($nt)}"
  if [ "$st" = failed ]; then echo "--- last lines of $logs/$p.log:"; tail -n 30 "$logs/$p.log"; echo "---"; fi
  summarize
  make_archive
done

echo
cat "$out/summary.md"
echo
if [ -n "$failed" ]; then
  echo "gpu_check: FAILED:$failed (logs in $logs)"
  exit 1
fi
echo "gpu_check: all parts run passed or were skipped; results in $out"
