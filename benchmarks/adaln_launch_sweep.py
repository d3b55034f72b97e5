"""GPU time of the fused AdaLN kernels (``lamamba.ops.triton_adaln``: gated residual + LayerNorm + modulation, and
its backward with the partial-sum reduction) inside CUDA graphs, at the shapes of LaMamba-Diff-S (32 px, batch 128)
and LaMamba-Diff-XL (256 px, batch 64), under variants of the launch rule's constants, with the time the bytes
moved would take at the card's memory bandwidth.

Session 8's compiled profile put the AdaLN backward at 6.9 of LaMamba-Diff-S's 64 ms step (48 calls, ~143 us each,
6x its forward): this script says how far each call is from the bandwidth bound and whether another tiling helps.

    python benchmarks/adaln_launch_sweep.py                                  # every shape, the default variants
    python benchmarks/adaln_launch_sweep.py --variants "" "tile_elements=2048,row_target=2" --only "S stage 1"
"""
from __future__ import annotations

import argparse

import torch
import triton.testing

from scan_launch_sweep import parse_overrides

from lamamba.ops import triton_adaln

SHAPES = {  # name: (batch, tokens, channels) of one block's AdaLN; S at 32 px has patch size 1
    "S stage 1 (32x32, D 96)": (128, 1024, 96),
    "S stage 2 (16x16, D 192)": (128, 256, 192),
    "S stage 3 (8x8, D 384)": (128, 64, 384),
    "XL stage 1 (32x32, D 320)": (64, 1024, 320),
}
# "" is the package's FORWARD / BACKWARD; any other spec sets both to AdaLNLaunch(**spec), whose field defaults
# ("row_target=8") are the rule before session 9; session 9's call 6 swept these
VARIANTS = ["", "row_target=8", "warp_elements=1024", "row_target=2", "row_target=2,warp_elements=1024",
            "row_target=4,warp_elements=1024", "tile_elements=2048"]
HBM_BYTES_PER_S = 4.8e12   # H200 (HBM3e); only the "x bound" column depends on it


def _problem(N: int, T: int, D: int):
    cuda = dict(device="cuda")
    act = lambda: torch.randn(N, T, D, dtype=torch.bfloat16, **cuda)
    vec = lambda: torch.randn(N, D, dtype=torch.bfloat16, **cuda) * 0.1
    x, branch, dout, dxo = act(), act(), act(), act()
    gate, shift, scale = vec(), vec(), vec()
    weight, bias = torch.ones(D, **cuda), torch.zeros(D, **cuda)
    fwd_args = (x, branch, gate, weight, bias, shift, scale, 1e-6, torch.bfloat16, torch.bfloat16)
    return fwd_args, dout, dxo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", nargs="+", default=VARIANTS,
                    help="AdaLNLaunch fields for both kernels, FIELD=INT,... ('' for the defaults)")
    ap.add_argument("--rep", type=int, default=100, help="milliseconds of replays per measurement")
    ap.add_argument("--only", default="", help="only the shapes whose name contains this")
    args = ap.parse_args()
    defaults = triton_adaln.FORWARD, triton_adaln.BACKWARD
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, defaults: forward {defaults[0]}, "
          f"backward {defaults[1]}")
    for name, (N, T, D) in SHAPES.items():
        if args.only not in name:
            continue
        fwd_args, dout, dxo = _problem(N, T, D)
        elements = N * T * D
        # bytes at bf16: forward reads x, branch, writes x_out, out; backward reads dout, dxo, x_out, branch and
        # writes dx, dbranch (the per-row statistics and per-sample vectors are small)
        bound_fwd, bound_bwd = (4 * 2 * elements / HBM_BYTES_PER_S, 6 * 2 * elements / HBM_BYTES_PER_S)
        for spec in args.variants:
            if spec:
                triton_adaln.FORWARD = triton_adaln.BACKWARD = triton_adaln.AdaLNLaunch(**parse_overrides(spec))
            else:
                triton_adaln.FORWARD, triton_adaln.BACKWARD = defaults
            x_out, out, mean, rstd = torch.ops.lamamba.adaln_fwd(*fwd_args)
            bwd_args = (dout, dxo, x_out, fwd_args[1], fwd_args[2], fwd_args[3], fwd_args[4], fwd_args[6], mean,
                        rstd, torch.bfloat16)
            torch.ops.lamamba.adaln_bwd(*bwd_args)        # compiled (and profiled by ncu) outside the graphs
            launch = triton_adaln._launch(N, T, D, torch.device("cuda"), triton_adaln.BACKWARD)
            fwd = triton.testing.do_bench_cudagraph(lambda: torch.ops.lamamba.adaln_fwd(*fwd_args), rep=args.rep)
            bwd = triton.testing.do_bench_cudagraph(lambda: torch.ops.lamamba.adaln_bwd(*bwd_args), rep=args.rep)
            print(f"{name:<26} {spec or 'default':<22} bwd launch {str(launch):<22} fwd {1000 * fwd:7.1f} us "
                  f"({fwd / 1000 / bound_fwd:4.1f}x bound)  bwd {1000 * bwd:7.1f} us ({bwd / 1000 / bound_bwd:4.1f}x bound)",
                  flush=True)
    triton_adaln.FORWARD, triton_adaln.BACKWARD = defaults


if __name__ == "__main__":
    main()
