"""Kernel compiles moved into a thread pool while torch.compile traces (``lamamba.ops.triton_launch``).

The probe (``precompile_probe.py``) runs in a fresh process with compiled Triton against a stub sm_90 driver: no GPU
is needed to see which kernels the fake kernels submit (on meta tensors standing for CUDA ones) and whether they are
the ones real tensors of the same layouts would launch.
The GPU check that a compiled training step compiles nothing in the main thread is in
``tests/models/test_compile.py::test_cuda_graph_training_follows_eager``.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lamamba.ops import triton_launch

pytest.importorskip("triton")
ROOT = Path(__file__).resolve().parent
FAMILIES = {"ss2d_fwd_kernel", "ss2d_bwd_kernel", "adaln_fwd_kernel", "adaln_bwd_kernel", "adaln_partial_sums_kernel",
            "gated_norm_fwd_kernel", "gated_norm_bwd_kernel", "partial_sums_kernel", "window_attn_fwd_kernel",
            "window_attn_bwd_kernel", "scan_fwd_kernel", "scan_bwd_kernel"}


@pytest.fixture(scope="module")
def probe():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, str(ROOT / "precompile_probe.py")], capture_output=True, text=True, env=env,
                         timeout=300)
    if run.returncode and "ptxas" in run.stderr and "not found" in run.stderr.lower():
        pytest.skip("this Triton has no bundled ptxas to compile for NVIDIA GPUs")
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_the_fake_kernels_submit_exactly_the_kernels_real_tensors_launch(probe):
    """Every kernel family, forward and backward, with misaligned views (SS2D's B and C, AdaLN's modulation slices,
    the gate's half of the in-projection): the specialisations submitted from the fake kernels are the real ones."""
    fake, real = probe["keys"]["fake"], probe["keys"]["real"]
    assert set(fake) == FAMILIES
    assert fake == real
    assert any("('*bf16', '')" in key for key in fake["ss2d_fwd_kernel"])    # a misaligned pointer was seen as such
    assert probe["stats"]["launcher_failed"] == 0


def test_a_precompiled_kernel_is_compiled_once_and_found_by_its_launch(probe):
    assert probe["compile"] == dict(probe["compile"], submitted=1, compiles=1, pending=0, cached=["CompiledKernel"],
                                    again="CompiledKernel")


def test_precompile_skips_cpu_tensors_and_can_be_turned_off(monkeypatch):
    calls = []
    triton_launch.precompile(lambda *a: calls.append(a), torch.zeros(2))          # CPU: the interpreter's
    assert calls == []
    monkeypatch.setenv(triton_launch.THREADS_ENV, "0")
    triton_launch.precompile(lambda *a: calls.append(a), torch.zeros(2, device="meta"))
    assert calls == []


def test_the_thread_count_is_checked(monkeypatch):
    monkeypatch.setenv(triton_launch.THREADS_ENV, "many")
    with pytest.raises(ValueError, match="LAMAMBA_COMPILE_THREADS='many'.*0 turns precompiling off"):
        triton_launch.compile_threads()
    monkeypatch.setenv(triton_launch.THREADS_ENV, "3")
    assert triton_launch.compile_threads() == 3


def test_symbolic_shapes_are_left_to_the_launch():
    """A dynamic-shape trace has symbolic sizes: the launch plans need integers, so nothing is precompiled (and
    nothing is guarded on) for it."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv, StatelessSymbolicContext

    mode = FakeTensorMode(shape_env=ShapeEnv())
    context = StatelessSymbolicContext(dynamic_sizes=[DimDynamic.DYNAMIC, DimDynamic.STATIC])
    symbolic = mode.from_tensor(torch.zeros(4, 8), symbolic_context=context)
    static = FakeTensorMode().from_tensor(torch.zeros(4, 8))
    assert not triton_launch._static(symbolic) and triton_launch._static(static)
