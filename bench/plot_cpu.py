#!/usr/bin/env python3
"""Run bench_cpu_forward and plot GFLOP/s against N (one line per backend and dtype).

    python3 bench/plot_cpu.py [--bench build-cpu/bench/cpu/bench_cpu_forward] [--out bench/results]
                              [--json FILE]   (plot an existing JSON instead of running)

Writes <out>/cpu_forward.json (Google Benchmark's JSON), <out>/cpu_forward.md (a markdown
table, the reference beside the tiled kernel, with the machine's FMA peak and Eigen sgemm) and
<out>/cpu_forward_d<d>_<mask>.png (one plot per head dim and mask).
"""
import argparse
import json
import os
import re
import subprocess
import sys

NAME = re.compile(r"^(cpu|reference)_forward/(\w+)/(\w+)/d:(\d+)/N:(\d+)")


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
        if m:
            backend, dtype, mask, d, n = m.groups()
            rows[(backend, dtype, mask, int(d), int(n))] = g
    return data.get("context", {}), rows, peaks


def table(ctx, rows, peaks):
    lines = []
    threads = ctx.get("num_cpus", "?")
    lines.append(f"Machine: {ctx.get('host_name', '?')}, {threads} CPUs; "
                 + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peaks.items()))
    lines.append("")
    lines.append("GFLOP/s (B = 1, H = 8, N = S; reference = reference::forward<float>, 1 thread; "
                 "cpu = cpu::forward, all threads)")
    lines.append("")
    ns = sorted({k[4] for k in rows})
    lines.append("| dtype | mask | d | backend | " + " | ".join(f"N={n}" for n in ns) + " |")
    lines.append("|---|---|---|---|" + "---|" * len(ns))
    for dtype in ("f32", "bf16", "f16"):
        for mask in ("none", "causal", "window"):
            for d in sorted({k[3] for k in rows}):
                for backend in ("reference", "cpu"):
                    vals = [rows.get((backend, dtype, mask, d, n)) for n in ns]
                    if all(v is None for v in vals):
                        continue
                    cells = " | ".join("-" if v is None else f"{v:.1f}" for v in vals)
                    lines.append(f"| {dtype} | {mask} | {d} | {backend} | {cells} |")
    return "\n".join(lines) + "\n"


def plot(rows, peaks, out_dir):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    paths = []
    for d in sorted({k[3] for k in rows}):
        for mask in sorted({k[2] for k in rows}):
            fig, ax = plt.subplots(figsize=(7, 4.5))
            for backend, style in (("cpu", "-o"), ("reference", "--s")):
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
            ax.set_title(f"diffattn CPU forward, B=1 H=8 d={d} dv={2 * d}, mask {mask}")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
            path = os.path.join(out_dir, f"cpu_forward_d{d}_{mask}.png")
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
    ap.add_argument("extra", nargs="*", help="more Google Benchmark flags (after --)")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    js = a.json or os.path.join(a.out, "cpu_forward.json")
    if not a.json:
        run(a.bench, js, a.extra)
    ctx, rows, peaks = load(js)
    md = table(ctx, rows, peaks)
    with open(os.path.join(a.out, "cpu_forward.md"), "w") as f:
        f.write(md)
    print(md)
    for p in plot(rows, peaks, a.out):
        print("wrote", p, file=sys.stderr)


if __name__ == "__main__":
    main()
