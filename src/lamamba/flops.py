"""Parameters and GFLOPs in the paper's counting convention, beside the paper's numbers.

Convention (the one the LaMamba-Diff and DiT papers use, via fvcore): one multiply-add = one FLOP for
linear layers, convolutions and matrix products (attention's ``q k^T`` and ``attn v`` included);
LayerNorm 5 FLOPs per element with affine parameters, 4 without; the selective scan
``9 * B * L * D * N + B * D * L`` (VMamba's rule, from state-spaces/mamba issue #110) with D all scanned
channels (4 directions x d_inner); element-wise work (activations, gating, modulation, softmax, residual
adds, exp) and data movement (permutes, gathers, rolls) are not counted. Batch size 1.

Counting uses ``torch.utils.flop_counter.FlopCounterMode`` (matmuls, convolutions, attention) plus two
rules for the operators it does not know (LayerNorm, our selective-scan op), on the meta device, so even
1024 px models are counted without allocating memory.
"""
from __future__ import annotations

import argparse
import json
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from lamamba.models.registry import create_model, list_models

CONVENTION = ("GFLOPs = multiply-adds (fvcore convention of the LaMamba-Diff and DiT papers): linear, conv, "
              "matmul/attention; LayerNorm 5/elem (4 without affine); selective scan 9*B*L*D*N + B*D*L; "
              "element-wise ops not counted; batch 1.")

# The papers' numbers. LaMamba-Diff Table 1 (256 px) and Table 2 (XL at 256/512/1024); DiT Table 1/4.
PAPER_PARAMS_M = {"LaMamba-Diff-S": 32, "LaMamba-Diff-B": 127, "LaMamba-Diff-L": 449, "LaMamba-Diff-XL": 656,
                  "DiT-S/2": 33, "DiT-B/2": 130, "DiT-L/2": 458, "DiT-XL/2": 675}
PAPER_GFLOPS = {
    ("LaMamba-Diff-S", 256): 3.19, ("LaMamba-Diff-B", 256): 12.32, ("LaMamba-Diff-L", 256): 33.39,
    ("LaMamba-Diff-XL", 256): 49.90,
    ("DiT-S/2", 256): 6.06, ("DiT-B/2", 256): 23.01, ("DiT-L/2", 256): 80.71, ("DiT-XL/2", 256): 118.64,
    ("DiT-S/4", 256): 1.41, ("DiT-B/4", 256): 5.56, ("DiT-L/4", 256): 19.70, ("DiT-XL/4", 256): 29.05,
    ("DiT-S/8", 256): 0.36, ("DiT-B/8", 256): 1.42, ("DiT-L/8", 256): 5.01, ("DiT-XL/8", 256): 7.39,
    ("DiT-XL/2", 512): 524.60, ("DiT-XL/2", 1024): 2910.30,
}
PAPER_TABLE2_GFLOPS = {256: 50.46, 512: 201.20, 1024: 804.18}  # LaMamba-Diff-XL (matches d_state=16)


# Peak dense bf16 tensor-core TFLOP/s (no sparsity) by card, from the vendors' data sheets; the first entry
# whose pattern occurs in ``torch.cuda.get_device_name()`` applies, so the more specific names come first.
# Model FLOP utilisation (MFU) = achieved model FLOP/s (paper-convention count, x2 per multiply-add, x3 for a
# training step) / this peak, as nanoGPT and PaLM report it.
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0), ("H800", 989.0),
    ("GH200", 989.0), ("B200", 2250.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0), ("L40", 181.0),
    ("L4", 121.0), ("A10G", 70.0), ("A10", 125.0), ("RTX 4090", 165.0), ("RTX 3090", 71.0),
)


def peak_tflops(card: str) -> float | None:
    """Peak dense bf16 TFLOP/s of a card by name (``torch.cuda.get_device_name()``), None when unknown."""
    for pattern, tflops in PEAK_BF16_TFLOPS:
        if pattern.lower() in card.lower():
            return tflops
    return None


def model_tflops(gflops_per_image: float, images_per_s: float, *, training: bool) -> float:
    """Achieved model TFLOP/s: 2 FLOPs per multiply-add, a training step 3x a forward (forward + backward)."""
    return (3 if training else 1) * 2 * gflops_per_image * images_per_s / 1000

def _layer_norm_flops(input_shape, normalized_shape, weight_shape, bias_shape, *args, **kwargs) -> int:
    numel = 1
    for s in input_shape:
        numel *= s
    return 2 * numel * (5 if weight_shape is not None else 4)  # x2: FlopCounterMode counts a MAC as 2


def _selective_scan_flops(u_shape, delta_shape, A_shape, *args, **kwargs) -> int:
    batch, channels, length = u_shape
    state = A_shape[1]
    return 2 * (9 * batch * length * channels * state + batch * channels * length)


def _custom_rules() -> dict:
    """Counting rules for the operators FlopCounterMode does not know (keyed by operator packet)."""
    return {torch.ops.aten.native_layer_norm: _layer_norm_flops,
            torch.ops.lamamba.selective_scan_fwd: _selective_scan_flops}


def count(model: torch.nn.Module, input_size: int, in_channels: int) -> dict[str, Any]:
    """GFLOPs of one forward pass at batch 1 (paper convention), split by operator, and parameters."""
    import lamamba.ops  # noqa: F401  (registers the selective-scan op)
    device = next(model.parameters()).device
    x = torch.zeros(1, in_channels, input_size, input_size, device=device)
    t = torch.zeros(1, dtype=torch.long, device=device)
    y = torch.zeros(1, dtype=torch.long, device=device)
    counter = FlopCounterMode(display=False, custom_mapping=_custom_rules())
    with counter, torch.no_grad():
        model.eval()(x, t, y)
    by_op = {str(op).split(".", 1)[-1]: n / 2e9 for op, n in counter.get_flop_counts()["Global"].items()}
    return {"gflops": counter.get_total_flops() / 2e9, "by_op": by_op,
            "params": sum(p.numel() for p in model.parameters())}


def measure(name: str, image_size: int = 256, **overrides: Any) -> dict[str, Any]:
    """Build ``name`` on the meta device at ``image_size`` and count parameters and GFLOPs."""
    with torch.device("meta"):
        model = create_model(name, image_size=image_size, **overrides)
    result = count(model, model.config.input_size, model.config.in_channels)
    result.update(model=name, image_size=image_size, overrides=overrides,
                  paper_gflops=PAPER_GFLOPS.get((name, image_size)),
                  paper_params_m=PAPER_PARAMS_M.get(name))
    if name == "LaMamba-Diff-XL" and image_size in PAPER_TABLE2_GFLOPS:
        result["paper_table2_gflops"] = PAPER_TABLE2_GFLOPS[image_size]
    return result


DEFAULT_ROWS = ([(m, 256, {}) for m in ("LaMamba-Diff-S", "LaMamba-Diff-B", "LaMamba-Diff-L", "LaMamba-Diff-XL")]
                + [("LaMamba-Diff-XL", r, {"d_state": 16}) for r in (256, 512, 1024)]
                + [(m, 256, {}) for m in ("DiT-S/2", "DiT-B/2", "DiT-L/2", "DiT-XL/2")]
                + [("DiT-XL/2", r, {}) for r in (512, 1024)])


def format_table(rows: list[dict[str, Any]]) -> str:
    head = f"{'model':<32} {'res':>5} {'params':>13} {'paper':>6} {'GFLOPs':>9} {'paper':>8} {'diff':>7}"
    lines = [head, "-" * len(head)]
    for r in rows:
        label = r["model"] + "".join(f" {k}={v}" for k, v in r["overrides"].items())
        paper = r.get("paper_table2_gflops") if r["overrides"].get("d_state") == 16 else r.get("paper_gflops")
        diff = f"{100 * (r['gflops'] - paper) / paper:+.2f}%" if paper else ""
        params_m = f"{r['paper_params_m']}M" if r.get("paper_params_m") else ""
        paper_s = f"{paper:.2f}" if paper else ""
        lines.append(f"{label:<32} {r['image_size']:>5} {r['params']:>13,} {params_m:>6} "
                     f"{r['gflops']:>9.2f} {paper_s:>8} {diff:>7}")
    lines.append("")
    lines.append("paper column: LaMamba-Diff Table 1 (d_state 1 rows) or Table 2 (d_state 16 rows); DiT paper.")
    lines.append(CONVENTION)
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", action="append", metavar="NAME",
                        help=f"model(s) to count (repeatable); default: the paper's table. One of: "
                             f"{', '.join(list_models())}")
    parser.add_argument("--image-size", type=int, action="append", metavar="PX",
                        help="image size(s) in pixels (repeatable; default 256)")
    parser.add_argument("--d-state", type=int, default=None, help="override the SSM state size (LaMamba-Diff)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    if args.d_state is not None and (args.d_state < 1 or not args.model):
        raise ValueError(f"--d-state must be a positive integer and goes with --model NAME, got {args.d_state}")
    if any(r < 1 for r in args.image_size or []):
        raise ValueError(f"--image-size must be positive, got {args.image_size}")
    if args.model:
        overrides = {} if args.d_state is None else {"d_state": args.d_state}
        rows = [(m, r, overrides if m.startswith("LaMamba") else {})
                for m in args.model for r in (args.image_size or [256])]
    else:
        rows = DEFAULT_ROWS
    results = [measure(m, r, **o) for m, r, o in rows]
    if args.json:
        print(json.dumps({"convention": CONVENTION, "rows": results}, indent=2))
    else:
        print(format_table(results))
    return 0
