"""Run by tests/ops/test_triton_launch.py in a fresh process with compiled (not interpreted) Triton and no GPU: a
stub Triton driver names an sm_90 device, so kernels specialise and compile as on an H100/H200, and nothing
launches. Prints one JSON line.

The launchers run on meta tensors (fake CUDA tensors need a CUDA build of PyTorch for views; CI's is a CPU build),
which ``precompile`` is told to treat as GPU tensors; the device checks are stubbed, and the launch plans are those
of a 1-SM device (``sm_count`` of a non-CUDA device), the same on both sides of the comparison.

1. Every custom op (forward and backward), called on meta tensors as ``torch.compile``'s trace calls the fake
   kernels: which kernel specialisations ``precompile`` submits (Triton's cache hook records them and skips the
   compile), then the same launches with real tensors of the same layouts (dtype, strides, storage offset: the views
   a model makes, misaligned ones included) warmed up directly: the two sets of keys must be equal.
2. One kernel really compiled in the pool: the launch that follows waits for it and compiles nothing again.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections import defaultdict

os.environ.pop("TRITON_INTERPRET", None)
os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp()            # phase 2 must really compile
os.environ["LAMAMBA_COMPILE_THREADS"] = "2"
os.environ["LAMAMBA_SCAN_BACKEND"] = "triton"                  # the 1D scan's Triton route on meta tensors too
os.environ["LAMAMBA_SS2D_LAUNCH"] = "programs_per_sm=64"         # chunks along the length at 1 SM: both passes

import torch  # noqa: E402
from triton import knobs  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.runtime import driver  # noqa: E402


class StubDriver:
    """What Triton's launcher asks of the driver before it launches: a device, a stream, a target."""

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        return GPUTarget("cuda", 90, 32)


driver.set_active(StubDriver())

from lamamba.ops import triton_launch  # noqa: E402
from lamamba.ops import (gated_norm, selective_scan, triton_adaln, triton_scan, triton_ss2d,  # noqa: E402,F401
                         triton_window_attention)

triton_launch.DEVICE_TYPES = ("meta",)
for module in (gated_norm, triton_adaln, triton_scan, triton_ss2d, triton_window_attention):
    module.check_device = lambda *args: None                    # meta tensors stand for CUDA ones here


def cuda(*shape, dtype=torch.bfloat16):
    """A tensor standing for a CUDA one (meta: shapes, strides and offsets without storage)."""
    return torch.empty(*shape, device="meta", dtype=dtype)


def run_ops():
    """Forward and backward ops of every kernel family at small model-like shapes (bf16 activations, fp32
    parameters), each called directly (as the trace calls their fake kernels)."""
    f32 = dict(dtype=torch.float32)
    b, H, W, d, N, K = 2, 8, 8, 40, 1, 4                       # d = 40: rows of 80 bytes, misaligned slices
    L = H * W
    proj = cuda(b, L, K, 2 + 2 * N)                            # (dt rank 2, B, C): B and C views at odd offsets
    _, B, C = proj.split([2, N, N], dim=-1)
    ss2d = (cuda(b, L, d), cuda(b, L, K, d), cuda(K * d, N, **f32), B, C, cuda(K * d, **f32), cuda(K * d, **f32))
    ys, ckpt = torch.ops.lamamba.ss2d_scan_fwd(*ss2d, H, W, True)
    torch.ops.lamamba.ss2d_scan_bwd(torch.randn_like(ys), *ss2d, ckpt, H, W)
    D = 48
    mod = cuda(b, 6 * D)                                        # AdaLN's six vectors, sliced
    shift, scale, gate = mod[:, :D], mod[:, D:2 * D], mod[:, 2 * D:3 * D]
    x, branch, weight, bias = cuda(b, L, D), cuda(b, L, D), cuda(D, **f32), cuda(D, **f32)
    x_out, out, mean, rstd = torch.ops.lamamba.adaln_fwd(x, branch, gate, weight, bias, shift, scale, 1e-6,
                                                         torch.bfloat16, torch.bfloat16)
    torch.ops.lamamba.adaln_bwd(torch.randn_like(out), torch.randn_like(x_out), x_out, branch, gate, weight, bias,
                                scale, mean, rstd, torch.bfloat16)
    xz = cuda(b, L, 2 * d)                                     # z: the second half of the in-projection
    norm = (cuda(b, L, K, d), xz[..., d:], cuda(d, **f32), cuda(d, **f32))
    out, mean, rstd, total = torch.ops.lamamba.gated_norm_fwd(*norm, 1e-5, torch.bfloat16, True)
    torch.ops.lamamba.gated_norm_bwd(torch.randn_like(out), total, *norm[1:], mean, rstd, torch.bfloat16)
    heads, window = 2, 4
    qkv, table = cuda(b, H, W, 3 * 32), cuda((2 * window - 1) ** 2, heads, **f32)
    o, lse = torch.ops.lamamba.window_attention_fwd(qkv, table, heads, window, window, window, 2, 2)
    torch.ops.lamamba.window_attention_bwd(torch.randn_like(o), qkv, table, lse, heads, window, window, window, 2, 2)
    scan = (cuda(b, d, L), cuda(b, d, L), cuda(d, 4, **f32), cuda(b, 1, 4, L), cuda(b, 1, 4, L), cuda(d, **f32),
            cuda(b, d, L), cuda(d, **f32))
    out = torch.ops.lamamba.selective_scan_fwd(*scan, True)[0]
    torch.ops.lamamba.selective_scan_bwd(torch.randn_like(out), *scan, True)


def real_like(t):
    """A CPU tensor with a meta one's dtype, shape, strides and storage offset (its own storage, so aligned alike)."""
    if not isinstance(t, torch.Tensor):
        return t
    storage = torch.empty(t.untyped_storage().nbytes() // t.element_size() + 1, dtype=t.dtype, device="cpu")
    return storage.as_strided(t.shape, t.stride(), t.storage_offset())


def phase_keys():
    keys = {"fake": defaultdict(set), "real": defaultdict(set)}
    side = ["fake"]

    def record(*args, **kwargs):
        keys[side[0]][kwargs["fn"].name].add(str(kwargs["key"]))
        return True                                             # skip the compile

    knobs.runtime.jit_cache_hook = record
    run_ops()
    submitted = triton_launch.precompile_stats()
    side[0] = "real"
    original = triton_launch._submit
    triton_launch._submit = lambda kernel, grid, args, meta: kernel.warmup(*map(real_like, args), grid=grid, **meta)
    try:
        run_ops()
    finally:
        triton_launch._submit = original
        knobs.runtime.jit_cache_hook = None
    return {side: {k: sorted(v) for k, v in d.items()} for side, d in keys.items()}, submitted


def phase_compile():
    """gated_norm's forward: compiled in the pool from its fake kernel, then its real launch settled."""
    captured = []
    original = triton_launch._submit

    def capture(kernel, grid, args, meta):
        captured.append((kernel, grid, [real_like(a) for a in args], meta))
        original(kernel, grid, args, meta)

    triton_launch._submit = capture
    kernel = sys.modules["lamamba.ops.gated_norm_kernels"].gated_norm_fwd_kernel
    compiles = []
    compile_fn = kernel.compile
    kernel.compile = lambda *a, **k: compiles.append(1) or compile_fn(*a, **k)
    before = triton_launch.precompile_stats()["submitted"]
    try:
        d = 40
        xz = cuda(2, 64, 2 * d)
        torch.ops.lamamba.gated_norm_fwd(cuda(2, 64, 4, d), xz[..., d:], cuda(d, dtype=torch.float32),
                                         cuda(d, dtype=torch.float32), 1e-5, torch.bfloat16, False)
    finally:
        triton_launch._submit = original
    submitted = triton_launch.precompile_stats()["submitted"] - before
    kernel_, grid, args, meta = captured[0]
    begin = time.perf_counter()
    triton_launch._settle(kernel_, grid, args, meta)           # what launch() does before kernel[grid](...)
    settled_s = time.perf_counter() - begin
    cache = kernel.device_caches[0][0]
    again = kernel.warmup(*args, grid=grid, **meta)             # the launch's own lookup: no compile
    return dict(submitted=submitted, compiles=len(compiles), pending=len(triton_launch._pending),
                cached=[type(v).__name__ for v in cache.values()], again=type(again).__name__,
                settled_s=round(settled_s, 2))


if __name__ == "__main__":
    keys, stats = phase_keys()
    print(json.dumps(dict(keys=keys, stats=stats, compile=phase_compile())))
