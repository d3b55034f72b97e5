"""Profile one training step (forward, diffusion loss, backward, AdamW) on CUDA and group GPU time by kind.

    python benchmarks/profile_step.py --model LaMamba-Diff-XL --image-size 256 --batch-size 64 [--compile]
    python benchmarks/profile_step.py --compile --compile-scope regional --cuda-graphs   # lamamba train's GPU default
    python benchmarks/profile_step.py --preset fashion-mnist --model LaMamba-Diff-S   # 32x32 pixels, batch 128

Besides GPU time it prints the host (wall) time of a step and the number of kernel launches: a step whose wall
time is well above its GPU time is bound by launches and host work, not by the kernels.
"""
from __future__ import annotations

import argparse
import collections
import time

import torch
from torch.profiler import ProfilerActivity, profile

from lamamba import create_model
from lamamba.bench import PRESETS
from lamamba.diffusion import create_diffusion
from lamamba.models import compile_model

GROUPS = [  # (group, substrings of kernel names), first match wins
    ("selective scan", ("_scan", "ss2d")),
    ("attention", ("fmha", "attention", "flash", "cutlassF", "cutlassB", "softmax")),
    ("matmul", ("gemm", "sm90_xmma", "cutlass", "nvjet", "matmul", "cublas")),
    ("conv", ("conv", "dgrad", "wgrad", "depthwise")),
    ("layer norm", ("layer_norm", "LayerNorm")),
    ("copy / layout", ("copy", "cat", "gather", "scatter", "index", "roll", "transpose", "permute", "elementwise_kernel_with_index")),
    ("optimizer", ("adam", "multi_tensor", "foreach")),
    ("triton (compiled)", ("triton_",)),
    ("elementwise", ("elementwise", "vectorized", "reduce", "unrolled")),
]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="LaMamba-Diff-XL")
    p.add_argument("--preset", choices=sorted(PRESETS), default="imagenet",
                   help="input setting as `lamamba bench --preset` (image size, channels, classes, batch)")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--compile-scope", choices=("regional", "full"), default="full",
                   help="with --compile: compile_model's scope (lamamba train's default with CUDA graphs: regional)")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="with --compile: replay the compiled graphs as CUDA graphs (mode reduce-overhead)")
    p.add_argument("--rows", type=int, default=30)
    args = p.parse_args()
    preset = PRESETS[args.preset]
    args.image_size = args.image_size or preset["image_size"]
    args.batch_size = args.batch_size or preset["batch_size"]
    channels, classes = preset["in_channels"], preset["num_classes"]
    torch.backends.cuda.matmul.allow_tf32 = True
    model = create_model(args.model, image_size=args.image_size, in_channels=channels, num_classes=classes,
                         latent_downsample=preset["latent_downsample"]).cuda()
    # the library's whole-model compilation: a plain torch.compile(model) before any eager call would trace the
    # construction of the index tensors into the graph and run it on the host (it failed so in Inductor's C++)
    net = compile_model(model, scope=args.compile_scope, cuda_graphs=args.cuda_graphs) if args.compile else model
    mark_step = torch.compiler.cudagraph_mark_step_begin if args.compile and args.cuda_graphs else (lambda: None)
    diffusion = create_diffusion()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0, fused=True)
    side = model.config.input_size
    x = torch.randn(args.batch_size, channels, side, side, device="cuda")
    t = torch.randint(0, 1000, (args.batch_size,), device="cuda")
    y = torch.randint(0, classes, (args.batch_size,), device="cuda")

    def step():
        mark_step()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = diffusion.training_losses(net, x, t, dict(y=y))["loss"].mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(5):
        step()
    torch.cuda.synchronize()
    begin = time.perf_counter()
    for _ in range(10):
        step()
    torch.cuda.synchronize()
    wall_ms = (time.perf_counter() - begin) * 100  # per step, without the profiler
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        for _ in range(2):
            step()
        torch.cuda.synchronize()
    # kernels only: a user annotation's GPU span (torch.optim's "Optimizer.step#AdamW.step") would count its kernels
    # twice (the optimizer group of the profiles before session 14 did: ~5 ms of an XL step)
    events = [e for e in prof.key_averages()
              if e.device_type == torch.autograd.DeviceType.CUDA and not getattr(e, "is_user_annotation", False)]
    total = sum(e.self_device_time_total for e in events)
    launches = sum(e.count for e in events)
    groups: dict[str, float] = collections.defaultdict(float)
    for e in events:
        name = e.key
        group = next((g for g, keys in GROUPS if any(k.lower() in name.lower() for k in keys)), "other")
        groups[group] += e.self_device_time_total
    mode = f"{args.compile_scope}{'+cg' if args.cuda_graphs else ''}" if args.compile else "eager"
    print(f"{args.model} {args.image_size}px batch {args.batch_size} {mode}: "
          f"GPU time per step {total / 2 / 1000:.1f} ms, wall time {wall_ms:.1f} ms, "
          f"{launches // 2} kernels per step")
    for g, us in sorted(groups.items(), key=lambda kv: -kv[1]):
        print(f"  {g:<20} {us / 2 / 1000:8.1f} ms  {100 * us / total:5.1f}%")
    print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=args.rows, max_name_column_width=70))
    print("host side (CPU time, two steps):")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=70))


if __name__ == "__main__":
    main()
