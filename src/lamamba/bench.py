"""``lamamba bench``: time a full training step and a sampling forward for several models side by side.

A training step is what ``lamamba train`` does per step: forward, the diffusion loss (MSE + VLB),
backward and an AdamW update, under the chosen precision. A sampling forward is one network evaluation
at the same batch; compiled, it goes through ``compile_for_sampling`` with the same scope (``lamamba sample`` uses
the regional one: the blocks compiled and, with CUDA graphs, the whole forward captured) on a copy of the model's
modules that shares its tensors. Every model runs in the same process on the same card, so ratios are fair; DiT is run
both eager and compiled (``--compile auto``) and the faster one is the baseline.

Reported per model: ms/step, images/s, peak memory, achieved model TFLOP/s and model FLOP utilisation
(MFU, of the card's peak dense bf16 FLOP/s: ``flops.PEAK_BF16_TFLOPS`` or ``--peak-tflops``). Model FLOPs
are the paper-convention count of ``lamamba flops`` (multiply-adds) as ``2 * MACs * images / s``, times 3
for a training step (forward + backward); element-wise work is not in that count, so this understates the
work done. Compiled rows also report the compile time: the first training step and the first sampling
forward less a median one, once with the Inductor cache as found (``--fresh-cache``: an empty one, i.e.
cold) and once more after ``torch._dynamo.reset()`` with the cache just written (warm: Dynamo traces
again, Inductor's and AOT autograd's results come from the cache); and what the warm-up calls took beyond
steady ones (Inductor's CUDA graphs are recorded at a graph's second call, inside the warm-up).

``--preset fashion-mnist`` is the pixel-space small-model setting of issue 11 (32x32, 1 channel, 10 classes,
batch 128, LaMamba-Diff-S vs DiT-S/2); ``--in-channels``, ``--latent-downsample`` and ``--num-classes`` set
any other.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

from lamamba.diffusion import create_diffusion
from lamamba.flops import measure, model_tflops, peak_tflops
from lamamba.models.compile import (SCOPES, cache_counts, compile_for_sampling, compile_model, describe_cache,
                                    resolve_compile_scope, uncompile)
from lamamba.models.registry import create_model, list_models
from lamamba.ops.triton_launch import precompile_stats
from lamamba.training.optim import adamw

DEFAULT_MODELS = ("LaMamba-Diff-XL", "DiT-XL/2")

# Settings of --preset: every value a flag given on the command line does not override.
PRESETS: dict[str, dict[str, Any]] = {
    # the paper's: SD-VAE latents (1/8 of the pixel side, 4 channels), ImageNet classes
    "imagenet": dict(models=DEFAULT_MODELS, image_size=256, batch_size=64, in_channels=4, latent_downsample=8,
                     num_classes=1000),
    # Fashion-MNIST in pixel space (docs/RESULTS.md): the small models at 32x32, 1 channel, batch 128
    "fashion-mnist": dict(models=("LaMamba-Diff-S", "DiT-S/2"), image_size=32, batch_size=128, in_channels=1,
                          latent_downsample=1, num_classes=10),
}


def _timer(device: torch.device):
    """Returns a function that times ``fn`` once in milliseconds (CUDA events on GPUs)."""
    if device.type == "cuda":
        def run(fn) -> float:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            return start.elapsed_time(end)
    else:
        def run(fn) -> float:
            t0 = time.perf_counter()
            fn()
            return 1000 * (time.perf_counter() - t0)
    return run


@contextlib.contextmanager
def fresh_inductor_cache() -> Iterator[str]:
    """Compile into a new, empty Inductor cache (a cold compile); the previous cache setting afterwards."""
    from torch._inductor.utils import clear_caches

    previous = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    with tempfile.TemporaryDirectory(prefix="lamamba-inductor-") as directory:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = directory
        clear_caches()
        try:
            yield directory
        finally:
            clear_caches()
            if previous is None:
                del os.environ["TORCHINDUCTOR_CACHE_DIR"]
            else:
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = previous


def bench_model(name: str, *, image_size: int, batch_size: int, device: torch.device, precision: str = "bf16",
                compile: bool = False, scope: str = "regional", cuda_graphs: bool = False, steps: int = 20,
                warmup: int = 5, in_channels: int = 4, latent_downsample: int = 8, num_classes: int = 1000,
                peak: float | None = None, **overrides: Any) -> dict[str, Any]:
    """Median time of a training step and of a sampling forward for one model configuration.

    ``compile``: through ``compile_model(scope=scope, cuda_graphs=cuda_graphs)``, reporting the compile time
    with the Inductor cache as found and warm (see the module docstring). ``peak``: the card's peak TFLOP/s
    for MFU (None: no MFU).
    """
    torch.manual_seed(0)
    model = create_model(name, image_size=image_size, in_channels=in_channels, num_classes=num_classes,
                         latent_downsample=latent_downsample, **overrides).to(device)
    side = model.config.input_size
    sampler = model
    if compile:  # what lamamba train and lamamba sample run: the training model, and compiled for sampling a copy
        shared = {id(t): t for t in [*model.parameters(), *model.buffers()]}  # of its modules, not of its tensors
        sampler = compile_for_sampling(copy.deepcopy(model, shared).eval(), scope=scope, cuda_graphs=cuda_graphs)
    net = compile_model(model, scope=scope, cuda_graphs=cuda_graphs) if compile else model
    diffusion = create_diffusion()
    opt = adamw(model.parameters(), lr=1e-4, weight_decay=0)   # lamamba train's optimizer
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision]
    x = torch.randn(batch_size, in_channels, side, side, device=device)
    t = torch.randint(0, 1000, (batch_size,), device=device)
    y = torch.randint(0, max(num_classes, 1), (batch_size,), device=device)
    step_begin = torch.compiler.cudagraph_mark_step_begin if compile and cuda_graphs else (lambda: None)

    def autocast():
        return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)

    def train_step() -> None:
        step_begin()
        with autocast():
            loss = diffusion.training_losses(net, x, t, dict(y=y))["loss"].mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def sample_forward() -> None:
        with torch.no_grad(), autocast():
            sampler(x, t, y)

    timer = _timer(device)
    phases: tuple[tuple[str, Callable[[], None]], ...] = (("train", train_step), ("sample", sample_forward))
    result: dict[str, Any] = dict(model=name, image_size=image_size, batch_size=batch_size, precision=precision,
                                  in_channels=in_channels, latent_downsample=latent_downsample,
                                  num_classes=num_classes, compiled=compile, overrides=overrides)
    if compile:
        result.update(scope=scope, cuda_graphs=cuda_graphs)
    first: dict[str, float] = {}

    def first_calls() -> None:  # the calls that compile: timed alone, they count as warm-up steps
        for phase, fn in phases:
            model.train(phase == "train")
            first[phase] = timer(fn)

    if compile:
        before, kernels_before = cache_counts(), precompile_stats()
        first_calls()
        result["compile_cache"] = describe_cache(before)
        # this package's Triton kernels: compiled in the pool while tracing, and launches that waited for one
        result["kernel_precompile"] = {k: v - kernels_before[k] for k, v in precompile_stats().items()}
    for phase, fn in phases:
        model.train(phase == "train")
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        warm = [timer(fn) for _ in range(warmup)]
        times = [timer(fn) for _ in range(steps)]
        ms = statistics.median(times)
        result[f"{phase}_ms"] = ms
        if compile:  # what the warm-up calls took beyond steady steps (CUDA-graph recording happens there)
            result[f"settle_{phase}_s"] = (sum(warm) - len(warm) * ms) / 1000
        result[f"{phase}_images_per_s"] = 1000 * batch_size / ms
        if device.type == "cuda":
            result[f"{phase}_peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
    if compile:
        steady = result["train_ms"] + result["sample_ms"]
        result["compile_s"] = (sum(first.values()) - steady) / 1000
        for phase in first:  # of which the training step's and the sampling forward's
            result[f"compile_{phase}_s"] = (first[phase] - result[f"{phase}_ms"]) / 1000
        torch._dynamo.reset()  # trace again; Inductor and AOT autograd now find their results in the cache
        uncompile(sampler)     # and capture the sampling forward again
        compile_for_sampling(sampler, scope=scope, cuda_graphs=cuda_graphs)
        before = cache_counts()
        first_calls()
        result["warm_compile_s"] = (sum(first.values()) - steady) / 1000
        result["warm_compile_cache"] = describe_cache(before)
    gflops = measure(name, image_size, in_channels=in_channels, num_classes=num_classes,
                     latent_downsample=latent_downsample, **overrides)["gflops"]
    result["gflops_per_image"] = gflops
    for phase in ("train", "sample"):
        tflops = model_tflops(gflops, result[f"{phase}_images_per_s"], training=phase == "train")
        result[f"{phase}_tflops"] = tflops
        if peak:
            result[f"{phase}_mfu"] = tflops / peak
    return result


def environment(device: torch.device) -> dict[str, Any]:
    from lamamba.ops.selective_scan import scan_backend
    env = dict(torch=torch.__version__, python=platform.python_version(), device=str(device),
               scan_backend=scan_backend(device))
    if device.type == "cuda":
        env.update(card=torch.cuda.get_device_name(device), cuda=torch.version.cuda)
        try:
            import triton
            env["triton"] = triton.__version__
        except ImportError:
            pass
    else:
        env["card"] = platform.processor() or "cpu"
    return env


def _compile_label(r: dict[str, Any]) -> str:
    if not r["compiled"]:
        return "no"
    return r["scope"] + ("+cg" if r["cuda_graphs"] else "")


def _seconds(r: dict[str, Any], key: str) -> str:
    return f"{r[key]:.1f}" if key in r else "-"


def _kernels(r: dict[str, Any]) -> str:
    k = r.get("kernel_precompile", {})
    return (f"Triton kernels compiled while tracing {k.get('submitted', 0)}, launches that waited for one "
            f"{k.get('waited', 0)}, compiled at launch instead {k.get('at_launch', 0)}")


def format_table(rows: list[dict[str, Any]], env: dict[str, Any]) -> str:
    head = (f"{'model':<22} {'px':>5} {'ch':>3} {'batch':>5} {'compiled':>11} {'train ms':>9} {'train img/s':>11} "
            f"{'sample img/s':>12} {'peak GiB':>8} {'TFLOP/s':>8} {'MFU':>6} {'compile s':>9} {'warm s':>7}")
    peak = env.get("peak_tflops")
    lines = [f"card: {env.get('card')}  torch {env['torch']}  scan backend: {env['scan_backend']}  peak bf16: "
             f"{f'{peak:g} TFLOP/s' if peak else 'unknown'}", head, "-" * len(head)]
    for r in rows:
        mfu = f"{100 * r['train_mfu']:.1f}%" if "train_mfu" in r else "-"
        lines.append(f"{r['model']:<22} {r['image_size']:>5} {r['in_channels']:>3} {r['batch_size']:>5} "
                     f"{_compile_label(r):>11} {r['train_ms']:>9.1f} {r['train_images_per_s']:>11.1f} "
                     f"{r['sample_images_per_s']:>12.1f} {r.get('train_peak_mem_gib', float('nan')):>8.2f} "
                     f"{r['train_tflops']:>8.1f} {mfu:>6} {_seconds(r, 'compile_s'):>9} "
                     f"{_seconds(r, 'warm_compile_s'):>7}")
    caches = [f"{r['model']}: {r['compile_cache']} then {r['warm_compile_cache']} (cold: training step "
              f"{r['compile_train_s']:.1f} s, sampling forward {r['compile_sample_s']:.1f} s; then the warm-up steps "
              f"{r['settle_train_s']:.1f} s and forwards {r['settle_sample_s']:.1f} s beyond steady ones; "
              f"{_kernels(r)})" for r in rows if r["compiled"]]
    if caches:
        lines.append("Inductor cache (compile s / warm s): " + "; ".join(caches))
    if peak is None:
        lines.append(f"MFU omitted: no peak FLOP/s known for {env.get('card')!r} (pass --peak-tflops)")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", action="append", metavar="NAME",
                        help=f"model(s) to time (repeatable; default: the preset's, {', '.join(DEFAULT_MODELS)} "
                             f"for imagenet); one of {', '.join(list_models())}")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="imagenet",
                        help="imagenet: 256 px SD-VAE latents, batch 64, 1000 classes (default); fashion-mnist: "
                             "32x32 pixels, 1 channel, 10 classes, batch 128, LaMamba-Diff-S vs DiT-S/2. The "
                             "flags below override it")
    parser.add_argument("--image-size", type=int, default=None, help="image size in pixels")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--in-channels", type=int, default=None, help="model input channels (4: SD-VAE latents)")
    parser.add_argument("--latent-downsample", type=int, default=None,
                        help="pixels per model input position (8: SD-VAE latents; 1: pixel space)")
    parser.add_argument("--num-classes", type=int, default=None, help="class labels (0: unconditional)")
    parser.add_argument("--precision", choices=("bf16", "fp16", "fp32"), default="bf16")
    parser.add_argument("--compile", choices=("none", "auto", "all", "only"), default="auto",
                        help="auto: DiT baselines eager and compiled, LaMamba-Diff eager; all: everything both ways; "
                             "only: everything compiled, no eager rows")
    parser.add_argument("--compile-scope", choices=SCOPES, default=None,
                        help="regional: each block class compiled once, shared by the blocks of the same shape; "
                             "full: the whole model as one graph. Default as lamamba train: regional with "
                             "--cuda-graphs, full without")
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="compile with mode='reduce-overhead' (CUDA graphs; off by default)")
    parser.add_argument("--fresh-cache", action="store_true",
                        help="compile into a new empty temporary Inductor cache, so that 'compile s' is a cold "
                             "compile (removed afterwards: to time a later process's warm start, point "
                             "LAMAMBA_CACHE_DIR at an empty directory instead)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the card's peak dense bf16 TFLOP/s for MFU (default: looked up by card name)")
    parser.add_argument("--steps", type=int, default=20, help="timed iterations (median reported)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=None, help="write the JSON results here")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads (default: OMP_NUM_THREADS, else the cores not busy with other work)")


def resolve_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The preset updated with the flags given: models, image_size, batch_size, in_channels, ... (checked)."""
    settings = dict(PRESETS[args.preset])
    for key in ("image_size", "batch_size", "in_channels", "latent_downsample", "num_classes"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    settings["models"] = list(args.model or settings["models"])
    for key, least in (("batch_size", 1), ("image_size", 1), ("in_channels", 1), ("latent_downsample", 1),
                       ("num_classes", 0)):
        if settings[key] < least:
            raise ValueError(f"--{key.replace('_', '-')} must be at least {least}, got {settings[key]}")
    if settings["image_size"] % settings["latent_downsample"]:
        raise ValueError(f"--image-size {settings['image_size']} is not divisible by --latent-downsample "
                         f"{settings['latent_downsample']}")
    unknown = [m for m in settings["models"] if m not in list_models()]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; available: {', '.join(list_models())}")
    return settings


def run(args: argparse.Namespace) -> int:
    from lamamba.distributed import pick_device, set_cpu_threads

    for flag, value, least in (("--steps", args.steps, 1), ("--warmup", args.warmup, 0)):
        if value < least:
            raise ValueError(f"{flag} must be at least {least}, got {value}")
    if args.peak_tflops is not None and not args.peak_tflops > 0:
        raise ValueError(f"--peak-tflops must be positive, got {args.peak_tflops}")
    settings = resolve_settings(args)
    device = pick_device(args.device)
    if args.precision == "fp16" and device.type != "cuda":
        raise ValueError("--precision fp16 needs a CUDA device (CPU fp16 kernels are too slow to time); use bf16 "
                         "or fp32 on a CPU")
    set_cpu_threads(args.threads, device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    env = environment(device)
    env["peak_tflops"] = args.peak_tflops or (peak_tflops(env["card"]) if device.type == "cuda" else None)
    models = settings.pop("models")
    scope = resolve_compile_scope(args.compile_scope, cuda_graphs=args.cuda_graphs)
    rows = []
    for name in models:
        variants = [] if args.compile == "only" else [False]
        if args.compile in ("all", "only") or (args.compile == "auto" and name.startswith("DiT")):
            variants.append(True)
        for compiled in variants:
            with fresh_inductor_cache() if compiled and args.fresh_cache else contextlib.nullcontext():
                rows.append(bench_model(name, device=device, precision=args.precision, compile=compiled,
                                        scope=scope, cuda_graphs=args.cuda_graphs, steps=args.steps,
                                        warmup=args.warmup, peak=env["peak_tflops"], **settings))
            if device.type == "cuda":
                torch.cuda.empty_cache()  # the previous model's blocks back to the driver before the next
    print(format_table(rows, env))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"environment": env, "rows": rows}, f, indent=2)
    return 0
