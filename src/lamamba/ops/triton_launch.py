"""Kernel launches, with their compiles moved off the critical path while ``torch.compile`` traces.

Triton compiles a kernel for each new specialisation (argument dtypes, pointer alignment, integers equal to 1 or
divisible by 16, constexprs) at its first launch, in the launching thread: a cold start of LaMamba-Diff-XL spent
about 35 s compiling this package's kernels one after another (docs/PERFORMANCE.md, session 14). While
``torch.compile`` traces a model it calls each custom op's fake kernel with the shapes, strides and dtypes the real
call will have. The fake kernels run their launcher under ``precompile``, where ``launch`` hands the launch to
Triton's warm-up with Triton's ``AsyncCompileMode``: the compile runs in a thread pool (Triton's compiler releases the
GIL) while Dynamo, AOTAutograd and Inductor go on, and nothing is launched. The first real launch of that
specialisation finds it compiled, or waits for that one compile; a specialisation nobody precompiled compiles at its
launch, as before. Eager runs launch as before (no fake kernels run).

``LAMAMBA_COMPILE_THREADS`` sets the pool's size (default: the CPU count, at most 8); ``0`` turns precompiling off.
Only the thread that launches touches Triton's kernel caches; the pool's threads only compile.
"""
from __future__ import annotations

import functools
import logging
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from typing import Callable

from torch import Tensor

__all__ = ["launch", "precompile", "precompile_stats", "compile_threads", "THREADS_ENV"]

THREADS_ENV = "LAMAMBA_COMPILE_THREADS"
DEVICE_TYPES = ("cuda",)   # tensors whose launches compile for a GPU (tests/ops/precompile_probe.py adds "meta")
_log = logging.getLogger(__name__)
_collecting: ContextVar[bool] = ContextVar("lamamba_precompiling", default=False)
_pending: list = []      # FutureKernels submitted and not yet finalized (Triton 3.6 adds them to its cache then)
_stats: Counter = Counter()


def launch(kernel, grid, *args, **meta) -> None:
    """``kernel[grid](*args, **meta)``; under ``precompile``, the kernel's compile in the background instead."""
    if _collecting.get():
        _submit(kernel, grid, args, meta)
        return
    if _pending:
        _settle(kernel, grid, args, meta)
    kernel[grid](*args, **meta)


def precompile(launcher: Callable, *args) -> None:
    """From a fake kernel: run ``launcher(*args)`` (the op's real implementation) on the fake tensors it got, each
    launch becoming a background compile. Skipped without CUDA tensors (CPU, meta, the interpreter), for symbolic
    shapes (a dynamic-shape trace: the launch plans need integers), and when turned off. Never fails the trace: a
    launcher that cannot run on fake tensors leaves its kernels to compile at their launches."""
    tensors = [a for a in args if isinstance(a, Tensor)]
    if (not any(t.device.type in DEVICE_TYPES for t in tensors) or not all(map(_static, tensors))
            or compile_threads() == 0 or _async_mode() is None):
        return
    token = _collecting.set(True)
    try:
        launcher(*args)
    except Exception as error:  # noqa: BLE001 (an optimisation only; the real launch reports real errors)
        _stats["launcher_failed"] += 1
        _log.debug("precompile: %s on fake tensors failed (%s); its kernels compile at their launches",
                   getattr(launcher, "__qualname__", launcher), error)
    finally:
        _collecting.reset(token)


def precompile_stats() -> dict[str, int]:
    """Counts since the process started: ``submitted`` (compiles run in the pool), ``waited`` (real launches that
    found their precompile unfinished), ``at_launch`` (launches while precompiles were pending whose specialisation
    had not been precompiled: the fake tensors differed from the real ones), ``launcher_failed``."""
    return {k: _stats[k] for k in ("submitted", "waited", "at_launch", "launcher_failed")}


def compile_threads() -> int:
    """The pool's size from ``LAMAMBA_COMPILE_THREADS`` (ValueError for a value that is not a count)."""
    spec = os.environ.get(THREADS_ENV, "").strip()
    if not spec:
        return min(8, os.cpu_count() or 1)
    if not spec.isdigit():
        raise ValueError(f"{THREADS_ENV}={spec!r}: expected a number of threads (0 turns precompiling off)")
    return int(spec)


@functools.lru_cache(maxsize=None)
def _async_mode():
    """Triton's ``AsyncCompileMode`` over this module's pool, made at the first precompile (None for a Triton
    without it, before 3.4)."""
    try:
        from triton.runtime._async_compile import AsyncCompileMode
    except ImportError:
        return None
    pool = ThreadPoolExecutor(compile_threads(), thread_name_prefix="lamamba-triton-compile")
    return AsyncCompileMode(pool, ignore_errors=True)


def _static(t: Tensor) -> bool:
    return all(isinstance(s, int) for s in (*t.shape, *t.stride(), t.storage_offset()))


class _Pointer:
    """A tensor argument as Triton specialises it: its dtype, and whether its address is a multiple of 16 bytes
    (PyTorch's allocations are 512-byte aligned, so the storage offset decides)."""
    __slots__ = ("dtype", "_address")

    def __init__(self, t: Tensor):
        self.dtype = t.dtype
        self._address = t.storage_offset() * t.element_size() % 16

    def data_ptr(self) -> int:
        return self._address


def _warmup(kernel, grid, args, meta):
    """Triton's warm-up of this launch under the async mode: the compiled kernel, a FutureKernel (its compile
    submitted now or earlier), or None for a kernel Triton interprets."""
    from triton.runtime import _async_compile
    from triton.runtime.jit import JITFunction

    if not isinstance(kernel, JITFunction):
        return None
    mode = _async_mode()
    token = _async_compile.active_mode.set(mode)
    try:
        return kernel.warmup(*args, grid=grid, **meta)
    finally:
        _async_compile.active_mode.reset(token)


def _submit(kernel, grid, args, meta) -> None:
    mode = _async_mode()
    before = len(mode.future_kernels)
    compiled = _warmup(kernel, grid, tuple(_Pointer(a) if isinstance(a, Tensor) else a for a in args), meta)
    if len(mode.future_kernels) > before:
        _pending.append(compiled)
        _stats["submitted"] += 1


def _settle(kernel, grid, args, meta) -> None:
    """Before a real launch while precompiles are pending: finalize the finished ones, then wait for this launch's
    own compile (Triton 3.6 would otherwise compile it again: it caches a kernel only when finalized)."""
    for finished in [fk for fk in _pending if fk.future.done()]:
        finished.result(ignore_errors=True)       # a failed one compiles again at its launch, which reports it
        _pending.remove(finished)
    if not _pending:
        return
    mode = _async_mode()
    before = len(mode.future_kernels)
    compiled = _warmup(kernel, grid, args, meta)
    if hasattr(compiled, "future"):
        if len(mode.future_kernels) > before:
            _stats["at_launch"] += 1
        elif not compiled.future.done():
            _stats["waited"] += 1
        compiled.result()                         # a compile error surfaces here, at the launch that needs it
        if compiled in _pending:
            _pending.remove(compiled)
