"""Registers, spills and shared memory per thread of the Triton kernels, compiled for an H100/H200 (sm_90) on any
machine, GPU or not: Triton compiles ahead of time for a named target and its wheel ships ``cuobjdump``.

Why it matters: the SS2D scan runs one warp per program, so a kernel at the 255-register limit leaves room for 8
warps per SM (65,536 registers / (255 x 32)), one eighth of the 64 an SM can hold; such a kernel is bound by memory
latency, not by bandwidth or arithmetic (session 8's compiled profiles: the scan backward at ~10-20x from every
throughput bound). Fewer registers per thread let more programs share an SM.

    python benchmarks/kernel_registers.py                  # the launches we use (scan, AdaLN, gated norm, attention)
    python benchmarks/kernel_registers.py --src .carry/base8/src   # another tree's kernels (imported from there)
    TRITON_CACHE_DIR=$(mktemp -d) python benchmarks/kernel_registers.py --threads 2   # compile time, 2 threads

Triton here may be newer than on the GPU machine (3.9 vs 3.6): counts can differ by a few registers.
``tests/ops/test_kernels_compile.py`` runs this script in CI: every case must compile (GPU-only failures, such as a
constant the compiler specialises, show on a CPU machine).
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import os
import subprocess
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

# name: (module, kernel, constexprs, num_warps, num_stages, fp32 pointer arguments, integer arguments): the launches
# of ops/triton_ss2d.py (bf16 activations, fp32 states and parameters), ops/triton_adaln.py and ops/gated_norm.py at
# LaMamba-Diff-S's first stage (32 px, batch 128 on 132 SMs: 32x32 maps, d_inner 192, delta direction-major, dy
# shared by the directions), and the other paths a run can take (partial tiles, precise math, a one-column map).
# The integers matter: at run time Triton specialises integers equal to 1 as constants and marks those divisible by
# 16 (which lets it vectorise loads); pointers count as 16-byte aligned, as PyTorch allocates them.
_SS2D_FP32 = ("A_ptr", "D_ptr", "bias_ptr", "ckpt_ptr", "carry_ptr", "dB_ptr", "dC_ptr", "dA_ptr", "dD_ptr",
              "dbias_ptr")
_L, _d = 32 * 32, 192
_SS2D_INTS = dict(H=32, W=32, d=_d, N=1, n_dblocks=6, chunk_tiles=64, n_chunks=1, n_tiles=64,
                  sx_b=_L * _d, sx_l=_d, sd_b=4 * _L * _d, sd_l=_d, sd_k=_L * _d, sB_b=_L * 4 * 8, sB_l=32, sB_k=8,
                  sB_n=1, sy_b=_L * _d, sy_l=_d, sy_k=0, sg_b=_L * 4 * _d, sg_l=4 * _d, sg_k=_d)
_SS2D_FWD_INTS = {k: v for k, v in _SS2D_INTS.items() if not k.startswith("sg")}
_SS2D = dict(ACC="fp32", EVEN=True, FAST=True, BLOCK_T=16, BLOCK_N=1)
_PARTIAL = dict(_SS2D, EVEN=False, FAST=False)                  # masked tiles, precise math
_ONE_COLUMN = dict(_SS2D_INTS, H=1000, W=1, d=100, n_dblocks=4, n_tiles=63)   # W = 1 specialised as a constant
_ADALN_FP32 = ("mean_ptr", "rstd_ptr", "part_ptr", "w_ptr", "b_ptr", "xo_ptr", "x_ptr", "dx_ptr", "dxo_ptr")
_ADALN_BWD_INTS = dict(T=_L, D=96, stride_mod=9 * 96, n_pb=3, TILES=15)      # triton_adaln.BACKWARD's launch
_ADALN_FWD_INTS = dict(T=_L, D=96, stride_mod=9 * 96, TILES=3)               # triton_adaln.FORWARD's launch
_GN_FP32 = ("w_ptr", "b_ptr", "mean_ptr", "rstd_ptr", "sum_ptr", "dw_ptr", "db_ptr", "part_ptr")
_GN_FWD_INTS = dict(n_rows=128 * _L, L=_L, d=_d, s_yn=_L * 4 * _d, s_yl=4 * _d, s_yk=_d, s_zn=_L * 2 * _d,
                    s_zl=2 * _d, s_on=_L * _d, s_ol=_d)
_GN_BWD_INTS = dict(n_rows=128 * _L, L=_L, d=_d, blocks_per_program=62, s_gn=_L * _d, s_gl=_d, s_zn=_L * 2 * _d,
                    s_zl=2 * _d)
_WA_FP32 = ("table_ptr", "lse_ptr", "dbias_ptr")
_WA_INTS = dict(B=128, H=32, W=32, C=96, hd=16, heads=6, wh=8, ww=8, sh=4, sw=4, N=64, window=8, per_program=11,
                s_qb=_L * 288, s_qp=288, s_ob=_L * 96, s_op=96)                 # LaMamba-Diff-S, stage 1, shifted
_WA_XL = dict(_WA_INTS, B=64, C=320, hd=20, heads=16, per_program=15, s_qb=_L * 960, s_qp=960, s_ob=_L * 320,
              s_op=320, sh=0, sw=0)                                            # LaMamba-Diff-XL, stage 1
CASES = {
    "ss2d backward, 32 channels, 1 warp (default)": (
        "triton_ss2d_kernels", "ss2d_bwd_kernel", dict(_SS2D, STATE_ONLY=False, BLOCK_D=32, STAGES=1), 1, 1,
        _SS2D_FP32, _SS2D_INTS),
    "ss2d backward, 16 channels, 1 warp": (
        "triton_ss2d_kernels", "ss2d_bwd_kernel", dict(_SS2D, STATE_ONLY=False, BLOCK_D=16, STAGES=1), 1, 1,
        _SS2D_FP32, _SS2D_INTS),
    "ss2d backward, partial tiles, precise math": (
        "triton_ss2d_kernels", "ss2d_bwd_kernel", dict(_PARTIAL, STATE_ONLY=False, BLOCK_D=32, STAGES=1), 1, 1,
        _SS2D_FP32, _ONE_COLUMN),
    "ss2d backward, chunk maps (state only)": (
        "triton_ss2d_kernels", "ss2d_bwd_kernel", dict(_SS2D, STATE_ONLY=True, BLOCK_D=32, STAGES=1), 1, 1,
        _SS2D_FP32, dict(_SS2D_INTS, n_chunks=4, chunk_tiles=16)),
    "ss2d forward, 32 channels, 1 warp (default)": (
        "triton_ss2d_kernels", "ss2d_fwd_kernel", dict(_SS2D, STATE_ONLY=False, STORE_CKPT=True, BLOCK_D=32, STAGES=2),
        1, 2, _SS2D_FP32, _SS2D_FWD_INTS),
    "ss2d forward, partial tiles, one-column map": (
        "triton_ss2d_kernels", "ss2d_fwd_kernel", dict(_PARTIAL, STATE_ONLY=False, STORE_CKPT=False, BLOCK_D=32,
                                                       STAGES=2), 1, 2, _SS2D_FP32,
        {k: v for k, v in _ONE_COLUMN.items() if not k.startswith("sg")}),
    "adaln backward, D 96 (tile 32 x 128), 4 warps": (
        "triton_adaln_kernels", "adaln_bwd_kernel", dict(HAS_RESIDUAL=True, HAS_DXO=True, BLOCK_R=32, BLOCK_D=128,
                                                         ACC="fp32"), 4, 3, _ADALN_FP32, _ADALN_BWD_INTS),
    "adaln forward, D 96 (tile 32 x 128), 4 warps": (
        "triton_adaln_kernels", "adaln_fwd_kernel", dict(HAS_RESIDUAL=True, BLOCK_R=32, BLOCK_D=128, ACC="fp32"),
        4, 3, _ADALN_FP32, _ADALN_FWD_INTS),
    "gated norm forward, d 192 (tile 8 x 256), 4 warps": (
        "gated_norm_kernels", "gated_norm_fwd_kernel", dict(K=4, ACC="fp32", BLOCK_R=8, BLOCK_D=256, STORE_SUM=True),
        4, 3, _GN_FP32, _GN_FWD_INTS),
    "gated norm backward, d 192 (tile 4 x 256), 4 warps": (
        "gated_norm_kernels", "gated_norm_bwd_kernel", dict(ACC="fp32", BLOCK_R=4, BLOCK_D=256, STAGES=3), 4, 3,
        _GN_FP32, _GN_BWD_INTS),
    "window attention forward, S stage 1 (64 x 16), 4 warps": (
        "triton_window_attention_kernels", "window_attn_fwd_kernel", dict(BLOCK_N=64, BLOCK_D=16, PRECISION="tf32"),
        4, 3, _WA_FP32, _WA_INTS),
    "window attention backward, S stage 1 (64 x 16), 4 warps": (
        "triton_window_attention_kernels", "window_attn_bwd_kernel", dict(BLOCK_N=64, BLOCK_D=16, PRECISION="tf32"),
        4, 3, _WA_FP32, _WA_INTS),
    "window attention backward, XL stage 1 (64 x 32), 4 warps": (
        "triton_window_attention_kernels", "window_attn_bwd_kernel", dict(BLOCK_N=64, BLOCK_D=32, PRECISION="tf32"),
        4, 3, _WA_FP32, _WA_XL),
}


def resource_usage(kernel, constexprs: dict, num_warps: int, num_stages: int, fp32: tuple[str, ...],
                   ints: dict[str, int]) -> str:
    import triton
    import triton.backends.nvidia as nvidia
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    params = list(inspect.signature(kernel.fn).parameters)
    unspecialised = {params[p] if isinstance(p, int) else p for p in kernel.do_not_specialize}
    constexprs = {k: tl.float32 if v == "fp32" else v for k, v in constexprs.items()}
    constexprs.update({k: 1 for k, v in ints.items() if v == 1 and k not in unspecialised})  # Triton's specialisation of 1
    signature, attrs = {}, {}
    for i, name in enumerate(params):
        if name in constexprs:
            signature[name] = "constexpr"
        elif name == "path_ptr":
            signature[name] = "*i32"
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif name.endswith("_ptr"):
            signature[name] = "*fp32" if name in fp32 else "*bf16"
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif name in ("eps", "scale"):
            signature[name] = "fp32"
        else:
            signature[name] = "i32"
            if ints[name] % 16 == 0 and name not in unspecialised:
                attrs[(i,)] = [["tt.divisibility", 16]]
    source = ASTSource(fn=kernel, signature=signature,
                       constexprs={(params.index(k),): v for k, v in constexprs.items()}, attrs=attrs)
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": num_warps, "num_stages": num_stages})
    with tempfile.TemporaryDirectory() as tmp:
        cubin = os.path.join(tmp, "kernel.cubin")
        with open(cubin, "wb") as f:
            f.write(compiled.asm["cubin"])
        tool = os.path.join(os.path.dirname(nvidia.__file__), "bin", "cuobjdump")
        out = subprocess.run([tool, "-res-usage", cubin], capture_output=True, text=True, check=True).stdout
    line = next(line for line in out.splitlines() if "REG:" in line)
    fields = dict(item.split(":") for item in line.split() if ":" in item)
    regs = int(fields["REG"])
    warps_per_sm = min(64, 65536 // (regs * 32 * num_warps) * num_warps)
    return (f"{regs:>4} registers, stack {fields['STACK']:>3} B (spills), shared {fields['SHARED']:>5} B "
            f"-> at most {warps_per_sm} warps per SM")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", default=None, help="import lamamba from this src directory instead")
    ap.add_argument("--threads", type=int, default=1, help="compile the cases from this many threads and print the "
                    "wall time of all compiles (from an empty TRITON_CACHE_DIR: a cold start's kernel compiles)")
    args = ap.parse_args()
    if args.src:
        sys.path.insert(0, args.src)
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    warnings.filterwarnings("ignore")
    import triton
    print(f"Triton {triton.__version__}, target sm_90, lamamba from "
          f"{os.path.dirname(importlib.import_module('lamamba').__file__)}")
    def usage(case):
        module, kernel, constexprs, warps, stages, fp32, ints = case
        fn = getattr(importlib.import_module(f"lamamba.ops.{module}"), kernel)
        return resource_usage(fn, constexprs, warps, stages, fp32, ints)

    begin = time.perf_counter()
    with ThreadPoolExecutor(args.threads) as pool:   # Triton's compiler releases the GIL: threads compile in parallel
        for name, line in zip(CASES, pool.map(usage, CASES.values())):
            print(f"{name:<48} {line}", flush=True)
    print(f"{len(CASES)} kernels compiled in {time.perf_counter() - begin:.1f} s from {args.threads} thread(s)")


if __name__ == "__main__":
    main()
