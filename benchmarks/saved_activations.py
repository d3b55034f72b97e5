"""What a training step keeps for its backward, computed on meta tensors (no GPU, no memory, a second on a CPU).

    python benchmarks/saved_activations.py [--preset fashion-mnist] [--model LaMamba-Diff-S --model DiT-S/2]

Runs one forward of each model on the ``meta`` device with ``saved_tensors_hooks`` and adds up the storages
that autograd keeps for the backward (each storage counted once, however many views of it are saved), then
lists the largest groups by shape and dtype: the activation memory of a training step, the part of
``lamamba bench``'s peak memory that the code decides. The model runs in bf16 as a stand-in for autocast
(autocast keeps some tensors, e.g. LayerNorm statistics, in fp32, so GPU numbers come out somewhat higher).
The Triton route is forced (``LAMAMBA_SCAN_BACKEND=triton``): the fused ops' fake kernels give the tensors the
GPU kernels keep. Attention is the exception: on meta tensors ``scaled_dot_product_attention`` takes its math
path and keeps fp32 attention weights (DiT-S/2: the (128, 6, 256, 256) rows), which the fused GPU kernels do
not; compare models on their other rows.
"""
from __future__ import annotations

import argparse
import collections
import os

import torch


def saved_bytes(name: str, preset: dict) -> tuple[int, collections.Counter, collections.Counter]:
    from lamamba import create_model

    model = create_model(name, image_size=preset["image_size"], in_channels=preset["in_channels"],
                         num_classes=preset["num_classes"], latent_downsample=preset["latent_downsample"])
    model = model.to("meta", torch.bfloat16).train()
    n, side = preset["batch_size"], model.config.input_size
    x = torch.empty(n, preset["in_channels"], side, side, device="meta", dtype=torch.bfloat16)
    t = torch.zeros(n, dtype=torch.long, device="meta")
    storages: dict[int, tuple[int, tuple, torch.dtype]] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage._cdata not in storages or storages[storage._cdata][0] < storage.nbytes():
            storages[storage._cdata] = (storage.nbytes(), tuple(tensor.shape), tensor.dtype)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(x, t, t.clone() if preset["num_classes"] else None)
    by_kind: collections.Counter = collections.Counter()
    count: collections.Counter = collections.Counter()
    for nbytes, shape, dtype in storages.values():
        by_kind[(shape, dtype)] += nbytes
        count[(shape, dtype)] += 1
    return sum(by_kind.values()), by_kind, count


def main() -> None:
    from lamamba.bench import PRESETS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="fashion-mnist")
    parser.add_argument("--model", action="append", default=None)
    parser.add_argument("--rows", type=int, default=12)
    args = parser.parse_args()
    os.environ["LAMAMBA_SCAN_BACKEND"] = "triton"
    preset = PRESETS[args.preset]
    for name in args.model or preset["models"]:
        total, by_kind, count = saved_bytes(name, preset)
        print(f"{name} ({args.preset}: {preset['image_size']} px, batch {preset['batch_size']}): "
              f"{total / 2 ** 30:.2f} GiB saved for the backward")
        for (shape, dtype), nbytes in by_kind.most_common(args.rows):
            print(f"  {nbytes / 2 ** 30:7.3f} GiB  {count[(shape, dtype)]:4d} x {str(dtype)[6:]:9s} {shape}")


if __name__ == "__main__":
    main()
