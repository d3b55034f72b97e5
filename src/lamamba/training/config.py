"""Training configuration: one dataclass, a table of presets, and their resolution from the command line.

A preset gives every default; flags given on the command line override it. ``paper`` is the recipe of the
paper (section 5.1) and SPEC section 7: AdamW, learning rate 1e-4, no weight decay, betas (0.9, 0.999),
global batch 256, EMA 0.9999 from the first step, constant learning rate, no gradient clipping, bf16 autocast
on GPUs (the authors: fp32 + TF32). ``digits`` is the built-in CPU demo; ``fashion-mnist`` a small GPU run;
``small`` the demo's network and recipe for any data, the default for image folders and latents on a CPU
(where the paper's 650M-parameter XL would take minutes per step).
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

__all__ = ["TrainConfig", "PRESETS", "DIGITS_DEMO_MODEL", "default_preset", "resolve_config"]


# The built-in demo's network: LaMamba-Diff at width 32 with 2x2 patches, so that the 16x16 digits become an
# 8x8 token map (one token per pixel of the original 8x8 scans; with the default window of 8 each map is a
# single attention window); one block per encoder stage and per decoder stage, SS2D inner width = block width.
# 1.6 M parameters. On a CPU the selective-scan reference is the costliest part of a step (it was 43% with
# autograd through its parallel scan; its analytic backward took ~10% off the step), which is why the SSM
# expansion is 1 here rather than 2.
DIGITS_DEMO_MODEL: dict[str, Any] = dict(embed_dim=32, cond_dim=64, num_heads=2, depths=(1, 1, 1, 0),
                                         decoder_depths=(0, 1, 1, 1), ssm_ratio=1.0, patch_size=2)

# The small recipe of the CPU demo: a large learning rate and a short, warmed-up EMA because the run is only
# hundreds of steps long (0.9999 would average over ~10,000 steps and return nearly the initial weights). Within
# the demo's 800 steps the warm-up decay (1 + n) / (10 + n) stays below 0.995, so the warm-up alone sets the EMA.
_SMALL: dict[str, Any] = dict(model="LaMamba-Diff-S", model_args=DIGITS_DEMO_MODEL, global_batch_size=64, lr=3e-3,
                              ema_decay=0.995, ema_warmup=True, max_steps=800, log_every=50, ckpt_every=200,
                              sample_every=400, sample_num=100, sample_sampler="dpm++2m", sample_steps=25,
                              sample_cfg=3.0)

PRESETS: dict[str, dict[str, Any]] = {
    # LaMamba-Diff-XL in the SD-VAE latent space (paper section 5.1); image folders need --image-size (256, 512).
    "paper": dict(data=None, model="LaMamba-Diff-XL", global_batch_size=256, lr=1e-4, ema_decay=0.9999,
                  ema_warmup=False, max_steps=400_000, log_every=100, ckpt_every=50_000, sample_every=10_000,
                  sample_num=16, sample_sampler="dpm++2m", sample_steps=20, sample_cfg=4.0),
    # The CPU demo: class-conditional digits in pixel space in a few minutes on two cores.
    "digits": dict(_SMALL, data="digits"),
    # The demo's recipe for other data (needs --data; image folders also --image-size).
    "small": dict(_SMALL, data=None),
    # Fashion-MNIST (28x28 padded to 32x32) in pixel space: a small model for one GPU.
    "fashion-mnist": dict(data="fashion-mnist", image_size=32, model="LaMamba-Diff-S",
                          model_args=dict(embed_dim=64, cond_dim=128, num_heads=4, window_size=4, patch_size=2),
                          global_batch_size=128, lr=5e-4, ema_decay=0.999, ema_warmup=True, max_steps=20_000,
                          log_every=100, ckpt_every=5_000, sample_every=2_000, sample_num=100,
                          sample_sampler="ddim", sample_steps=50, sample_cfg=3.0),
}


@dataclass
class TrainConfig:
    """Everything a run depends on (saved as ``run_config.json`` together with the model/data/diffusion)."""

    preset: str = "digits"
    # data
    data: str | None = "digits"           # "digits", "fashion-mnist", an image folder or a latent directory
    image_size: int | None = None         # pixel side (None: the dataset's own size)
    vae: str | None = None                # encode images on the fly with this VAE (latent-space training)
    num_workers: int = 0
    threads: int | None = None            # CPU threads (None: the idle cores, see distributed.cpu_threads)
    # model
    model: str = "LaMamba-Diff-S"
    model_args: dict[str, Any] = field(default_factory=dict)  # overrides of the model config
    # diffusion (SPEC 7.1)
    diffusion_steps: int = 1000
    noise_schedule: str = "linear"
    noise_offset: float = 0.0             # offset noise (Guttenberg 2023): training noise + this x N(0, 1) per sample
                                          # and channel, constant over pixels (0: the paper's Gaussian noise)
    # optimisation (paper 5.1, SPEC 7.4)
    global_batch_size: int = 256
    grad_accum: int = 1
    lr: float = 1e-4
    lr_warmup: int = 0                    # linear warm-up steps (0: constant, as the paper)
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float | None = None
    ema_decay: float = 0.9999
    ema_warmup: bool = False
    max_steps: int = 400_000
    precision: str = "auto"               # "auto" (bf16 on CUDA, fp32 on CPU), "bf16", "fp32"
    compile: bool | None = None           # torch.compile; None: on CUDA when Triton is importable (Trainer)
    compile_scope: str | None = None      # "regional": each block class compiled once, shared by same-shape
                                          # blocks; "full": one graph. None: regional with CUDA graphs (as fast,
                                          # XL compiles 83 s cold vs 126), full without (models/compile.py)
    cuda_graphs: bool | None = None       # CUDA graphs ("reduce-overhead"); None: on for compiled GPU runs
                                          # (S 4x; XL under DDP 2.1x on an H200), off for DDP + scope full
    peak_tflops: float | None = None      # the card's peak dense bf16 TFLOP/s for MFU (None: by card name)
    grad_checkpointing: bool = False
    seed: int = 0
    device: str = "auto"
    # run directory, logging, checkpoints, sample grids
    results_dir: str = "results"
    run_dir: str | None = None
    resume: str = "auto"                  # "auto", "never" or a checkpoint path
    log_every: int = 100
    ckpt_every: int = 50_000
    keep_last: int = 3
    sample_every: int = 10_000
    sample_num: int = 16
    sample_sampler: str = "dpm++2m"
    sample_steps: int = 20
    sample_cfg: float = 4.0
    tensorboard: bool = True
    # in-training sample quality (training/evaluation.py): off unless eval_every > 0
    eval_every: int = 0
    eval_samples: int = 10_000
    eval_ref: str | None = None           # statistics from `lamamba evaluate --make-ref DATA OUT`
    eval_features: str = "inception"      # the network of eval_ref: "inception", "pixels" or "torchscript"
    eval_feature_net: str | None = None   # TorchScript file ("torchscript"), or an Inception file
    eval_metrics: str = "fid"             # comma-separated: fid, sfid, is, pr
    eval_sampler: str = "dpm++2m"
    eval_steps: int = 25
    eval_cfg: float = 1.0

    def validate(self) -> None:
        if not self.data:
            raise ValueError(f"the {self.preset!r} preset needs --data (an image folder, a latent directory "
                             "from `lamamba extract-latents`, 'digits' or 'fashion-mnist')")
        positive = ("global_batch_size", "grad_accum", "max_steps", "log_every", "ckpt_every", "sample_every",
                    "diffusion_steps", "sample_steps")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be a positive integer, got {getattr(self, name)}")
        for name in ("image_size", "threads"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(self, name)}")
        for name in ("num_workers", "lr_warmup", "keep_last", "eval_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.seed < 0:
            raise ValueError(f"--seed must be >= 0, got {self.seed}")
        floats = [("lr", self.lr), ("weight-decay", self.weight_decay), ("ema-decay", self.ema_decay),
                  ("sample-cfg", self.sample_cfg), ("eval-cfg", self.eval_cfg), *(("betas", b) for b in self.betas),
                  ("grad-clip", 1.0 if self.grad_clip is None else self.grad_clip)]
        for name, value in floats:
            if not math.isfinite(value):
                raise ValueError(f"--{name} must be a finite number, got {value}")
        if not 0 < self.lr <= 1e30 or self.weight_decay < 0:  # AdamW's step size must stay a float32
            raise ValueError(f"--lr must be in (0, 1e30] and --weight-decay >= 0, got {self.lr} and "
                             f"{self.weight_decay}")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"--betas must be in [0, 1), got {tuple(self.betas)}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema-decay must be in [0, 1), got {self.ema_decay}")
        if not (math.isfinite(self.noise_offset) and self.noise_offset >= 0):
            raise ValueError(f"--noise-offset must be >= 0, got {self.noise_offset}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError(f"grad-clip must be positive, got {self.grad_clip}")
        if self.compile_scope not in (None, "regional", "full"):
            raise ValueError(f"--compile-scope must be regional or full, got {self.compile_scope!r}")
        if self.cuda_graphs and self.compile is False:
            raise ValueError("--cuda-graphs captures compiled graphs: drop --no-compile")
        if self.peak_tflops is not None and not (math.isfinite(self.peak_tflops) and self.peak_tflops > 0):
            raise ValueError(f"--peak-tflops must be a positive number, got {self.peak_tflops}")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"precision must be auto, bf16 or fp32, got {self.precision!r}")
        if self.sample_num < 0:
            raise ValueError(f"sample-num must be >= 0, got {self.sample_num}")
        if self.eval_samples < 2 or self.eval_steps < 1:
            raise ValueError("eval-samples must be >= 2 and eval-steps >= 1")
        if self.eval_every and not self.eval_ref:
            raise ValueError("--eval-every needs --eval-ref (statistics from `lamamba evaluate --make-ref`)")

    def per_rank_batch(self, world_size: int) -> int:
        """Micro-batch of one rank: global batch / (world size x accumulation steps), which must divide."""
        parts = world_size * self.grad_accum
        if self.global_batch_size % parts:
            raise ValueError(f"global batch size {self.global_batch_size} is not divisible by world size "
                             f"{world_size} x grad-accum {self.grad_accum}; choose a multiple of {parts}")
        return self.global_batch_size // parts

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))


def default_preset(data: str | None, on_cpu: bool = False) -> str:
    """The preset used when none is named: the built-in dataset's own, else the paper's (``small`` on a CPU)."""
    if data in ("digits", "fashion-mnist") or data is None:
        return data or "digits"
    return "small" if on_cpu else "paper"


def resolve_config(overrides: dict[str, Any], on_cpu: bool = False) -> TrainConfig:
    """The preset (``overrides["preset"]`` or :func:`default_preset`) updated with every non-None override.

    ``on_cpu``: the run has no GPU, which makes ``small`` the default preset for non-built-in data.
    """
    given = {k: v for k, v in overrides.items() if v is not None}
    preset = given.pop("preset", None) or default_preset(given.get("data"), on_cpu)
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(given) - fields
    if unknown:
        raise ValueError(f"unknown training option(s): {sorted(unknown)}")
    values = {**PRESETS[preset], **given, "preset": preset}
    if "model_args" in given:  # --model-arg adds to the preset's model overrides unless the model changes
        base = PRESETS[preset].get("model_args", {}) if values["model"] == PRESETS[preset].get("model") else {}
        values["model_args"] = {**base, **given["model_args"]}
    elif values["model"] != PRESETS[preset].get("model"):
        values["model_args"] = {}
    config = TrainConfig(**values)
    config.betas = tuple(config.betas)
    config.model_args = dict(config.model_args)
    config.validate()
    return config
