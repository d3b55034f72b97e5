"""``lamamba bench``: time a full training step and a sampling forward for several models side by side.

A training step is what ``lamamba train`` does per step: forward, the diffusion loss (MSE + VLB),
backward and an AdamW update, under the chosen precision. A sampling forward is one network evaluation
at the same batch. Every model runs in the same process on the same card, so ratios are fair; DiT is run
both eager and compiled (``--compile auto``) and the faster one is the baseline.

Reported per model: ms/step, images/s, peak memory, and achieved model TFLOP/s, computed from the
paper-convention count of ``lamamba flops`` (multiply-adds) as ``2 * MACs * images / s``, times 3 for a
training step (forward + backward); element-wise work is not in that count, so this understates the work done.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from typing import Any

import torch

from lamamba.diffusion import create_diffusion
from lamamba.flops import measure
from lamamba.models.registry import compile_model, create_model, list_models

DEFAULT_MODELS = ("LaMamba-Diff-XL", "DiT-XL/2")


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


def bench_model(name: str, *, image_size: int, batch_size: int, device: torch.device, precision: str = "bf16",
                compile: bool = False, steps: int = 20, warmup: int = 5, in_channels: int = 4,
                latent_downsample: int = 8, num_classes: int = 1000, **overrides: Any) -> dict[str, Any]:
    """Median time of a training step and of a sampling forward for one model configuration."""
    torch.manual_seed(0)
    model = create_model(name, image_size=image_size, in_channels=in_channels, num_classes=num_classes,
                         latent_downsample=latent_downsample, **overrides).to(device)
    side = model.config.input_size
    net = compile_model(model) if compile else model
    diffusion = create_diffusion()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0, fused=device.type == "cuda")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision]
    x = torch.randn(batch_size, in_channels, side, side, device=device)
    t = torch.randint(0, 1000, (batch_size,), device=device)
    y = torch.randint(0, max(num_classes, 1), (batch_size,), device=device)

    def autocast():
        return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)

    def train_step() -> None:
        with autocast():
            loss = diffusion.training_losses(net, x, t, dict(y=y))["loss"].mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def sample_forward() -> None:
        with torch.no_grad(), autocast():
            net(x, t, y)

    timer = _timer(device)
    result: dict[str, Any] = dict(model=name, image_size=image_size, batch_size=batch_size, precision=precision,
                                  compiled=compile, overrides=overrides)
    for phase, fn in (("train", train_step), ("sample", sample_forward)):
        model.train(phase == "train")
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        for _ in range(warmup):
            fn()
        times = [timer(fn) for _ in range(steps)]
        ms = statistics.median(times)
        result[f"{phase}_ms"] = ms
        result[f"{phase}_images_per_s"] = 1000 * batch_size / ms
        if device.type == "cuda":
            result[f"{phase}_peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
    gflops = measure(name, image_size, in_channels=in_channels, num_classes=num_classes,
                     latent_downsample=latent_downsample, **overrides)["gflops"]
    result["gflops_per_image"] = gflops
    result["train_tflops"] = 3 * 2 * gflops * result["train_images_per_s"] / 1000
    result["sample_tflops"] = 2 * gflops * result["sample_images_per_s"] / 1000
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


def format_table(rows: list[dict[str, Any]], env: dict[str, Any]) -> str:
    head = (f"{'model':<22} {'px':>5} {'batch':>5} {'compiled':>8} {'train ms':>9} {'train img/s':>11} "
            f"{'sample img/s':>12} {'peak GiB':>8} {'TFLOP/s':>8}")
    lines = [f"card: {env.get('card')}  torch {env['torch']}  scan backend: {env['scan_backend']}", head,
             "-" * len(head)]
    for r in rows:
        lines.append(f"{r['model']:<22} {r['image_size']:>5} {r['batch_size']:>5} {str(r['compiled']):>8} "
                     f"{r['train_ms']:>9.1f} {r['train_images_per_s']:>11.1f} {r['sample_images_per_s']:>12.1f} "
                     f"{r.get('train_peak_mem_gib', float('nan')):>8.2f} {r['train_tflops']:>8.1f}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", action="append", metavar="NAME",
                        help=f"model(s) to time (repeatable; default {', '.join(DEFAULT_MODELS)}); one of "
                             f"{', '.join(list_models())}")
    parser.add_argument("--image-size", type=int, default=256, help="image size in pixels (latents are 1/8)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--precision", choices=("bf16", "fp16", "fp32"), default="bf16")
    parser.add_argument("--compile", choices=("none", "auto", "all"), default="auto",
                        help="auto: DiT baselines eager and compiled, LaMamba-Diff eager; all: everything both ways")
    parser.add_argument("--steps", type=int, default=20, help="timed iterations (median reported)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=None, help="write the JSON results here")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads (default: OMP_NUM_THREADS, else the cores not busy with other work)")


def run(args: argparse.Namespace) -> int:
    from lamamba.training.distributed import pick_device, set_cpu_threads

    for flag, value, least in (("--batch-size", args.batch_size, 1), ("--steps", args.steps, 1),
                               ("--warmup", args.warmup, 0), ("--image-size", args.image_size, 1)):
        if value < least:
            raise ValueError(f"{flag} must be at least {least}, got {value}")
    device = pick_device(args.device)
    if args.precision == "fp16" and device.type != "cuda":
        raise ValueError("--precision fp16 needs a CUDA device (CPU fp16 kernels are too slow to time); use bf16 "
                         "or fp32 on a CPU")
    set_cpu_threads(args.threads, device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    models = args.model or list(DEFAULT_MODELS)
    unknown = [m for m in models if m not in list_models()]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; available: {', '.join(list_models())}")
    rows = []
    for name in models:
        variants = [False]
        if args.compile == "all" or (args.compile == "auto" and name.startswith("DiT")):
            variants.append(True)
        for compiled in variants:
            rows.append(bench_model(name, image_size=args.image_size, batch_size=args.batch_size, device=device,
                                    precision=args.precision, compile=compiled, steps=args.steps,
                                    warmup=args.warmup))
            if device.type == "cuda":
                torch.cuda.empty_cache()  # the previous model's blocks back to the driver before the next
    env = environment(device)
    print(format_table(rows, env))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"environment": env, "rows": rows}, f, indent=2)
    return 0
