"""The ``curve`` stage of ``lamamba experiment fashion-mnist``: sample quality along training.

With ``--curve-points K`` training keeps K evenly spaced checkpoints; this stage samples ``--curve-samples``
class-balanced images from the EMA weights of each (the experiment's sampler, no guidance; plus, with
``--curve-cfg S > 1``, as many with guidance S for the class accuracy), scores them against the test set with
the experiment's feature networks, and appends one line per checkpoint to ``runs/<run>/curve.jsonl``:

    {"step", "images", "train_seconds", "gpu_seconds", "num_samples", "noise_fraction",
     "fid_inception", "fd_classifier", "class_accuracy", "class_accuracy_cfg"}

``train_seconds`` is the training wall-clock time up to that step (from ``metrics.jsonl``, stitched across
resumes, interpolated between logging steps), ``gpu_seconds`` that times the number of processes: the axis on
which models of different speed are compared at equal cost. Points already in the file are skipped, so the
stage resumes. FIDs from a few thousand samples are biased upwards: compare curves at the same sample count only.
``plot_curves`` draws them for the report (``curves.png``: each score against training images and against
GPU-seconds, one line per run).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lamamba.experiment.fashion_mnist import NUM_CLASSES, ExperimentConfig, Run, noise_fraction, run_dir, score_images

__all__ = ["curve_run", "read_curve", "plot_curves", "SCORES"]

logger = logging.getLogger("lamamba.experiment")

# curve.jsonl key -> axis title
SCORES = {"fid_inception": "FID (Inception)", "fd_classifier": "FD (Fashion-MNIST classifier)",
          "class_accuracy": "class accuracy (no guidance)", "class_accuracy_cfg": "class accuracy (guided)"}


def read_curve(directory: Path) -> list[dict[str, Any]]:
    path = directory / "curve.jsonl"
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return sorted(rows, key=lambda r: r["step"])


def _train_seconds(directory: Path) -> tuple[np.ndarray, np.ndarray, int]:
    """(steps, seconds) of the run's log, from step 0 at 0 s, and its number of processes."""
    from lamamba.plot import read_metrics

    records = read_metrics(directory)
    steps = np.array([0] + [r["step"] for r in records], dtype=np.float64)
    seconds = np.array([0.0] + [r["seconds"] for r in records], dtype=np.float64)
    config = directory / "run_config.json"
    world = json.loads(config.read_text()).get("world_size", 1) if config.is_file() else 1
    return steps, seconds, int(world)


def _draw(cfg: ExperimentConfig, model, diffusion, n: int, cfg_scale: float, device: torch.device) -> np.ndarray:
    from lamamba.sample import generate, to_uint8

    labels = torch.arange(n) % NUM_CLASSES
    images = []
    for start in range(0, n, cfg.sample_batch):
        idx = range(start, min(start + cfg.sample_batch, n))
        z = generate(model, diffusion, indices=idx, labels=labels[idx.start:idx.stop], seed=0, sampler=cfg.sampler,
                     steps=cfg.sample_steps, cfg_scale=cfg_scale, device=device,
                     autocast_dtype=torch.bfloat16 if device.type == "cuda" else None,
                     clip_denoised=cfg.clip_denoised, center_noise=cfg.center_noise)
        images.append(to_uint8(z))
    return np.concatenate(images)


def curve_run(cfg: ExperimentConfig, run: Run) -> Path | None:
    """Score every kept checkpoint of ``run`` not yet in its ``curve.jsonl``; None when curves are off."""
    from lamamba.diffusion import create_diffusion
    from lamamba.distributed import pick_device
    from lamamba.pretrained import list_checkpoints, load_model_info, load_pretrained

    if cfg.curve_points <= 0:
        return None
    directory = run_dir(cfg, run)
    checkpoints = list_checkpoints(directory / "checkpoints")
    if not checkpoints:
        raise FileNotFoundError(f"{run.name}: no checkpoints under {directory / 'checkpoints'}; run the train "
                                "stage with --curve-points first")
    path = directory / "curve.jsonl"
    done = {r["step"] for r in read_curve(directory)}
    steps, seconds, world = _train_seconds(directory)
    device = pick_device(cfg.device)
    labels = np.arange(cfg.curve_samples) % NUM_CLASSES
    for step, checkpoint in checkpoints:
        if step in done:
            continue
        model = load_pretrained(checkpoint, use_ema=True, device=device)
        diffusion = create_diffusion(**load_model_info(checkpoint)["diffusion"])
        images = _draw(cfg, model, diffusion, cfg.curve_samples, 1.0, device)
        train_seconds = float(np.interp(step, steps, seconds))
        row: dict[str, Any] = dict(step=step, images=step * cfg.batch_size, train_seconds=train_seconds,
                                   gpu_seconds=train_seconds * world, num_samples=len(images),
                                   noise_fraction=noise_fraction(images))
        for network in cfg.features:
            result = score_images(cfg, images, labels, network, metrics=("fid",))
            row["fid_inception" if network == "inception" else "fd_classifier"] = result["fid"]
            if "class_accuracy" in result:
                row["class_accuracy"] = result["class_accuracy"]
        if cfg.curve_cfg > 1 and "classifier" in cfg.features:
            guided = _draw(cfg, model, diffusion, cfg.curve_samples, cfg.curve_cfg, device)
            row["class_accuracy_cfg"] = score_images(cfg, guided, labels, "classifier", metrics=())["class_accuracy"]
            row["cfg_scale"] = cfg.curve_cfg
        with path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        logger.info("%s: curve point at step %d: %s", run.name, step,
                    ", ".join(f"{k} {v:.4g}" for k, v in row.items() if k in SCORES))
        del model
    return path


def plot_curves(cfg: ExperimentConfig, runs: list[Run]) -> Path | None:
    """``curves.png`` under ``--out``: every score of the runs' curves against training images (top) and
    GPU-seconds (bottom); None when no run has a curve."""
    from lamamba.extras import require

    curves = {r.label: read_curve(run_dir(cfg, r)) for r in runs}
    curves = {label: rows for label, rows in curves.items() if rows}
    if not curves:
        return None
    require("matplotlib", "plot", "the experiment's curve plot")
    from matplotlib.figure import Figure  # no pyplot: no global state

    keys = [k for k in SCORES if any(k in row for rows in curves.values() for row in rows)]
    figure = Figure(figsize=(4 * len(keys), 7), layout="constrained")
    axes = figure.subplots(2, len(keys), squeeze=False)
    for col, key in enumerate(keys):
        for row_index, (x, title) in enumerate((("images", "training images"), ("gpu_seconds", "GPU-seconds"))):
            axis = axes[row_index][col]
            for label, rows in curves.items():
                points = [(r[x], r[key]) for r in rows if key in r]
                if points:
                    axis.plot(*zip(*points), marker="o", label=label)
            axis.set_title(SCORES[key])
            axis.set_xlabel(title)
            axis.grid(alpha=0.3)
            axis.legend(fontsize="small")
    out = Path(cfg.out) / "curves.png"
    figure.savefig(out, dpi=100)
    return out
