#!/usr/bin/env python3
"""The best differential attention a PyTorch user can compose today, timed beside diffattn.

What the official flash files (microsoft/unilm Diff-Transformer, multihead_flashdiff_*.py) do:
one attention call per component (V of 2d), or, with FlashAttention-2, V split into two halves
of d and four calls (FA2 requires equal q/v head dims); then A = O_1 - lambda O_2, an RMSNorm
over the 2d channels of each head (gamma, eps 1e-5, fp32) and (1 - lambda_init). Here both forms
use torch.nn.functional.scaled_dot_product_attention:

    four_sdpa   V split into halves of d, four SDPA calls: THE peer (the official FA2 code)
    two_sdpa    one SDPA call per component with V of 2d
    v2_sdpa     DIFF Transformer V2 (microsoft/unilm Diff-Transformer-V2) as its users run it:
                ONE SDPA call with 2H' query heads (pairs 2h, 2h+1) against Hkv KV heads of d
                (enable_gqa), then out_h = O_2h - sigmoid(z_h) O_2h+1 with z [B, N, H'] fp32;
                no norm. H' = 2H output heads: the model width of V1's H diff heads (H 2d =
                H' d). Counted as 8 N S d per output head (docs/SPEC.md's V2 count).

on the official layout (docs/SPEC.md): q [B, N, 2H, d] (query heads 2h and 2h+1 are q1 and q2 of
diff head h), k [B, S, 2Hkv, d], v [B, S, Hkv, 2d], out [B, N, H, 2d], Hkv = H, N = S, causal
bottom-right aligned. Throughput is by docs/SPEC.md's count: 12 N S d per diff head, visible pairs
only (causal, N = S: 12 d N (N + 1) / 2).

    --device cpu    B = 1, H = 8, f32 and bf16, wall-clock medians (time.perf_counter) of
                    repeated calls after a warm-up, torch.set_num_threads(--threads);
                    writes bench/results/pytorch_cpu.json
    --device cuda   the shapes of bench_cuda_forward (B = 32768 / N, H = 16 at d = 64, 8 at
                    d = 128, bf16), CUDA-event medians; writes
                    bench/results/pytorch_composition_<gpu name>.json
    --check         compare both forms on small problems (cross-attention N != S included)
                    with a naive float64 computation of docs/SPEC.md's formula; exit 1 on a large
                    error

    --backward      time the backward instead: autograd through the same compositions
                    (torch.autograd.grad of out with respect to q, k, v, gamma and lambda, V2:
                    q, k, v and the logits, with a random dout, the graph built once and kept),
                    named pytorch_<form>_backward/...; throughput by docs/SPEC.md's backward
                    count (20 N S d per diff head, V2 16: the products a fused backward needs;
                    autograd through four SDPA calls computes 40); writes
                    bench/results/pytorch_cpu_backward.json

Each run is printed as one JSON line and all are written to --out as a JSON list. The script
installs nothing: without torch (pip install torch) it says so, measures nothing and exits 0.

    python3 bench/pytorch_composition.py --device cpu [--threads 2] [--dtypes f32,bf16]
        [--masks none,causal] [--dims 64,128] [--ns 512,1024,2048,4096] [--forms four_sdpa,two_sdpa]
        [--out FILE]
    python3 bench/pytorch_composition.py --check [--device cpu|cuda]
"""
import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
FORMS = ("four_sdpa", "two_sdpa", "v2_sdpa")
EPS = 1e-5


def lambda_init_of(depth):
    return 0.8 - 0.6 * math.exp(-0.3 * depth)


def cpuinfo(field):
    """The first value of field in /proc/cpuinfo ('model name', 'cpu MHz'), or None."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.split(":", 1)[0].strip() == field:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model():
    return cpuinfo("model name") or platform.processor() or platform.machine()


def cpu_mhz():
    mhz = cpuinfo("cpu MHz")
    return int(float(mhz)) if mhz else None


def visible_pairs(n, s, causal):
    """Pairs (i, j) with j <= i + (S - N) under the bottom-right causal mask, else N S."""
    if not causal:
        return n * s
    # row i sees min(S, max(0, i + S - N + 1)) keys
    return sum(min(s, max(0, i + s - n + 1)) for i in range(n))


def flops(b, h, n, s, d, causal, v2=False, backward=False):
    per = (16.0 if v2 else 20.0) if backward else (8.0 if v2 else 12.0)
    return per * d * visible_pairs(n, s, causal) * b * h


def make_backward(torch, fn, inputs, only_flash):
    """The backward of fn as a closure: the graph built once (under SDPA's flash backend only,
    when only_flash), then torch.autograd.grad of the output with a fixed random dout."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    for x in inputs:
        x.requires_grad_(True)
    if only_flash:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
                out = fn()
    else:
        out = fn()
    dout = torch.randn_like(out)
    return lambda: torch.autograd.grad(out, inputs, dout, retain_graph=True)


def probe_backward(torch, fn, inputs):
    """As probe_backend, for the backward: ('flash' or 'math', the backward closure), warm."""
    try:
        g = make_backward(torch, fn, inputs, True)
        g()
        return "flash", g
    except RuntimeError:
        g = make_backward(torch, fn, inputs, False)
        g()
        return "math", g


# ----------------------------------------------------------------------------- the composition


def make_inputs(torch, b, n, s, h, d, dtype, device, seed=0):
    """q [B,N,2H,d], k [B,S,2H,d], v [B,S,H,2d] (official layout, Hkv = H), gamma [2d] fp32."""
    g = torch.Generator(device=device).manual_seed(seed)
    q = torch.randn(b, n, 2 * h, d, device=device, dtype=dtype, generator=g)
    k = torch.randn(b, s, 2 * h, d, device=device, dtype=dtype, generator=g)
    v = torch.randn(b, s, h, 2 * d, device=device, dtype=dtype, generator=g)
    gamma = 1.0 + 0.1 * torch.randn(2 * d, device=device, dtype=torch.float32, generator=g)
    return q, k, v, gamma


def make_forms(torch, q, k, v, gamma, lam, lambda_init, causal):
    """The two compositions as closures; each returns out [B, N, H, 2d] in q's dtype."""
    F = torch.nn.functional
    b, n, h2, d = q.shape
    s = k.shape[1]
    # SDPA wants [B, heads, L, E]; these are views of the official BSHD tensors (no copy)
    q1, q2 = q[:, :, 0::2].transpose(1, 2), q[:, :, 1::2].transpose(1, 2)
    k1, k2 = k[:, :, 0::2].transpose(1, 2), k[:, :, 1::2].transpose(1, 2)
    vt = v.transpose(1, 2)
    va, vb = vt[..., :d], vt[..., d:]
    if not causal:
        mask = {}
    elif n == s:
        mask = {"is_causal": True}
    else:  # SDPA's is_causal is top-left aligned; docs/SPEC.md's (and FlashAttention's) is bottom-right
        from torch.nn.attention.bias import causal_lower_right
        mask = {"attn_mask": causal_lower_right(n, s)}
    scale = 1.0 - lambda_init

    def norm(a):  # RMSNorm over the 2d channels of each (token, head), fp32, then (1 - lambda_init)
        a = a.float()
        y = a * torch.rsqrt(a.pow(2).mean(-1, keepdim=True) + EPS) * gamma
        return (scale * y).to(q.dtype)

    def sdpa(qq, kk, vv):  # -> [B, N, H, e], a view of SDPA's [B, H, N, e]
        return F.scaled_dot_product_attention(qq, kk, vv, **mask).transpose(1, 2)

    def four_sdpa():
        # the FlashAttention-2 form of the official code: V split into halves of d
        o1 = torch.cat([sdpa(q1, k1, va), sdpa(q1, k1, vb)], -1)
        o2 = torch.cat([sdpa(q2, k2, va), sdpa(q2, k2, vb)], -1)
        return norm(o1 - lam * o2).reshape(b, n, h2 // 2, 2 * d)

    def two_sdpa():
        # SDPA accepts a V head dim different from Q/K (the CPU picks its math path for it)
        return norm(sdpa(q1, k1, vt) - lam * sdpa(q2, k2, vt)).reshape(b, n, h2 // 2, 2 * d)

    return {"four_sdpa": four_sdpa, "two_sdpa": two_sdpa}


def make_v2_inputs(torch, b, n, s, h, hkv, d, dtype, device, seed=0):
    """DIFF V2: q [B,N,2H,d] (pair h = query heads 2h, 2h+1), k and v [B,S,Hkv,d], logits [B,N,H] fp32."""
    g = torch.Generator(device=device).manual_seed(seed)
    q = torch.randn(b, n, 2 * h, d, device=device, dtype=dtype, generator=g)
    k = torch.randn(b, s, hkv, d, device=device, dtype=dtype, generator=g)
    v = torch.randn(b, s, hkv, d, device=device, dtype=dtype, generator=g)
    z = 1.5 * torch.randn(b, n, h, device=device, dtype=torch.float32, generator=g)
    return q, k, v, z


def make_v2_form(torch, q, k, v, z, causal):
    """DIFF V2 as one SDPA call (2H query heads, GQA onto Hkv) and a subtraction: out [B, N, H, d]."""
    F = torch.nn.functional
    b, n, h2, d = q.shape
    s = k.shape[1]
    if not causal:
        mask = {}
    elif n == s:
        mask = {"is_causal": True}
    else:
        from torch.nn.attention.bias import causal_lower_right
        mask = {"attn_mask": causal_lower_right(n, s)}
    gqa = {"enable_gqa": True} if h2 != k.shape[2] else {}
    lam = torch.sigmoid(z).to(q.dtype).unsqueeze(-1)  # [B, N, H, 1]

    def v2_sdpa():
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), **mask, **gqa)
        o = o.transpose(1, 2).reshape(b, n, h2 // 2, 2, d)
        return o[:, :, :, 0] - lam * o[:, :, :, 1]

    return v2_sdpa


def naive_v2_forward(torch, q, k, v, z, causal):
    """DIFF V2 written out in float64: out [B, N, H, d]."""
    q, k, v, z = q.double(), k.double(), v.double(), z.double()
    b, n, h2, d = q.shape
    s, hkv = k.shape[1], k.shape[2]
    h = h2 // 2
    rep = h // hkv
    i = torch.arange(n, device=q.device).view(n, 1)
    j = torch.arange(s, device=q.device).view(1, s)
    visible = (j <= i + (s - n)) if causal else torch.ones(n, s, dtype=torch.bool, device=q.device)
    out = torch.empty(b, n, h, d, dtype=torch.float64, device=q.device)
    for hh in range(h):
        o = []
        for c in (0, 1):
            scores = torch.einsum("bnd,bsd->bns", q[:, :, 2 * hh + c], k[:, :, hh // rep]) / math.sqrt(d)
            p = torch.softmax(scores.masked_fill(~visible, float("-inf")), -1)
            o.append(torch.einsum("bns,bse->bne", p, v[:, :, hh // rep]))
        out[:, :, hh] = o[0] - torch.sigmoid(z[:, :, hh]).unsqueeze(-1) * o[1]
    return out


def naive_forward(torch, q, k, v, gamma, lam, lambda_init, causal):
    """docs/SPEC.md's formula, written out in float64: out [B, N, H, 2d]."""
    q, k, v, gamma = q.double(), k.double(), v.double(), gamma.double()
    b, n, h2, d = q.shape
    s = k.shape[1]
    h = h2 // 2
    i = torch.arange(n, device=q.device).view(n, 1)
    j = torch.arange(s, device=q.device).view(1, s)
    visible = (j <= i + (s - n)) if causal else torch.ones(n, s, dtype=torch.bool, device=q.device)
    out = torch.empty(b, n, h, 2 * d, dtype=torch.float64, device=q.device)
    for hh in range(h):
        o = []
        for c in (0, 1):
            scores = torch.einsum("bnd,bsd->bns", q[:, :, 2 * hh + c], k[:, :, 2 * hh + c]) / math.sqrt(d)
            scores = scores.masked_fill(~visible, float("-inf"))
            p = torch.exp(scores - scores.amax(-1, keepdim=True))
            p = p / p.sum(-1, keepdim=True)
            o.append(torch.einsum("bns,bse->bne", p, v[:, :, hh]))
        a = o[0] - lam * o[1]
        y = a / torch.sqrt((a * a).mean(-1, keepdim=True) + EPS) * gamma
        out[:, :, hh] = (1.0 - lambda_init) * y
    return out


# ----------------------------------------------------------------------------- timing


def probe_backend(torch, fn):
    """Call fn once with only SDPA's flash backend allowed (this is also the warm-up call).
    Returns 'flash', or 'math' when flash refused the problem (then fn is called again freely)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
                fn()
            return "flash"
        except RuntimeError:
            fn()
            return "math"


def time_cpu(fn, min_reps, max_reps, min_time):
    """Median wall-clock seconds of fn() over at least min_reps calls, more (up to max_reps)
    while the calls so far took less than min_time seconds in all. fn is already warm."""
    times = []
    total = 0.0
    while len(times) < min_reps or (total < min_time and len(times) < max_reps):
        t0 = time.perf_counter()
        fn()
        t = time.perf_counter() - t0
        times.append(t)
        total += t
    return statistics.median(times), len(times)


def time_cuda(torch, fn, warmup=3, reps=10):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        e0 = torch.cuda.Event(enable_timing=True)
        e1 = torch.cuda.Event(enable_timing=True)
        e0.record()
        fn()
        e1.record()
        torch.cuda.synchronize()
        times.append(e0.elapsed_time(e1) * 1e-3)
    return statistics.median(times), reps


def bench(torch, a):
    cuda = a.device == "cuda"
    dtypes = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}
    if cuda:
        dev_name = torch.cuda.get_device_name(0)
    else:
        torch.set_num_threads(a.threads)
        dev_name = cpu_model()
    context = {"device": a.device, "device_name": dev_name, "torch": torch.__version__,
               "host": platform.node(), "num_cpus": os.cpu_count(), "cpu_mhz": None if cuda else cpu_mhz(),
               "threads": None if cuda else torch.get_num_threads(),
               "cpu_capability": None if cuda else torch.backends.cpu.get_cpu_capability()}
    lam, lambda_init = 0.5, lambda_init_of(4)
    results = []
    for dt_name in a.dtypes:
        for mask in a.masks:
            causal = mask == "causal"
            for d in a.dims:
                h = a.heads or ((16 if d <= 64 else 8) if cuda else 8)
                for n in a.ns:
                    b = a.batch or (max(1, 32768 // n) if cuda else 1)
                    forms, err = {}, ""
                    try:
                        grad_inputs = {}
                        if any(f != "v2_sdpa" for f in a.forms):
                            q, k, v, gamma = make_inputs(torch, b, n, n, h, d, dtypes[dt_name], a.device)
                            lam_t = torch.tensor(lam, device=a.device) if a.backward else lam
                            if a.backward:  # before make_forms takes its views of them
                                for x in (q, k, v, gamma, lam_t):
                                    x.requires_grad_(True)
                            forms = make_forms(torch, q, k, v, gamma, lam_t, lambda_init, causal)
                            for f in ("four_sdpa", "two_sdpa"):
                                grad_inputs[f] = [q, k, v, gamma, lam_t] if a.backward else []
                        if "v2_sdpa" in a.forms:  # equal model width: 2H output heads of d, Hkv = 2H
                            qv, kv, vv, zv = make_v2_inputs(torch, b, n, n, 2 * h, 2 * h, d, dtypes[dt_name], a.device)
                            if a.backward:
                                zv.requires_grad_(True)
                            forms["v2_sdpa"] = make_v2_form(torch, qv, kv, vv, zv, causal)
                            grad_inputs["v2_sdpa"] = [qv, kv, vv, zv]
                    except RuntimeError as e:  # e.g. out of memory
                        forms, err = {}, str(e)[:200]
                    for form in a.forms:
                        v2 = form == "v2_sdpa"
                        hh = 2 * h if v2 else h
                        fl = flops(b, hh, n, n, d, causal, v2, a.backward)
                        suffix = "_backward" if a.backward else ""
                        r = {"name": f"pytorch_{form}{suffix}/{dt_name}/{mask}/d:{d}/N:{n}", "form": form,
                             "pass": "backward" if a.backward else "forward",
                             "dtype": dt_name, "mask": mask, "d": d, "N": n, "S": n, "B": b, "H": hh,
                             "Hkv": hh}
                        try:
                            if form not in forms:
                                raise RuntimeError(err)
                            fn = forms[form]
                            if a.backward:
                                if cuda:
                                    backend, fn = "auto", make_backward(torch, fn, grad_inputs[form], False)
                                else:
                                    backend, fn = probe_backward(torch, fn, grad_inputs[form])  # warm
                            if cuda:
                                backend = "auto"
                                t, reps = time_cuda(torch, fn)
                            elif a.backward:
                                t, reps = time_cpu(fn, a.min_reps, a.max_reps, a.min_time)
                            else:
                                backend = probe_backend(torch, fn)  # also the warm-up call
                                t, reps = time_cpu(fn, a.min_reps, a.max_reps, a.min_time)
                            r.update({"median_s": t, "reps": reps, "gflops": fl / t * 1e-9,
                                      "sdpa_backend": backend})
                            if cuda:
                                r["tflops"] = fl / t * 1e-12
                        except RuntimeError as e:
                            r["error"] = str(e)[:200]
                        r.update(context)
                        print(json.dumps(r), flush=True)
                        results.append(r)
                    forms = q = k = v = qv = kv = vv = None
                    if cuda:
                        torch.cuda.empty_cache()
    out = a.out
    if out is None:
        out = (os.path.join(HERE, "results", "pytorch_composition_" + dev_name.replace(" ", "_") + ".json")
               if cuda else os.path.join(HERE, "results", "pytorch_cpu_backward.json" if a.backward else "pytorch_cpu.json"))
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(results, f, indent=1)
    print(f"pytorch_composition: {len(results)} runs written to {out}", file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------- check


def check(torch, a):
    """Both forms against naive_forward (float64) on small problems; the error is the largest
    |out - ref| over all elements divided by max |ref|. Both see the same input values, so the
    error is only the composition's own rounding. Bounds: f32 1e-5 (seen: below 1e-6); bf16 2^-6
    (the bf16 roundings of O_c, A and out, each 2^-9 relative, A's amplified by the cancellation
    in O_1 - lambda O_2; seen: 0.005 to 0.008). A wrong mask alignment, pairing, gamma or a 1%
    error in lambda fails."""
    if a.device == "cpu":
        torch.set_num_threads(a.threads)
    bounds = {"f32": 1e-5, "bf16": 2.0 ** -6}
    dtypes = {"f32": torch.float32, "bf16": torch.bfloat16}
    lambda_init = lambda_init_of(3)
    g = torch.Generator().manual_seed(1)
    lq1, lk1, lq2, lk2 = (0.1 * torch.randn(64, generator=g, dtype=torch.float64) for _ in range(4))
    lam = float(torch.exp(lq1 @ lk1) - torch.exp(lq2 @ lk2) + lambda_init)
    worst = 0.0
    ok = True
    # (B, N, S, H, d): self-attention with an awkward N, and cross-attention N < S (mask offset)
    for (b, n, s, h, d) in ((2, 77, 77, 3, 64), (1, 45, 130, 2, 128)):
        for dt_name in ("f32", "bf16"):
            for mask in ("none", "causal"):
                causal = mask == "causal"
                q, k, v, gamma = make_inputs(torch, b, n, s, h, d, dtypes[dt_name], a.device, seed=n + d)
                ref = naive_forward(torch, q, k, v, gamma, lam, lambda_init, causal)
                scale = ref.abs().max().item()
                for form, fn in make_forms(torch, q, k, v, gamma, lam, lambda_init, causal).items():
                    out = fn()
                    assert out.shape == ref.shape, (out.shape, ref.shape)
                    err = (out.double() - ref).abs().max().item() / scale
                    good = math.isfinite(err) and err <= bounds[dt_name]
                    ok &= good
                    if dt_name == "f32":
                        worst = max(worst, err)
                    print(f"check {form:9s} {dt_name:4s} {mask:6s} B={b} N={n} S={s} H={h} d={d}: "
                          f"max |out - ref| / max |ref| = {err:.3g} (bound {bounds[dt_name]:.3g}) "
                          f"{'ok' if good else 'FAIL'}", flush=True)
    # DIFF V2: one SDPA with GQA (2H query heads onto Hkv) and the sigmoid subtraction
    for (b, n, s, h, hkv, d) in ((2, 77, 77, 4, 2, 64), (1, 45, 130, 2, 2, 128)):
        for dt_name in ("f32", "bf16"):
            for mask in ("none", "causal"):
                causal = mask == "causal"
                q, k, v, z = make_v2_inputs(torch, b, n, s, h, hkv, d, dtypes[dt_name], a.device, seed=n + d)
                ref = naive_v2_forward(torch, q, k, v, z, causal)
                out = make_v2_form(torch, q, k, v, z, causal)()
                assert out.shape == ref.shape, (out.shape, ref.shape)
                err = (out.double() - ref).abs().max().item() / ref.abs().max().item()
                good = math.isfinite(err) and err <= bounds[dt_name]
                ok &= good
                print(f"check v2_sdpa   {dt_name:4s} {mask:6s} B={b} N={n} S={s} H={h} Hkv={hkv} d={d}: "
                      f"max |out - ref| / max |ref| = {err:.3g} (bound {bounds[dt_name]:.3g}) "
                      f"{'ok' if good else 'FAIL'}", flush=True)
    print(f"check: lambda = {lam:.4f}, lambda_init = {lambda_init:.4f}, torch {torch.__version__}, "
          f"device {a.device}: {'passed' if ok else 'FAILED'}")
    return 0 if ok else 1


# ----------------------------------------------------------------------------- main


def parse(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--check", action="store_true", help="correctness self-check only, no timing")
    ap.add_argument("--backward", action="store_true", help="time autograd's backward instead of the forward")
    ap.add_argument("--threads", type=int, default=2, help="CPU: torch.set_num_threads (default 2)")
    ap.add_argument("--dtypes", default=None, help="default: cpu f32,bf16; cuda bf16")
    ap.add_argument("--masks", default="none,causal")
    ap.add_argument("--dims", default="64,128")
    ap.add_argument("--ns", default=None, help="N = S; default: cpu 512,1024,2048,4096; "
                    "cuda 1024,...,16384")
    ap.add_argument("--forms", default=",".join(FORMS))
    ap.add_argument("--batch", type=int, default=None, help="default: cpu 1; cuda 32768 / N")
    ap.add_argument("--heads", type=int, default=None, help="diff heads H (= Hkv); default: cpu 8; "
                    "cuda 16 at d <= 64, else 8")
    ap.add_argument("--min-reps", type=int, default=3, help="CPU: timed calls at least (default 3)")
    ap.add_argument("--max-reps", type=int, default=30, help="CPU: timed calls at most (default 30)")
    ap.add_argument("--min-time", type=float, default=0.5,
                    help="CPU: keep timing (up to --max-reps) until the calls took this many seconds")
    ap.add_argument("--out", default=None, help="JSON file; default bench/results/pytorch_cpu.json "
                    "(cpu) or bench/results/pytorch_composition_<gpu>.json (cuda)")
    a = ap.parse_args(argv)
    cuda = a.device == "cuda"
    a.dtypes = (a.dtypes or ("bf16" if cuda else "f32,bf16")).split(",")
    a.masks = a.masks.split(",")
    a.dims = [int(x) for x in a.dims.split(",")]
    a.ns = [int(x) for x in (a.ns or ("1024,2048,4096,8192,16384" if cuda else "512,1024,2048,4096")).split(",")]
    a.forms = a.forms.split(",")
    for name, vals, allowed in (("--dtypes", a.dtypes, ("f32", "bf16", "f16")),
                                ("--masks", a.masks, ("none", "causal")), ("--forms", a.forms, FORMS)):
        bad = [x for x in vals if x not in allowed]
        if bad:
            ap.error(f"{name}: unknown {bad}; choose from {','.join(allowed)}")
    return a


def main(argv=None):
    a = parse(sys.argv[1:] if argv is None else argv)
    try:
        import torch
    except ImportError:
        print("pytorch_composition: SKIPPED, nothing measured or checked: torch is not installed "
              f"for {sys.executable} (pip install torch)", file=sys.stderr)
        return 0
    if a.device == "cuda" and not torch.cuda.is_available():
        print("pytorch_composition: SKIPPED, nothing measured or checked: no CUDA device", file=sys.stderr)
        return 0
    return check(torch, a) if a.check else bench(torch, a)


if __name__ == "__main__":
    sys.exit(main())
