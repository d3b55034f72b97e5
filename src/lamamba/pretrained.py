"""Inference weights (a pretrained model): ``model.safetensors`` + ``config.json``, and ``load_pretrained``.

"Checkpoint" means training state here (``lamamba.training.checkpoint``); a pretrained model is what sampling,
evaluation and export load. Training writes one directory per checkpoint, ``<run>/checkpoints/<step:07d>/``, holding
the pretrained model beside the training state:

* ``model.safetensors``: the EMA weights (float32); the same JSON as ``config.json`` is embedded in the
  file's metadata, so the weight file alone describes itself;
* ``config.json``: what is needed to rebuild and sample: the model config, image size and channels, classes,
  the latent autoencoder (if any) and the diffusion;
* ``training_state.safetensors`` / ``training_state.json``: the full training state (``lamamba.training``).

``load_pretrained(path)`` accepts a run directory (its newest checkpoint), a ``checkpoints`` directory, one
checkpoint directory, a ``.safetensors`` file or a Hugging Face Hub model id ``org/name[@revision]``
(``lamamba.hub.download``; a local path of the same spelling wins). Nothing is unpickled: tensors come from
safetensors, the rest from JSON.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from lamamba.hub.download import download_model, parse_hub_ref
from lamamba.io import share_like_umask

__all__ = ["CONFIG_FILE", "FORMAT", "WEIGHTS_FILE", "TRAINING_STATE_FILE", "list_checkpoints",
           "load_model_info", "load_pretrained", "resolve_checkpoint", "save_pretrained", "fsync_file"]

FORMAT = "lamamba-model/1"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TRAINING_STATE_FILE = "training_state.safetensors"
_METADATA_KEY = "lamamba_config"
_STEP_DIR = re.compile(r"^\d+$")


# ------------------------------------------------------------------------------------------------
#                                         Writing
# ------------------------------------------------------------------------------------------------

def fsync_file(path: str | os.PathLike) -> None:
    """Flush a written file to disk (so a rename after it never exposes a partial file)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_pretrained(model: nn.Module, directory: str | os.PathLike, info: dict[str, Any],
                    state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """Write ``model.safetensors`` (float32 weights, ``info`` embedded) and ``config.json`` into ``directory``.

    ``info`` must hold at least the model's ``config.to_dict()`` under ``"model"``; ``state_dict`` defaults to
    the model's. Each file is written to a temporary name, flushed and renamed into place.
    """
    if "model" not in info:
        raise ValueError("info must contain the model config under 'model' (model.config.to_dict())")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    info = {"format": FORMAT, **info}
    text = json.dumps(info, indent=2, sort_keys=True)
    tensors = {k: v.detach().float().contiguous().cpu() if v.is_floating_point() else v.detach().contiguous().cpu()
               for k, v in (model.state_dict() if state_dict is None else state_dict).items()}
    _write_then_rename(directory / WEIGHTS_FILE,
                       lambda p: save_file(tensors, str(p), metadata={_METADATA_KEY: text}))
    _write_then_rename(directory / CONFIG_FILE, lambda p: Path(p).write_text(text + "\n"))
    return directory


def _write_then_rename(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        try:
            write(tmp)
        except SafetensorError as error:  # e.g. disk full: an OSError for the command line
            raise OSError(f"could not write {path} ({error})") from error
        share_like_umask(tmp)
        fsync_file(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------------
#                                     Finding checkpoints
# ------------------------------------------------------------------------------------------------

def list_checkpoints(checkpoints_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints in ``checkpoints_dir`` as ``(step, directory)``, oldest first.

    A checkpoint directory is named by its step and holds ``model.safetensors``; unfinished saves and
    checkpoints being deleted live under dot-names and are ignored.
    """
    root = Path(checkpoints_dir)
    if not root.is_dir():
        return []
    found = [(int(p.name), p) for p in root.iterdir()
             if p.is_dir() and _STEP_DIR.match(p.name) and (p / WEIGHTS_FILE).is_file()]
    return sorted(found)


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """The checkpoint directory or weight file that ``path`` designates (see the module docstring)."""
    text, path = str(path), Path(path).expanduser()
    if not path.exists():
        if parse_hub_ref(text) is None:
            raise FileNotFoundError(f"checkpoint {text!r} does not exist")
        path = download_model(text)  # a Hub model id: its snapshot in the local Hub cache
    if path.is_file():
        if path.suffix != ".safetensors":
            raise ValueError(f"{path} is not a .safetensors file; give a run directory, a checkpoint directory "
                             "or a model.safetensors file")
        return path
    if (path / WEIGHTS_FILE).is_file():
        return path
    for candidate in (path / "checkpoints", path):
        found = list_checkpoints(candidate)
        if found:
            return found[-1][1]
    raise FileNotFoundError(f"no checkpoint in {str(path)!r}: expected {WEIGHTS_FILE}, a checkpoints/ folder "
                            "of a training run, or step-numbered checkpoint directories")


def _weights_file(resolved: Path) -> Path:
    return resolved if resolved.is_file() else resolved / WEIGHTS_FILE


def _corrupt(path: Path, error: Exception) -> ValueError:
    return ValueError(f"{path} is corrupt or not a safetensors file ({error}); use another checkpoint "
                      "(e.g. an earlier one in the run's checkpoints/ folder)")


def load_model_info(path: str | os.PathLike) -> dict[str, Any]:
    """The ``config.json`` of a pretrained model (or the copy embedded in its weight file)."""
    resolved = resolve_checkpoint(path)
    config_path = (resolved.parent if resolved.is_file() else resolved) / CONFIG_FILE
    if resolved.is_dir() and config_path.is_file():
        try:
            info = json.loads(config_path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{config_path} is not valid JSON ({error}); it is corrupt") from error
    else:
        weights = _weights_file(resolved)
        try:
            with safe_open(str(weights), framework="pt") as f:
                text = (f.metadata() or {}).get(_METADATA_KEY)
        except (SafetensorError, OSError) as error:
            raise _corrupt(weights, error) from error
        if text is None:
            if config_path.is_file():
                return load_model_info(config_path.parent)
            raise ValueError(f"{weights} carries no lamamba config and has no config.json beside it; "
                             "it was not written by lamamba")
        info = json.loads(text)
    if not isinstance(info, dict) or info.get("format") != FORMAT or "model" not in info:
        raise ValueError(f"{config_path} is not a lamamba model config (format {FORMAT!r} expected)")
    return info


# ------------------------------------------------------------------------------------------------
#                                         Loading
# ------------------------------------------------------------------------------------------------

def _read_tensors(path: Path, prefix: str = "") -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k[len(prefix):]: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}
    except (SafetensorError, OSError) as error:
        raise _corrupt(path, error) from error


def load_pretrained(path: str | os.PathLike, *, use_ema: bool = True, device: str | torch.device = "cpu",
                    dtype: torch.dtype | None = None) -> nn.Module:
    """Rebuild a model from a lamamba checkpoint in one call; returned in eval mode on ``device``.

    ``path``: a run directory (newest checkpoint), its ``checkpoints`` folder, a checkpoint directory, a
    ``.safetensors`` weight file or a Hub model id ``org/name[@revision]``. ``use_ema=False`` loads the raw
    (non-averaged) training weights, which only full training checkpoints hold. The checkpoint's
    ``config.json`` is available as :func:`load_model_info`. Raises ``FileNotFoundError`` for a missing
    file and ``ValueError`` for a corrupt one.
    """
    from lamamba.models import model_from_config

    resolved = resolve_checkpoint(path)
    info = load_model_info(resolved)
    if use_ema:
        state = _read_tensors(_weights_file(resolved))
    else:
        state_file = (resolved.parent if resolved.is_file() else resolved) / TRAINING_STATE_FILE
        if not state_file.is_file():
            raise FileNotFoundError(f"use_ema=False needs the raw weights of a full training checkpoint "
                                    f"({state_file} is missing); {WEIGHTS_FILE} holds the EMA weights only")
        state = _read_tensors(state_file, prefix="model.")
    model = model_from_config(info["model"])
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shape mismatches
        raise ValueError(f"{resolved}: weights do not fit the model in its config ({error}); the files belong "
                         "to different checkpoints") from error
    if missing or unexpected:
        raise ValueError(f"{resolved}: weights do not fit the model in its config (missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}); the files belong to different checkpoints")
    return model.to(device=device, dtype=dtype).eval()
