"""Time SS2D's four-direction selective scan at LaMamba-Diff-XL stage-1 shapes against the copy bandwidth.

Shapes (``--shapes BATCHxPX``): XL stage 1 (d_inner = 640, d_state 1) at 256 px with batch 64 (L = 1024),
1024 px with batch 4 (L = 16,384) and 2048 px with batch 1 (L = 65,536): the same work per image at growing
length, so time per token shows whether the scan stays linear and fills the GPU with few sequences.
Passes: forward (no grad), backward alone (replaying one graph), forward + backward; bf16 and/or fp32 inputs
(states and accumulation fp32); the Triton kernels and optionally the PyTorch reference.

Achieved bandwidth counts the minimal traffic: every input read once and every output written once
(forward: x, delta, B, C and the four per-direction outputs; backward: the same inputs, dy (one (b, L, d)
gradient shared by the four directions, as the model's sum gives) and every gradient). It is compared with
a device-to-device copy (read + write) timed in the same run. Times are medians with L2 flushed before each
run. Prints a table and writes JSON to ``--out``.

    python benchmarks/bench_scan.py --out scan.json                   # the three shapes, bf16
    python benchmarks/bench_scan.py --shapes 64x256 --block-t 64      # try another launch configuration
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import statistics
import time
from typing import Callable, Optional

import torch

from lamamba.ops import triton_ss2d
from lamamba.ops.ss2d_scan import ss2d_scan_directions

K = 4  # scan directions


# ------------------------------------------------------------------------------------------------
#                                          Timing
# ------------------------------------------------------------------------------------------------

def time_ms(fn: Callable[[], object], device: torch.device, rep_ms: float = 300.0, min_iters: int = 3,
            max_iters: int = 100) -> float:
    """Median milliseconds of ``fn`` after one warm-up call (compilation), with L2 flushed before each run."""
    cuda = device.type == "cuda"
    flush = torch.empty(256 * 2**20, dtype=torch.int8, device=device) if cuda else None
    fn()
    times: list[float] = []
    t_start = time.perf_counter()
    while len(times) < max_iters and (len(times) < min_iters or 1000 * (time.perf_counter() - t_start) < rep_ms):
        if cuda:
            flush.zero_()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times)


def copy_bandwidth(device: torch.device, gib: float = 1.0) -> float:
    """GB/s of a device-to-device copy (bytes read + bytes written)."""
    n = int(gib * 2**30) // 4
    src = torch.empty(n, dtype=torch.float32, device=device).normal_()
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), device)
    return 2 * src.numel() * 4 / ms / 1e6


# ------------------------------------------------------------------------------------------------
#                                    Problems and traffic
# ------------------------------------------------------------------------------------------------

def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def ss2d_problem(batch: int, side: int, d: int, N: int, dtype: torch.dtype, device: torch.device) -> dict:
    """Inputs of the SS2D scan in pixel order, initialised as the model does; x, delta, B, C in ``dtype``."""
    L = side * side
    g = torch.Generator(device=device).manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g, device=device)
    dt_init = torch.exp(torch.rand(K * d, generator=g, device=device) * (2.3 - 6.9) - 2.3)  # 1e-3 .. 0.1
    return dict(x=r(batch, L, d).to(dtype), delta=(0.1 * r(batch, L, K, d)).to(dtype),
                A=-torch.arange(1, N + 1, device=device, dtype=torch.float32).repeat(K * d, 1),
                B=r(batch, L, K, N).to(dtype), C=r(batch, L, K, N).to(dtype),
                D=torch.ones(K * d, device=device), delta_bias=dt_init + torch.log(-torch.expm1(-dt_init)))


def minimal_bytes(inputs: dict, ys: torch.Tensor, passes: str) -> int:
    """Bytes that must move: inputs read once, outputs written once (see the module doc)."""
    fwd = _nbytes(list(inputs.values()) + [ys])
    bwd = _nbytes(2 * list(inputs.values()) + [ys[:, :, 0]])   # inputs, their gradients, one dy
    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}[passes]


# ------------------------------------------------------------------------------------------------
#                                          Cases
# ------------------------------------------------------------------------------------------------

def _closures(inputs: dict, H: int, W: int) -> dict[str, Callable[[], object]]:
    """Forward (no grad), backward alone (one graph replayed) and forward + backward of the scan."""
    op = lambda **kw: ss2d_scan_directions(**kw, H=H, W=W)
    leaves = {k: v.detach().requires_grad_(True) for k, v in inputs.items()}
    b, L, d = inputs["x"].shape
    dys = torch.randn(b, L, 1, d, device=inputs["x"].device, dtype=inputs["x"].dtype).expand(b, L, K, d)
    ys = op(**leaves)

    def fwd():
        with torch.no_grad():
            return op(**inputs)

    def bwd():
        return torch.autograd.grad(ys, list(leaves.values()), dys, retain_graph=True)

    def fwd_bwd():
        return torch.autograd.grad(op(**leaves), list(leaves.values()), dys)
    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd_bwd}


@contextlib.contextmanager
def scan_backend(name: str):
    """Force ``LAMAMBA_SCAN_BACKEND`` (read at every call by the dispatch) for the duration."""
    old = os.environ.get("LAMAMBA_SCAN_BACKEND")
    os.environ["LAMAMBA_SCAN_BACKEND"] = name
    try:
        yield
    finally:
        if old is None:
            del os.environ["LAMAMBA_SCAN_BACKEND"]
        else:
            os.environ["LAMAMBA_SCAN_BACKEND"] = old


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    copy_gbps = copy_bandwidth(device, args.copy_gib)
    rows = []
    for shape in args.shapes:
        batch, px = (int(v) for v in shape.lower().split("x"))
        side = px // args.vae_factor
        for dtype_name in args.dtypes:
            dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
            p = ss2d_problem(batch, side, args.d, args.d_state, dtype, device)
            meta = dict(px=px, L=side * side, batch=batch, d=args.d, N=args.d_state, dtype=dtype_name)
            for impl in args.impls:
                try:
                    with scan_backend(impl):
                        with torch.no_grad():
                            ys = ss2d_scan_directions(**p, H=side, W=side)
                        fns = _closures(p, side, side)
                        for passes, fn in fns.items():
                            row = {**meta, "pass": passes, "impl": impl, "ms": time_ms(fn, device),
                                   "bytes": minimal_bytes(p, ys, passes)}
                            row["GBps"] = row["bytes"] / row["ms"] / 1e6
                            row["frac_copy"] = row["GBps"] / copy_gbps
                            row["ns_per_token"] = 1e6 * row["ms"] / (batch * side * side)
                            rows.append(row)
                            print(_format(row), flush=True)
                        del ys, fns
                except torch.cuda.OutOfMemoryError:
                    print(f"{shape} {dtype_name} {impl}: out of memory", flush=True)
                finally:
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
            del p
    return dict(device=torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine(),
                torch=torch.__version__, triton=_triton_version(), copy_GBps=copy_gbps,
                launch=dataclasses.asdict(triton_ss2d.launch_config()), rows=rows)


def _triton_version() -> Optional[str]:
    import triton
    return triton.__version__


HEADER = (f"{'px':>5}{'batch':>6}{'L':>7}{'dtype':>6}{'pass':>9}{'impl':>10}{'ms':>9}{'ns/token':>9}{'GB':>7}"
          f"{'GB/s':>7}{'%copy':>7}")


def _format(r: dict) -> str:
    return (f"{r['px']:>5}{r['batch']:>6}{r['L']:>7}{r['dtype']:>6}{r['pass']:>9}{r['impl']:>10}{r['ms']:>9.3f}"
            f"{r['ns_per_token']:>9.2f}{r['bytes'] / 1e9:>7.2f}{r['GBps']:>7.0f}{100 * r['frac_copy']:>6.0f}%")


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument("--shapes", nargs="+", default=["64x256", "4x1024", "1x2048"], help="BATCHxPX (latent = px / 8)")
    ap.add_argument("--vae-factor", type=int, default=8)
    ap.add_argument("--d", type=int, default=640, help="SS2D channels (d_inner of XL stage 1)")
    ap.add_argument("--d-state", type=int, default=1)
    ap.add_argument("--dtypes", nargs="+", default=["bf16"], choices=["bf16", "fp32"])
    ap.add_argument("--impls", nargs="+", default=["triton"], choices=["triton", "reference"])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--copy-gib", type=float, default=1.0)
    for field in dataclasses.fields(triton_ss2d.SS2DLaunchConfig):
        ap.add_argument(f"--{field.name.replace('_', '-')}", type=int, help="override triton_ss2d.SS2D_LAUNCH")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("no CUDA device (use --device cpu with TRITON_INTERPRET=1 for a dry run at tiny sizes)")
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(triton_ss2d.SS2DLaunchConfig)
                 if getattr(args, f.name) is not None}
    triton_ss2d.SS2D_LAUNCH = dataclasses.replace(triton_ss2d.SS2D_LAUNCH, **overrides)
    print(f"launch {triton_ss2d.launch_config()}")
    print(HEADER)
    result = run(args)
    print(f"device-to-device copy: {result['copy_GBps']:.0f} GB/s on {result['device']}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
