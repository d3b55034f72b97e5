"""Where a compiled model's first training step and first sampling forward spend their time (cProfile and
PyTorch's per-phase compile timers).

Run it in a new process after another process compiled the same model into the same cache (``LAMAMBA_CACHE_DIR``):
that is the warm start users get; in an empty cache, a cold start. Prints the time of each first and second call
(with this package's kernel precompile counts so far), the functions with the most cumulative and own time of each
first call, then PyTorch's compile timers summed per phase (Dynamo, AOTAutograd, Inductor's lowering, code generation
and waits for its kernel compiles). ``--no-cprofile``: the times without the profiler's overhead. Examples (GPU):

    python benchmarks/warm_start_profile.py --model LaMamba-Diff-S --preset fashion-mnist --compile-scope regional
    LAMAMBA_CACHE_DIR=$(mktemp -d) python benchmarks/warm_start_profile.py --model LaMamba-Diff-XL --preset imagenet \
        --no-cprofile                                                   # a cold compile's breakdown (session 15)
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time

import torch

from lamamba.bench import PRESETS
from lamamba.diffusion import create_diffusion
from lamamba.models.compile import compile_for_sampling, compile_model
from lamamba.models.registry import create_model
from lamamba.ops.triton_launch import precompile_stats
from lamamba.training.optim import adamw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="LaMamba-Diff-S")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="fashion-mnist")
    parser.add_argument("--compile-scope", default="regional")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--no-cprofile", dest="cprofile", action="store_false",
                        help="time the calls without the profiler (its overhead inflates Python-heavy compiles)")
    args = parser.parse_args()
    settings = {k: v for k, v in PRESETS[args.preset].items() if k != "models"}
    batch = settings.pop("batch_size")
    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = True   # as lamamba bench: part of the compiled graphs' cache keys
    torch.backends.cudnn.allow_tf32 = True
    t0 = time.perf_counter()
    model = create_model(args.model, **settings).to(device)
    sampler = compile_for_sampling(create_model(args.model, **settings).to(device).eval(), scope=args.compile_scope,
                                   cuda_graphs=True)
    sampler.load_state_dict(model.state_dict())
    net = compile_model(model, scope=args.compile_scope, cuda_graphs=True)
    print(f"model, compile setup: {time.perf_counter() - t0:.1f} s")
    diffusion, opt = create_diffusion(), adamw(model.parameters(), lr=1e-4, weight_decay=0)
    side = model.config.input_size
    x = torch.randn(batch, settings["in_channels"], side, side, device=device)
    t = torch.randint(0, 1000, (batch,), device=device)
    y = torch.randint(0, settings["num_classes"], (batch,), device=device)

    def train() -> None:
        torch.compiler.cudagraph_mark_step_begin()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = diffusion.training_losses(net, x, t, dict(y=y))["loss"].mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def sample() -> None:
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            sampler(x, t, y)

    for name, fn in (("first training step", train), ("first sampling forward", sample),
                     ("second training step", train), ("second sampling forward", sample)):
        profile = cProfile.Profile()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        if args.cprofile:
            profile.enable()
        fn()
        torch.cuda.synchronize()
        profile.disable()
        print(f"\n== {name}: {time.perf_counter() - t0:.2f} s (kernel precompile so far: {precompile_stats()})",
              flush=True)
        if args.cprofile and name.startswith("first"):
            for key in ("cumulative", "tottime"):
                out = io.StringIO()
                pstats.Stats(profile, stream=out).sort_stats(key).print_stats(args.top)
                print("\n".join(line for line in out.getvalue().splitlines()[6:] if line.strip()))
    print("\n" + torch._dynamo.utils.compile_times(repr="str", aggregate=True))


if __name__ == "__main__":
    main()
