"""``lamamba convert-official CKPT OUT``: a checkpoint of the authors' released code as a lamamba run directory.

The released ``train.py`` (SPEC section 7.6) saves ``{"model", "ema", "opt", "args", "config"}`` with
``torch.save``: two state dicts, the optimizer state, the ``argparse.Namespace`` of its flags and the yacs
configuration. This converter

* loads it with ``torch.load(weights_only=True)`` and an explicit allow-list: ``argparse.Namespace`` and yacs'
  ``CfgNode`` read as a plain ``OrderedDict`` (never a full unpickle: any other class is refused);
* renames the modules that moved (docs/MODEL.md, deviation 7): ``layers.{i}.downsample`` ->
  ``downsamples.{i}``, ``layers_up.{j}.upsample`` -> ``upsamples.{j}``, and drops the buffers we recompute
  (``attn.relative_position_index``, ``attn_mask``);
* reads the architecture off the tensor shapes (width, depths, conditioning width, heads, state size, classes),
  the image size from ``args.image_size``, builds our model and refuses, with one clear line, on unknown keys,
  missing keys or shape mismatches;
* writes ``OUT/checkpoints/<step>/model.safetensors`` + ``config.json`` (the EMA weights by default), which
  ``lamamba.load_pretrained`` and ``lamamba sample`` use. The optimizer state is not converted.
"""
from __future__ import annotations

import argparse
import collections
import json
import math
import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = ["add_arguments", "run", "load_official", "official_to_lamamba", "convert_official"]

_RENAMES = [(re.compile(r"^layers\.(\d+)\.downsample\."), r"downsamples.\1."),
            (re.compile(r"^layers_up\.(\d+)\.upsample\."), r"upsamples.\1.")]
_RECOMPUTED = re.compile(r"(\.attn\.relative_position_index|\.attn_mask)$")  # buffers our model builds itself
_PRESETS = {96: "LaMamba-Diff-S", 192: "LaMamba-Diff-B", 256: "LaMamba-Diff-L", 320: "LaMamba-Diff-XL"}
_VAE = "stabilityai/sd-vae-ft-mse"  # the released code's VAE (SPEC 7.2), latents scaled by 0.18215
_NUM_STAGES = 4                     # the released U-Net always has four stages (empty ones hold no keys)


def load_official(path: str | os.PathLike) -> dict[str, Any]:
    """The released checkpoint's dict, loaded with ``weights_only=True`` and the allow-list above."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    allowed = [argparse.Namespace, (collections.OrderedDict, "yacs.config.CfgNode")]
    try:
        with torch.serialization.safe_globals(allowed):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (AttributeError, TypeError) as error:  # no safe_globals, or no (class, name) entries in it
        raise ValueError(f"convert-official needs torch >= 2.6 (this is {torch.__version__})") from error
    except pickle.UnpicklingError as error:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
        what = f"references {found.group(1)!r}" if found else "holds objects other than tensors and plain data"
        raise ValueError(f"{path} {what}, which only a full unpickle could load (allowed: tensors, containers, "
                         "argparse.Namespace, yacs CfgNode); refusing: it is not a checkpoint of the released "
                         "train.py") from error
    except (RuntimeError, EOFError, OSError) as error:
        raise ValueError(f"{path} is not a readable torch checkpoint ({error})") from error
    if not isinstance(checkpoint, dict) or not {"model", "ema"} & set(checkpoint):
        keys = sorted(checkpoint) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ValueError(f"{path} is not a checkpoint of the released train.py (expected keys model, ema, opt, "
                         f"args; found {keys})")
    return checkpoint


def _count(state: dict[str, Tensor], prefix: str) -> int:
    """Blocks under ``prefix`` (``layers.0.blocks.``): 1 + the highest block index present, 0 if none."""
    found = [int(m.group(1)) for k in state if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))]
    return max(found) + 1 if found else 0


def _infer_config(state: dict[str, Tensor], args: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(registry name, create_model keyword arguments) of the network ``state`` holds."""
    need = ("patch_embed.proj.weight", "pos_embed", "t_embedder.mlp.2.weight", "y_embedder.embedding_table.weight",
            "final_linear.weight")
    missing = [k for k in need if k not in state]
    if missing:
        raise ValueError(f"the state dict lacks {missing}: it is not a LaMamba-Diff of the released code")
    proj = state["patch_embed.proj.weight"]                                      # (D0, C, p, p)
    embed_dim, in_channels, patch = proj.shape[0], proj.shape[1], proj.shape[2]
    input_size = state["pos_embed"].shape[1] * patch
    block = next(k[: -len("op.A_logs")] for k in state if k.endswith("op.A_logs"))
    a_logs, table = state[block + "op.A_logs"], state[block + "attn.relative_position_bias_table"]
    width = state[block + "norm.weight"].shape[0]
    depths = tuple(_count(state, f"layers.{i}.blocks.") for i in range(_NUM_STAGES))
    image_size = int(args.get("image_size") or input_size * 8)
    if image_size % input_size:
        raise ValueError(f"args.image_size {image_size} is not a multiple of the latent size {input_size}")
    name = _PRESETS.get(embed_dim, "LaMamba-Diff-XL")
    kwargs = dict(
        image_size=image_size, latent_downsample=image_size // input_size, in_channels=in_channels,
        num_classes=state["y_embedder.embedding_table.weight"].shape[0] - 1, embed_dim=embed_dim, depths=depths,
        decoder_depths=tuple(_count(state, f"layers_up.{j}.blocks.") for j in range(_NUM_STAGES)),
        bottleneck_depth=_count(state, "mid_layer.blocks."), cond_dim=state["t_embedder.mlp.2.weight"].shape[0],
        num_heads=table.shape[1], window_size=(math.isqrt(table.shape[0]) + 1) // 2, d_state=a_logs.shape[1],
        ssm_ratio=state[block + "op.in_proj.weight"].shape[0] / 2 / width,
        mlp_ratio=state[block + "mlp.fc1.weight"].shape[0] / width, patch_size=patch,
        num_downsamples=sum(f"layers.{i}.downsample.reduction.weight" in state for i in range(_NUM_STAGES)),
        learn_sigma=state["final_linear.weight"].shape[0] == 2 * in_channels * patch * patch,
    )
    return name, kwargs


def official_to_lamamba(state: dict[str, Tensor], args: dict[str, Any]) -> tuple[torch.nn.Module, list[str]]:
    """Our model holding the released ``state`` (renamed, recomputed buffers dropped); and the dropped keys."""
    from lamamba.models import create_model

    renamed, dropped = {}, []
    for key, value in state.items():
        if _RECOMPUTED.search(key):
            dropped.append(key)
            continue
        for pattern, replacement in _RENAMES:
            key = pattern.sub(replacement, key)
        renamed[key] = value
    name, kwargs = _infer_config(state, args)
    model = create_model(name, **kwargs)
    expected = model.state_dict()
    unknown = sorted(set(renamed) - set(expected))
    absent = sorted(set(expected) - set(renamed))
    if unknown or absent:
        raise ValueError(f"the checkpoint does not fit {name} as the released code builds it: unknown keys "
                         f"{unknown[:4]}{'...' if len(unknown) > 4 else ''}, missing keys {absent[:4]}"
                         f"{'...' if len(absent) > 4 else ''}; is it a LaMamba-Diff checkpoint of commit 27b3c1d?")
    wrong = [f"{k} {tuple(renamed[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
             if renamed[k].shape != v.shape]
    if wrong:
        raise ValueError(f"shape mismatch for {len(wrong)} tensor(s), e.g. {wrong[0]} (checkpoint vs our {name}); "
                         "maps smaller than the attention window (< 8 latent pixels) store smaller bias tables, "
                         "which we do not convert")
    model.load_state_dict(renamed, strict=True)
    return model.eval(), dropped


def convert_official(path: str | os.PathLike, out: str | os.PathLike, *, weights: str = "ema") -> Path:
    """Write the ``weights`` ("ema" or "model") of the released checkpoint ``path`` as a run ``out``."""
    from lamamba.pretrained import save_pretrained

    if weights not in ("ema", "model"):
        raise ValueError(f"weights must be 'ema' or 'model', got {weights!r}")
    path = Path(path)
    checkpoint = load_official(path)
    if weights not in checkpoint:
        other = "model" if weights == "ema" else "ema"
        raise ValueError(f"{path} has no {weights!r} weights; convert its {other!r} weights with --weights {other}")
    args = vars(checkpoint["args"]) if isinstance(checkpoint.get("args"), argparse.Namespace) else {}
    model, _ = official_to_lamamba(checkpoint[weights], args)
    cfg = model.config
    step = int(path.stem) if path.stem.isdigit() else 0  # train.py names checkpoints <step:07d>.pt
    target = Path(out) / "checkpoints" / f"{step:07d}"
    if target.exists():
        raise ValueError(f"{target} already exists; choose a new output directory")
    latent = {"vae": _VAE, "scale": 0.18215, "shift": None} if cfg.extra["latent_downsample"] > 1 else None
    info = {"model": cfg.to_dict(), "weights": weights, "step": step, "image_size": cfg.extra["image_size"],
            "image_channels": 3 if latent else cfg.in_channels, "num_classes": cfg.num_classes, "class_names": None,
            "latent": latent, "run": Path(out).name,
            "diffusion": {"diffusion_steps": 1000, "noise_schedule": "linear", "learn_sigma": cfg.learn_sigma},
            "converted_from": {"file": str(path), "args": json.loads(json.dumps(args, default=str))}}
    if weights == "ema":
        info["ema_decay"] = 0.9999  # the released train.py's
    return save_pretrained(model, target, info)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="CKPT", help="a .pt file written by the released train.py")
    parser.add_argument("out", metavar="OUT", help="run directory to write")
    parser.add_argument("--weights", choices=("ema", "model"), default="ema",
                        help="which weights to convert: the EMA (default, what the authors sample) or the raw ones")


def run(args: argparse.Namespace) -> int:
    path = convert_official(args.checkpoint, args.out, weights=args.weights)
    print(f"wrote {path} ({args.weights} weights; the optimizer state is not converted): lamamba sample {args.out}")
    return 0
