"""What a training step keeps for its backward, computed on meta tensors (no GPU, no memory, a second on a CPU).

    python benchmarks/saved_activations.py [--preset fashion-mnist] [--model LaMamba-Diff-S --model DiT-S/2]
    python benchmarks/saved_activations.py --compiled     # what a whole-model compiled step keeps instead

Runs one forward of each model on the ``meta`` device with ``saved_tensors_hooks`` and adds up the storages
that autograd keeps for the backward (each storage counted once, however many views of it are saved), then
lists the largest groups by shape and dtype: the activation memory of a training step, the part of
``lamamba bench``'s peak memory that the code decides. The model runs in bf16 as a stand-in for autocast
(autocast keeps some tensors, e.g. LayerNorm statistics, in fp32, so GPU numbers come out somewhat higher).
The Triton route is forced (``LAMAMBA_SCAN_BACKEND=triton``): the fused ops' fake kernels give the tensors the
GPU kernels keep. On meta tensors ``scaled_dot_product_attention`` would take its math path and keep fp32
attention weights; here it is an opaque op that keeps what the fused GPU kernels keep instead (queries, keys,
values, mask, output and a per-row fp32 log-sum-exp). With ``--compiled`` the saved-tensor hooks give way to the
partitioned forward graph of a whole-model ``torch.compile`` (AOT autograd's min-cut partitioner, as Inductor's):
compiled steps recompute cheap element-wise results but never matrix products or convolutions.
"""
from __future__ import annotations

import argparse
import collections
import os
import traceback
from typing import Optional

import torch



_SDPA = torch.nn.functional.scaled_dot_product_attention


@torch.library.custom_op("lamamba_bench::fused_attention", mutates_args=())
def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: Optional[torch.Tensor],
               scale: Optional[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """(output, per-row fp32 log-sum-exp): what the memory-efficient / flash kernels compute and keep."""
    out = _SDPA(q, k, v, attn_mask=attn_mask, scale=scale)
    return out, q.new_empty(q.shape[:-1], dtype=torch.float32)


@_attention.register_fake
def _(q, k, v, attn_mask, scale):
    return q.new_empty((*q.shape[:-1], v.shape[-1])), q.new_empty(q.shape[:-1], dtype=torch.float32)


@torch.library.custom_op("lamamba_bench::fused_attention_bwd", mutates_args=())
def _attention_bwd(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                   lse: torch.Tensor, attn_mask: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor,
                                                                                  torch.Tensor]:
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


@_attention_bwd.register_fake
def _(dout, q, k, v, out, lse, attn_mask):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _attention_setup(ctx, inputs, output):
    q, k, v, attn_mask, _ = inputs
    ctx.save_for_backward(q, k, v, output[0], output[1], *(() if attn_mask is None else (attn_mask,)))


def _attention_backward(ctx, dout, dlse):
    q, k, v, out, lse, *mask = ctx.saved_tensors
    return (*_attention_bwd(dout, q, k, v, out, lse, mask[0] if mask else None), None, None)


_attention.register_autograd(_attention_backward, setup_context=_attention_setup)


def _fused_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kwargs):
    return _attention(q, k, v, attn_mask, scale)[0]


def saved_bytes(name: str, preset: dict, compiled: bool = False) -> tuple[int, collections.Counter,
                                                                          collections.Counter]:
    """(bytes, bytes by (shape, dtype, source), count by the same) that a training step keeps for its backward.
    ``compiled``: what AOT autograd's min-cut partitioner (Inductor's) keeps when the whole model is compiled: the
    partitioned forward graph's outputs beyond the model's own, parameters excluded ("source" is then "compiled")."""
    from lamamba import create_model

    model = create_model(name, image_size=preset["image_size"], in_channels=preset["in_channels"],
                         num_classes=preset["num_classes"], latent_downsample=preset["latent_downsample"])
    model = model.to("meta", torch.bfloat16).train()
    n, side = preset["batch_size"], model.config.input_size
    x = torch.empty(n, preset["in_channels"], side, side, device="meta", dtype=torch.bfloat16)
    t = torch.zeros(n, dtype=torch.long, device="meta")
    storages: dict[int, tuple[int, tuple, torch.dtype, str]] = {}

    def keep(tensor: torch.Tensor, source: str) -> None:
        storage = tensor.untyped_storage()
        if storage._cdata not in storages or storages[storage._cdata][0] < storage.nbytes():
            storages[storage._cdata] = (storage.nbytes(), tuple(tensor.shape), tensor.dtype, source)

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        keep(tensor, _source())
        return tensor

    def forward_compiler(gm, example_inputs):  # the partitioned forward: its outputs past the first are kept
        outputs = next(node for node in gm.graph.nodes if node.op == "output").args[0]
        for node in outputs[1:]:
            value = getattr(node, "meta", {}).get("val")
            if isinstance(value, torch.Tensor) and node.op != "placeholder":
                keep(value, "compiled")
        return gm

    torch.nn.functional.scaled_dot_product_attention = _fused_attention
    try:
        if compiled:
            from functorch.compile import min_cut_rematerialization_partition
            from torch._dynamo.backends.common import aot_autograd

            backend = aot_autograd(fw_compiler=forward_compiler, bw_compiler=lambda gm, _: gm,
                                   partition_fn=min_cut_rematerialization_partition)
            torch.compile(model, backend=backend, fullgraph=True)(x, t, t.clone() if preset["num_classes"] else None)
            torch._dynamo.reset()
        else:
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
    parser.add_argument("--compiled", action="store_true",
                        help="what the whole-model compiled step keeps (min-cut partitioner; ~40 s per model)")
    args = parser.parse_args()
    os.environ["LAMAMBA_SCAN_BACKEND"] = "triton"
    preset = PRESETS[args.preset]
    for name in args.model or preset["models"]:
        total, by_kind, count = saved_bytes(name, preset, args.compiled)
        print(f"{name} ({args.preset}: {preset['image_size']} px, batch {preset['batch_size']}): "
              f"{total / 2 ** 30:.2f} GiB saved for the backward{' (compiled)' if args.compiled else ''}")
        for key, nbytes in by_kind.most_common(args.rows):
            shape, dtype, source = key
            print(f"  {nbytes / 2 ** 30:7.3f} GiB  {count[key]:4d} x {str(dtype)[6:]:9s} {str(shape):24s} {source}")


if __name__ == "__main__":
    main()
