"""Time the selective-scan kernels at LaMamba-Diff-XL stage-1 shapes and compare with the copy bandwidth.

Cases: the fused SS2D scan (``ss2d_selective_scan``: x (b, L, d), delta (b, L, 4, d), B, C (b, L, 4, N)) and
the Mamba-layout ``selective_scan`` on the same problem laid out as the SS2D reference path calls it
(u, delta (b, 4d, L), B, C (b, 4, N, L)); forward (no grad) and forward + backward; bf16 and fp32 inputs
(states and accumulation are fp32 either way); the Triton kernels and the PyTorch reference.

Achieved bandwidth counts the minimal traffic: every input read once and every output written once
(forward: inputs + y; forward + backward: inputs + y + dy + every gradient). It is compared with a
device-to-device copy (read + write) timed in the same run. Times are medians with L2 flushed before
each run. Prints a table and writes JSON to ``--out``.

    python benchmarks/bench_scan.py --out scan.json              # XL stage 1 at 256 and 512 px, b = 64
    python benchmarks/bench_scan.py --px 256 --num-stages 2      # try another launch configuration
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

from lamamba.ops import selective_scan, triton_scan
from lamamba.ops.scan_paths import scan_paths
from lamamba.ops.ss2d_scan import ss2d_selective_scan

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


# ------------------------------------------------------------------------------------------------
#                                    Problems and traffic
# ------------------------------------------------------------------------------------------------

def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def ss2d_problem(batch: int, side: int, d: int, N: int, dtype: torch.dtype, device: torch.device) -> dict:
    """Inputs of the fused SS2D scan in pixel order; x, delta, B, C in ``dtype``, parameters fp32."""
    L = side * side
    g = torch.Generator(device=device).manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g, device=device)
    dt_init = torch.exp(torch.rand(K * d, generator=g, device=device) * (2.3 - 6.9) - 2.3)  # 1e-3 .. 0.1
    return dict(x=r(batch, L, d).to(dtype), delta=(0.1 * r(batch, L, K, d)).to(dtype),
                A=-torch.arange(1, N + 1, device=device, dtype=torch.float32).repeat(K * d, 1),
                B=r(batch, L, K, N).to(dtype), C=r(batch, L, K, N).to(dtype),
                D=torch.ones(K * d, device=device), delta_bias=dt_init + torch.log(-torch.expm1(-dt_init)))


def mamba_problem(p: dict) -> dict:
    """The same problem in the Mamba layout, as the SS2D reference path hands it to ``selective_scan``."""
    b, L, d = p["x"].shape
    return dict(u=p["x"].transpose(1, 2).repeat(1, K, 1).contiguous(),                    # (b, K d, L)
                delta=p["delta"].permute(0, 2, 3, 1).reshape(b, K * d, L).contiguous(),
                A=p["A"], B=p["B"].permute(0, 2, 3, 1).contiguous(), C=p["C"].permute(0, 2, 3, 1).contiguous(),
                D=p["D"], delta_bias=p["delta_bias"])


def minimal_bytes(inputs: dict, out: torch.Tensor, backward: bool) -> int:
    """Inputs read once and y written once; with backward also dy read and every gradient written once."""
    tensors = list(inputs.values()) + [out]
    if backward:
        tensors += [out] + [t for t in inputs.values() if t.is_floating_point()]
    return _nbytes(tensors)


# ------------------------------------------------------------------------------------------------
#                                          Cases
# ------------------------------------------------------------------------------------------------

def _run(op: Callable[..., torch.Tensor], inputs: dict, backward: bool) -> Callable[[], object]:
    """A closure running the forward (no grad) or forward + backward of ``op`` on ``inputs``."""
    if not backward:
        def fwd():
            with torch.no_grad():
                return op(**inputs)
        return fwd
    leaves = {k: v.detach().requires_grad_(v.is_floating_point()) for k, v in inputs.items()}
    grad_inputs = [v for v in leaves.values() if v.requires_grad]
    dy = None

    def fwd_bwd():
        nonlocal dy
        y = op(**leaves)
        dy = torch.ones_like(y) if dy is None else dy
        return torch.autograd.grad(y, grad_inputs, dy)
    return fwd_bwd


def bench_case(name: str, op: Callable[..., torch.Tensor], inputs: dict, backward: bool, impl: str,
               device: torch.device, copy_gbps: float, meta: dict) -> dict:
    row = {**meta, "op": name, "pass": "fwd+bwd" if backward else "fwd", "impl": impl}
    try:
        with scan_backend(impl), torch.no_grad():
            out = op(**inputs)
        row["bytes"] = minimal_bytes(inputs, out, backward)
        del out
        with scan_backend(impl):
            row["ms"] = time_ms(_run(op, inputs, backward), device)
        row["GBps"] = row["bytes"] / row["ms"] / 1e6
        row["frac_copy"] = row["GBps"] / copy_gbps
        row["status"] = "ok"
    except torch.cuda.OutOfMemoryError:
        row["status"] = "oom"
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    copy_gbps = copy_bandwidth(device, args.copy_gib)
    rows = []
    for px in args.px:
        side = px // args.vae_factor
        for dtype_name in args.dtypes:
            dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
            p = ss2d_problem(args.batch, side, args.d, args.d_state, dtype, device)
            paths, inverse = scan_paths(side, side, device)
            meta = dict(px=px, L=side * side, batch=args.batch, d=args.d, N=args.d_state, dtype=dtype_name)
            ss2d = lambda **kw: ss2d_selective_scan(**kw, paths=paths, inverse=inverse)
            mamba = lambda **kw: selective_scan(**kw, delta_softplus=True)
            cases = [("ss2d", ss2d, p), ("selective_scan", mamba, mamba_problem(p))]
            for name, op, inputs in cases:
                for backward in (False, True):
                    for impl in args.impls:
                        row = bench_case(name, op, inputs, backward, impl, device, copy_gbps, meta)
                        rows.append(row)
                        print(_format(row), flush=True)
            del p, cases
    return dict(device=torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine(),
                torch=torch.__version__, triton=_triton_version(), copy_GBps=copy_gbps,
                launch=dataclasses.asdict(triton_scan.LAUNCH), rows=rows)


def _triton_version() -> Optional[str]:
    import triton
    return triton.__version__


HEADER = f"{'op':<15}{'px':>5}{'dtype':>6}{'pass':>9}{'impl':>11}{'ms':>10}{'GB':>8}{'GB/s':>9}{'%copy':>7}"


def _format(r: dict) -> str:
    if r["status"] != "ok":
        return f"{r['op']:<15}{r['px']:>5}{r['dtype']:>6}{r['pass']:>9}{r['impl']:>11}{r['status']:>10}"
    return (f"{r['op']:<15}{r['px']:>5}{r['dtype']:>6}{r['pass']:>9}{r['impl']:>11}{r['ms']:>10.3f}"
            f"{r['bytes'] / 1e9:>8.2f}{r['GBps']:>9.0f}{100 * r['frac_copy']:>6.0f}%")


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument("--px", type=int, nargs="+", default=[256, 512], help="image sizes (latent side = px / 8)")
    ap.add_argument("--vae-factor", type=int, default=8)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--d", type=int, default=640, help="SS2D channels (d_inner of XL stage 1)")
    ap.add_argument("--d-state", type=int, default=1)
    ap.add_argument("--dtypes", nargs="+", default=["bf16", "fp32"], choices=["bf16", "fp32"])
    ap.add_argument("--impls", nargs="+", default=["triton", "reference"], choices=["triton", "reference"])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--copy-gib", type=float, default=1.0)
    for field in dataclasses.fields(triton_scan.LaunchConfig):
        ap.add_argument(f"--{field.name.replace('_', '-')}", type=int, help="override triton_scan.LAUNCH")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("no CUDA device (use --device cpu with TRITON_INTERPRET=1 for a dry run at tiny sizes)")
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(triton_scan.LaunchConfig)
                 if getattr(args, f.name) is not None}
    triton_scan.LAUNCH = dataclasses.replace(triton_scan.LAUNCH, **overrides)
    print(f"launch {triton_scan.LAUNCH}")
    print(HEADER)
    result = run(args)
    print(f"device-to-device copy: {result['copy_GBps']:.0f} GB/s on {result['device']}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
