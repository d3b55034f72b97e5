"""GPU time of the SS2D scan kernels alone at the shapes of LaMamba-Diff-S (32 px, batch 128) and XL stage 1
(256 px, batch 64) under several launch configurations, each checked against the default's gradients.

Session 8's call ran it with the S shapes of a patch-2 model by mistake (16x16, 8x8 and 4x4 maps; the rows in
docs/PERFORMANCE.md say so); the XL row was right.

``bench_scan.py`` times whole autograd calls with CUDA events, which at LaMamba-Diff-S's small shapes measures the
host (launching, autograd, the host-side sums), not the kernels. Here the forward op (saving states) and the backward
op run inside a captured CUDA graph (``triton.testing.do_bench_cudagraph``): what a compiled step with CUDA graphs
pays. Launch variants are ``SS2DLaunchConfig`` overrides, as ``LAMAMBA_SS2D_LAUNCH`` takes them.

    python benchmarks/scan_launch_sweep.py                       # the shapes and variants below
    python benchmarks/scan_launch_sweep.py --variants "" "max_block_d=16" "bwd_num_warps=2,max_block_d=64"
"""
from __future__ import annotations

import argparse
import dataclasses

import torch
import triton.testing
from bench_scan import K, ss2d_problem

from lamamba.ops import triton_ss2d

SHAPES = {  # name: (batch, side, d_inner) of one SS2D call; LaMamba-Diff-S at 32 px has patch size 1 (5, 5 and 6
    # calls per forward at its three stages), LaMamba-Diff-XL at 256 px works on 32x32 latents with patch size 1
    "S stage 1 (32x32, d 192)": (128, 32, 192),
    "S stage 2 (16x16, d 384)": (128, 16, 384),
    "S stage 3 (8x8, d 768)": (128, 8, 768),
    "XL stage 1 (32x32, d 640)": (64, 32, 640),
}
VARIANTS = ["", "max_block_d=16", "max_block_d=8", "bwd_num_warps=2,max_block_d=64", "block_t=8",
            "bwd_num_stages=2", "programs_per_sm=32", "max_block_d=16,programs_per_sm=32"]


def parse_overrides(spec: str) -> dict[str, int]:
    """``"field=int,field=int"`` -> {field: int} ('' -> {}): a launch variant of the sweeps."""
    return {k.strip(): int(v) for k, v in (item.split("=") for item in spec.split(",") if item.strip())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", nargs="+", default=VARIANTS, help="SS2DLaunchConfig overrides, FIELD=INT,...")
    ap.add_argument("--rep", type=int, default=100, help="milliseconds of replays per measurement")
    ap.add_argument("--only", default="", help="only the shapes whose name contains this (e.g. 'S stage 1')")
    args = ap.parse_args()
    default = triton_ss2d.SS2D_LAUNCH
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, default launch {default}")
    for name, (batch, side, d) in SHAPES.items():
        if args.only not in name:
            continue
        p = ss2d_problem(batch, side, d, 1, torch.bfloat16, torch.device("cuda"))
        args_fwd = (p["x"], p["delta"], p["A"], p["B"], p["C"], p["D"], p["delta_bias"], side, side)
        dys = torch.randn(batch, side * side, K, d, device="cuda", dtype=torch.bfloat16)
        reference = None
        for spec in args.variants:
            triton_ss2d.SS2D_LAUNCH = dataclasses.replace(default, **parse_overrides(spec))
            try:
                ys, ckpt = torch.ops.lamamba.ss2d_scan_fwd(*args_fwd, True)
                grads = torch.ops.lamamba.ss2d_scan_bwd(dys, *args_fwd[:7], ckpt, side, side)
                fwd = triton.testing.do_bench_cudagraph(lambda: torch.ops.lamamba.ss2d_scan_fwd(*args_fwd, True),
                                                        rep=args.rep)
                bwd = triton.testing.do_bench_cudagraph(
                    lambda: torch.ops.lamamba.ss2d_scan_bwd(dys, *args_fwd[:7], ckpt, side, side), rep=args.rep)
            except Exception as error:  # a launch that does not compile (registers, shared memory) is a result too
                print(f"{name:<27} {spec or 'default':<36} failed: {type(error).__name__}: {str(error)[:80]}")
                continue
            if reference is None:
                reference = [ys] + list(grads)
            err = max(float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12))
                      for a, b in zip([ys] + list(grads), reference))
            print(f"{name:<27} {spec or 'default':<36} fwd {1000 * fwd:8.1f} us  bwd {1000 * bwd:8.1f} us  "
                  f"max rel. diff vs default {err:.1e}", flush=True)
    triton_ss2d.SS2D_LAUNCH = default


if __name__ == "__main__":
    main()
