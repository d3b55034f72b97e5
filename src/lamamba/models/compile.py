"""``torch.compile`` for LaMamba-Diff and DiT: regional compilation, the persistent Inductor cache, CUDA graphs.

Scopes (``compile_model(..., scope=...)``):

- ``"regional"`` (the default): the ``forward`` of each block class (``LaMambaBlock``, ``DiTBlock``) is compiled
  once and installed on every block of the model. Dynamo keeps its graphs on that one function, so blocks of
  the same signature (width, window shift, attention, condition projection, input shape, train/eval, grad
  mode) share one compiled graph, and the number of graphs is the number of distinct signatures, not of
  blocks: LaMamba-Diff-XL has 22 blocks of 8 signatures, DiT-XL/2 28 blocks of one. The glue
  between blocks (embedders, patch merging/expanding, the final layer) runs eager. Blocks are compiled in
  place: the model keeps its type, parameter names, ``forward_with_cfg`` and ``copy.deepcopy`` (the EMA copy
  gets compiled blocks too), so the same model object trains and samples compiled.
- ``"full"``: the whole model as one graph (``torch.compile(model)``): fusions across block boundaries, one
  graph for CUDA graphs to capture, but Dynamo and Inductor process every block.

Graphs are static (``dynamic=False``): a new batch size compiles the blocks again (sampling: the full batch
and the last, smaller one). Dynamo's per-function recompile limit is raised, when compiling, to 4 graphs per
block (train and sample, two batch sizes each); past it a block runs eager.

The Inductor cache (compiled kernels, FX graphs, AOT autograd results) persists across runs in
``$TORCHINDUCTOR_CACHE_DIR`` if that is set (to anything but PyTorch's default, which importing ``torch._dynamo``
sets), else ``$LAMAMBA_CACHE_DIR/inductor``, else
``$XDG_CACHE_HOME/lamamba/inductor`` (``~/.cache/lamamba/inductor``) instead of PyTorch's default under
``/tmp``, which a reboot empties; Triton's kernels (Inductor's and this package's) in its ``triton`` folder unless
``$TRITON_CACHE_DIR`` is set. The variables are set when a model is compiled, never at import.

CUDA graphs (``cuda_graphs=True``: ``mode="reduce-overhead"``) replay whole compiled graphs with one launch; shapes
must stay static, and a training loop calls ``torch.compiler.cudagraph_mark_step_begin()`` before each step
(``lamamba train`` and ``lamamba bench`` do). ``lamamba train`` turns them on by itself (:func:`resolve_cuda_graphs`)
for compiled one-process CUDA training: on an H200 LaMamba-Diff-S (33 M parameters) trained 4.0x and DiT-S/2 2.7x
faster than eager with the same losses (session 6), and LaMamba-Diff-XL (256 px, batch 64, whole model compiled)
1.35x faster than compiled without them at the same peak memory (478 vs 354 img/s, 30.8 GiB; session 7;
docs/PERFORMANCE.md). With them ``lamamba train`` compiles regionally unless told otherwise
(:func:`resolve_compile_scope`), multi-process (DDP) runs too: under torchrun LaMamba-Diff-XL trained 2.1x faster
than with the whole model compiled without CUDA graphs (120.6 vs 250.9 ms per step, host-bound; DiT-XL/2's
whole-model compile: 123.4), and two ranks exchanging gradients followed eager's losses with equal parameters on both
ranks (session 12). The whole model compiled for several processes keeps them off unless asked for (not measured).

``lamamba sample`` compiles by default on CUDA for jobs of a million network evaluations or more
(:func:`resolve_sampling_compile`), and then replays every network evaluation as one CUDA graph
(:func:`compile_for_sampling`: the blocks compiled regionally, the whole forward captured per batch shape).
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from lamamba.models.capture import CapturedForward
from lamamba.models.dit import DiTBlock
from lamamba.models.lamamba import LaMambaBlock
from lamamba.ops.triton_launch import compile_threads

__all__ = ["COMPILED_BLOCKS", "COMPILE_ERRORS", "SAMPLING_COMPILE_MIN_EVALUATIONS", "SCOPES", "cache_counts",
           "compile_error_line", "compile_for_sampling", "compile_model", "describe_cache", "inductor_cache_dir",
           "release_compiled", "resolve_compile", "resolve_compile_scope", "resolve_cuda_graphs",
           "resolve_sampling_compile", "run_or_fall_back", "uncompile", "use_persistent_cache"]

SCOPES = ("regional", "full")
COMPILED_BLOCKS: tuple[type[nn.Module], ...] = (LaMambaBlock, DiTBlock)
GRAPHS_PER_BLOCK = 4  # train and sample, each at the full batch and one other (the last batch)

# one compiled function per (block forward, compile options): every block whose class has that forward uses it
_COMPILED: dict[tuple, Callable] = {}

# what a failed compilation raises at a compiled function's first call: Dynamo's errors, and the backends' (Inductor,
# Triton, the host C++ compiler) wrapped as BackendCompilerFailed
COMPILE_ERRORS: tuple[type[BaseException], ...] = (torch._dynamo.exc.TorchDynamoException,)


def _pytorch_default_cache_dir() -> str | None:
    try:
        from torch._inductor.runtime.runtime_utils import default_cache_dir
    except ImportError:          # a PyTorch without it: every value of the variable counts
        return None
    return os.path.abspath(default_cache_dir())


def inductor_cache_dir() -> Path:
    """Where compiled kernels persist (see the module docstring for the order of the variables).

    ``TORCHINDUCTOR_CACHE_DIR`` equal to PyTorch's default (``/tmp/torchinductor_$USER``) counts as unset: importing
    ``torch._dynamo`` (this package does) sets the variable to it, which had kept every run in ``/tmp``."""
    given = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if given and os.path.abspath(given) != _pytorch_default_cache_dir():
        return Path(given)
    if os.environ.get("LAMAMBA_CACHE_DIR"):
        return Path(os.environ["LAMAMBA_CACHE_DIR"]) / "inductor"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lamamba" / "inductor"


def use_persistent_cache() -> Path:
    """Point Inductor at :func:`inductor_cache_dir` (sets ``TORCHINDUCTOR_CACHE_DIR`` if unset) and Triton, if
    ``TRITON_CACHE_DIR`` is unset, at its ``triton`` folder; returns the Inductor cache.

    Without the second, Inductor sets ``TRITON_CACHE_DIR`` itself when it first builds one of its kernels, so this
    package's own Triton kernels (the scan, AdaLN, gated norm) compiled before that moment went to Triton's default
    cache and later ones to Inductor's, and a new process looked for them where the last one had not put them: the
    warm start of LaMamba-Diff-S recompiled 32 of them (about 15 s under cProfile, H200, session 11)."""
    path = inductor_cache_dir()
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)
    os.environ.setdefault("TRITON_CACHE_DIR", str(path / "triton"))
    return path


def cache_counts() -> dict[str, int]:
    """Inductor FX-graph cache hits and misses so far in this process (a warm start has misses == 0)."""
    from torch._dynamo.utils import counters

    inductor = counters["inductor"]
    return {"hits": int(inductor["fxgraph_cache_hit"]), "misses": int(inductor["fxgraph_cache_miss"])}


def describe_cache(before: dict[str, int]) -> str:
    """The Inductor cache since ``cache_counts()`` returned ``before``: "cold", "warm" or "partly warm", with counts."""
    now = cache_counts()
    hits, misses = now["hits"] - before["hits"], now["misses"] - before["misses"]
    state = "warm" if hits and not misses else "cold" if misses and not hits else "partly warm"
    return f"{state} ({hits} hits, {misses} misses)"


def resolve_compile(requested: bool | None, device: torch.device, warn: Callable[[str], Any] | None = None) -> bool:
    """``--compile`` as given, else on for CUDA devices when Triton (the compiler's GPU backend) imports."""
    if requested is not None:
        return requested
    if device.type != "cuda":
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        if warn is not None:
            warn("Triton is not installed: running without torch.compile (slower; pip install triton)")
        return False
    return True


SAMPLING_COMPILE_MIN_EVALUATIONS = 1_000_000   # network evaluations (images x steps, x2 guided) of one process


def resolve_sampling_compile(requested: bool | None, device: torch.device, evaluations: int,
                             warn: Callable[[str], Any] | None = None) -> bool:
    """``lamamba sample --compile`` as given, else on for CUDA jobs of at least ``SAMPLING_COMPILE_MIN_EVALUATIONS``
    network evaluations. Compiled with CUDA graphs, sampling runs the same function as eager (fp32: mean pixel
    difference 0.06 of 255, against 1.2 between bf16 and fp32 eager; session 8) 1.6-1.8x faster (sessions 7, 8), after
    about 20-30 s of compilation with a cold cache (the sampling forward of LaMamba-Diff-S at 32 px and of
    LaMamba-Diff-XL at 256 px, regional with the forward captured, H200, session 11): from a million evaluations on
    it pays for itself at either size."""
    if requested is not None or evaluations >= SAMPLING_COMPILE_MIN_EVALUATIONS:
        return resolve_compile(requested, device, warn)
    return False


def resolve_cuda_graphs(requested: bool | None, *, compiled: bool, device: torch.device, distributed: bool,
                        scope: str | None = None) -> bool:
    """``--cuda-graphs`` as given (an error without a compiled model on CUDA), else on for compiled CUDA runs
    (module docstring), except multi-process runs asked to compile the whole model (``scope`` as requested,
    "full"): DDP splits that graph at its gradient buckets, not measured with CUDA graphs. ``lamamba sample``
    passes ``distributed=False``: its processes never communicate inside the network."""
    possible = compiled and device.type == "cuda"
    if requested is not None:
        if requested and not possible:
            raise ValueError("--cuda-graphs needs a compiled model on a CUDA device (--compile, --device cuda)")
        return requested
    return possible and not (distributed and scope == "full")


def resolve_compile_scope(requested: str | None, *, cuda_graphs: bool) -> str:
    """``--compile-scope`` as given, else regional with CUDA graphs (the same training speed as the whole model, a
    third less cold and half the warm compile: LaMamba-Diff-XL and -S on an H200, session 11) and the whole model
    without them (regional XL without CUDA graphs trained slower: the eager glue between blocks, session 6)."""
    if requested is not None:
        if requested not in SCOPES:
            raise ValueError(f"compile scope must be one of {', '.join(SCOPES)}, got {requested!r}")
        return requested
    return "regional" if cuda_graphs else "full"


def _compile_blocks(model: nn.Module, compile_kwargs: dict[str, Any]) -> int:
    """Install the shared compiled forward on every block of ``model``; returns how many blocks."""
    blocks = [m for m in model.modules() if isinstance(m, COMPILED_BLOCKS)]
    if not blocks:
        raise ValueError(f"regional compilation found no block ({', '.join(t.__name__ for t in COMPILED_BLOCKS)}) "
                         f"in {type(model).__name__}; use scope='full'")
    # a cap, not a count: blocks of one signature at different map sizes (a U-Net's encoder and decoder) trace apart
    limit = GRAPHS_PER_BLOCK * len(blocks)
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, limit)
    for block in blocks:
        forward = type(block).forward          # the class's (a gradient-checkpointed block: the checkpointing one)
        key = (forward, repr(sorted(compile_kwargs.items())))
        if key not in _COMPILED:
            _COMPILED[key] = torch.compile(forward, **compile_kwargs)
        # a bound method on the instance: copy.deepcopy rebinds it to the copy
        block.forward = _COMPILED[key].__get__(block)
    return len(blocks)


def _prepare(model: nn.Module) -> None:
    """The persistent caches (before any kernel compiles), then one eager forward at batch size 1 without gradients
    (it builds and caches the reference scan's path tensors, which compiled graphs then take as constants; the window
    tables are the model's buffers)."""
    use_persistent_cache()
    cfg = model.config
    device = next(model.parameters()).device
    x = torch.zeros(1, cfg.in_channels, cfg.input_size, cfg.input_size, device=device)
    t = torch.zeros(1, dtype=torch.long, device=device)
    y = torch.zeros(1, dtype=torch.long, device=device) if cfg.num_classes else None
    was_training = model.training
    with torch.no_grad():
        model.eval()(x, t, y)
    model.train(was_training)


def compile_model(model: nn.Module, net: nn.Module | None = None, *, scope: str = "regional",
                  cuda_graphs: bool = False, **compile_kwargs: Any) -> nn.Module:
    """Compile ``model`` (``scope`` "regional" or "full", see the module docstring); returns what to call.

    First runs one eager forward of ``model`` at batch size 1 without gradients: it builds the scan paths of the
    reference (CPU) scan route, cached per size and device, so that compiled graphs take them as constants instead
    of tracing their construction on the host (the Triton route needs none; the attention windows' index and
    masks are buffers of the model, so a plain ``torch.compile(model)`` on CUDA is as clean). ``net`` is what
    to call when it wraps ``model`` (e.g. DistributedDataParallel): regional compilation returns it unchanged
    (its blocks are compiled in place), full compilation compiles it. ``compile_kwargs`` go to
    ``torch.compile`` (e.g. ``backend``, ``fullgraph``).
    """
    if scope not in SCOPES:
        raise ValueError(f"compile scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    compile_threads()   # a bad LAMAMBA_COMPILE_THREADS is bad input here, not a failed trace later
    _prepare(model)
    if cuda_graphs:
        compile_kwargs["mode"] = "reduce-overhead"
    if scope == "full":
        return torch.compile(net if net is not None else model, **compile_kwargs)
    compile_kwargs.setdefault("dynamic", False)
    _compile_blocks(model, compile_kwargs)
    return net if net is not None else model


def compile_for_sampling(model: nn.Module, *, scope: str = "regional", cuda_graphs: bool = False,
                         **compile_kwargs: Any) -> nn.Module:
    """Compile ``model`` in place for sampling (``model(...)`` and ``forward_with_cfg`` use it); returns it.

    Without CUDA graphs: :func:`compile_model` with ``scope``. With them, every network evaluation is one graph
    replay that returns a copy of the output (samplers keep earlier outputs, which the next replay overwrites):
    ``"regional"`` compiles the blocks (without CUDA graphs of their own) and captures the whole forward, eager glue
    included, once per batch shape (:class:`~lamamba.models.capture.CapturedForward`); ``"full"`` compiles the
    whole forward as one graph with ``mode="reduce-overhead"`` (Inductor's CUDA-graph trees; every call begins a new
    CUDA-graph step). Regional compilation with Inductor's own CUDA graphs cannot sample: the blocks of one signature
    would overwrite each other's outputs within one forward (session 7).
    """
    if not cuda_graphs:
        return compile_model(model, scope=scope, **compile_kwargs)
    if scope == "regional":
        compile_model(model, scope="regional", **compile_kwargs)
        model.forward = CapturedForward(type(model).forward.__get__(model))
        return model
    if scope not in SCOPES:
        raise ValueError(f"compile scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    compile_threads()
    _prepare(model)
    compiled = torch.compile(type(model).forward, mode="reduce-overhead", dynamic=False, **compile_kwargs)

    def forward(*args: Any, **kwargs: Any) -> torch.Tensor:
        torch.compiler.cudagraph_mark_step_begin()
        return compiled(model, *args, **kwargs).clone()

    model.forward = forward
    return model


def uncompile(model: nn.Module) -> None:
    """Undo :func:`compile_model` / :func:`compile_for_sampling` on ``model`` (in place): it and its blocks run their
    classes' eager ``forward`` again. With :func:`release_compiled`, the fallback of a default compilation that
    failed (``lamamba train`` and ``lamamba sample``)."""
    for module in model.modules():
        if "forward" in vars(module):
            del module.forward


def run_or_fall_back(call: Callable[[], Any], *, allowed: bool, warn: Callable[[str], Any],
                     undo: Callable[[], Any]) -> Any:
    """``call()``, the first call of something compiled; if compiling fails and falling back is ``allowed`` (the
    compilation was a default, not asked for): ``warn(reason in one line)``, ``undo()`` (e.g. :func:`uncompile`),
    then ``call()`` again. Otherwise the error propagates (``lamamba.cli``: exit code 4)."""
    try:
        return call()
    except COMPILE_ERRORS as error:
        if not allowed:
            raise
        warn(compile_error_line(error))
        undo()
        return call()


def compile_error_line(error: BaseException) -> str:
    """A failed compilation in one line: the error's type, and the backend's error with the first line of its message
    (``BackendCompilerFailed`` wraps it), e.g. "BackendCompilerFailed (RuntimeError: no C++ compiler found)"."""
    inner = getattr(error, "inner_exception", None) or error
    message = next((line.strip() for line in str(inner).splitlines() if line.strip()), "")[:300]
    if inner is error:
        return f"{type(error).__name__}: {message}"
    return f"{type(error).__name__} ({type(inner).__name__}: {message})"


def release_compiled() -> None:
    """Forget every compiled graph (Dynamo's caches, the CUDA-graph trees and their private memory pools, the
    shared regional forwards) and return the cached GPU memory: for a process that trained compiled and goes on
    to sample (``lamamba experiment``'s train then curve stages). Without it, the CUDA-graph pools of training
    (31 GiB for LaMamba-Diff-S with global attention) stayed allocated and the guided sampling of that model at
    batch 1,000 ran out of memory on a 140 GiB H200 (session 7). Compiled kernels stay in the on-disk cache."""
    import gc

    torch._dynamo.reset()
    _COMPILED.clear()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
