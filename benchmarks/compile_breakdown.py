"""Where a cold compile's time goes: the first training step and the first sampling forward of a model in
``lamamba train``'s GPU default (regional + CUDA graphs, as ``lamamba bench --compile only --cuda-graphs``), each
timed, then PyTorch's per-phase compile timers (Dynamo, AOTAutograd, Inductor's lowering, code generation and waits
for its kernel compiles) and this package's kernel precompile counts.

    LAMAMBA_CACHE_DIR=$(mktemp -d) python benchmarks/compile_breakdown.py --model LaMamba-Diff-XL --image-size 256 \
        --batch-size 64
"""
from __future__ import annotations

import argparse
import copy
import time

import torch

from lamamba.diffusion import create_diffusion
from lamamba.models.compile import compile_for_sampling, compile_model
from lamamba.models.registry import create_model
from lamamba.ops.triton_launch import precompile_stats
from lamamba.training.optim import adamw


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="LaMamba-Diff-XL")
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--in-channels", type=int, default=4)
    ap.add_argument("--latent-downsample", type=int, default=8)
    ap.add_argument("--num-classes", type=int, default=1000)
    args = ap.parse_args()
    device = torch.device("cuda")
    begin = time.perf_counter()
    model = create_model(args.model, image_size=args.image_size, in_channels=args.in_channels,
                         num_classes=args.num_classes, latent_downsample=args.latent_downsample).to(device)
    shared = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    sampler = compile_for_sampling(copy.deepcopy(model, shared).eval(), scope="regional", cuda_graphs=True)
    net = compile_model(model, scope="regional", cuda_graphs=True)
    diffusion, opt = create_diffusion(), adamw(model.parameters(), lr=1e-4, weight_decay=0)
    side = model.config.input_size
    x = torch.randn(args.batch_size, args.in_channels, side, side, device=device)
    t = torch.randint(0, 1000, (args.batch_size,), device=device)
    y = torch.randint(0, args.num_classes, (args.batch_size,), device=device)
    print(f"model built in {time.perf_counter() - begin:.1f} s")

    def timed(label, fn):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        print(f"{label}: {time.perf_counter() - start:.1f} s  (kernel precompile so far: {precompile_stats()})",
              flush=True)

    def train_step():
        torch.compiler.cudagraph_mark_step_begin()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = diffusion.training_losses(net, x, t, dict(y=y))["loss"].mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def sample_forward():
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            sampler(x, t, y)

    timed("first training step", train_step)
    timed("second training step", train_step)
    timed("first sampling forward", sample_forward)
    timed("second sampling forward", sample_forward)
    print(torch._dynamo.utils.compile_times(repr="str", aggregate=True))


if __name__ == "__main__":
    main()
