#!/usr/bin/env python3
"""The best differential attention a PyTorch user can compose today, timed beside diffattn.

What the official flash files (microsoft/unilm Diff-Transformer, multihead_flashdiff_*.py) do:
scaled_dot_product_attention for each component (V of 2d; with FlashAttention-2 the files
split V into two halves of d and make four calls, since FA2 requires equal q/v head dims),
then A = O_1 - lambda O_2, an RMSNorm over the 2d channels of each head, and (1 - lambda_init).
Here we time both variants with torch.nn.functional.scaled_dot_product_attention (which picks
FlashAttention-2 or cuDNN on an H100) and RMSNorm, on the shapes of bench_cuda_forward
(B = 32768 / N, H = 16 at d = 64, 8 at d = 128, bf16, causal and not), and report TFLOP/s by
SPEC.md's count (12 N S d per diff head, visible pairs only). Output: JSON lines to stdout and
bench/results/pytorch_composition_<device>.json.

Usage: python3 bench/cuda/pytorch_composition.py   (needs torch with CUDA and a GPU)
"""
import json
import math
import os
import sys


def main():
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        print("pytorch_composition: torch is not installed; nothing measured", file=sys.stderr)
        return 0
    if not torch.cuda.is_available():
        print("pytorch_composition: no CUDA device; nothing measured", file=sys.stderr)
        return 0
    dev = torch.cuda.get_device_name(0)
    results = []
    for d in (64, 128):
        H = 16 if d <= 64 else 8
        for causal in (False, True):
            N = 1024
            while N <= 16384:
                B = max(1, 32768 // N)
                g = torch.Generator(device="cuda").manual_seed(0)
                q = torch.randn(B, 2 * H, N, d, device="cuda", dtype=torch.bfloat16, generator=g)
                k = torch.randn(B, 2 * H, N, d, device="cuda", dtype=torch.bfloat16, generator=g)
                v = torch.randn(B, H, N, 2 * d, device="cuda", dtype=torch.bfloat16, generator=g)
                lam, lambda_init = 0.5, 0.8 - 0.6 * math.exp(-0.3 * 4)
                gamma = torch.ones(2 * d, device="cuda", dtype=torch.float32)
                q1, q2 = q[:, 0::2], q[:, 1::2]
                k1, k2 = k[:, 0::2], k[:, 1::2]

                def two_calls():
                    # SDPA accepts a V head dim different from Q/K (math or cuDNN path)
                    o1 = F.scaled_dot_product_attention(q1, k1, v, is_causal=causal)
                    o2 = F.scaled_dot_product_attention(q2, k2, v, is_causal=causal)
                    a = (o1 - lam * o2).float()
                    y = a * torch.rsqrt(a.pow(2).mean(-1, keepdim=True) + 1e-5) * gamma
                    return ((1 - lambda_init) * y).to(torch.bfloat16)

                def four_calls():
                    # the FlashAttention-2 form of the official code: V split into halves of d
                    va, vb = v[..., :d], v[..., d:]
                    o = [F.scaled_dot_product_attention(qq, kk, vv, is_causal=causal)
                         for qq, kk in ((q1, k1), (q2, k2)) for vv in (va, vb)]
                    a = (torch.cat([o[0], o[1]], -1) - lam * torch.cat([o[2], o[3]], -1)).float()
                    y = a * torch.rsqrt(a.pow(2).mean(-1, keepdim=True) + 1e-5) * gamma
                    return ((1 - lambda_init) * y).to(torch.bfloat16)

                pairs = N * (N + 1) / 2 if causal else N * N
                flops = 12.0 * d * pairs * B * H
                for name, fn in (("two_sdpa", two_calls), ("four_sdpa", four_calls)):
                    try:
                        for _ in range(3):
                            fn()
                        torch.cuda.synchronize()
                        times = []
                        for _ in range(10):
                            e0 = torch.cuda.Event(enable_timing=True)
                            e1 = torch.cuda.Event(enable_timing=True)
                            e0.record()
                            fn()
                            e1.record()
                            torch.cuda.synchronize()
                            times.append(e0.elapsed_time(e1) * 1e-3)
                        t = sorted(times)[len(times) // 2]
                        r = {"name": f"pytorch_{name}/bf16/{'causal' if causal else 'none'}/d:{d}/N:{N}",
                             "device": dev, "B": B, "H": H, "median_s": t, "tflops": flops / t * 1e-12}
                    except RuntimeError as e:  # e.g. out of memory at 16k
                        r = {"name": f"pytorch_{name}/bf16/{'causal' if causal else 'none'}/d:{d}/N:{N}",
                             "device": dev, "error": str(e)[:200]}
                    print(json.dumps(r), flush=True)
                    results.append(r)
                del q, k, v
                torch.cuda.empty_cache()
                N *= 2
    out = os.path.join(os.path.dirname(__file__), "..", "results",
                       "pytorch_composition_" + dev.replace(" ", "_") + ".json")
    with open(out, "w") as f:
        json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
