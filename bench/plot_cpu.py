#!/usr/bin/env python3
"""Run bench_cpu_forward and plot GFLOP/s against N (one line per backend and dtype).

    python3 bench/plot_cpu.py [--bench build-cpu/bench/cpu/bench_cpu_forward] [--out bench/results]
                              [--json FILE]   (plot an existing JSON instead of running)
                              [--peer FILE]   (merge the PyTorch peer's JSON, bench/pytorch_composition.py)
                              [--run-peer [--python PY] [--peer-args "..."]]   (run the peer first)

With --backward, the same for the backward runs: <out>/cpu_backward.{json,md}, plots
cpu_backward_d<d>_<mask>.png, the peer run with --backward into <out>/pytorch_cpu_backward.json.

Writes <out>/cpu_forward.json (Google Benchmark's JSON), <out>/cpu_forward.md (a markdown
table, the reference beside the tiled kernel, with the machine's FMA peak and Eigen sgemm) and
<out>/cpu_forward_d<d>_<mask>.png (one plot per head dim and mask).

With --peer (or --run-peer) the table also has, for each (dtype, mask, d), the PyTorch
composition of differential attention on the CPU (four_sdpa: four scaled_dot_product_attention
calls, the official FlashAttention-2 form, and two_sdpa where measured) and the ratio
cpu / four_sdpa. --run-peer runs `PY bench/pytorch_composition.py --device cpu --threads T
--out FILE` (PY = --python, default this interpreter; T = the CPUs this process may use, as
bench_cpu_forward uses all threads; FILE = --peer, default <out>/pytorch_cpu.json; --peer-args
are appended and win). This script itself never imports torch; where PY has no torch the peer
says so and measures nothing, and the table has no peer rows.
"""
import argparse
import json
import os
import re
import shlex
import subprocess
import sys

NAME = re.compile(r"^(cpu|reference)_(forward|backward)(_v2)?/(\w+)/(\w+)/d:(\d+)/N:(\d+)")
PEER_NAME = re.compile(r"^pytorch_(four_sdpa|two_sdpa|v2_sdpa)(_backward)?/(\w+)/(\w+)/d:(\d+)/N:(\d+)")
# --backward: the backward runs (cpu::backward, reference::backward<float>, autograd in the peer)
PASS = "forward"
PEER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pytorch_composition.py")
PEERS = ("pytorch four_sdpa", "pytorch two_sdpa")
BACKENDS_V2 = ("reference v2", "cpu v2", "pytorch v2_sdpa")


def run(bench, out_json, extra):
    cmd = [bench, "--benchmark_format=json", "--benchmark_out=" + out_json,
           "--benchmark_out_format=json"] + extra
    print(" ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def load(path):
    with open(path) as f:
        data = json.load(f)
    rows, peaks = {}, {}
    for b in data["benchmarks"]:
        name = b["name"]
        g = b.get("flops", 0) / 1e9
        if name.startswith("peak/"):
            peaks[name.split("/real_time")[0]] = g
            continue
        m = NAME.match(name)
        if m and m.group(2) == PASS:
            backend, _, v2, dtype, mask, d, n = m.groups()
            rows[(backend + (" v2" if v2 else ""), dtype, mask, int(d), int(n))] = g
    return data.get("context", {}), rows, peaks


def run_peer(python, out_json, extra):
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cmd = [python, PEER_SCRIPT, "--device", "cpu", "--threads", str(threads), "--out", out_json]
    cmd += (["--backward"] if PASS == "backward" else []) + extra
    print(" ".join(shlex.quote(c) for c in cmd), file=sys.stderr)
    if os.path.exists(out_json):
        os.remove(out_json)  # so that a skipped run (no torch) leaves no stale figures behind
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return os.path.exists(out_json)


def load_peer(path):
    """The JSON list written by bench/pytorch_composition.py: (rows keyed like load's, context)."""
    with open(path) as f:
        data = json.load(f)
    rows, ctx = {}, {}
    for r in data:
        m = PEER_NAME.match(r.get("name", ""))
        if not m or "gflops" not in r or r.get("device", "cpu") != "cpu" or bool(m.group(2)) != (PASS == "backward"):
            continue
        form, _, dtype, mask, d, n = m.groups()
        rows[("pytorch " + form, dtype, mask, int(d), int(n))] = r["gflops"]
        if not ctx:
            ctx = {k: r.get(k) for k in ("device_name", "torch", "threads", "cpu_capability", "host", "num_cpus",
                                         "cpu_mhz")}
        ctx.setdefault("backends", {})[form] = ctx.get("backends", {}).get(form, set()) | {r.get("sdpa_backend")}
    return rows, ctx


def table(ctx, rows, peaks, peer_ctx=None):
    lines = []
    threads = ctx.get("num_cpus", "?")
    lines.append(f"Machine: {ctx.get('cpu_model', '?')} ({ctx.get('mhz_per_cpu', '?')} MHz), {threads} CPUs, "
                 f"{ctx.get('date', '?')[:10]}; cpu::{PASS} path {ctx.get('cpu_isa', '?')} "
                 f"(best here: {ctx.get('cpu_isa_best', '?')}); "
                 + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peaks.items())
                 + f" (FMA loop: {ctx.get('fma_peak_isa', '?')}, {ctx.get('bench_threads', threads)} threads)")
    lines.append("")
    if PASS == "backward":
        lines.append("GFLOP/s by the backward count (20 N S d per head, V2 16; B = 1, H = 8, N = S; reference = "
                     "reference::backward<float>, 1 thread; cpu = cpu::backward from cpu::forward's saved tensors, "
                     "all threads; the peer: torch.autograd.grad through the composition, counted the same; the v2 "
                     "rows: DIFF V2 at the same model width, 16 output heads of d)")
    else:
        lines.append("GFLOP/s (B = 1, H = 8, N = S; reference = reference::forward<float>, 1 thread; "
                     "cpu = cpu::forward, all threads; the v2 rows: DIFF V2 at the same model width, 16 "
                     "output heads of d, counted 8 N S d per head)")
    if peer_ctx:
        backends = "; ".join(f"{form}: SDPA {'/'.join(sorted(str(b) for b in bs))} backend"
                             for form, bs in sorted(peer_ctx.get("backends", {}).items()))
        lines.append("")
        lines.append(f"pytorch four_sdpa / two_sdpa = bench/pytorch_composition.py: differential attention "
                     f"composed from torch.nn.functional.scaled_dot_product_attention (four calls with V "
                     f"split in halves of d, as the official FlashAttention-2 code; two calls with V of 2d) "
                     f"+ fp32 RMSNorm, official layout; torch {peer_ctx.get('torch')}, "
                     f"{peer_ctx.get('threads')} threads, {peer_ctx.get('device_name')} "
                     f"({peer_ctx.get('cpu_capability')}); {backends}. "
                     f"cpu / four_sdpa = the ratio of the two GFLOP/s.")
        # Google Benchmark's context has no CPU model; host name, CPU count and MHz tell machines apart
        mine = (ctx.get("host_name"), ctx.get("num_cpus"), ctx.get("mhz_per_cpu"))
        theirs = (peer_ctx.get("host"), peer_ctx.get("num_cpus"), peer_ctx.get("cpu_mhz"))
        if mine[:2] != theirs[:2] or (mine[2] and theirs[2] and abs(mine[2] - theirs[2]) > 0.01 * mine[2]):
            lines.append("")
            lines.append("**Warning: bench_cpu_forward ran on (host, CPUs, MHz) = (%s, %s, %s), the peer on "
                         "(%s, %s, %s): the ratios compare different machines.**" % (mine + theirs))
    lines.append("")
    ns = sorted({k[4] for k in rows})
    lines.append("| dtype | mask | d | backend | " + " | ".join(f"N={n}" for n in ns) + " |")
    lines.append("|---|---|---|---|" + "---|" * len(ns))
    for dtype in ("f32", "bf16", "f16"):
        for mask in ("none", "causal", "window"):
            for d in sorted({k[3] for k in rows}):
                for backend in ("reference", "cpu") + PEERS + BACKENDS_V2:
                    vals = [rows.get((backend, dtype, mask, d, n)) for n in ns]
                    if all(v is None for v in vals):
                        continue
                    cells = " | ".join("-" if v is None else f"{v:.1f}" for v in vals)
                    lines.append(f"| {dtype} | {mask} | {d} | {backend} | {cells} |")
                for ours, peer, label in (("cpu", "pytorch four_sdpa", "cpu / four_sdpa"),
                                          ("cpu v2", "pytorch v2_sdpa", "cpu v2 / v2_sdpa")):
                    ratios = [None if rows.get((ours, dtype, mask, d, n)) is None
                              or not rows.get((peer, dtype, mask, d, n))
                              else rows[(ours, dtype, mask, d, n)] / rows[(peer, dtype, mask, d, n)]
                              for n in ns]
                    if any(r is not None for r in ratios):
                        cells = " | ".join("-" if r is None else f"{r:.2f}x" for r in ratios)
                        lines.append(f"| {dtype} | {mask} | {d} | {label} | {cells} |")
    return "\n".join(lines) + "\n"


def plot(rows, peaks, out_dir):
    try:
        import matplotlib
    except ImportError:
        print("plot_cpu: no matplotlib (pip install matplotlib); table only, no plots", file=sys.stderr)
        return []
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    paths = []
    for d in sorted({k[3] for k in rows}):
        for mask in sorted({k[2] for k in rows}):
            fig, ax = plt.subplots(figsize=(7, 4.5))
            for backend, style in (("cpu", "-o"), ("reference", "--s"), ("pytorch four_sdpa", ":^"),
                                   ("pytorch two_sdpa", ":v")):
                for dtype in ("f32", "bf16", "f16"):
                    pts = sorted((k[4], v) for k, v in rows.items()
                                 if k[0] == backend and k[1] == dtype and k[2] == mask and k[3] == d)
                    if pts:
                        ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=f"{backend} {dtype}")
            for name, v in peaks.items():
                ax.axhline(v, linestyle=":", color="gray")
                ax.text(512, v, f" {name} {v:.0f}", va="bottom", fontsize=8, color="gray")
            ax.set_xscale("log", base=2)
            ax.set_xlabel("N = S")
            ax.set_ylabel("GFLOP/s")
            ax.set_title(f"diffattn CPU {PASS}, B=1 H=8 d={d} dv={2 * d}, mask {mask}")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
            path = os.path.join(out_dir, f"cpu_{PASS}_d{d}_{mask}.png")
            fig.tight_layout()
            fig.savefig(path, dpi=110)
            plt.close(fig)
            paths.append(path)
    return paths


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench", default="build-cpu/bench/cpu/bench_cpu_forward")
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--json", default=None, help="plot this JSON instead of running the bench")
    ap.add_argument("--peer", default=None,
                    help="JSON of bench/pytorch_composition.py --device cpu to merge "
                         "(with --run-peer: where to write it, default <out>/pytorch_cpu.json)")
    ap.add_argument("--run-peer", action="store_true", help="run bench/pytorch_composition.py first")
    ap.add_argument("--python", default=sys.executable,
                    help="the Python (with torch) that runs the peer; default this one")
    ap.add_argument("--peer-args", default="", help="more options for the peer, one string")
    ap.add_argument("--backward", action="store_true",
                    help="the backward runs instead: cpu_backward.{json,md}, the peer with --backward "
                         "(default <out>/pytorch_cpu_backward.json)")
    ap.add_argument("extra", nargs="*", help="more Google Benchmark flags (after --)")
    a = ap.parse_args()
    global PASS
    PASS = "backward" if a.backward else "forward"
    os.makedirs(a.out, exist_ok=True)
    js = a.json or os.path.join(a.out, f"cpu_{PASS}.json")
    if not a.json:
        flt = "--benchmark_filter=^peak/|_backward" if a.backward else "--benchmark_filter=^(peak|tile)/|_forward"
        run(a.bench, js, [flt] + a.extra)
    ctx, rows, peaks = load(js)
    peer_ctx = None
    peer = a.peer or (os.path.join(a.out, "pytorch_cpu_backward.json" if a.backward else "pytorch_cpu.json")
                      if a.run_peer else None)
    if a.run_peer and not run_peer(a.python, peer, shlex.split(a.peer_args)):
        print(f"plot_cpu: the peer measured nothing (no torch for {a.python}?); no peer rows",
              file=sys.stderr)
        peer = None
    if peer:
        peer_rows, peer_ctx = load_peer(peer)
        rows.update(peer_rows)
    md = table(ctx, rows, peaks, peer_ctx)
    with open(os.path.join(a.out, f"cpu_{PASS}.md"), "w") as f:
        f.write(md)
    print(md)
    for p in plot(rows, peaks, a.out):
        print("wrote", p, file=sys.stderr)


if __name__ == "__main__":
    main()
