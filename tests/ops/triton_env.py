"""How the Triton tests run: interpreted on CPU machines, compiled on GPU machines.

Triton fixes "compile or interpret" when it is first imported; tests/conftest.py (loaded before any test
module, also when one file is run alone) asks for the interpreter (TRITON_INTERPRET=1) when no CUDA device is
present. If triton was imported compiled on a machine without CUDA, the interpreter tests skip with the reason,
and the GPU tests (marker ``gpu``, real model shapes) run only with CUDA.
"""
import os

import pytest
import torch

triton = pytest.importorskip("triton")

from triton.runtime.jit import JITFunction  # noqa: E402

INTERPRETED = not isinstance(triton.language.sigmoid, JITFunction) or os.environ.get("TRITON_INTERPRET") == "1"
interpreter = pytest.mark.skipif(not INTERPRETED, reason="triton was imported without TRITON_INTERPRET=1 in this "
                                 "process; run tests/ops alone on a CPU machine or with TRITON_INTERPRET=1")


runnable = pytest.mark.skipif(not INTERPRETED and not torch.cuda.is_available(),
                              reason="needs CUDA or Triton's interpreter (TRITON_INTERPRET=1 before triton's import)")


def gpu(test):
    """Marker ``gpu``, skipped without CUDA or when this process interprets Triton."""
    needs_cuda = pytest.mark.skipif(not torch.cuda.is_available() or INTERPRETED,
                                    reason="needs CUDA and compiled (not interpreted) Triton")
    return pytest.mark.gpu(needs_cuda(test))


def rel_err(a, b):
    """Max-norm relative error, computed in float64."""
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()
