"""Full training checkpoints, written atomically, and the random-number state they carry.

A checkpoint is one directory ``checkpoints/<step:07d>/`` with

* ``model.safetensors`` + ``config.json``: the EMA weights for inference (``lamamba.pretrained``);
* ``training_state.safetensors``: every tensor of the training state under a prefix: ``model.*`` (raw
  weights), ``ema.*``, ``optimizer.<param index>.<key>``, ``rng.<rank>.torch`` / ``rng.<rank>.cuda``;
* ``training_state.json``: everything else (step, data-loader position, optimizer hyper-parameters, Python and
  NumPy generator states, the resolved run config), written last.

The directory is assembled under a dot-name, every file flushed with ``fsync``, and then renamed into place
with ``os.replace``: a crash at any point leaves either the complete new checkpoint or none, and the
previous ones untouched. Only the newest ``keep_last`` are kept: the one just written and the ones before it
(never a later step; a checkpoint is renamed to a dot-name before it is deleted, so no reader ever sees a
half-deleted one). Files get the umask's permissions (``lamamba.io.share_like_umask``), not safetensors' 0600.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from lamamba.io import share_like_umask
from lamamba.pretrained import (TRAINING_STATE_FILE, fsync_file, list_checkpoints, resolve_checkpoint,
                                save_pretrained)

__all__ = ["STATE_JSON", "capture_rng_state", "restore_rng_state", "save_checkpoint", "load_checkpoint",
           "find_resume_checkpoint", "clean_unfinished"]

STATE_JSON = "training_state.json"
STATE_FORMAT = "lamamba-train-state/1"


# ------------------------------------------------------------------------------------------------
#                                       Random state
# ------------------------------------------------------------------------------------------------

def capture_rng_state(device: torch.device) -> dict[str, Any]:
    """This process's generator states: torch CPU (and the CUDA device's) as tensors, Python/NumPy as JSON."""
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "numpy": [np_name, np_keys.tolist(), int(np_pos), int(np_has_gauss), float(np_gauss)],
        "python": [py_version, list(py_state), py_gauss],
    }


def restore_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, py_state, py_gauss = state["python"]
    random.setstate((version, tuple(py_state), py_gauss))


# ------------------------------------------------------------------------------------------------
#                                          Saving
# ------------------------------------------------------------------------------------------------

def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Optimizer ``state_dict`` -> (tensors ``optimizer.<i>.<key>``, JSON part)."""
    tensors, scalars = {}, {}
    for index, entries in state["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = value
    for index, entries in meta["scalars"].items():
        state.setdefault(int(index), {}).update(entries)
    return {"state": state, "param_groups": meta["param_groups"]}


def _fsync_dir(path: Path) -> None:
    if os.name == "posix":  # directories cannot be opened for fsync on Windows
        fsync_file(path)


def clean_unfinished(checkpoints_dir: str | os.PathLike) -> None:
    """Remove the leftovers of interrupted saves and deletions (dot-named directories)."""
    root = Path(checkpoints_dir)
    if root.is_dir():
        for p in root.glob(".tmp-*"):
            shutil.rmtree(p, ignore_errors=True)


def save_checkpoint(
    checkpoints_dir: str | os.PathLike,
    step: int,
    *,
    model: nn.Module,
    ema_model: nn.Module,
    optimizer: torch.optim.Optimizer,
    rng_states: list[dict[str, Any]],
    meta: dict[str, Any],
    info: dict[str, Any],
    keep_last: int = 3,
) -> Path:
    """Write the checkpoint of ``step`` atomically and keep the newest ``keep_last`` (0: keep all).

    ``model`` is the unwrapped trained module, ``rng_states`` one :func:`capture_rng_state` per rank,
    ``meta`` the JSON part (step, data position, EMA counters, run config), ``info`` the inference config.
    """
    root = Path(checkpoints_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{step:07d}"
    tmp = root / f".tmp-{step:07d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        save_pretrained(ema_model, tmp, info)
        tensors = {f"model.{k}": v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        tensors.update({f"ema.{k}": v.detach().contiguous().cpu() for k, v in ema_model.state_dict().items()})
        opt_tensors, opt_meta = _flatten_optimizer(optimizer.state_dict())
        tensors.update(opt_tensors)
        rng_meta = []
        for rank, rng in enumerate(rng_states):
            tensors[f"rng.{rank}.torch"] = rng["torch"]
            if rng["cuda"] is not None:
                tensors[f"rng.{rank}.cuda"] = rng["cuda"]
            rng_meta.append({"numpy": rng["numpy"], "python": rng["python"]})
        try:
            save_file(tensors, str(tmp / TRAINING_STATE_FILE))
        except SafetensorError as error:  # e.g. disk full: an OSError for the command line
            raise OSError(f"could not write checkpoint {final} ({error})") from error
        share_like_umask(tmp / TRAINING_STATE_FILE)
        fsync_file(tmp / TRAINING_STATE_FILE)
        full_meta = {"format": STATE_FORMAT, **meta, "step": step, "optimizer": opt_meta, "rng": rng_meta}
        (tmp / STATE_JSON).write_text(json.dumps(full_meta, indent=2) + "\n")
        fsync_file(tmp / STATE_JSON)
        _fsync_dir(tmp)
        if final.exists():  # the same step saved again (e.g. after a resume): swap, never merge
            old = root / f".tmp-old-{step:07d}-{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if keep_last > 0:
        older = [p for s, p in list_checkpoints(root) if s < step]
        for stale in older[:max(0, len(older) - (keep_last - 1))]:
            _delete(stale)
    return final


def _delete(checkpoint: Path) -> None:
    """Rename to a dot-name first (atomic), then delete: readers see the whole checkpoint or none of it."""
    gone = checkpoint.with_name(f".tmp-del-{checkpoint.name}-{os.getpid()}")
    try:
        os.replace(checkpoint, gone)
    except OSError:
        return
    shutil.rmtree(gone, ignore_errors=True)


# ------------------------------------------------------------------------------------------------
#                                          Loading
# ------------------------------------------------------------------------------------------------

def find_resume_checkpoint(path: str | os.PathLike) -> Path:
    """The newest full training checkpoint designated by ``path`` (run, checkpoints or checkpoint dir)."""
    resolved = resolve_checkpoint(path)
    if resolved.is_file() or not all((resolved / f).is_file() for f in (TRAINING_STATE_FILE, STATE_JSON)):
        raise ValueError(f"{resolved} holds inference weights only; resuming needs a full training checkpoint "
                         f"(a checkpoints/<step>/ directory with {TRAINING_STATE_FILE})")
    return resolved


def load_checkpoint(directory: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a training checkpoint: ``({"model", "ema", "optimizer", "rng"} -> tensors, JSON meta)``.

    ``optimizer`` comes back as a ready ``state_dict``; ``rng`` as one state per saved rank. Raises
    ``ValueError`` for a corrupt checkpoint.
    """
    directory = Path(directory)
    tensor_path, meta_path = directory / TRAINING_STATE_FILE, directory / STATE_JSON
    for p in (tensor_path, meta_path):
        if not p.is_file():
            raise FileNotFoundError(f"{p} is missing: {directory} is not a complete training checkpoint")
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != STATE_FORMAT:
            raise ValueError(f"unknown format {meta.get('format')!r}")
        groups: dict[str, dict[str, torch.Tensor]] = {"model": {}, "ema": {}, "optimizer": {}, "rng": {}}
        with safe_open(str(tensor_path), framework="pt") as f:
            for key in f.keys():
                group, name = key.split(".", 1)
                groups[group][name if group != "optimizer" else key] = f.get_tensor(key)
    except (SafetensorError, OSError, json.JSONDecodeError, KeyError, ValueError) as error:
        raise ValueError(f"training checkpoint {directory} is corrupt ({error}); resume from an earlier one "
                         "with --resume PATH") from error
    optimizer = _unflatten_optimizer(groups["optimizer"], meta["optimizer"])
    rng = []
    for rank, extra in enumerate(meta["rng"]):
        rng.append({"torch": groups["rng"][f"{rank}.torch"], "cuda": groups["rng"].get(f"{rank}.cuda"), **extra})
    return {"model": groups["model"], "ema": groups["ema"], "optimizer": optimizer, "rng": rng}, meta
