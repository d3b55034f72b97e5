"""One compile mode's training step under DistributedDataParallel, as ``lamamba train`` runs it under torchrun.

Run with torchrun (one process per GPU); prints one JSON line (rank 0): the first steps' losses on fixed inputs
(compare the modes' lines: compiled modes should follow eager to bf16 rounding), the largest difference between the
ranks' parameters after them (DDP keeps them equal: 0), and the wall time per step over
``--steps`` steps after ``--warmup`` (synchronised once at the end: a host-bound mode shows as such).

    torchrun --standalone --nproc_per_node=1 benchmarks/ddp_step.py --mode regional+cg --model LaMamba-Diff-XL

Modes: eager; full / regional (compiled without CUDA graphs); full+cg / regional+cg (with them).
"""
from __future__ import annotations

import argparse
import json
import time

import torch
from torch.nn.parallel import DistributedDataParallel

from lamamba.diffusion import create_diffusion
from lamamba.distributed import init_distributed, shutdown_distributed
from lamamba.models import compile_model, create_model
from lamamba.training.optim import adamw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("eager", "full", "regional", "full+cg", "regional+cg"), required=True)
    parser.add_argument("--model", default="LaMamba-Diff-XL")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64, help="per process")
    parser.add_argument("--check-steps", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="auto", help="cuda:0 with --backend gloo: several ranks on one GPU")
    parser.add_argument("--backend", default=None, help="gloo: ranks that share a GPU (NCCL refuses them)")
    args = parser.parse_args()
    if args.backend:
        torch.distributed.init_process_group(args.backend)
    env = init_distributed(args.device)
    device = env.device
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # as lamamba train and bench
    torch.manual_seed(0)
    model = create_model(args.model, image_size=args.image_size, in_channels=4, num_classes=1000,
                         latent_downsample=8, class_dropout_prob=0.0).to(device)
    net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    cuda_graphs = args.mode.endswith("+cg")
    tic = time.perf_counter()
    if args.mode != "eager":
        net = compile_model(model, net, scope=args.mode.split("+")[0], cuda_graphs=cuda_graphs)
    diffusion = create_diffusion()
    opt = adamw(model.parameters(), lr=1e-4, weight_decay=0)
    side = model.config.input_size
    gen = torch.Generator(device).manual_seed(1 + env.rank)
    x = torch.randn(args.batch_size, 4, side, side, device=device, generator=gen)
    y = torch.randint(0, 1000, (args.batch_size,), device=device, generator=gen)
    ts = [torch.randint(0, 1000, (args.batch_size,), device=device, generator=gen) for _ in range(args.check_steps)]

    def step(t: torch.Tensor) -> torch.Tensor:
        if cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = diffusion.training_losses(net, x, t, dict(y=y))["loss"].mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    losses = [float(step(t)) for t in ts]      # the first call compiles
    # DDP keeps the ranks' parameters equal: the largest difference from rank 0's after the checked steps
    flat = torch.cat([p.detach().float().flatten() for p in model.parameters()])
    rank0 = flat.clone()
    torch.distributed.broadcast(rank0, 0)
    spread = (flat - rank0).abs().max()
    torch.distributed.all_reduce(spread, op=torch.distributed.ReduceOp.MAX)
    first_s = time.perf_counter() - tic
    for _ in range(args.warmup):
        step(ts[0])
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda device: None)
    sync(device)
    tic = time.perf_counter()
    for _ in range(args.steps):
        step(ts[0])
    sync(device)
    wall_ms = 1000 * (time.perf_counter() - tic) / args.steps
    if env.is_main:
        print(json.dumps(dict(model=args.model, mode=args.mode, world_size=env.world_size,
                              batch_per_rank=args.batch_size, losses=losses,
                              rank_param_spread=float(spread), wall_ms=round(wall_ms, 2),
                              images_per_s=round(1000 * args.batch_size * env.world_size / wall_ms, 1),
                              first_steps_s=round(first_s, 1),
                              peak_gib=round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 2)
                              if device.type == "cuda" else None,
                              card=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                              torch=torch.__version__)), flush=True)
    shutdown_distributed()


if __name__ == "__main__":
    main()
