"""What a training step keeps for its backward, computed on meta tensors (no GPU, no memory, a second on a CPU).

    python benchmarks/saved_activations.py [--preset fashion-mnist] [--model LaMamba-Diff-S --model DiT-S/2]

Runs one forward of each model on the ``meta`` device with ``saved_tensors_hooks`` and adds up the storages
that autograd keeps for the backward (each storage counted once, however many views of it are saved), then
lists the largest groups by shape and dtype: the activation memory of a training step, the part of
``lamamba bench``'s peak memory that the code decides. The model runs in bf16 as a stand-in for autocast
(autocast keeps some tensors, e.g. LayerNorm statistics, in fp32, so GPU numbers come out somewhat higher).
The Triton route is forced (``LAMAMBA_SCAN_BACKEND=triton``): the fused ops' fake kernels give the tensors the
GPU kernels keep. On meta tensors ``scaled_dot_product_attention`` would take its math path and keep fp32
attention weights; here it keeps what the fused GPU kernels keep instead (queries, keys, values, mask, output
and a per-row fp32 log-sum-exp).
"""
from __future__ import annotations

import argparse
import collections
import os
import traceback

import torch



class _FusedAttention(torch.autograd.Function):
    """Scaled dot-product attention that saves what the memory-efficient / flash kernels save."""

    @staticmethod
    def forward(ctx, q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None):
        with torch.no_grad():
            out = _SDPA(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale)
        logsumexp = q.new_empty(q.shape[:-1], dtype=torch.float32)
        ctx.save_for_backward(q, k, v, out, logsumexp, *(() if attn_mask is None else (attn_mask,)))
        return out


_SDPA = torch.nn.functional.scaled_dot_product_attention


def _fused_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kwargs):
    return _FusedAttention.apply(q, k, v, attn_mask, dropout_p, is_causal, scale)


def saved_bytes(name: str, preset: dict) -> tuple[int, collections.Counter, collections.Counter]:
    from lamamba import create_model

    model = create_model(name, image_size=preset["image_size"], in_channels=preset["in_channels"],
                         num_classes=preset["num_classes"], latent_downsample=preset["latent_downsample"])
    model = model.to("meta", torch.bfloat16).train()
    n, side = preset["batch_size"], model.config.input_size
    x = torch.empty(n, preset["in_channels"], side, side, device="meta", dtype=torch.bfloat16)
    t = torch.zeros(n, dtype=torch.long, device="meta")
    storages: dict[int, tuple[int, tuple, torch.dtype, str]] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage._cdata not in storages or storages[storage._cdata][0] < storage.nbytes():
            storages[storage._cdata] = (storage.nbytes(), tuple(tensor.shape), tensor.dtype, _source())
        return tensor

    torch.nn.functional.scaled_dot_product_attention = _fused_attention
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            model(x, t, t.clone() if preset["num_classes"] else None)
    finally:
        torch.nn.functional.scaled_dot_product_attention = _SDPA
    by_kind: collections.Counter = collections.Counter()
    count: collections.Counter = collections.Counter()
    for nbytes, shape, dtype, source in storages.values():
        by_kind[(shape, dtype, source)] += nbytes
        count[(shape, dtype, source)] += 1
    return sum(by_kind.values()), by_kind, count


def _source() -> str:
    """The innermost line of the package's own code on the stack (``file:line``): what saved the tensor."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        if "lamamba" in frame.filename.replace("\\", "/").split("/site-packages/")[-1] and "benchmarks" not in frame.filename:
            return f"{frame.filename.rsplit('lamamba/', 1)[-1]}:{frame.lineno}"
    return "?"


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
        for key, nbytes in by_kind.most_common(args.rows):
            shape, dtype, source = key
            print(f"  {nbytes / 2 ** 30:7.3f} GiB  {count[key]:4d} x {str(dtype)[6:]:9s} {str(shape):24s} {source}")


if __name__ == "__main__":
    main()
