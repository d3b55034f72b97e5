"""Every Triton kernel compiles for an H100/H200 (sm_90) with the launches the package makes, on any machine.

The interpreter tests (CPU) check the kernels' arithmetic but not that they compile: a constant the GPU compiler
specialises (an integer argument equal to 1) or a GPU-only path (``FAST`` math, unmasked ``EVEN`` tiles) can fail
only there, as a one-column map did in session 9. ``benchmarks/kernel_registers.py`` compiles each launch ahead of
time for sm_90 with Triton's bundled ptxas (no GPU, no driver) and reports its registers; here it must compile all of
them. It runs in a subprocess: this process imported Triton interpreted.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")
ROOT = Path(__file__).resolve().parents[2]


def test_every_kernel_compiles_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "kernel_registers.py")], capture_output=True,
                         text=True, env=env, timeout=600)
    if run.returncode and "ptxas" in run.stderr and "not found" in run.stderr.lower():
        pytest.skip("this Triton has no bundled ptxas to compile for NVIDIA GPUs")
    assert run.returncode == 0, run.stderr[-3000:]
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from kernel_registers import CASES
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    lines = [line for line in run.stdout.splitlines() if "registers" in line]
    assert len(lines) == len(CASES) and all(line.startswith(name) for name, line in zip(CASES, lines)), run.stdout
