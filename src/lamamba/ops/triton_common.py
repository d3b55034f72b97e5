"""Host-side helpers shared by the Triton launchers (``triton_scan``, ``triton_ss2d``, ``triton_adaln``,
``gated_norm``) and their routing (``selective_scan``). Nothing here imports triton when the module loads."""
from __future__ import annotations

import functools

import torch
from torch import Tensor

__all__ = ["sm_count", "accumulation_dtype", "tl_dtype", "unit_channel_stride", "check_device", "next_power_of_2",
           "grad_needed"]


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1), in plain integers (no triton call on the per-call path)."""
    return 1 << max(0, n - 1).bit_length()


def grad_needed(*tensors) -> bool:
    """Whether a backward can follow an op on these tensors (None entries ignored): what it must keep for one."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


@functools.lru_cache(maxsize=None)
def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (1 elsewhere: the interpreter's launch plans)."""
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32, or float64 for float64 inputs (as the PyTorch references)."""
    return torch.promote_types(dtype, torch.float32)


def unit_channel_stride(t: Tensor) -> Tensor:
    """``t`` itself when its last (channel) axis is contiguous, else a contiguous copy."""
    return t if t.stride(-1) == 1 else t.contiguous()


def check_device(device: torch.device, kernel, what: str) -> None:
    """One clear error for CPU tensors when Triton was imported compiled (not interpreted)."""
    from triton.runtime.jit import JITFunction

    if device.type != "cuda" and isinstance(kernel, JITFunction):
        raise ValueError(f"the Triton {what} kernels need CUDA tensors, got {device.type} ones; for CPU tensors set "
                         "TRITON_INTERPRET=1 before triton is first imported (Triton's interpreter)")


def tl_dtype(acc: torch.dtype):
    """The Triton dtype of an accumulation dtype (``accumulation_dtype``): tl.float64 or tl.float32."""
    import triton.language as tl

    return tl.float64 if acc == torch.float64 else tl.float32
