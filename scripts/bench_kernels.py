"""Benchmark mmar.kernels: Triton against torch, and the memory of linear cross-entropy.

    python scripts/bench_kernels.py                 # memory ratio (any machine); timings too on CUDA
    python scripts/bench_kernels.py --skip-timing   # memory ratio only

Memory (any machine): peak extra memory of one forward + backward of `linear_cross_entropy` against the
naive `F.cross_entropy(h @ W.T, y)` at V=16384, N=4096, D=768 (fp32), each measured in a fresh process:
on CUDA as `max_memory_allocated` above the inputs, on CPU as the peak resident set above the inputs.

Timings (CUDA only): attention forward and forward + backward for the units' masks against SDPA with a
bool mask and FlexAttention with the same mask as a BlockMask; the fused sampler against the torch
reference; Triton linear cross-entropy against the naive loss. Every ratio is measured in this run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from mmar.kernels import BlockCausal, Causal, attention, linear_cross_entropy, proximity, sample

V, N, D = 16384, 4096, 768


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def measure_memory(which: str, device: str) -> int:
    """Peak bytes above the inputs for one forward + backward (runs in its own process)."""
    torch.manual_seed(0)
    h = torch.randn(N, D, device=device, requires_grad=True)
    w = (torch.randn(V, D, device=device) / D**0.5).requires_grad_()
    y = torch.randint(0, V, (N,), device=device)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = rss_bytes()
    loss = F.cross_entropy(h @ w.T, y) if which == "naive" else linear_cross_entropy(h, w, y)
    loss.backward()
    if device == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base  # Linux: KiB


def memory_ratio(device: str) -> dict:
    peaks = {}
    for which in ("naive", "linear"):
        command = [sys.executable, __file__, "--measure", which, "--device", device]
        # a fixed mmap threshold makes glibc return every large buffer to the OS when torch frees it,
        # so the resident set follows the live tensors (its default, adaptive threshold keeps freed
        # buffers in the heap and over-counts)
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 17)}
        run = subprocess.run(command, check=True, capture_output=True, text=True, env=env)
        peaks[which] = int(run.stdout)
    return {**{f"{k}_MiB": v / 2**20 for k, v in peaks.items()}, "ratio": peaks["linear"] / peaks["naive"]}


def timed(fn, repeats: int = 20) -> float:
    """Median milliseconds of fn() on CUDA after a warm-up."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def timing_row(op: str, case: str, ms: dict[str, float]) -> dict:
    """Milliseconds per implementation and each baseline's time over Triton's (> 1: Triton is faster)."""
    ratios = {f"{k}/triton": v / ms["triton"] for k, v in ms.items() if k != "triton"}
    return {"op": op, "case": case, **{f"{k}_ms": v for k, v in ms.items()}, **ratios}


def attention_rows(dtype=torch.bfloat16) -> list[dict]:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    b, h, t, d = 8, 12, 1024, 64
    grid = (32, 32)
    masks = {
        "causal": Causal(),
        "block_causal (rows of 32)": BlockCausal(torch.arange(t, device="cuda") // 32),
        "proximity (NAR, 32x32)": proximity(grid),
    }
    masks["proximity (NAR, 32x32)"] = BlockCausal(masks["proximity (NAR, 32x32)"].block_ids.cuda())
    flex = torch.compile(flex_attention)
    rows = []
    for name, mask in masks.items():
        q, k, v = (torch.randn(b, h, t, d, device="cuda", dtype=dtype, requires_grad=True) for _ in range(3))
        dense = mask.dense(t, t, device="cuda")
        block_mask = create_block_mask(lambda b_, h_, qi, ki, m=mask: m.allowed(qi, ki), None, None, t, t)
        runs = {
            "triton": lambda q=q, k=k, v=v, m=mask: attention(q, k, v, m, impl="triton"),
            "sdpa": lambda q=q, k=k, v=v, m=dense: F.scaled_dot_product_attention(q, k, v, attn_mask=m),
            "flex": lambda q=q, k=k, v=v, m=block_mask: flex(q, k, v, block_mask=m),
        }
        for mode in ("forward", "forward+backward"):
            ms = {}
            for impl, fn in runs.items():
                step = (lambda f=fn: f().sum().backward()) if mode != "forward" else fn
                with torch.set_grad_enabled(mode != "forward"):
                    ms[impl] = timed(step)
            rows.append(timing_row(f"attention {mode}", name, ms))
    return rows


def sampling_rows() -> list[dict]:
    cond, uncond = torch.randn(2, 256, V, device="cuda").unbind(0)
    settings = dict(cfg_scale=2.0, temperature=1.0, top_k=100, top_p=0.9)
    ms = {i: timed(lambda i=i: sample(cond, uncond, **settings, impl=i)) for i in ("triton", "torch")}
    return [timing_row("sample (CFG, top-k 100, top-p 0.9)", f"256 x {V}", ms)]


def cross_entropy_rows() -> list[dict]:
    h = torch.randn(N, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(V, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    y = torch.randint(0, V, (N,), device="cuda")
    runs = {
        "triton": lambda: linear_cross_entropy(h, w, y, impl="triton").backward(),
        "naive": lambda: F.cross_entropy((h @ w.T).float(), y).backward(),
    }
    ms = {k: timed(fn) for k, fn in runs.items()}
    return [timing_row("linear_cross_entropy forward+backward", f"N={N} V={V} D={D} bf16", ms)]


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--skip-timing", action="store_true", help="only the memory ratio")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--measure", choices=["naive", "linear"], help=argparse.SUPPRESS)  # child process
    args = parser.parse_args()
    if args.measure:
        print(measure_memory(args.measure, args.device))
        return
    memory = memory_ratio(args.device)
    print(
        f"linear_cross_entropy peak memory (V={V}, N={N}, D={D}, fp32, forward + backward, {args.device}): "
        f"{memory['linear_MiB']:.0f} MiB vs naive {memory['naive_MiB']:.0f} MiB, "
        f"ratio {memory['ratio']:.3f}"
    )
    if args.skip_timing or args.device != "cuda":
        print("timings skipped (they need CUDA)" if args.device != "cuda" else "timings skipped")
        return
    start = time.perf_counter()
    rows = attention_rows() + sampling_rows() + cross_entropy_rows()
    for row in rows:
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}))
    print(f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
