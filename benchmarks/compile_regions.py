"""Graphs and compile time of regional vs whole-model compilation on a tiny LaMamba-Diff (runs on a CPU).

    TORCHINDUCTOR_CACHE_DIR=/tmp/c OMP_NUM_THREADS=1 python benchmarks/compile_regions.py --scope regional
    (run it twice on the same cache directory: cold, then warm)
    python benchmarks/compile_regions.py --model LaMamba-Diff-XL --backend aot_eager --scope full
    (a full-size model at a small image: how long Dynamo (backend eager) and AOT autograd (aot_eager) take before
    Inductor, whose graphs do not depend on the image size)

One training step at batch 4 (twice), sampling forwards at batch 8 (twice) and 3, one more training step;
prints the seconds of each call, the graphs Dynamo produced and the Inductor cache hits and misses.
"""
import argparse
import time

import torch
from torch._dynamo.utils import counters

import lamamba
from lamamba.diffusion import create_diffusion
from lamamba.models import compile_model

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--scope", choices=("regional", "full"), default="regional")
parser.add_argument("--backend", default="inductor", help="torch.compile backend (inductor, aot_eager, eager)")
parser.add_argument("--model", default=None, help="a registered model at full width, on 1-channel 16x16 inputs "
                                                  "(default: a tiny LaMamba-Diff-S)")
args = parser.parse_args()

torch.manual_seed(0)
tiny = {} if args.model else dict(embed_dim=8, cond_dim=16, num_heads=2, window_size=4)
model = lamamba.create_model(args.model or "LaMamba-Diff-S", image_size=16, latent_downsample=1, in_channels=1,
                             num_classes=10, **tiny)
start = time.perf_counter()
net = compile_model(model, scope=args.scope, backend=args.backend)
diffusion = create_diffusion()
optimizer = torch.optim.AdamW(model.parameters())


def batch(n):
    return torch.randn(n, 1, 16, 16), torch.randint(0, 1000, (n,)), torch.randint(0, 10, (n,))


def train(n):
    x, t, y = batch(n)
    model.train()
    diffusion.training_losses(net, x, t, dict(y=y))["loss"].mean().backward()
    optimizer.step()
    optimizer.zero_grad()


@torch.no_grad()
def sample(n):
    model.eval()
    net(*batch(n))


for label, fn in (("train b4", lambda: train(4)), ("train b4 again", lambda: train(4)),
                  ("sample b8", lambda: sample(8)), ("sample b8 again", lambda: sample(8)),
                  ("sample b3", lambda: sample(3)), ("train b4 again", lambda: train(4))):
    tic = time.perf_counter()
    fn()
    print(f"{label:<16} {time.perf_counter() - tic:8.2f} s")
inductor = counters["inductor"]
print(f"{args.scope}, {args.backend}: {counters['stats']['unique_graphs']} graphs, {len(model.blocks())} blocks, "
      f"Inductor cache {inductor['fxgraph_cache_hit']} hits / {inductor['fxgraph_cache_miss']} misses, "
      f"{time.perf_counter() - start:.1f} s in all")
