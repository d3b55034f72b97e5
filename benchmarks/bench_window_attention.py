"""Window attention alone on a GPU: the Triton route (``lamamba.ops.triton_window_attention``) against the PyTorch
route (roll, windows, ``scaled_dot_product_attention`` with the bias as a mask, reverse), with the qkv and output
projections, at LaMamba-Diff-S's and -XL's stage shapes (256 px latents / 32 px pixels), bf16 autocast as in
training. Prints ms per call (CUDA events, median of ``--reps``; each call captured as a CUDA graph and replayed,
so GPU time only, or eager calls with ``--eager``, as session 13 timed them) forward without gradients and forward +
backward, the kernel's launch variants, and each route's largest relative difference from the PyTorch route.

    python benchmarks/bench_window_attention.py
"""
from __future__ import annotations

import argparse
import os
import statistics

import torch

from lamamba.ops import triton_window_attention as kernel
from lamamba.ops.window_attention import window_attention

# name: (batch, map side, channels, heads, shift)
SHAPES = {
    "S stage 1, shifted": (128, 32, 96, 6, 4), "S stage 1": (128, 32, 96, 6, 0),
    "S stage 2, shifted": (128, 16, 192, 6, 4), "S stage 3": (128, 8, 384, 6, 0),
    "XL stage 1, shifted": (64, 32, 320, 16, 4), "XL stage 2, shifted": (64, 16, 640, 16, 4),
    "XL stage 3": (64, 8, 1280, 16, 0)}
VARIANTS = {"default": kernel.WindowAttentionLaunch(), "4 per SM": kernel.WindowAttentionLaunch(programs_per_sm=4),
            "32 per SM": kernel.WindowAttentionLaunch(programs_per_sm=32),
            "<= 4 samples": kernel.WindowAttentionLaunch(max_samples=4),
            "1 sample": kernel.WindowAttentionLaunch(max_samples=1),
            "8 warps": kernel.WindowAttentionLaunch(num_warps=8), "2 warps": kernel.WindowAttentionLaunch(num_warps=2)}


def timed(fn, reps: int, graph: bool) -> float:
    """Median ms per call; with ``graph``, of replays of ``fn`` captured as one CUDA graph (GPU time without the
    host's launch overhead, which dominates eager calls at these sizes)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    if graph:
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            fn()
        fn = g.replay
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--eager", action="store_true", help="time eager calls (host overhead included) instead of "
                    "replays of each call captured as a CUDA graph")
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    print(f"{torch.cuda.get_device_name()}, PyTorch {torch.__version__}")
    print(f"{'shape':<22} {'route':<16} {'fwd ms':>8} {'fwd+bwd ms':>11} {'out err':>8} {'grad err':>9}")
    for name, (B, side, C, heads, shift) in SHAPES.items():
        torch.manual_seed(0)
        x = torch.randn(B, side, side, C, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        params = [torch.randn(3 * C, C, device="cuda") * C ** -0.5, torch.zeros(3 * C, device="cuda"),
                  torch.randn(C, C, device="cuda") * C ** -0.5, torch.zeros(C, device="cuda"),
                  torch.randn(225, heads, device="cuda") * 0.02]
        params = [p.requires_grad_(True) for p in params]
        dout = torch.randn(B, side, side, C, device="cuda", dtype=torch.bfloat16)

        def forward():
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
                return window_attention(x, *params, heads, 8, shift)

        def step():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = window_attention(x, *params, heads, 8, shift)
            return out, torch.autograd.grad(out, [x] + params, dout)

        ref = None
        for route, launch in [("pytorch", None)] + list(VARIANTS.items()):
            os.environ["LAMAMBA_SCAN_BACKEND"] = "reference" if launch is None else "triton"
            if launch is not None:
                kernel.LAUNCH = launch
            out, grads = step()
            if ref is None:
                ref = (out.float(), [g.float() for g in grads])
            err = ((out.float() - ref[0]).abs().max() / ref[0].abs().max()).item()
            gerr = max(((g.float() - r).abs().max() / r.abs().max()).item() for g, r in zip(grads, ref[1]))
            fwd_ms, step_ms = (timed(f, args.reps, not args.eager) for f in (forward, step))
            print(f"{name:<22} {route:<16} {fwd_ms:>8.3f} {step_ms:>11.3f} "
                  f"{err:>8.1e} {gerr:>9.1e}", flush=True)
        kernel.LAUNCH = VARIANTS["default"]


if __name__ == "__main__":
    main()
