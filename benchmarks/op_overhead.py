"""Host and GPU time of one call of the fused glue ops against their PyTorch compositions, on CUDA.

    python benchmarks/op_overhead.py [--calls 200]

For each op at the shapes of LaMamba-Diff-S (32x32 pixels, batch 128) and LaMamba-Diff-XL (256 px latents,
batch 64), bf16 activations as under autocast, three routes: ``reference`` (the PyTorch composition),
``fused`` (the Triton kernels as the model calls them in eager mode), ``custom-op`` (the same kernels through
the ``torch.library`` op that ``torch.compile`` traces). Columns, microseconds per call:

* ``host``: time to issue ``--calls`` calls (no synchronisation inside), per call: what a launch-bound step pays;
* ``gpu``: CUDA-event time of the same calls with the queue kept full, per call: what a GPU-bound step pays.

``fwd`` is the forward alone under ``no_grad``; ``fwd+bwd`` a forward and a backward with autograd.
"""
from __future__ import annotations

import argparse
import time

import torch

from lamamba.ops import fused_adaln, triton_adaln
from lamamba.ops import gated_norm as gated_norm_module

# (model, batch, tokens per sample, channels) per stage; gated_norm runs at twice the channels (d_inner)
SHAPES = {
    "S": [(128, 1024, 96), (128, 256, 192), (128, 64, 384)],
    "XL": [(64, 1024, 320), (64, 256, 640), (64, 64, 1280), (64, 16, 1280)],
}


def _adaln_inputs(N: int, T: int, D: int, grad: bool):
    dev, bf = "cuda", torch.bfloat16
    x = torch.randn(N, T, D, device=dev, dtype=torch.float32, requires_grad=grad)
    br = torch.randn(N, T, D, device=dev, dtype=bf, requires_grad=grad)
    mod = torch.randn(N, 6 * D, device=dev, dtype=bf, requires_grad=grad)
    w = torch.ones(D, device=dev, requires_grad=grad)
    b = torch.zeros(D, device=dev, requires_grad=grad)
    return x, br, mod, w, b


def adaln_routes(N: int, T: int, D: int, grad: bool):
    x, br, mod, w, b = _adaln_inputs(N, T, D, grad)
    sh, sc, g = mod[:, :D], mod[:, D:2 * D], mod[:, 2 * D:3 * D]

    def reference():
        return fused_adaln.add_norm_modulate_reference(x, br, g, w, b, sh, sc, 1e-5, torch.bfloat16)

    def fused():
        return fused_adaln.add_norm_modulate(x, br, g, w, b, sh, sc, 1e-5, torch.bfloat16)

    def custom_op():
        return triton_adaln._fwd(x, br, g, w, b, sh, sc, 1e-5, torch.float32, torch.bfloat16)[:2]

    return dict(reference=reference, fused=fused, custom_op=custom_op)


def gated_routes(N: int, T: int, D: int, grad: bool):
    d = 2 * D
    ys = torch.randn(N, T, 4, d, device="cuda", dtype=torch.bfloat16, requires_grad=grad)
    xz = torch.randn(N, T, 2 * d, device="cuda", dtype=torch.bfloat16, requires_grad=grad)
    z = xz[..., d:]
    w = torch.ones(d, device="cuda", requires_grad=grad)
    b = torch.zeros(d, device="cuda", requires_grad=grad)
    return dict(reference=lambda: gated_norm_module.gated_norm_reference(ys, z, w, b),
                fused=lambda: gated_norm_module.gated_norm(ys, z, w, b),
                custom_op=lambda: gated_norm_module._fwd(ys, z, w, b, 1e-5, torch.bfloat16)[:1])


def _call(fn, grad: bool):
    if not grad:
        with torch.no_grad():
            return fn()
    out = fn()
    outs = out if isinstance(out, (tuple, list)) else (out,)
    torch.autograd.backward([o for o in outs if o.requires_grad], [torch.ones_like(o) for o in outs if o.requires_grad])


def measure(fn, grad: bool, calls: int) -> tuple[float, float]:
    for _ in range(5):
        _call(fn, grad)
    torch.cuda.synchronize()
    begin = time.perf_counter()
    for _ in range(calls):
        _call(fn, grad)
    host = (time.perf_counter() - begin) / calls * 1e6
    torch.cuda.synchronize()
    # GPU time: queue the calls behind a long sleep so that the host never starves the GPU
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda._sleep(int(3e3 * host * calls))  # ~1.5x the host time of the calls (~2e9 cycles/s on an H200)
    start.record()
    for _ in range(calls):
        _call(fn, grad)
    end.record()
    torch.cuda.synchronize()
    return host, start.elapsed_time(end) / calls * 1e3


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--calls", type=int, default=200)
    args = p.parse_args()
    print(f"{torch.cuda.get_device_name()}  torch {torch.__version__}")
    print(f"{'op':<8} {'model':<3} {'N x T x D':<16} {'pass':<8} " + "  ".join(
        f"{r + ' host/gpu us':>24}" for r in ("reference", "fused", "custom_op")))
    for op, routes in (("adaln", adaln_routes), ("gated", gated_routes)):
        for model, shapes in SHAPES.items():
            for N, T, D in shapes:
                for grad in (False, True):
                    cells = []
                    for route, fn in routes(N, T, D, grad).items():
                        host, gpu = measure(fn, grad, args.calls)
                        cells.append(f"{host:>11.1f} / {gpu:>9.1f}")
                    print(f"{op:<8} {model:<3} {f'{N}x{T}x{D}':<16} {'fwd+bwd' if grad else 'fwd':<8} "
                          + "  ".join(f"{c:>24}" for c in cells), flush=True)


if __name__ == "__main__":
    main()
