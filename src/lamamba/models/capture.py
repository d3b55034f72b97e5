"""A sampling forward replayed as one CUDA graph per input shape, whatever compiled it (or nothing).

``torch.compile(mode="reduce-overhead")`` records CUDA graphs per compiled function. A regionally compiled model
(``models.compile``) is many compiled calls per forward with eager glue between them, and Inductor's graph trees
start a new generation at every call outside a training step, so the blocks of one signature would overwrite each
other's outputs (session 7). :class:`CapturedForward` instead captures the *whole* forward, eager glue and compiled
blocks alike, with ``torch.cuda.graph`` (the blocks compiled without CUDA graphs of their own), and replays it: one
launch per network evaluation, after only the regional compilation.

Rules of the capture (PyTorch's "CUDA Graphs" notes): inputs are copied into static buffers before each replay; the
output is a static buffer that the next replay overwrites, so a copy is returned (samplers keep earlier outputs);
the forward runs a few times on a side stream before the capture (compilation, autotuning, cuBLAS workspaces); autocast
runs with its weight-cast cache off during warm-up and capture (a cached cast would be freed when the outer autocast
region exits, under the graph's feet); graphs of every shape share one memory pool (they never run at the same time).
Only forwards without autograd are captured: with gradients enabled (training) the call goes to the forward unchanged.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

__all__ = ["CapturedForward"]


class _Capture:
    """One captured graph: its static tensor inputs (by argument) and its static output."""

    def __init__(self, graph: Any, inputs: dict[int | str, Tensor], output: Tensor):
        self.graph, self.inputs, self.output = graph, inputs, output


class CapturedForward:
    """``forward(*args, **kwargs)`` replayed from one CUDA graph per signature: the tensors' shapes, dtypes and
    devices, the other arguments' values (None, numbers: part of the graph), and the autocast state.

    ``warmup``: eager runs on a side stream before the capture. ``graph_factory`` and ``capture`` exist for tests
    without a GPU (defaults: ``torch.cuda.CUDAGraph`` and ``torch.cuda.graph``).
    """

    def __init__(self, forward: Callable[..., Tensor], *, warmup: int = 2,
                 graph_factory: Callable[[], Any] | None = None, capture: Callable[..., Any] | None = None):
        self.forward = forward
        self.warmup = warmup
        self.graph_factory = graph_factory or torch.cuda.CUDAGraph
        self.capture = capture or torch.cuda.graph
        self.captures: dict[tuple, _Capture] = {}
        self.pool: Any = None

    def __call__(self, *args: Any, **kwargs: Any) -> Tensor:
        arguments: dict[int | str, Any] = {**dict(enumerate(args)), **kwargs}
        tensors = [a for a in arguments.values() if isinstance(a, Tensor)]
        if torch.is_grad_enabled() or not tensors:
            return self.forward(*args, **kwargs)
        device = tensors[0].device.type
        key = ((torch.is_autocast_enabled(device), torch.get_autocast_dtype(device)),
               tuple((name, (a.shape, a.dtype, a.device) if isinstance(a, Tensor) else a)
                     for name, a in arguments.items()))
        entry = self.captures.get(key)
        if entry is None:
            entry = self.captures[key] = self._capture(arguments, device)
        for name, static in entry.inputs.items():
            static.copy_(arguments[name])
        entry.graph.replay()
        return entry.output.clone()

    def _run(self, arguments: dict[int | str, Any]) -> Tensor:
        positional = [arguments[i] for i in range(len(arguments)) if i in arguments]
        return self.forward(*positional, **{k: v for k, v in arguments.items() if isinstance(k, str)})

    @staticmethod
    def _autocast(device: str) -> torch.autocast:
        """The caller's autocast state without the weight-cast cache."""
        return torch.autocast(device, dtype=torch.get_autocast_dtype(device), enabled=torch.is_autocast_enabled(device),
                              cache_enabled=False)

    def _capture(self, arguments: dict[int | str, Any], device: str) -> _Capture:
        static = {name: a.clone() if isinstance(a, Tensor) else a for name, a in arguments.items()}
        side = torch.cuda.Stream() if device == "cuda" else None   # on CUDA the warm-up runs on a side stream
        if side is not None:
            side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), self._autocast(device):   # a stream of None: no change
            for _ in range(self.warmup):
                self._run(static)
        if side is not None:
            torch.cuda.current_stream().wait_stream(side)
            if self.pool is None:
                self.pool = torch.cuda.graph_pool_handle()
        graph = self.graph_factory()
        # errors for unsafe CUDA calls from this thread only, as Inductor's CUDA graphs: under torchrun the process
        # group's watchdog thread polls its events while this thread captures
        with self.capture(graph, pool=self.pool, capture_error_mode="thread_local"), self._autocast(device):
            output = self._run(static)
        return _Capture(graph, {n: a for n, a in static.items() if isinstance(a, Tensor)}, output)
