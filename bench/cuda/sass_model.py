#!/usr/bin/env python3
"""SASS model of the CUDA forward: per-tile instruction counts of each key-tile loop, read from
the machine code nvcc produces, and a throughput bound (a ceiling, not a prediction) per GPU.

No GPU is needed. For every shipped configuration (DIFFATTN_CUDA_FORWARD_CONFIGS) and every
tuning variant (DIFFATTN_CUDA_FORWARD_VARIANTS), both in include/diffattn/cuda/dispatch.hpp, and
for every architecture (sm_80, sm_90 by default) the script:

  1. reads the configurations and their traits (kBlockM, kBlockN, kWarps, kLoops and
     Traits::loop_counts(i), what one warp must execute per key tile of loop i) from a small host
     C++ program that expands both macros (compiled with g++ here: no list and no traits
     arithmetic is repeated in this file);
  2. compiles one TU per configuration and architecture with nvcc -cubin -Xptxas -v (registers,
     spills, stack frame from ptxas's report; cubins are cached by a hash of include/, the TU,
     the architecture and the nvcc version);
  3. disassembles the kernel with nvdisasm (PyPI package nvidia-cuda-nvdisasm, installed into its
     own virtual environment), builds the basic blocks, finds the loops (backward branches) and
     keeps the outermost ones that contain HMMA: the key-tile loops, in program order;
  4. counts one warp's instructions per tile on each loop's steady-state path, by unit, and
     checks HMMA, LDSM and MUFU.EX2 against loop_counts(i) (--check);
  5. turns the counts into SM-clocks per warp-tile per unit with per-SM rates of H100 SXM
     (sm_90 code) and A100 SXM (sm_80 code), and reports the binding unit and the TFLOP/s bound.

The backward (include/diffattn/cuda/backward_kernel.hpp) likewise: for the backward of every
shipped (fmt, d), V1 and V2 (BackwardTraits<fmt, d, V2>, one TU per configuration and
architecture instantiating backward_config<Traits>: all its kernels), the query-tile loop of
BwdMainKernel (the innermost loop with HMMA and LDGSTS) per tile of kBlockM query rows, checked
against BackwardTraits::loop_counts(0, sm, part), bounded with SPEC's backward FLOP count (20 N S d
per diff head, 16 for V2); at d > 64 the main kernel runs in parts (BwdMainKernel<Traits, Part>),
each modelled alone (entries bwd_..._p<Part>) and combined as 1 / sum(1 / part bound); ptxas's
report of every kernel (a spill fails --check).

Run (from the repository root; Python 3.11, stdlib only):

    python3 bench/cuda/sass_model.py                      # every config, sm_80 + sm_90
    python3 bench/cuda/sass_model.py --check --configs 'bf16_d64$' --arch 90   # forward and bwd_bf16_d64
    python3 bench/cuda/sass_model.py --check --configs '^bwd_'                 # the backward alone
    ctest --test-dir build -L cuda-model --output-on-failure   # the ctest cuda_sass_model

Writes <out>/sass_model.json and <out>/sass_model.md (default --out bench/results). Exit codes:
0 ok, 1 a --check failed, 2 a usage or build error, 77 the disassembler packages could not be
installed (no network: the ctest reports SKIPPED).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

EXIT_OK, EXIT_CHECK, EXIT_ERROR, EXIT_NO_DISASSEMBLER = 0, 1, 2, 77
REPO = Path(__file__).resolve().parents[2]
# nvdisasm does the work (its `-c` listing parses most robustly: labels .L_x_N, one instruction a line);
# cuobjdump comes along for reading by hand (`cuobjdump -sass`). 13.x: the listing format this parser reads.
PIP_PACKAGES = ("nvidia-cuda-cuobjdump~=13.0", "nvidia-cuda-nvdisasm~=13.0")
NVCC_FLAGS = ("-std=c++17", "-O3", "-cubin", "-Xptxas", "-v", "-diag-suppress=20012,20013,20015")


class Fail(Exception):
    """An error that ends the run with EXIT_ERROR (or the code given)."""

    def __init__(self, msg: str, code: int = EXIT_ERROR):
        super().__init__(msg)
        self.code = code


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# =============================================================================================
# Hardware rates (per SM per clock unless stated). Each with its source; "estimate" where it could
# not be verified.
# =============================================================================================
HMMA_FLOP = 16 * 8 * 16 * 2  # one mma.sync m16n8k16 (HMMA.16816): 4096 FLOP

DEVICES = {
    "H100 SXM": {
        "arch": "sm_90",
        "sms": (132, "NVIDIA H100 datasheet / Hopper whitepaper: 132 SMs on the SXM5 part"),
        "clock_ghz": (1.83, "tensor boost clock behind the 989.4 dense BF16 TFLOPS of the datasheet "
                            "(989.4e12 = 132 x 4096 x 1.83e9; the same clock as the 2026-11-23 review)"),
        "tensor_flop_per_clk": (4096 * 2 / 3, "mma.sync (HMMA.16816) on sm_90 reaches about 2/3 of the 4096 "
                                              "FLOP/clk/SM of dense wgmma: FlashAttention-3 paper (Shah et al. "
                                              "2024); ESTIMATE, not re-verified"),
        "mufu_per_clk": (16, "CUDA C++ Programming Guide, arithmetic instruction throughput table "
                             "(32-bit exp2/rsqrt/..., cc 9.0: 16 results/clk/SM)"),
        "fp32_per_clk": (128, "CUDA Programming Guide throughput table (cc 9.0: 128 FP32 add/mul/fma); "
                              "67 TFLOPS FP32 = 132 x 128 x 2 x 1.98 GHz in the datasheet"),
        "int32_per_clk": (64, "CUDA Programming Guide throughput table (cc 9.0: 64 32-bit integer add/logic/shift)"),
        "issue_per_clk": (4, "4 warp schedulers per SM, each issuing 1 warp-instruction/clk (Hopper whitepaper)"),
        "smem_bytes_per_clk": (128, "32 banks x 4 B per clk (CUDA Programming Guide, shared memory); "
                                    "ldmatrix.x4 = 512 B = 4 clk"),
        "l2_tb_s": (5.5, "ESTIMATE: L2 to SM bandwidth, ~5.5-7 TB/s recalled from Chips and Cheese's H100 "
                         "microbenchmarks (measured on H100 PCIe), not verified for the SXM part"),
        "hbm_tb_s": (3.35, "NVIDIA H100 SXM datasheet: 3.35 TB/s HBM3"),
    },
    "A100 SXM": {
        "arch": "sm_80",
        "sms": (108, "NVIDIA A100 datasheet / Ampere whitepaper: 108 SMs"),
        "clock_ghz": (1.41, "A100 boost clock 1410 MHz (datasheet; Chips and Cheese saw it hold 1410 MHz on SXM4)"),
        "tensor_flop_per_clk": (2048, "312 dense BF16 TFLOPS / (108 SM x 1.41 GHz) = 2048 FLOP/clk/SM "
                                      "(A100 datasheet); mma.sync is the native path on sm_80"),
        "mufu_per_clk": (16, "CUDA C++ Programming Guide throughput table (cc 8.0: 16 results/clk/SM)"),
        "fp32_per_clk": (64, "CUDA Programming Guide throughput table (cc 8.0: 64 FP32 add/mul/fma per "
                             "clk/SM; 19.5 TFLOPS = 108 x 64 x 2 x 1.41 GHz)"),
        "int32_per_clk": (64, "CUDA Programming Guide throughput table (cc 8.0: 64)"),
        "issue_per_clk": (4, "4 warp schedulers per SM, 1 warp-instruction/clk each (Ampere whitepaper)"),
        "smem_bytes_per_clk": (128, "32 banks x 4 B per clk (CUDA Programming Guide, shared memory)"),
        "l2_tb_s": (4.0, "ESTIMATE: L2 to SM bandwidth ~4 TB/s (not verified)"),
        "hbm_tb_s": (2.039, "NVIDIA A100 80GB SXM datasheet: 2,039 GB/s HBM2e"),
    },
}
# Note on A100 FP32: the brief asked for 128 FP32 lanes; GA100 (A100) has 64 FP32 lanes per SM
# (128 is the consumer GA10x and Hopper figure), which the datasheet's 19.5 TFLOPS confirms.


# =============================================================================================
# Instruction classes. One warp-instruction each; the key is the opcode before the first '.'.
# =============================================================================================
CLASSES = [
    # (class, unit in the model or None, opcodes)
    ("tensor", "tensor", {"HMMA", "IMMA", "DMMA", "HGMMA", "BMMA"}),
    ("ldsm", "smem", {"LDSM"}),
    ("mufu", "mufu", {"MUFU"}),
    ("fp32", "fp32", {"FADD", "FMUL", "FFMA", "FMNMX", "FSEL", "FSETP", "FSET", "FCHK", "FSWZADD",
                      "FRND", "HADD2", "HMUL2", "HFMA2", "HMNMX2", "HSETP2", "HSET2", "FMUL2", "FADD2", "FFMA2"}),
    # IMAD (all forms: IMAD.MOV, IMAD.WIDE, IMAD.SHL, IMAD.IADD ...) issues to the FMA pipe on
    # sm_80+ (the "fmaheavy" half of the FP32 lanes), not the integer ALU: counted as "imad" and
    # charged to the FP32 unit in the model (see model_loop).
    ("imad", "fp32", {"IMAD", "IMADSP", "IMUL"}),
    ("int", "int", {"IADD3", "IADD", "VIADD", "VIADDMNMX", "IMNMX", "VIMNMX", "VIMNMX3", "IABS", "LOP3",
                    "LOP", "SHF", "SHL", "SHR", "LEA", "ISETP", "SEL", "MOV", "PRMT", "POPC", "FLO", "BREV",
                    "BMSK", "SGXT", "PLOP3", "P2R", "R2P", "CS2R", "ICMP", "IDP", "IDP4A", "VOTE", "VOTEU",
                    "FSWZ"}),
    ("conv", None, {"F2F", "F2FP", "I2F", "F2I", "I2FP", "F2IP", "I2I", "I2IP", "FRND"}),
    ("shfl", None, {"SHFL"}),
    ("bar", None, {"BAR", "BARRIER", "SYNCS", "ERRBAR", "MEMBAR", "FENCE", "CCTL"}),
    ("ldgsts", "smem", {"LDGSTS"}),
    ("depbar", None, {"DEPBAR", "LDGDEPBAR", "ARRIVES"}),
    ("lds_sts", None, {"LDS", "STS", "ATOMS"}),
    ("global", None, {"LDG", "STG", "LD", "ST", "ATOM", "ATOMG", "RED", "REDG"}),
    ("local", None, {"LDL", "STL"}),
    ("const", None, {"LDC"}),
    ("uniform", None, set()),  # opcodes starting with U (UIADD3, ULDC, UMOV ...) and S2UR/R2UR
    ("branch", None, {"BRA", "BRX", "JMP", "JMX", "BSSY", "BSYNC", "WARPSYNC", "BREAK", "CALL", "RET",
                      "EXIT", "YIELD", "KILL", "BPT", "NANOSLEEP", "WARPGROUP"}),
    ("nop", None, {"NOP"}),
    ("other", None, set()),
]
CLASS_NAMES = [c[0] for c in CLASSES]
_OPCODE_CLASS = {op: name for name, _, ops in CLASSES for op in ops}
CLASS_TABLE_DOC = "\n".join(
    [f"| {n} | {u or 'issue only'} | {', '.join(sorted(o))} |" for n, u, o in CLASSES if o]
    + ["| uniform | issue only | every opcode starting with U (UIADD3, ULDC, UMOV ...), S2UR, R2UR |",
       "| nop | issue only | also any instruction guarded by `@!PT` (never executes: ptxas's alignment padding) |",
       "| other | issue only | anything else (S2R ...) |"])


def classify(opcode: str, guard: str | None = None) -> str:
    if guard == "@!PT":  # never executes (ptxas's alignment padding, e.g. `@!PT LDS RZ, [RZ]`): a NOP
        return "nop"
    base = opcode.split(".")[0]
    if base in _OPCODE_CLASS:
        return _OPCODE_CLASS[base]
    if base in ("S2UR", "R2UR") or (base.startswith("U") and len(base) > 1):
        return "uniform"
    return "other"


# =============================================================================================
# Small helpers
# =============================================================================================
def run(cmd: list[str], cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if check and p.returncode != 0:
        raise Fail(f"command failed ({p.returncode}): {' '.join(cmd)}\n{p.stdout[-4000:]}{p.stderr[-4000:]}")
    return p


def tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def nice_prefix() -> list[str]:
    return ["nice", "-n", "10"] if shutil.which("nice") else []


# =============================================================================================
# 1. Virtual environment with the disassemblers
# =============================================================================================
def find_tool(venv: Path, name: str) -> Path | None:
    hits = sorted(p for p in venv.glob(f"lib/python*/site-packages/nvidia/**/bin/{name}") if p.is_file())
    return hits[0] if hits else None


def ensure_disassemblers(venv: Path) -> dict[str, Path]:
    tools = {n: find_tool(venv, n) for n in ("nvdisasm", "cuobjdump")}
    if all(tools.values()):
        return tools
    py = venv / "bin" / "python"
    if not py.exists():
        log(f"sass_model: creating virtual environment {venv}")
        p = run([sys.executable, "-m", "venv", str(venv)], check=False)
        if p.returncode != 0:
            raise Fail(f"sass_model: SKIP: cannot create the virtual environment {venv} for the disassembler "
                       f"packages ({sys.executable} -m venv failed; on Debian: apt-get install python3-venv):\n"
                       f"{p.stdout}{p.stderr}", EXIT_NO_DISASSEMBLER)
    log(f"sass_model: pip install {' '.join(PIP_PACKAGES)} into {venv}")
    p = run([str(py), "-m", "pip", "install", "--disable-pip-version-check", "-q", "--retries", "2", "--timeout", "20",
             *PIP_PACKAGES], check=False)
    tools = {n: find_tool(venv, n) for n in ("nvdisasm", "cuobjdump")}
    if p.returncode != 0 or not all(tools.values()):
        raise Fail("sass_model: SKIP: could not install the disassembler packages "
                   f"{', '.join(PIP_PACKAGES)} from PyPI (no network?); pip said:\n"
                   + (p.stderr.strip()[-2000:] or "(nothing)"), EXIT_NO_DISASSEMBLER)
    for t in tools.values():
        t.chmod(t.stat().st_mode | 0o111)
    return tools


# =============================================================================================
# 2. Configurations, from the C++ macros and traits
# =============================================================================================
HOST_PROGRAM = r'''// generated by bench/cuda/sass_model.py: the configurations of dispatch.hpp and their traits
#include <cstdio>
#include <cstdlib>
#include "diffattn/cuda/dispatch.hpp"
#include "diffattn/cuda/backward_kernel.hpp"

static bool first = true;
template <class T>
static void emit(const char* kind, const char* fmt, const char* args, const char* tname = "ForwardTraits") {
  std::printf("%s{\"kind\": \"%s\", \"fmt\": \"%s\", \"args\": \"%s\", \"kV2\": %s, "
              "\"type\": \"diffattn::cuda::%s<diffattn::simt::fmt16::%s, %s>\", "
              "\"head_dim\": %d, \"kBlockM\": %d, \"kBlockN\": %d, \"kWarps\": %d, \"kThreads\": %d, "
              "\"kSinglePass\": %s, \"kSmemBytes\": %d, \"kLoops\": %d, \"loop_counts\": [",
              first ? "" : ",\n", kind, fmt, args, T::kV2 ? "true" : "false", tname, fmt, args, T::kHeadDim, T::kBlockM, T::kBlockN, T::kWarps,
              T::kThreads, T::kSinglePass ? "true" : "false", T::kSmemBytes, T::kLoops);
  first = false;
  for (int i = 0; i < T::kLoops; ++i) {
    const diffattn::cuda::LoopCounts c = T::loop_counts(i);
    std::printf("%s{\"keys\": %d, \"hmma\": %d, \"ldsm\": %d, \"mufu\": %d}", i ? ", " : "", c.keys, c.hmma,
                c.ldsm, c.mufu);
  }
  std::printf("]}");
}

// a backward configuration (the backward of every (fmt, d) of the list with a supported d), with
// its counts for each SM number on the command line
template <diffattn::simt::fmt16 Fm, int D, bool V2>
static void emit_bwd(const char* fmt, int argc, char** argv) {
  if constexpr (diffattn::cuda::backward_head_dim_supported(D)) {
    using T = diffattn::cuda::BackwardTraits<Fm, D, V2>;
    // BwdMainKernel's Parts of this configuration: 0 (one launch), 1 and 2, or 1, 3 and 4
    const int parts[3] = {T::kMainParts == 1 ? 0 : 1, 2 + (T::kMainParts == 3), 4};
    for (int pi = 0; pi < T::kMainParts; ++pi) {
    const int part = parts[pi];
    std::printf("%s{\"kind\": \"backward\", \"fmt\": \"%s\", \"args\": \"%d, %s\", \"kV2\": %s, "
                "\"part\": %d, \"kMainParts\": %d, "
                "\"type\": \"diffattn::cuda::BackwardTraits<diffattn::simt::fmt16::%s, %d, %s>\", "
                "\"head_dim\": %d, \"kValueDim\": %d, \"kBlockM\": %d, \"kBlockN\": %d, \"kWarps\": %d, "
                "\"kThreads\": %d, \"kSmemBytes\": %d, \"kStat\": %d, \"kSTiles\": %d, \"kQKSteps\": %d, "
                "\"kDPSteps\": %d, \"kMSteps\": %d, \"kNSteps\": %d, \"kDTiles\": %d, \"kVTiles\": %d, "
                "\"kDqTiles\": %d, \"kDqNTiles\": %d, \"kDqUnits\": %d, \"kLoops\": 1, \"loop_counts_by_arch\": {",
                first ? "" : ",\n", fmt, D, V2 ? "true" : "false", V2 ? "true" : "false", part, T::kMainParts, fmt, D,
                V2 ? "true" : "false", T::kHeadDim, T::kValueDim, T::kBlockM, T::kBlockN, T::kWarps, T::kThreads,
                T::kSmemBytes, T::kStat, T::kSTiles, T::kQKSteps, T::kDPSteps, T::kMSteps, T::kNSteps, T::kDTiles,
                T::kVTiles, T::kDqTiles, T::kDqNTiles, T::kDqUnits);
    for (int i = 1; i < argc; ++i) {
      const diffattn::cuda::LoopCounts c = T::loop_counts(0, std::atoi(argv[i]), part);
      std::printf("%s\"sm_%s\": [{\"keys\": %d, \"hmma\": %d, \"ldsm\": %d, \"mufu\": %d}]", i > 1 ? ", " : "",
                  argv[i], c.keys, c.hmma, c.ldsm, c.mufu);
    }
    std::printf("}}");
    first = false;
    }
  }
}

int main(int argc, char** argv) {
  std::printf("[\n");
#define SASS_MODEL_SHIPPED(fmt, ...) \
  emit<diffattn::cuda::ForwardTraits<diffattn::simt::fmt16::fmt, __VA_ARGS__>>("shipped", #fmt, #__VA_ARGS__);
  DIFFATTN_CUDA_FORWARD_CONFIGS(SASS_MODEL_SHIPPED)
#define SASS_MODEL_SHIPPED_V2(fmt, ...) \
  emit<diffattn::cuda::ForwardTraitsV2<diffattn::simt::fmt16::fmt, __VA_ARGS__>>("shipped", #fmt, #__VA_ARGS__, "ForwardTraitsV2");
  DIFFATTN_CUDA_FORWARD_CONFIGS(SASS_MODEL_SHIPPED_V2)
#define SASS_MODEL_VARIANT(fmt, ...) \
  emit<diffattn::cuda::ForwardTraits<diffattn::simt::fmt16::fmt, __VA_ARGS__>>("variant", #fmt, #__VA_ARGS__);
  DIFFATTN_CUDA_FORWARD_VARIANTS(SASS_MODEL_VARIANT)
#define SASS_MODEL_BACKWARD(fmt, d) emit_bwd<diffattn::simt::fmt16::fmt, d, false>(#fmt, argc, argv);
  DIFFATTN_CUDA_FORWARD_CONFIGS(SASS_MODEL_BACKWARD)
#define SASS_MODEL_BACKWARD_V2(fmt, d) emit_bwd<diffattn::simt::fmt16::fmt, d, true>(#fmt, argc, argv);
  DIFFATTN_CUDA_FORWARD_CONFIGS(SASS_MODEL_BACKWARD_V2)
  std::printf("\n]\n");
  return 0;
}
'''


def tu_name(c: dict) -> str:
    """The TU's name: a backward configuration's parts (one entry each) share theirs."""
    if c["kind"] == "backward":
        return f"bwd_{c['fmt']}_d{c['head_dim']}" + ("_v2" if c.get("kV2") else "")
    return c["name"]


def config_name(c: dict) -> str:
    if c["kind"] == "backward":
        return tu_name(c) + (f"_p{c['part']}" if c.get("part") else "")
    if c["kind"] == "shipped":
        return f"{c['fmt']}_d{c['head_dim']}" + ("_v2" if c.get("kV2") else "")
    name = f"{c['fmt']}_d{c['head_dim']}_m{c['kBlockM']}_n{c['kBlockN']}_{'1p' if c['kSinglePass'] else '2p'}"
    extra = [a.strip() for a in c["args"].split(",")][4:]  # template arguments past (d, M, N, SinglePass)
    for a in extra:
        name += "_" + re.sub(r"[^A-Za-z0-9]+", "", a)
    return name


def read_configs(cxx: str, eigen: str, work: Path, sms: list[str] | None = None) -> list[dict]:
    src = work / "sass_model_configs.cpp"
    exe = work / "sass_model_configs"
    src.write_text(HOST_PROGRAM)
    run([cxx, "-std=c++17", "-O0", "-I", str(REPO / "include"), "-I", eigen, str(src), "-o", str(exe)])
    configs = json.loads(run([str(exe), *(sms or [])]).stdout)
    names = set()
    for c in configs:
        c["name"] = config_name(c)
        if c["name"] in names:
            raise Fail(f"two configurations are both named {c['name']}")
        names.add(c["name"])
    return configs


# =============================================================================================
# 3. Compile (cached) and read ptxas's report
# =============================================================================================
def tu_source(c: dict) -> str:
    if c["kind"] == "backward":
        # the real build's entry point of one configuration: its four kernels, nothing else
        return ("// generated by bench/cuda/sass_model.py\n"
                "#define DIFFATTN_CUDA_FORWARD_CONFIGS(X)\n"
                "#include <diffattn/cuda/backward.cuh>\n"
                f"template diffattn::Status diffattn::cuda::backward_config<{c['type']}>(const diffattn::BackwardParams&, "
                "void*, std::size_t, cudaStream_t);\n")
    # The shipped list is emptied so that the TU holds exactly one kernel: the explicit instantiation.
    return ("// generated by bench/cuda/sass_model.py\n"
            "#define DIFFATTN_CUDA_FORWARD_CONFIGS(X)\n"
            "#include <diffattn/cuda/forward.cuh>\n"
            f"template diffattn::Status diffattn::cuda::forward_config<{c['type']}>(const diffattn::Params&, cudaStream_t);\n")


def compile_tu(c: dict, arch: str, nvcc: str, eigen: str, cache: Path, inc_hash: str, nvcc_version: str) -> dict:
    src = tu_source(c)
    num = arch.removeprefix("sm_")
    flags = [*NVCC_FLAGS, "-gencode", f"arch=compute_{num},code={arch}"]
    key = hashlib.sha256("\0".join([inc_hash, src, arch, nvcc_version, *flags]).encode()).hexdigest()[:24]
    name = tu_name(c)
    cubin, logf = cache / f"{name}_{arch}_{key}.cubin", cache / f"{name}_{arch}_{key}.ptxas.log"
    if cubin.exists() and logf.exists():
        return {"cubin": cubin, "log": logf.read_text(), "cached": True}
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        tu = Path(tmp) / f"{name}_{arch}.cu"
        tu.write_text(src)
        out = Path(tmp) / "out.cubin"
        p = run([*nice_prefix(), nvcc, *flags, "-I", str(REPO / "include"), "-I", eigen, str(tu), "-o", str(out)],
                check=False)
        if p.returncode != 0:
            raise Fail(f"nvcc failed for {name} {arch}:\n{p.stdout[-3000:]}{p.stderr[-3000:]}")
        text = p.stdout + p.stderr
        for old in cache.glob(f"{name}_{arch}_*"):  # earlier builds of this TU: keep the cache bounded
            old.unlink()
        logf.write_text(text)
        shutil.move(str(out), cubin)
    return {"cubin": cubin, "log": text, "cached": False}


def parse_ptxas(text: str, arch: str, kernel: str = "DiffAttnForwardKernel") -> dict:
    """ptxas's report of the one entry whose (mangled) name `kernel`, a regular expression, matches."""
    res, in_kernel = [], False
    for line in text.splitlines():
        m = re.search(r"Compiling entry function '([^']*)' for '(sm_\w+)'", line)
        if m:
            in_kernel = re.search(kernel, m.group(1)) is not None and m.group(2) == arch
            if in_kernel:
                res.append({"function": m.group(1)})
            continue
        if not in_kernel:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            res[-1].update(stack=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
        m = re.search(r"Used (\d+) registers", line)
        if m:
            res[-1]["registers"] = int(m.group(1))
            in_kernel = False
    if len(res) != 1 or "registers" not in res[0] or "stack" not in res[0]:
        raise Fail(f"ptxas report: expected one {kernel} entry for {arch}, found {len(res)}:\n{text[-2000:]}")
    return res[0]


# =============================================================================================
# 4. Disassembly -> instructions -> basic blocks -> loops
# =============================================================================================
_INS = re.compile(r"^\s*/\*([0-9a-f]+)\*/\s+(?:(@!?U?P(?:T|\d+))\s+)?([A-Z][A-Z0-9_.]*)\s*(.*?)\s*;?\s*$")
_LABEL = re.compile(r"^(\.L_x_\d+):")
_FUNC = re.compile(r"^\s*\.type\s+([^,\s]+)\s*,\s*@function")
_TARGET = re.compile(r"`\((\.L_x_\d+)\)")


def disassemble(nvdisasm: Path, cubin: Path) -> str:
    return run([str(nvdisasm), "-c", str(cubin)]).stdout


def kernel_instructions(text: str, kernel: str = "DiffAttnForwardKernel") -> tuple[str, list[dict], dict[str, int]]:
    """The kernel function's instructions (address, guard, opcode, operands) and its labels."""
    funcs: dict[str, list] = {}
    cur = None
    for line in text.splitlines():
        m = _FUNC.match(line)
        if m:
            cur = m.group(1)
            funcs[cur] = []
            continue
        if cur is None:
            continue
        m = _LABEL.match(line)
        if m:
            funcs[cur].append(("label", m.group(1)))
            continue
        m = _INS.match(line)
        if m:
            funcs[cur].append(("ins", {"addr": int(m.group(1), 16), "guard": m.group(2), "op": m.group(3),
                                       "args": m.group(4)}))
    kernels = [n for n in funcs if re.search(kernel, n)]
    if len(kernels) != 1:
        raise Fail(f"disassembly: expected one {kernel} function, found {kernels}")
    ins, labels = [], {}
    for kind, v in funcs[kernels[0]]:
        if kind == "label":
            labels[v] = len(ins)
        else:
            ins.append(v)
    return kernels[0], ins, labels


def is_conditional_branch(i: dict) -> bool:
    if i["guard"] not in (None, "@PT"):
        return True
    mods = i["op"].split(".")[1:]
    if "DIV" in mods or "CONV" in mods:
        return True
    return bool(re.match(r"^!?U?P(\d+|T)\s*,", i["args"])) and not i["args"].startswith("PT")


class CFG:
    def __init__(self, ins: list[dict], labels: dict[str, int]):
        self.ins = ins
        leaders = {0} | set(labels.values())
        self.indirect = []
        for k, i in enumerate(ins):
            base = i["op"].split(".")[0]
            if base in ("BRA", "BRX", "JMP", "JMX", "EXIT", "RET", "KILL") or (base == "CALL" and _TARGET.search(i["args"])):
                leaders.add(k + 1)
        leaders = sorted(x for x in leaders if x < len(ins))
        self.blocks = []  # (start, end) instruction index ranges
        for n, s in enumerate(leaders):
            self.blocks.append((s, leaders[n + 1] if n + 1 < len(leaders) else len(ins)))
        start_block = {s: b for b, (s, _) in enumerate(self.blocks)}
        self.succ: list[list[int]] = []
        for b, (s, e) in enumerate(self.blocks):
            last = ins[e - 1]
            base = last["op"].split(".")[0]
            out = []
            falls = b + 1 < len(self.blocks)
            if base in ("BRA", "JMP"):
                m = _TARGET.search(last["args"])
                if m:
                    out.append(start_block[labels[m.group(1)]])
                else:
                    self.indirect.append(last["addr"])
                if not is_conditional_branch(last):
                    falls = False
            elif base in ("BRX", "JMX"):
                self.indirect.append(last["addr"])  # indirect: successors unknown (none today)
                falls = is_conditional_branch(last) and falls
            elif base in ("EXIT", "RET", "KILL"):
                falls = is_conditional_branch(last) and falls
            elif base == "CALL":
                # `@P0 CALL.REL.NOINC `(.L_x_39)``: ptxas's sm_80 idiom for a loop exit (a jump into the
                # function, no return); both ways are kept. Calls of $__internal_ functions return.
                m = _TARGET.search(last["args"])
                if m:
                    out.append(start_block[labels[m.group(1)]])
            if falls:
                out.append(b + 1)
            self.succ.append(list(dict.fromkeys(out)))
        self.pred: list[list[int]] = [[] for _ in self.blocks]
        for b, ss in enumerate(self.succ):
            for t in ss:
                self.pred[t].append(b)
        self._find_loops()

    def _find_loops(self) -> None:
        # back edges: edges to a block on the DFS stack (iterative DFS from the entry)
        self.back_edges: set[tuple[int, int]] = set()
        state = [0] * len(self.blocks)  # 0 new, 1 on stack, 2 done
        stack = [(0, iter(self.succ[0]))]
        state[0] = 1
        while stack:
            b, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                state[b] = 2
                stack.pop()
            elif state[nxt] == 1:
                self.back_edges.add((b, nxt))
            elif state[nxt] == 0:
                state[nxt] = 1
                stack.append((nxt, iter(self.succ[nxt])))
        # natural loops, one per header (back edges with the same header merged)
        loops: dict[int, dict] = {}
        for latch, head in sorted(self.back_edges):
            body = loops.setdefault(head, {"head": head, "latches": [], "body": {head}})
            body["latches"].append(latch)
            work = [latch]
            while work:
                x = work.pop()
                if x in body["body"]:
                    continue
                body["body"].add(x)
                work.extend(self.pred[x])
        self.loops = sorted(loops.values(), key=lambda l: self.blocks[l["head"]][0])

    def block_ops(self, b: int) -> list[dict]:
        s, e = self.blocks[b]
        return self.ins[s:e]


# =============================================================================================
# 5. Steady-state path of a key-tile loop
# =============================================================================================
def copy_regions(cfg: CFG, loop: dict, labels: dict[str, int]) -> list[tuple[int, int]]:
    """Address ranges [BSSY, its reconvergence label) inside the loop that contain LDGSTS and are
    not inside another such range: one per runtime-trip-count copy loop (load_tile call) today."""
    addr = lambda k: cfg.ins[k]["addr"] if k < len(cfg.ins) else cfg.ins[-1]["addr"] + 16
    lo = min(cfg.blocks[b][0] for b in loop["body"])
    hi = max(cfg.blocks[b][1] for b in loop["body"])
    ranges = []
    for k in range(lo, hi):
        i = cfg.ins[k]
        if i["op"].split(".")[0] == "BSSY":
            m = _TARGET.search(i["args"])
            if m and m.group(1) in labels:
                s, e = i["addr"], addr(labels[m.group(1)])
                if any(cfg.ins[j]["op"].startswith("LDGSTS") and s <= cfg.ins[j]["addr"] < e for j in range(lo, hi)):
                    ranges.append((s, e))
    ranges.sort()
    outer = [r for r in ranges if not any(o != r and o[0] <= r[0] and r[1] <= o[1] for o in ranges)]
    return outer


MAX_INNER_ITERATIONS = 16


def best_path(cfg: CFG, loop: dict, region_of: dict[int, int], n_regions: int, targets: list[int] | None) -> dict:
    """DP over the loop's DAG (every back edge removed). State: LDGSTS count per copy region (or the
    total when there are no regions). Without targets every block counts once (an inner loop's body
    once per tile) and the chosen path from the head to a latch maximises HMMA, then LDGSTS, then
    minimises instructions. With targets (the real per-thread trip count of each copy loop), a
    single-block inner loop inside a copy region may run 1..MAX_INNER_ITERATIONS times, and the path
    maximises HMMA, then the number of regions whose LDGSTS count equals its target, then minimises
    the distance of the total to the targets' sum, then the instructions."""
    body = loop["body"]
    dag = {b: [t for t in cfg.succ[b] if t in body and (b, t) not in cfg.back_edges] for b in body}
    order, seen = [], {loop["head"]}
    stack = [(loop["head"], iter(dag[loop["head"]]))]
    while stack:  # reverse post-order from the head = a topological order of the DAG
        x, it = stack[-1]
        n = next(it, None)
        if n is None:
            order.append(x)
            stack.pop()
        elif n not in seen:
            seen.add(n)
            stack.append((n, iter(dag[n])))
    order.reverse()

    weights = {}
    for b in order:
        ops = cfg.block_ops(b)
        weights[b] = (sum(o["op"].startswith("HMMA") for o in ops), sum(o["op"].startswith("LDGSTS") for o in ops),
                      len(ops))
    weight = weights.__getitem__

    def multiplicities(b: int) -> range:
        if targets and b in region_of and (b, b) in cfg.back_edges:
            return range(1, MAX_INNER_ITERATIONS + 1)
        return range(1, 2)

    width = max(n_regions, 1)

    def add(st: tuple, b: int, g: int) -> tuple:
        if not g:
            return st
        ns = list(st)
        if n_regions and b in region_of:
            ns[region_of[b]] += g
        elif not n_regions:
            ns[0] += g
        return tuple(ns)  # with regions, LDGSTS outside all of them (none today) are not tracked

    # best[b][state] = (hmma, instructions, previous block, previous state, iterations of b)
    best: dict[int, dict[tuple, tuple]] = {b: {} for b in order}
    head = loop["head"]
    h0, g0, n0 = weight(head)
    best[head][add((0,) * width, head, g0)] = (h0, n0, None, None, 1)
    for b in order:
        for st, (h, n, _, _, _) in list(best[b].items()):
            for t in dag[b]:
                dh, dg, dn = weight(t)
                for j in multiplicities(t):
                    ns = add(st, t, dg * j)
                    if targets and t in region_of and ns[region_of[t]] > targets[region_of[t]] and j > 1:
                        break  # more iterations only overshoot the trip count
                    cand = (h + dh * j, n + dn * j, b, st, j)
                    cur = best[t].get(ns)
                    if cur is None or (cand[0], -cand[1]) > (cur[0], -cur[1]):
                        best[t][ns] = cand
    latches = [l for l in loop["latches"] if l in best and best[l]]
    if not latches:
        raise Fail("a key-tile loop has no latch reachable from its head")
    cands = []
    for l in sorted(latches):
        for st, (h, n, _, _, _) in best[l].items():
            if targets:
                key = (h, sum(1 for r in range(n_regions) if st[r] == targets[r]), -abs(sum(st) - sum(targets)), -n)
            else:
                key = (h, sum(st), 0, -n)
            cands.append((key, l, st))
    cands.sort(key=lambda c: c[0], reverse=True)
    _, b, st = cands[0]
    final_state = st
    path = []
    while b is not None:
        _, _, pb, pst, j = best[b][st]
        path.append((b, j))
        b, st = pb, pst
    path.reverse()
    return {"blocks": path, "ldgsts_per_region": list(final_state) if n_regions else None,
            "inner_iterations": [j for _, j in path if j > 1]}


def ldsm_width(op: str) -> int:
    m = re.search(r"\.M(?:T)?88(?:\.(\d))?", op)
    return int(m.group(1)) if m and m.group(1) else 1


def count_path(cfg: CFG, blocks: list[tuple[int, int]], regions: list[tuple[int, int]]) -> dict:
    """Instruction counts on a path of (block, iterations)."""
    counts = {c: 0 for c in CLASS_NAMES}
    ops: dict[str, int] = {}
    ex2 = ldsm_other = calls = in_regions = 0
    for b, j in blocks:
        for i in cfg.block_ops(b):
            cls = classify(i["op"], i["guard"])
            counts[cls] += j
            base = "NOP" if cls == "nop" else i["op"].split(".")[0]
            ops[base] = ops.get(base, 0) + j
            if i["op"].startswith("MUFU.EX2"):
                ex2 += j
            if base == "LDSM" and ldsm_width(i["op"]) != 4:
                ldsm_other += j
            if base == "CALL" and not _TARGET.search(i["args"]):
                calls += j  # a call of a subroutine ($__internal_...); a CALL to a label is a jump
            if any(s <= i["addr"] < e for s, e in regions):
                in_regions += j
    total = sum(counts.values())
    return {"total": total, "classes": counts, "opcodes": dict(sorted(ops.items())), "mufu_ex2": ex2,
            "mufu_other": counts["mufu"] - ex2, "ldsm_not_x4": ldsm_other, "calls": calls,
            "copy_region_instr": in_regions}


# The tiles each key-tile loop streams with cp.async, in the order the kernel issues them (K1, K2
# are d wide, V is 2d wide; 2-byte elements): the brief's byte counts, and the per-thread trip count
# of each copy loop (columns * keys / 8 elements per 16-byte copy / kThreads).
def streamed_tiles(c: dict, loop_index: int) -> list[int]:
    d = c["head_dim"]
    if c.get("kV2"):  # DIFF V2: one K and a V of d channels
        return [d, d]
    with_v = c["kSinglePass"] or loop_index == 1
    return [d, d, 2 * d] if with_v else [d, d]


def analyse_loop(cfg: CFG, loop: dict, labels: dict, c: dict, li: int, expect: dict) -> dict:
    tiles = streamed_tiles(c, li)
    keys = expect["keys"]
    bytes_cta = keys * sum(tiles) * 2
    copies_per_thread = [keys * w / 8 / c["kThreads"] for w in tiles]
    regions = copy_regions(cfg, loop, labels)
    # first pass without regions: HMMA on the best path fixes the unroll factor k
    plain = best_path(cfg, loop, {}, 0, None)
    plain_counts = count_path(cfg, plain["blocks"], regions)
    hmma = plain_counts["classes"]["tensor"]
    k = hmma / expect["hmma"] if expect["hmma"] else 1.0
    result = {"head_addr": cfg.ins[cfg.blocks[loop["head"]][0]]["addr"], "blocks_in_loop": len(loop["body"])}
    if abs(k - round(k)) > 1e-9 or round(k) < 1:
        result.update(error=f"HMMA on the path {hmma} is not a multiple of the expected {expect['hmma']}",
                      unroll=k, path=plain_counts)
        return result
    k = int(round(k))
    region_of = {}
    for b in loop["body"]:
        a = cfg.ins[cfg.blocks[b][0]]["addr"]
        for r, (s, e) in enumerate(regions):
            if s <= a < e:
                region_of[b] = r
    targets = None
    note = None
    if regions:
        per_tile = [int(x) if float(x).is_integer() else None for x in copies_per_thread]
        if len(regions) == k * len(tiles) and None not in per_tile:
            targets = per_tile * k
            chosen = best_path(cfg, loop, region_of, len(regions), targets)
        else:
            note = (f"{len(regions)} copy regions for {len(tiles)} tiles x {k}: trip counts not matched, "
                    "the path maximises LDGSTS")
            chosen = best_path(cfg, loop, {}, 0, None)
    else:
        chosen = plain
    counts = count_path(cfg, chosen["blocks"], regions)
    inner = [l for l in cfg.loops if l is not loop and l["head"] in loop["body"] and l["body"] <= loop["body"]]
    per_tile = {
        "total": counts["total"] / k,
        "classes": {n: v / k for n, v in counts["classes"].items()},
        "opcodes": {n: v / k for n, v in counts["opcodes"].items()},
        "hmma": counts["classes"]["tensor"] / k,
        "ldsm": counts["classes"]["ldsm"] / k,
        "mufu_ex2": counts["mufu_ex2"] / k,
        "mufu_other": counts["mufu_other"] / k,
        "ldgsts": counts["classes"]["ldgsts"] / k,
        "ldsm_not_x4": counts["ldsm_not_x4"] / k,
        "copy_region_instr": counts["copy_region_instr"] / k,
        "issued": (counts["total"]) / k,
    }
    result.update({
        "unroll": k,
        "inner_loops": len(inner),
        "has_inner_loop": bool(inner),
        "copy_regions": len(regions),
        "copy_trip_counts_expected": copies_per_thread,
        "copy_trip_counts_on_path": chosen.get("ldgsts_per_region"),
        "inner_loop_iterations_on_path": chosen.get("inner_iterations"),
        "path_note": note,
        "path_blocks": len(chosen["blocks"]),
        "calls_on_path": counts["calls"],
        "cp_async_bytes_per_tile_cta": bytes_cta,
        "expected": expect,
        "per_tile": per_tile,
        # the brief's literal rule (maximise LDGSTS): with runtime-trip-count copy loops it walks
        # every remainder copy and one unrolled body per load_tile call
        "max_ldgsts_path": {"total": plain_counts["total"] / k, "ldgsts": plain_counts["classes"]["ldgsts"] / k},
    })
    return result


def analyse_kernel(text: str, c: dict) -> dict:
    name, ins, labels = kernel_instructions(text)
    cfg = CFG(ins, labels)
    hmma_loops = [l for l in cfg.loops
                  if any(cfg.ins[k]["op"].startswith("HMMA") for b in l["body"] for k in range(*cfg.blocks[b]))]
    outer = [l for l in hmma_loops if not any(o is not l and l["body"] < o["body"] for o in hmma_loops)]
    out = {"function": name, "instructions": len(ins), "blocks": len(cfg.blocks), "loops_total": len(cfg.loops),
           "indirect_branches": cfg.indirect, "hmma_loops": len(outer), "loops": []}
    if len(outer) != c["kLoops"]:
        out["error"] = f"{len(outer)} outermost HMMA loops, kLoops = {c['kLoops']}"
        return out
    for li, l in enumerate(outer):
        out["loops"].append(analyse_loop(cfg, l, labels, c, li, c["loop_counts"][li]))
    return out


# =============================================================================================
# 5b. The backward's main kernel: its query-tile loop
# =============================================================================================
# The kernels of one backward configuration (one TU: backward_config<Traits>); the query-tile
# loop of BwdMainKernel is the one modelled, the others are checked for spills. A configuration
# with Traits::kMainParts > 1 launches the main kernel once per Part (template argument): each
# part is an entry of its own (name suffix _p<Part>), modelled alone, then combined.
BWD_KERNELS = ("BwdPrepassKernel", "BwdO2DotKernel", "BwdMainKernel", "BwdDqConvertKernel", "BwdFinishKernel")
BWD_MAIN = "BwdMainKernel"


def bwd_kernel_pattern(kname: str, c: dict) -> str:
    """The regular expression of a backward kernel's mangled name; BwdMainKernel<Traits, Part> by
    its Part (..._14BackwardTraits<...>E Li<Part>E E...)."""
    if kname == BWD_MAIN:
        return rf"{BWD_MAIN}I\w*EELi{c['part']}EEE"
    return kname


def is_subroutine_call(i: dict) -> bool:
    """A CALL of a function ($__internal_...: 64-bit division, ...), not sm_80's CALL-to-a-label jump."""
    return i["op"].split(".")[0] == "CALL" and not _TARGET.search(i["args"])


def is_global_reduction(i: dict) -> bool:
    return i["op"].split(".")[0] in ("RED", "REDG", "ATOM", "ATOMG") and i["guard"] != "@!PT"


def tiered_path(cfg: CFG, loop: dict, key) -> list[tuple[int, int]]:
    """The head -> latch path through the loop's DAG (every back edge removed: an inner loop's body
    counts once) that maximises the sum of key(block), a tuple compared lexicographically."""
    body = loop["body"]
    dag = {b: [t for t in cfg.succ[b] if t in body and (b, t) not in cfg.back_edges] for b in body}
    order, seen = [], {loop["head"]}
    stack = [(loop["head"], iter(dag[loop["head"]]))]
    while stack:
        x, it = stack[-1]
        n = next(it, None)
        if n is None:
            order.append(x)
            stack.pop()
        elif n not in seen:
            seen.add(n)
            stack.append((n, iter(dag[n])))
    order.reverse()
    add = lambda a, b: tuple(x + y for x, y in zip(a, b))
    best = {loop["head"]: (key(loop["head"]), None)}
    for b in order:
        if b not in best:
            continue
        for t in dag[b]:
            cand = add(best[b][0], key(t))
            if t not in best or cand > best[t][0]:
                best[t] = (cand, b)
    latches = [l for l in loop["latches"] if l in best]
    if not latches:
        raise Fail("the query-tile loop has no latch reachable from its head")
    b = max(sorted(latches), key=lambda l: best[l][0])
    path = []
    while b is not None:
        path.append((b, 1))
        b = best[b][1]
    path.reverse()
    return path


def smem_access_bytes(op: str) -> int:
    """Bytes one warp's LDS/STS/ATOMS moves: 32 lanes x the access width (conflict-free; a broadcast
    is not credited)."""
    m = re.search(r"\.(U8|S8|U16|S16|64|128)(?:\.|$)", op)
    return 32 * ({"U8": 1, "S8": 1, "U16": 2, "S16": 2, "64": 8, "128": 16}[m.group(1)] if m else 4)


def bwd_tile_bytes(c: dict) -> int:
    """cp.async bytes of one query tile (the block's): Q_1, Q_2 (d), dA (dv), the row statistics."""
    return c["kBlockM"] * (2 * c["head_dim"] + c["kValueDim"]) * 2 + c["kBlockM"] * c["kStat"] * 4


def analyse_backward_kernel(text: str, c: dict, arch: str) -> dict:
    name, ins, labels = kernel_instructions(text, bwd_kernel_pattern(BWD_MAIN, c))
    cfg = CFG(ins, labels)
    has = lambda l, op: any(cfg.ins[k]["op"].startswith(op) for b in l["body"] for k in range(*cfg.blocks[b]))
    # the query-tile loop: the innermost loop holding both HMMA and LDGSTS (stream_key_tiles: the
    # next tile's copies and the tile's products). The key-block and head loops around it hold it;
    # a dQ work-unit loop inside it (kDqTiles > kWarps) would hold HMMA but no LDGSTS.
    cand = [l for l in cfg.loops if has(l, "HMMA") and has(l, "LDGSTS")]
    tile = [l for l in cand if not any(o is not l and o["body"] < l["body"] for o in cand)]
    out = {"function": name, "instructions": len(ins), "blocks": len(cfg.blocks), "loops_total": len(cfg.loops),
           "indirect_branches": cfg.indirect, "tile_loops": len(tile), "loops": []}
    if len(tile) != 1:
        out["error"] = f"{len(tile)} innermost loops with HMMA and LDGSTS (the query-tile loop), expected 1"
        return out
    loop = tile[0]
    expect = c["loop_counts_by_arch"][arch][0]

    def weights(b: int) -> tuple:
        ops = cfg.block_ops(b)
        return (sum(o["op"].startswith("HMMA") for o in ops), sum(o["op"].startswith("LDGSTS") for o in ops),
                sum(is_global_reduction(o) for o in ops), sum(is_subroutine_call(o) for o in ops), len(ops))
    w = {b: weights(b) for b in loop["body"]}
    # steady state: most HMMA (the dQ unit is done), most LDGSTS (the next tile is prefetched), most
    # red.global (every row's dQ is added, with atomics), fewest subroutine calls (the 64-bit
    # division's 32-bit fast path), then the fewest instructions; the most instructions for the
    # other end of the range
    path = tiered_path(cfg, loop, lambda b: (w[b][0], w[b][1], w[b][2], -w[b][3], -w[b][4]))
    path_max = tiered_path(cfg, loop, lambda b: (w[b][0], w[b][1], w[b][2], -w[b][3], w[b][4]))
    counts = count_path(cfg, path, [])
    counts_max = count_path(cfg, path_max, [])
    hmma = counts["classes"]["tensor"]
    result = {"head_addr": cfg.ins[cfg.blocks[loop["head"]][0]]["addr"], "blocks_in_loop": len(loop["body"])}
    k = hmma / expect["hmma"] if expect["hmma"] else 1.0
    if abs(k - round(k)) > 1e-9 or round(k) < 1:
        result.update(error=f"HMMA on the path {hmma} is not a multiple of the expected {expect['hmma']}",
                      unroll=k, path=counts)
        out["loops"].append(result)
        return out
    k = int(round(k))
    on_path = [i for b, _ in path for i in cfg.block_ops(b)]
    lds = sum(1 for i in on_path if classify(i["op"], i["guard"]) == "lds_sts" and i["op"].startswith("LDS"))
    sts = sum(1 for i in on_path if classify(i["op"], i["guard"]) == "lds_sts" and not i["op"].startswith("LDS"))
    ldst_bytes = sum(smem_access_bytes(i["op"]) for i in on_path if classify(i["op"], i["guard"]) == "lds_sts")
    red = sum(is_global_reduction(i) for i in on_path)
    red_blocks = sum(1 for b, _ in path
                     if sum(is_global_reduction(i) for i in cfg.block_ops(b)) == 1
                     and all(is_global_reduction(i) or classify(i["op"], i["guard"]) in ("branch", "nop")
                             for i in cfg.block_ops(b)))
    mufu_ops: dict[str, int] = {}
    for i in on_path:
        if i["op"].startswith("MUFU") and not i["op"].startswith("MUFU.EX2") and i["guard"] != "@!PT":
            mufu_ops[i["op"]] = mufu_ops.get(i["op"], 0) + 1
    off_path_calls = sorted({re.sub(r"[`()]", "", cfg.ins[j]["args"]).split(",")[0].strip()
                             for b in loop["body"] for j in range(*cfg.blocks[b])
                             if is_subroutine_call(cfg.ins[j])})
    inner = [l for l in cfg.loops if l is not loop and l["head"] in loop["body"] and l["body"] <= loop["body"]]
    per_tile = {
        "total": counts["total"] / k,
        "classes": {n: v / k for n, v in counts["classes"].items()},
        "opcodes": {n: v / k for n, v in counts["opcodes"].items()},
        "hmma": counts["classes"]["tensor"] / k,
        "ldsm": counts["classes"]["ldsm"] / k,
        "mufu_ex2": counts["mufu_ex2"] / k,
        "mufu_other": counts["mufu_other"] / k,
        "mufu_other_ops": {n: v / k for n, v in mufu_ops.items()},
        "ldgsts": counts["classes"]["ldgsts"] / k,
        "ldsm_not_x4": counts["ldsm_not_x4"] / k,
        "lds": lds / k,
        "sts": sts / k,
        "lds_sts_bytes": ldst_bytes / k,
        "red": red / k,
        "issued": counts["total"] / k,
    }
    result.update({
        "unroll": k,
        "inner_loops": len(inner),
        "inner_loops_with_hmma": sum(1 for l in inner if has(l, "HMMA")),
        "path_blocks": len(path),
        "red_blocks": red_blocks / k,
        "calls_on_path": counts["calls"],
        "calls_in_loop_off_path": off_path_calls if not counts["calls"] else [],
        "cp_async_bytes_per_tile_cta": bwd_tile_bytes(c),
        "expected": expect,
        "per_tile": per_tile,
        # the same tiers, then the most instructions: e.g. the band arithmetic of a two-sided mask
        "max_path": {"total": counts_max["total"] / k, "hmma": counts_max["classes"]["tensor"] / k,
                     "ldsm": counts_max["classes"]["ldsm"] / k, "mufu_ex2": counts_max["mufu_ex2"] / k},
    })
    out["loops"].append(result)
    return out


def model_backward(c: dict, lp: dict, dev: dict) -> dict:
    """SM-clocks per warp-tile (16 keys x kBlockM rows) by unit, and the bounds."""
    t = lp["per_tile"]
    cl = t["classes"]
    cp_warp = lp["cp_async_bytes_per_tile_cta"] / c["kWarps"]
    smem_bytes = t["ldsm"] * 512 + t["lds_sts_bytes"] + cp_warp
    units = {
        "issue": t["issued"] / rate(dev, "issue_per_clk"),
        "tensor": t["hmma"] * HMMA_FLOP / rate(dev, "tensor_flop_per_clk"),
        "smem": smem_bytes / rate(dev, "smem_bytes_per_clk"),
        "fp32": (cl["fp32"] + cl["imad"]) * 32 / rate(dev, "fp32_per_clk"),
        "int": cl["int"] * 32 / rate(dev, "int32_per_clk"),
        "mufu": cl["mufu"] * 32 / rate(dev, "mufu_per_clk"),
    }
    bind = max(units, key=lambda u: units[u])
    fpp = 16 if c.get("kV2") else 20  # backward FLOP per (row, key) per d: 20 d (V1), 16 d (V2), docs/SPEC.md
    flop = 16 * c["kBlockM"] * fpp * c["head_dim"]  # one warp's 16 keys x kBlockM rows
    sms, ghz = rate(dev, "sms"), rate(dev, "clock_ghz")
    tf = lambda clk: flop / clk * ghz * 1e9 * sms / 1e12
    unit_tf = tf(units[bind])
    # L2 -> SM and SM -> L2: this warp's share of the tile's cp.async bytes and its red.global bytes
    l2_bytes = cp_warp + t["red"] * 32 * 4
    l2_bytes_per_flop = l2_bytes / flop
    l2_tf = rate(dev, "l2_tb_s") / l2_bytes_per_flop
    issue_max = lp["max_path"]["total"] / rate(dev, "issue_per_clk")
    final = min(unit_tf, l2_tf)
    return {
        "sm_clk_per_warp_tile": units,
        "bound_clk": units[bind],
        "flop_per_warp_tile": flop,
        "unit_bound_tflops": unit_tf,
        "unit_binding": bind,
        "unit_bound_tflops_max_path": tf(max([v for u, v in units.items() if u != "issue"] + [issue_max])),
        "smem_bytes_per_warp_tile": smem_bytes,
        "smem_bytes_per_flop": smem_bytes / flop,
        "flop_per_smem_byte": flop / smem_bytes,
        "l2_bytes_per_flop": l2_bytes_per_flop,
        "l2_bound_tflops": l2_tf,
        "bound_tflops": final,
        "binding": bind if unit_tf <= l2_tf else "L2",
        "likely_tflops": [0.5 * final, 0.7 * final],
    }


def combine_backward_parts(bwd: list[dict]) -> list[dict]:
    """The bound of each configuration whose main kernel runs in parts: every part covers the same
    key blocks and query tiles, so their times per warp-tile add and the bound of the whole is
    1 / sum(1 / bound_part), by the same useful FLOP (SPEC's backward count)."""
    groups: dict[str, list[dict]] = {}
    for c in bwd:
        if c.get("kMainParts", 1) > 1:
            groups.setdefault(tu_name(c), []).append(c)
    out = []
    for name, parts in groups.items():
        model = {}
        for dname in parts[0].get("model", {}):
            ms = [c["model"].get(dname) for c in parts]
            if all(ms) and len(ms) == parts[0]["kMainParts"]:
                model[dname] = {"bound_tflops": 1.0 / sum(1.0 / m["bound_tflops"] for m in ms),
                                "parts_tflops": [m["bound_tflops"] for m in ms],
                                "binding": "/".join(m["binding"] for m in ms)}
        out.append({"name": name, "parts": [c["name"] for c in parts], "model": model,
                    "check_errors": [e for c in parts for e in c["check_errors"]]})
    return out


def check_backward(c: dict) -> list[str]:
    errs = []
    for arch, r in c["arch"].items():
        for kname, p in r["ptxas"].items():
            if p["stack"] or p["spill_stores"] or p["spill_loads"]:
                errs.append(f"{arch} {kname}: {p['stack']} B stack, {p['spill_stores']}/{p['spill_loads']} B spill st/ld")
        k = r["kernel"]
        if "error" in k:
            errs.append(f"{arch}: {k['error']}")
            continue
        for lp in k["loops"]:
            if "error" in lp:
                errs.append(f"{arch} query-tile loop: {lp['error']}")
                continue
            e, t = lp["expected"], lp["per_tile"]
            for what, got, want in (("HMMA", t["hmma"], e["hmma"]), ("LDSM", t["ldsm"], e["ldsm"]),
                                    ("MUFU.EX2", t["mufu_ex2"], e["mufu"])):
                if got != want:
                    errs.append(f"{arch} query-tile loop: {what} {got:g} per tile, loop_counts says {want}")
            if t["ldsm_not_x4"]:
                errs.append(f"{arch} query-tile loop: {t['ldsm_not_x4']:g} LDSM not .x4 per tile")
            if lp["inner_loops_with_hmma"]:
                errs.append(f"{arch} query-tile loop: {lp['inner_loops_with_hmma']} inner loop(s) with HMMA (a dQ "
                            "unit loop, kDqTiles > kWarps): its body is counted once per tile")
    return errs


# =============================================================================================
# 6. Model
# =============================================================================================
def rate(dev: dict, key: str) -> float:
    return dev[key][0]


def model_loop(lp: dict, c: dict, dev: dict) -> dict:
    t = lp["per_tile"]
    cl = t["classes"]
    cp_bytes_warp = lp["cp_async_bytes_per_tile_cta"] / c["kWarps"]
    units = {
        "issue": t["issued"] / rate(dev, "issue_per_clk"),
        "tensor": t["hmma"] * HMMA_FLOP / rate(dev, "tensor_flop_per_clk"),
        "smem": (t["ldsm"] * 512 + cp_bytes_warp) / rate(dev, "smem_bytes_per_clk"),
        # FP32 lanes: FP32 instructions plus IMAD (FMA pipe on sm_80+)
        "fp32": (cl["fp32"] + cl["imad"]) * 32 / rate(dev, "fp32_per_clk"),
        "int": cl["int"] * 32 / rate(dev, "int32_per_clk"),
        "mufu": cl["mufu"] * 32 / rate(dev, "mufu_per_clk"),
    }
    bind = max(units, key=lambda u: units[u])
    return {"sm_clk_per_warp_tile": units, "bound_clk": units[bind], "binding": bind,
            "smem_bytes_per_warp_tile": t["ldsm"] * 512 + cp_bytes_warp}


def model_config(c: dict, arch_result: dict, dev: dict) -> dict:
    loops = [model_loop(lp, c, dev) for lp in arch_result["loops"]]
    d = c["head_dim"]
    clk16 = sum(m["bound_clk"] / lp["expected"]["keys"] * 16 for m, lp in zip(loops, arch_result["loops"]))
    per_unit16 = {u: sum(m["sm_clk_per_warp_tile"][u] / lp["expected"]["keys"] * 16
                         for m, lp in zip(loops, arch_result["loops"])) for u in loops[0]["sm_clk_per_warp_tile"]}
    fpp = 8 if c.get("kV2") else 12  # FLOP per (row, key) per d: 12 d (V1), 8 d (V2), docs/SPEC.md's count
    flop16 = 16 * 16 * fpp * d  # one warp's 16 rows x 16 keys
    sms, ghz = rate(dev, "sms"), rate(dev, "clock_ghz")
    tf = lambda clk: flop16 / clk * ghz * 1e9 * sms / 1e12
    unit_tf = tf(clk16)
    # the unit that binds each loop, in program order ("issue" or, for two passes, e.g. "issue/smem")
    per_loop = [m["binding"] for m in loops]
    binding = per_loop[0] if len(set(per_loop)) == 1 else "/".join(per_loop)
    cp_bytes_per_key = sum(lp["cp_async_bytes_per_tile_cta"] / lp["expected"]["keys"] for lp in arch_result["loops"])
    l2_bytes_per_flop = cp_bytes_per_key / (c["kBlockM"] * fpp * d)
    l2_tf = rate(dev, "l2_tb_s") / l2_bytes_per_flop
    smem16 = sum(m["smem_bytes_per_warp_tile"] / lp["expected"]["keys"] * 16
                 for m, lp in zip(loops, arch_result["loops"]))
    final = min(unit_tf, l2_tf)
    return {
        "loops": loops,
        "sm_clk_per_16_keys_per_warp": clk16,
        "per_unit_clk_per_16_keys": per_unit16,
        "flop_per_16_keys_per_warp": flop16,
        "unit_bound_tflops": unit_tf,
        "unit_binding": binding,
        "l2_bytes_per_flop": l2_bytes_per_flop,
        "l2_bound_tflops": l2_tf,
        "smem_bytes_per_flop": smem16 / flop16,
        "flop_per_smem_byte": flop16 / smem16,
        "bound_tflops": final,
        "binding": binding if unit_tf <= l2_tf else "L2",
        "likely_tflops": [0.5 * final, 0.7 * final],
    }


# =============================================================================================
# 7. Check
# =============================================================================================
def check_config(c: dict) -> list[str]:
    errs = []
    for arch, r in c["arch"].items():
        p = r["ptxas"]
        if c["kind"] == "shipped" and (p["stack"] or p["spill_stores"] or p["spill_loads"]):
            errs.append(f"{arch}: {p['stack']} B stack, {p['spill_stores']}/{p['spill_loads']} B spill st/ld")
        k = r["kernel"]
        if "error" in k:
            errs.append(f"{arch}: {k['error']}")
            continue
        for li, lp in enumerate(k["loops"]):
            if "error" in lp:
                errs.append(f"{arch} loop {li}: {lp['error']}")
                continue
            e, t = lp["expected"], lp["per_tile"]
            for what, got, want in (("HMMA", t["hmma"], e["hmma"]), ("LDSM", t["ldsm"], e["ldsm"]),
                                    ("MUFU.EX2", t["mufu_ex2"], e["mufu"])):
                if got != want:
                    errs.append(f"{arch} loop {li}: {what} {got:g} per tile, loop_counts says {want}")
            if t["ldsm_not_x4"]:
                errs.append(f"{arch} loop {li}: {t['ldsm_not_x4']:g} LDSM not .x4 per tile")
    return errs


# =============================================================================================
# 8. Report
# =============================================================================================
def fmt_num(x: float) -> str:
    return f"{x:.0f}" if abs(x - round(x)) < 1e-9 else f"{x:.1f}"


# Per-tile count columns of the forward's and the backward's tables: the units, then the tail.
UNIT_COUNT_COLS = [
    ("HMMA", lambda lp: lp["per_tile"]["hmma"]), ("(exp)", lambda lp: lp["expected"]["hmma"]),
    ("LDSM", lambda lp: lp["per_tile"]["ldsm"]), ("(exp)", lambda lp: lp["expected"]["ldsm"]),
    ("EX2", lambda lp: lp["per_tile"]["mufu_ex2"]), ("(exp)", lambda lp: lp["expected"]["mufu"]),
    ("MUFU other", lambda lp: lp["per_tile"]["mufu_other"]),
    ("FP32", lambda lp: lp["per_tile"]["classes"]["fp32"]),
    ("FMUL", lambda lp: lp["per_tile"]["opcodes"].get("FMUL", 0)),
    ("FFMA", lambda lp: lp["per_tile"]["opcodes"].get("FFMA", 0)),
    ("IMAD", lambda lp: lp["per_tile"]["classes"]["imad"]),
    ("INT", lambda lp: lp["per_tile"]["classes"]["int"]),
    ("conv", lambda lp: lp["per_tile"]["classes"]["conv"]),
    ("SHFL", lambda lp: lp["per_tile"]["classes"]["shfl"]),
    ("BAR", lambda lp: lp["per_tile"]["classes"]["bar"]),
    ("LDGSTS", lambda lp: lp["per_tile"]["ldgsts"]),
    ("DEPBAR", lambda lp: lp["per_tile"]["classes"]["depbar"]),
]
TAIL_COUNT_COLS = [
    ("local", lambda lp: lp["per_tile"]["classes"]["local"]),
    ("uniform", lambda lp: lp["per_tile"]["classes"]["uniform"]),
    ("branch", lambda lp: lp["per_tile"]["classes"]["branch"]),
    ("NOP", lambda lp: lp["per_tile"]["classes"]["nop"]),
    ("other", lambda lp: lp["per_tile"]["classes"]["other"]),
]


def markdown(doc: dict) -> str:
    L = []
    w = L.append
    w("# SASS model of the CUDA forward (generated by bench/cuda/sass_model.py; do not edit)\n")
    t = doc["tools"]
    w(f"Kernel source: commit `{t['commit']}`{' (include/ modified)' if t['include_dirty'] else ''}, "
      f"include/ hash `{t['include_hash'][:12]}`. {t['nvcc']}; {t['nvdisasm']}. Static: no GPU ran; every "
      "TFLOP/s figure is a ceiling of a model, not a measurement.\n")
    w("## Method\n")
    w("* One TU per configuration and architecture, `nvcc " + " ".join(NVCC_FLAGS) +
      " -gencode arch=compute_XX,code=sm_XX`; registers, spills and stack from ptxas's report.")
    w("* `nvdisasm -c` of the cubin; basic blocks split at labels and after BRA/BRX/JMP/EXIT/RET (a predicated "
      "branch has a fall-through); loops from the DFS back edges; the key-tile loops are the outermost loops "
      "that contain HMMA, in program order (their number must equal kLoops).")
    w("* Steady-state path of each loop: in the loop's DAG (every back edge removed, so an inner loop's body "
      "counts once per iteration of the key-tile loop), the path from the head to the back-edge branch that "
      "maximises HMMA, then matches each runtime-trip-count copy loop (a `load_tile` call: the outermost "
      "BSSY..BSYNC region holding LDGSTS) to its real per-thread trip count (keys x columns / 8 / kThreads, "
      "tiles K1, K2 [, V] in issue order), then LDGSTS, then has the fewest instructions (no mask-edge code, "
      "no rare branch). Maximising LDGSTS alone (the first plan) would walk every remainder copy plus one "
      "4x-unrolled body of each copy loop; the JSON keeps that path's totals as `max_ldgsts_path`.")
    w("* Counts are one warp's instructions per key tile (divided by k when the compiler unrolled k tiles per "
      "iteration). Every instruction on the path counts as issued work, NOPs included: NOP and `@!PT` padding "
      "(6-28 per tile, column NOP) sit inside the path and take issue slots as the warp passes them; subtract "
      "the column for a lower bound. IMAD (all forms) issues to the FMA pipe on "
      "sm_80+: it is listed apart from the integer ALU and charged to the FP32 lanes. Conversions, SHFL, "
      "uniform-datapath, branch and memory instructions count only for issue. `cp.async code` = instructions "
      "on the path inside the copy loops' regions (address arithmetic, zfill predicates, loop control, LDGSTS).")
    w("* Model, in SM-clocks per warp-tile (all warps of an SM share its units): issue = instructions / 4; "
      "tensor = HMMA x 4096 / tensor FLOP/clk; smem = (LDSM x 512 B + this warp's share of the tile's cp.async "
      "bytes) / 128 B/clk; FP32 = (FP32 + IMAD) x 32 / FP32 lanes; INT = INT x 32 / 64; MUFU = MUFU x 32 / 16. "
      "A loop's bound is the largest; a configuration's clocks per 16 keys add its loops (the passes run one "
      "after the other). FLOP per 16 keys per warp = 16 x 16 x 12d (SPEC's count; the two-pass form recomputes "
      "QK^T, counted once). L2 bound: cp.async bytes per key of all loops / (BlockM x 12d) FLOP. "
      "The bound is min(unit bound, L2 bound); 50-70% of it is a plausible achieved range (estimate).\n")
    w("## Rates (per SM per clock)\n")
    keys = ["sms", "clock_ghz", "tensor_flop_per_clk", "mufu_per_clk", "fp32_per_clk", "int32_per_clk",
            "issue_per_clk", "smem_bytes_per_clk", "l2_tb_s", "hbm_tb_s"]
    w("| rate | " + " | ".join(doc["devices"]) + " | source |")
    w("|---|" + "---|" * len(doc["devices"]) + "---|")
    for k in keys:
        vals = [doc["devices"][d][k][0] for d in doc["devices"]]
        srcs = " / ".join(f"{d}: {doc['devices'][d][k][1]}" for d in doc["devices"])
        w(f"| {k} | " + " | ".join(f"{v:g}" if isinstance(v, int) else f"{v:.4g}" for v in vals) + f" | {srcs} |")
    w("")
    w("## Instruction classes\n")
    w("| class | model unit | opcodes (before the first '.') |")
    w("|---|---|---|")
    w(CLASS_TABLE_DOC)
    w("")
    w("## Configurations and ptxas\n")
    archs = doc["archs"]
    w("| config | kind | template args | BM | BN | warps | form | smem B | " +
      " | ".join(f"regs {a}" for a in archs) + " | spill st/ld B, stack B | check |")
    w("|---|---|---|---|---|---|---|---|" + "---|" * len(archs) + "---|---|")
    for c in doc["configs"]:
        spills = "; ".join(f"{a}: {c['arch'][a]['ptxas']['spill_stores']}/{c['arch'][a]['ptxas']['spill_loads']}, "
                           f"{c['arch'][a]['ptxas']['stack']}" for a in archs if a in c["arch"])
        w(f"| {c['name']} | {c['kind']} | `{c['args']}` | {c['kBlockM']} | {c['kBlockN']} | {c['kWarps']} | "
          f"{'1 pass' if c['kSinglePass'] else '2 pass'} | {c['kSmemBytes']} | " +
          " | ".join(str(c['arch'][a]['ptxas']['registers']) if a in c['arch'] else '-' for a in archs) +
          f" | {spills} | {'pass' if not c['check_errors'] else 'FAIL: ' + '; '.join(c['check_errors'])} |")
    w("")
    cols = [("keys", lambda lp: lp["expected"]["keys"]), ("unroll", lambda lp: lp["unroll"]),
            ("all instr", lambda lp: lp["per_tile"]["total"]),
            *UNIT_COUNT_COLS,
            ("LDS/STS", lambda lp: lp["per_tile"]["classes"]["lds_sts"]),
            ("LDG/STG", lambda lp: lp["per_tile"]["classes"]["global"]),
            *TAIL_COUNT_COLS,
            ("cp.async code", lambda lp: lp["per_tile"]["copy_region_instr"]),
            ("inner loops", lambda lp: lp["inner_loops"])]
    for a in archs:
        w(f"## Per-tile counts, one warp, {a}\n")
        w("(exp) = Traits::loop_counts(i). Inner loops > 0: the loop holds runtime-trip-count loops (the first kernel's "
          "`load_tile` copy loops), counted once per tile at their real trip count.\n")
        w("| config | loop | " + " | ".join(n for n, _ in cols) + " |")
        w("|---|---|" + "---|" * len(cols))
        for c in doc["configs"]:
            if a not in c["arch"]:
                continue
            k = c["arch"][a]["kernel"]
            if "error" in k:
                w(f"| {c['name']} | ERROR: {k['error']} |")
                continue
            for li, lp in enumerate(k["loops"]):
                if "error" in lp:
                    w(f"| {c['name']} | {li} | ERROR: {lp['error']} |")
                    continue
                label = ("1p" if c["kSinglePass"] else f"p{li + 1}")
                w(f"| {c['name']} | {label} | " + " | ".join(fmt_num(f(lp)) for _, f in cols) + " |")
        w("")
    for dname, dev in doc["devices"].items():
        a = dev["arch"]
        if a not in archs:
            continue
        w(f"## Bound, {dname} ({a} code)\n")
        w("SM-clocks per warp per 16 keys by unit (loops added); bound = min(unit bound, L2 bound).\n")
        w("| config | issue | tensor | smem | FP32+IMAD | INT | MUFU | unit bound TF | binding | L2 TF | "
          "**bound TF** | 50-70% TF | FLOP/smem B | smem B/FLOP |")
        w("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for c in doc["configs"]:
            m = c.get("model", {}).get(dname)
            if not m:
                continue
            u = m["per_unit_clk_per_16_keys"]
            w(f"| {c['name']} | " + " | ".join(f"{u[x]:.0f}" for x in ("issue", "tensor", "smem", "fp32", "int", "mufu"))
              + f" | {m['unit_bound_tflops']:.0f} | {m['unit_binding']} | {m['l2_bound_tflops']:.0f} | "
              f"**{m['bound_tflops']:.0f}** ({m['binding']}) | {m['likely_tflops'][0]:.0f}-{m['likely_tflops'][1]:.0f} | "
              f"{m['flop_per_smem_byte']:.1f} | {m['smem_bytes_per_flop']:.3f} |")
        w("")
    markdown_backward(doc, w)
    notes = doc["findings"]
    if notes:
        w("## Findings\n")
        for n in notes:
            w(f"* {n}")
        w("")
    return "\n".join(L)


BWD_COUNT_COLS = [
    ("rows", lambda lp: lp["expected"]["keys"]), ("unroll", lambda lp: lp["unroll"]),
    ("all instr", lambda lp: lp["per_tile"]["total"]), ("max path", lambda lp: lp["max_path"]["total"]),
    *UNIT_COUNT_COLS,
    ("LDS", lambda lp: lp["per_tile"]["lds"]), ("STS", lambda lp: lp["per_tile"]["sts"]),
    ("RED", lambda lp: lp["per_tile"]["red"]),
    ("LDG/STG/RED", lambda lp: lp["per_tile"]["classes"]["global"]),
    *TAIL_COUNT_COLS,
    ("inner loops", lambda lp: lp["inner_loops"])]


def markdown_backward(doc: dict, w) -> None:
    bwd = doc.get("backward") or []
    if not bwd:
        return
    archs = doc["archs"]
    devs = [d for d, dev in doc["devices"].items() if dev["arch"] in archs]
    w("## Backward: the query-tile loop of BwdMainKernel\n")
    w("* One TU per configuration and architecture: the explicit instantiation of "
      "`backward_config<BackwardTraits<fmt, d, V2>>`, i.e. the four kernels the real build emits "
      "(`simt::detail::kernel_entry<BwdPrepassKernel | BwdO2DotKernel | BwdMainKernel<Traits, Part> | BwdDqConvertKernel "
      "| BwdFinishKernel<Traits>, BackwardArgs>`), same flags as the forward; ptxas's report of all of them (a spill or "
      "stack frame in any fails --check). The backward of every (fmt, d) of DIFFATTN_CUDA_FORWARD_CONFIGS, V1 and V2; "
      "where the main kernel runs in parts (d > 64) one row per part (`_p<Part>`), each with its own loop_counts.")
    w("* The loop modelled: the innermost loop holding both HMMA and LDGSTS, i.e. stream_key_tiles over the query "
      "tiles of kBlockM rows (the key-block and head loops hold it; exactly one is required). Per tile one warp (16 "
      "keys) runs S_c^T = K_c Q_c^T, dP^T = V dA^T, dV, dK_c, and after the barrier its dQ work unit(s) with "
      "red.global.add (kDqTiles == kWarps in every configuration: the `for u` loop runs once per warp and ptxas "
      "compiles it to a branch, so it lies on the path; an inner loop with HMMA would fail --check).")
    w("* Steady-state path through the loop's DAG: the most HMMA (the dQ unit runs), then the most LDGSTS (the next "
      "tile is prefetched), then the most red.global (every row's dQ is added: the default, atomic dQ), then the "
      "fewest subroutine CALLs (the 64-bit `%`'s 32-bit fast path), then the fewest instructions. Where a branch "
      "skips scalar code only (the short-circuit `full` tile test, a mask's band arithmetic) the fewest-instructions "
      "tier skips it, so `all instr` is a floor for every tile (the per-element masking is predicated: it issues "
      "on every tile); `max path` takes the same tiers with the most instructions instead.")
    w("* Inner loops without HMMA (the rolled loaders of the general copy form, d = 96: TileLoader<..., kRolled>) "
      "lie on the path once per tile: their LDGSTS and address arithmetic are counted for one trip (an undercount "
      "of the issue slots, see the findings).")
    w("* Expected counts `(exp)`: BackwardTraits::loop_counts(0, sm, part) (include/diffattn/cuda/backward_kernel.hpp; "
      "`sm` the target's SM number, see the findings on V2's LDSM); `rows` is its `keys` field, the query rows per tile. Model per warp-tile as the forward's, except: smem = "
      "(LDSM x 512 B + LDS/STS bytes, 32 lanes x width, broadcasts not credited + this warp's share of the tile's "
      "cp.async bytes: kBlockM x (2d + dv) x 2 + kBlockM x 32 B of row statistics) / 128 B/clk; FLOP per warp-tile "
      "= 16 keys x kBlockM rows x 20d (V1) or 16d (V2), docs/SPEC.md's backward count (equal to the HMMA FLOP); "
      "L2 bytes = the warp's cp.async share + 128 B per red.global (its dQ atomics), per FLOP.\n")
    w("### Summary\n")
    w("| config | rows/tile | keys/block | warps | smem B | " + " | ".join(f"regs {a}" for a in archs) +
      " | other kernels' regs (prepass/convert/finish) | " +
      " | ".join(f"{d} bound TF (binding)" for d in devs) + " | check |")
    w("|---|---|---|---|---|" + "---|" * len(archs) + "---|" + "---|" * len(devs) + "---|")
    for c in bwd:
        regs = [str(c["arch"][a]["ptxas"][BWD_MAIN]["registers"]) if a in c["arch"] else "-" for a in archs]
        others = "; ".join(f"{a}: " + "/".join(str(c["arch"][a]["ptxas"][k]["registers"])
                                               for k in BWD_KERNELS if k != BWD_MAIN) for a in archs if a in c["arch"])
        bounds = []
        for dname in devs:
            m = c.get("model", {}).get(dname)
            bounds.append(f"**{m['bound_tflops']:.0f}** ({m['binding']})" if m else "-")
        w(f"| {c['name']} | {c['kBlockM']} | {c['kBlockN']} | {c['kWarps']} | {c['kSmemBytes']} | " + " | ".join(regs) +
          f" | {others} | " + " | ".join(bounds) +
          f" | {'pass' if not c['check_errors'] else 'FAIL: ' + '; '.join(c['check_errors'])} |")
    w("")
    comb = doc.get("backward_combined") or []
    if comb:
        w("### Main kernels in parts: the whole\n")
        w("At d > 64 the main kernel runs in Traits::kMainParts launches (BwdMainKernel<Traits, Part>: Part 1 dV; "
          "Part 2 dK_c and dQ_c of both components, or Parts 3 and 4 one component each), each over every key block "
          "and query tile: their times add, so the bound of the whole is 1 / sum(1 / part bound), by the same useful "
          "FLOP (20d or 16d per row and key; the parts recompute S_c^T and P, so the HMMA FLOP exceed it).\n")
        w("| config | parts | " + " | ".join(f"{d} bound TF (parts)" for d in devs) + " |")
        w("|---|---|" + "---|" * len(devs))
        for g in comb:
            cells = []
            for dname in devs:
                m = g["model"].get(dname)
                cells.append(f"**{m['bound_tflops']:.0f}** (" + " + ".join(f"{x:.0f}" for x in m["parts_tflops"]) +
                             f"; {m['binding']})" if m else "-")
            w(f"| {g['name']} | {', '.join(g['parts'])} | " + " | ".join(cells) + " |")
        w("")
    for a in archs:
        w(f"### Backward per-tile counts, one warp, {a}\n")
        w("| config | " + " | ".join(n for n, _ in BWD_COUNT_COLS) + " |")
        w("|---|" + "---|" * len(BWD_COUNT_COLS))
        for c in bwd:
            if a not in c["arch"]:
                continue
            k = c["arch"][a]["kernel"]
            if "error" in k:
                w(f"| {c['name']} | ERROR: {k['error']} |")
                continue
            for lp in k["loops"]:
                if "error" in lp:
                    w(f"| {c['name']} | ERROR: {lp['error']} |")
                    continue
                w(f"| {c['name']} | " + " | ".join(fmt_num(f(lp)) for _, f in BWD_COUNT_COLS) + " |")
        w("")
    for dname in devs:
        a = doc["devices"][dname]["arch"]
        w(f"### Backward bound, {dname} ({a} code)\n")
        w("SM-clocks per warp-tile (16 keys x rows/tile) by unit; bound = min(unit bound, L2 bound). `max-path TF`: "
          "the unit bound with the max path's issue count.\n")
        w("| config | issue | tensor | smem | FP32+IMAD | INT | MUFU | unit bound TF | binding | L2 TF | "
          "**bound TF** | 50-70% TF | max-path TF | FLOP/smem B | smem B/FLOP |")
        w("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for c in bwd:
            m = c.get("model", {}).get(dname)
            if not m:
                continue
            u = m["sm_clk_per_warp_tile"]
            w(f"| {c['name']} | " + " | ".join(f"{u[x]:.0f}" for x in ("issue", "tensor", "smem", "fp32", "int", "mufu"))
              + f" | {m['unit_bound_tflops']:.0f} | {m['unit_binding']} | {m['l2_bound_tflops']:.0f} | "
              f"**{m['bound_tflops']:.0f}** ({m['binding']}) | {m['likely_tflops'][0]:.0f}-{m['likely_tflops'][1]:.0f} | "
              f"{m['unit_bound_tflops_max_path']:.0f} | {m['flop_per_smem_byte']:.1f} | {m['smem_bytes_per_flop']:.3f} |")
        w("")


def findings_backward(doc: dict) -> list[str]:
    out = []
    bwd = doc.get("backward") or []
    loops = [(c, a, lp) for c in bwd for a, r in c["arch"].items() for lp in r["kernel"].get("loops", [])
             if "per_tile" in lp]
    modelled = [c for c in bwd if c.get("model")]
    if modelled:
        parts = []
        for dname in doc["devices"]:
            ms = [(c, c["model"][dname]) for c in modelled if dname in c["model"]]
            if not ms:
                continue
            binds = sorted({m["binding"] for _, m in ms})
            lo, hi = min(ms, key=lambda x: x[1]["bound_tflops"]), max(ms, key=lambda x: x[1]["bound_tflops"])
            parts.append(f"{dname} {lo[1]['bound_tflops']:.0f} ({lo[0]['name']}) to {hi[1]['bound_tflops']:.0f} TF "
                         f"({hi[0]['name']}), bound by {'/'.join(binds)}")
        out.append("Backward (BwdMainKernel's query-tile loop, SPEC's backward FLOP; a part alone where the kernel "
                   "runs in parts): " + "; ".join(parts) + ".")
    for g in doc.get("backward_combined") or []:
        if g["model"]:
            out.append(f"Backward {g['name']}, main kernel in {len(g['parts'])} parts: " + "; ".join(
                f"{d} {m['bound_tflops']:.0f} TF (" + " + ".join(f"{x:.0f}" for x in m["parts_tflops"]) + ")"
                for d, m in g["model"].items()) + " as 1 / sum(1 / part).")
    rolled = sorted({f"{c['name']} {a} ({lp['inner_loops']})" for c, a, lp in loops
                     if lp.get("inner_loops") and not lp.get("inner_loops_with_hmma")})
    if rolled:
        out.append("Backward query-tile loops holding inner loops without HMMA (rolled loaders, counted for one trip "
                   "per tile): " + ", ".join(rolled) + ".")
    if loops:
        # the LDSM that re-read this warp's own K_c and V rows (A fragments of S^T and dP^T) every tile
        reload = sorted({(c["name"].replace("bwd_f16", "bwd_*").replace("bwd_bf16", "bwd_*"),
                          2 * c["kQKSteps"] + c["kDPSteps"]) for c, _, _ in loops})
        out.append("Backward LDSM per tile that re-load the warp's own K_c and V A fragments (the same data every "
                   "tile, read again after each tile's dS^T stores and barrier): " +
                   ", ".join(f"{n} {k}" for n, k in reload) + " (of the LDSM column of the per-tile tables).")
        by_cfg = {}
        for c, a, lp in loops:
            by_cfg.setdefault(c["name"], {})[a] = lp["per_tile"]["ldsm"]
        differ = [f"{n} " + " / ".join(f"{fmt_num(v)} ({a})" for a, v in sorted(d.items()))
                  for n, d in by_cfg.items() if len(set(d.values())) > 1]
        if differ:
            out.append("Backward LDSM per tile differ by architecture: " + ", ".join(differ) + ". V2 computes S_1^T "
                       "and S_2^T from the same K A fragments, loaded once per component: ptxas merges the identical "
                       "ldmatrix pairs for sm_90 and keeps both for sm_80 (loop_counts(0, sm) says so).")
        rcp = [(c, a, lp) for c, a, lp in loops if lp["per_tile"]["mufu_other"]]
        if rcp:
            ops = sorted({f"{fmt_num(v)} {n}" for _, _, lp in rcp for n, v in lp["per_tile"]["mufu_other_ops"].items()})
            calls = sorted({x for _, _, lp in rcp for x in lp["calls_in_loop_off_path"]})
            i2f = all(lp["per_tile"]["opcodes"].get("I2F") for _, _, lp in rcp)
            out.append(f"Backward, {len(rcp)} of {len(loops)} (config, arch): {', '.join(ops)} per tile on the path"
                       + (" (with I2F: the 32-bit fast path of a 64-bit integer division)" if i2f else "")
                       + (f", whose slow path CALLs {', '.join(calls)} off the path" if calls else "")
                       + ": the dQ address's `split % pl.nsplit`, computed per dQ unit and tile also with atomics.")
        red_alone = []
        for c, a, lp in loops:
            if lp["per_tile"]["red"] and lp.get("red_blocks") == lp["per_tile"]["red"]:
                red_alone.append(f"{c['name']} {a}")
        if red_alone:
            lp0 = next(lp for c, a, lp in loops if f"{c['name']} {a}" == red_alone[0])
            out.append(f"Backward dQ: every red.global on the path is a basic block of its own behind a conditional "
                       f"branch (the per-element `if (pl.atomic_dq)`), in {len(red_alone)} of {len(loops)} (config, "
                       f"arch): e.g. {red_alone[0]}: {fmt_num(lp0['per_tile']['red'])} RED with "
                       f"{fmt_num(lp0['per_tile']['classes']['branch'])} branch-class instructions per tile.")
        lo = min(lp["max_path"]["total"] - lp["per_tile"]["total"] for _, _, lp in loops)
        hi = max(lp["max_path"]["total"] - lp["per_tile"]["total"] for _, _, lp in loops)
        spread = fmt_num(lo) if lo == hi else f"{fmt_num(lo)}-{fmt_num(hi)}"
        out.append(f"Backward path spread: the most-instructions path (same tiers) issues {spread} "
                   "more instructions per tile than the fewest-instructions one (the `full` tile test's early exit "
                   "and the mask band arithmetic); the bound does not move where issue does not bind (max-path TF).")
    for c in bwd:
        for a, r in c["arch"].items():
            for kname, p in r["ptxas"].items():
                if p["spill_stores"] or p["spill_loads"] or p["stack"]:
                    out.append(f"{c['name']} {a} {kname} spills: {p['spill_stores']} B stores / {p['spill_loads']} B "
                               f"loads, {p['stack']} B stack.")
            for lp in r["kernel"].get("loops", []):
                if lp.get("calls_on_path"):
                    out.append(f"{c['name']} {a}: {lp['calls_on_path']} subroutine CALL on the steady-state path.")
                if lp.get("unroll", 1) != 1:
                    out.append(f"{c['name']} {a}: the compiler unrolled {lp['unroll']} query tiles per iteration.")
    return out


def findings(doc: dict) -> list[str]:
    out = []
    loops = [(c, a, lp) for c in doc["configs"] for a, r in c["arch"].items() for lp in r["kernel"].get("loops", [])
             if "per_tile" in lp]
    with_inner = [(c, a, lp) for c, a, lp in loops if lp["inner_loops"]]
    if with_inner:
        per = sorted({lp["inner_loops"] for _, _, lp in with_inner})
        share = [lp["per_tile"]["copy_region_instr"] / lp["per_tile"]["total"] for _, _, lp in loops]
        out.append(f"{len(with_inner)} of {len(loops)} key-tile loops (configs x archs x passes) hold runtime-trip-count "
                   f"loops ({'/'.join(map(str, per))} per loop: one per `load_tile` call, whose trip count depends on "
                   "tid, not known to be below kThreads); the copy code (address arithmetic, zfill predicate, loop "
                   f"control, LDGSTS) is {min(share):.0%}-{max(share):.0%} of each loop's issued instructions.")
    for c in doc["configs"]:
        for a, r in c["arch"].items():
            p = r["ptxas"]
            if p["spill_stores"] or p["spill_loads"] or p["stack"]:
                out.append(f"{c['name']} {a} spills: {p['spill_stores']} B stores / {p['spill_loads']} B loads, "
                           f"{p['stack']} B stack ({c['kind']}).")
            for li, lp in enumerate(r["kernel"].get("loops", [])):
                if lp.get("path_note"):
                    out.append(f"{c['name']} {a} loop {li}: {lp['path_note']}.")
                if lp.get("calls_on_path"):
                    out.append(f"{c['name']} {a} loop {li}: {lp['calls_on_path']} CALL on the steady-state path.")
                if lp.get("unroll", 1) != 1:
                    out.append(f"{c['name']} {a} loop {li}: the compiler unrolled {lp['unroll']} tiles per iteration.")
    return out + findings_backward(doc)


# =============================================================================================
# main
# =============================================================================================
def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--venv", type=Path, default=None, help="virtual environment for the disassemblers "
                    "(default /tmp/sass-venv; created and filled by pip when missing)")
    ap.add_argument("--cache", type=Path, default=None, help="compiled cubins (default: sass-cache beside the venv)")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results", help="where sass_model.{json,md} go")
    ap.add_argument("--configs", default=None, help="regex on configuration names (bf16_d64, bf16_d64_m64_n64_2p, "
                    "bwd_bf16_d64 ...)")
    ap.add_argument("--arch", default="80,90", help="comma-separated SM numbers (default 80,90)")
    ap.add_argument("--jobs", type=int, default=1, help="parallel nvcc runs (default 1)")
    ap.add_argument("--nvcc", default=os.environ.get("CUDACXX") or shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc")
    ap.add_argument("--cxx", default=os.environ.get("CXX") or "g++", help="host compiler for the config program")
    ap.add_argument("--eigen", default="/usr/include/eigen3", help="Eigen include directory")
    ap.add_argument("--check", action="store_true", help="exit 1 unless every count matches loop_counts and "
                    "no shipped configuration spills")
    args = ap.parse_args(argv)
    if args.jobs < 1:
        ap.error("--jobs must be at least 1")
    venv = (args.venv or Path("/tmp/sass-venv")).resolve()
    cache = (args.cache or venv.parent / "sass-cache").resolve()
    archs = [f"sm_{a.strip()}" for a in args.arch.split(",") if a.strip()]
    try:
        tools = ensure_disassemblers(venv)
        if not Path(args.nvcc).exists() and not shutil.which(args.nvcc):
            raise Fail(f"nvcc not found ({args.nvcc}); pass --nvcc")
        nvcc_version = run([args.nvcc, "--version"]).stdout.strip().splitlines()[-1]
        nvdisasm_version = run([str(tools["nvdisasm"]), "--version"]).stdout.strip().splitlines()[-1]
        with tempfile.TemporaryDirectory() as work:
            configs = read_configs(args.cxx, args.eigen, Path(work), [a.removeprefix("sm_") for a in archs])
        bwd = [c for c in configs if c["kind"] == "backward"]
        configs = [c for c in configs if c["kind"] != "backward"]
        if args.configs:
            configs = [c for c in configs if re.search(args.configs, c["name"])]
            bwd = [c for c in bwd if re.search(args.configs, c["name"])]
        if not configs and not bwd:
            raise Fail("no configuration matches --configs")
        inc_hash = tree_hash(REPO / "include")
        jobs = list({(tu_name(c), a): (c, a) for c in configs + bwd for a in archs}.values())  # parts share a TU
        log(f"sass_model: {len(configs)} forward + {len(bwd)} backward configurations x {len(archs)} architectures "
            f" ({len({tu_name(c) for c in bwd})} backward TUs) = {len(jobs)} TUs (cache {cache})")
        results = {}
        with concurrent.futures.ThreadPoolExecutor(max(1, args.jobs)) as ex:
            futs = {ex.submit(compile_tu, c, a, args.nvcc, args.eigen, cache, inc_hash, nvcc_version): (tu_name(c), a)
                    for c, a in jobs}
            for f in concurrent.futures.as_completed(futs):
                results[futs[f]] = f.result()
                log(f"  {futs[f][0]} {futs[f][1]}: {'cached' if results[futs[f]]['cached'] else 'compiled'}")
        for c in configs:
            c["arch"] = {}
            for a in archs:
                r = results[(tu_name(c), a)]
                c["arch"][a] = {"ptxas": parse_ptxas(r["log"], a),
                                "kernel": analyse_kernel(disassemble(tools["nvdisasm"], r["cubin"]), c)}
            c["check_errors"] = check_config(c)
            c["model"] = {}
            for dname, dev in DEVICES.items():
                r = c["arch"].get(dev["arch"])
                if r and "error" not in r["kernel"] and all("error" not in lp for lp in r["kernel"]["loops"]):
                    c["model"][dname] = model_config(c, r["kernel"], dev)
        for c in bwd:
            c["arch"] = {}
            for a in archs:
                r = results[(tu_name(c), a)]
                c["arch"][a] = {"ptxas": {k: parse_ptxas(r["log"], a, bwd_kernel_pattern(k, c)) for k in BWD_KERNELS},
                                "kernel": analyse_backward_kernel(disassemble(tools["nvdisasm"], r["cubin"]), c, a)}
            c["check_errors"] = check_backward(c)
            c["model"] = {}
            for dname, dev in DEVICES.items():
                r = c["arch"].get(dev["arch"])
                if r and "error" not in r["kernel"] and all("error" not in lp for lp in r["kernel"]["loops"]):
                    c["model"][dname] = model_backward(c, r["kernel"]["loops"][0], dev)
        bwd_combined = combine_backward_parts(bwd)
        # shipped first, then variants (the macro order within each)
        configs.sort(key=lambda c: 0 if c["kind"] == "shipped" else 1)
        commit = run(["git", "-C", str(REPO), "rev-parse", "--short=12", "HEAD"], check=False).stdout.strip() or "unknown"
        dirty = bool(run(["git", "-C", str(REPO), "status", "--porcelain", "--", "include"], check=False).stdout.strip())
        doc = {
            "tools": {"nvcc": nvcc_version, "nvdisasm": nvdisasm_version, "commit": commit, "include_dirty": dirty,
                      "include_hash": inc_hash, "nvcc_flags": list(NVCC_FLAGS)},
            "archs": archs,
            "devices": {n: {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()} for n, d in DEVICES.items()},
            "classes": {n: {"unit": u, "opcodes": sorted(o)} for n, u, o in CLASSES},
            "configs": configs,
            "backward": bwd,
            "backward_combined": bwd_combined,
        }
        doc["findings"] = findings(doc)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "sass_model.json").write_text(json.dumps(doc, indent=1, sort_keys=False, default=str) + "\n")
        (args.out / "sass_model.md").write_text(markdown(doc) + "\n")
        bad = 0
        # forward configs, then backward ones (whose ptxas report is per kernel: the main one's registers)
        for c, regs_of in [(c, lambda pt: pt["registers"]) for c in configs] + \
                          [(c, lambda pt: pt[BWD_MAIN]["registers"]) for c in bwd]:
            parts = []
            for a in archs:
                k = c["arch"][a]["kernel"]
                per = "/".join(f"{fmt_num(lp['per_tile']['total'])}" for lp in k.get("loops", []) if "per_tile" in lp)
                parts.append(f"{a} {regs_of(c['arch'][a]['ptxas'])} regs, {per or '?'} instr/tile")
            bound = "; ".join(f"{d}: {m['bound_tflops']:.0f} TF ({m['binding']})" for d, m in c["model"].items())
            status = "PASS" if not c["check_errors"] else "FAIL"
            bad += bool(c["check_errors"])
            print(f"{status} {c['name']:<24} " + "; ".join(parts) + (f" | {bound}" if bound else "") +
                  ("" if not c["check_errors"] else "\n    " + "\n    ".join(c["check_errors"])))
        for g in bwd_combined:
            bound = "; ".join(f"{d}: {m['bound_tflops']:.0f} TF (parts " + " + ".join(f"{x:.0f}" for x in m["parts_tflops"])
                              + f": {m['binding']})" for d, m in g["model"].items())
            print(f"     {g['name']:<24} main kernel in {len(g['parts'])} parts | {bound or '-'}")
        print(f"sass_model: wrote {args.out / 'sass_model.json'} and {args.out / 'sass_model.md'}")
        if args.check:
            print(f"{len(configs) + len(bwd) - bad} passed, {bad} failed")
            return EXIT_CHECK if bad else EXIT_OK
        return EXIT_OK
    except Fail as e:
        log(str(e))
        return e.code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
