"""``lamamba train``: train LaMamba-Diff (or a DiT baseline) with the paper's recipe, or the built-in demo.

With no arguments it trains a small class-conditional LaMamba-Diff on scikit-learn's digits (16x16 pixels,
CPU, a few minutes) and writes sample grids to ``results/<NNN>-<model>/samples/``. Under
``torchrun --nproc_per_node=N`` it trains with DistributedDataParallel (NCCL on CUDA, gloo on CPU).

    lamamba train                                              # the digits demo
    lamamba train --data fashion-mnist                         # Fashion-MNIST preset (one GPU)
    lamamba train --preset paper --data latents/imagenet256    # the paper's XL recipe on extracted latents
    torchrun --nproc_per_node=8 -m lamamba.train --preset paper --data /imagenet/train \\
        --vae stabilityai/sd-vae-ft-mse --model LaMamba-Diff-XL --image-size 256

A run directory holds ``run_config.json`` (everything resolved, written before training), ``log.txt``,
``metrics.jsonl``, ``samples/`` and ``checkpoints/<step>/``; giving the same ``--run-dir`` again resumes from its
newest checkpoint, and so does the same command without ``--run-dir`` after an interrupted run (see
``training/rundir.py``). SIGINT/SIGTERM save a checkpoint of the current step and exit with 130/143.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Any

__all__ = ["add_arguments", "run", "main"]


def _model_arg(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value  # a bare word: the string itself (e.g. attention=none)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``lamamba train``; every default not shown comes from the preset (see training/config.py)."""
    from lamamba.diffusion.samplers import SAMPLERS
    from lamamba.training.config import PRESETS

    g = parser.add_argument_group("preset and data")
    g.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="default settings: digits (CPU demo), fashion-mnist, paper, small (the demo's network "
                        "for any data) (default: the built-in dataset's own preset, else paper on a GPU and "
                        "small on a CPU)")
    g.add_argument("--data", default=None, help="'digits' (default), 'fashion-mnist', an image folder or a "
                                                "latent directory from `lamamba extract-latents`")
    g.add_argument("--image-size", type=int, default=None, help="pixel side (default: the dataset's; paper: 256)")
    g.add_argument("--vae", default=None, help="train in this VAE's latent space, encoding on the fly "
                                               "(hub id or local directory; needs `pip install lamamba[vae]`)")
    g.add_argument("--num-workers", type=int, default=None, help="DataLoader workers per process (default: 0)")
    g.add_argument("--threads", type=int, default=None,
                   help="CPU threads per process (default: OMP_NUM_THREADS, else the cores not busy with other "
                        "work; torch's all-cores default is 15x slower on a loaded laptop)")

    g = parser.add_argument_group("model and diffusion")
    g.add_argument("--model", default=None, help="registered model name, e.g. LaMamba-Diff-XL or DiT-XL/2")
    g.add_argument("--model-arg", dest="model_args", type=_model_arg, action="append", default=None,
                   metavar="KEY=VALUE", help="override a model config field (JSON value), repeatable")
    g.add_argument("--diffusion-steps", type=int, default=None, help="training diffusion steps (default: 1000)")
    g.add_argument("--noise-schedule", default=None, help="beta schedule (default: linear)")
    g.add_argument("--noise-offset", type=float, default=None,
                   help="offset noise: add this x N(0, 1) per sample and channel, constant over the pixels, to the "
                        "training noise (Guttenberg 2023; e.g. 0.1; default: 0, the paper's noise)")

    g = parser.add_argument_group("optimisation")
    g.add_argument("--global-batch-size", type=int, default=None, help="images per step over all processes")
    g.add_argument("--grad-accum", type=int, default=None, help="micro-batches per optimizer step (default: 1)")
    g.add_argument("--lr", type=float, default=None, help="AdamW learning rate (paper: 1e-4)")
    g.add_argument("--lr-warmup", type=int, default=None, help="linear learning-rate warm-up steps (default: 0)")
    g.add_argument("--weight-decay", type=float, default=None, help="AdamW weight decay (paper: 0)")
    g.add_argument("--betas", type=float, nargs=2, default=None, metavar=("B1", "B2"),
                   help="AdamW betas (default: 0.9 0.999)")
    g.add_argument("--grad-clip", type=float, default=None, help="clip the gradient norm to this (default: off)")
    g.add_argument("--ema-decay", type=float, default=None, help="EMA decay (paper: 0.9999)")
    g.add_argument("--ema-warmup", action=argparse.BooleanOptionalAction, default=None,
                   help="EMA decay min(decay, (1+n)/(10+n)) at update n (demo presets: on)")
    g.add_argument("--max-steps", type=int, default=None, help="optimizer steps to train for")
    g.add_argument("--precision", choices=("auto", "bf16", "fp32"), default=None,
                   help="auto: bf16 autocast on CUDA, fp32 on CPU (parameters are always fp32)")
    g.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the model (default: on CUDA when Triton is installed, off on CPU)")
    g.add_argument("--compile-scope", choices=("regional", "full"), default=None,
                   help="regional: each block class compiled once and shared by the blocks of the same shape, "
                        "EMA sample grids compiled too; full: the whole model as one graph. Default: regional with "
                        "CUDA graphs, full without")
    g.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=None,
                   help="replay the compiled training step as CUDA graphs (mode reduce-overhead; static shapes). "
                        "Default: on for compiled GPU runs (on an H200 LaMamba-Diff-S trained 4x faster than "
                        "eager with the same losses; LaMamba-Diff-XL under torchrun 2.1x faster than the whole "
                        "model compiled without them), except multi-GPU runs given --compile-scope full")
    g.add_argument("--peak-tflops", type=float, default=None,
                   help="the card's peak dense bf16 TFLOP/s for the logged MFU (default: by card name)")
    g.add_argument("--grad-checkpointing", action="store_true", default=None,
                   help="recompute block activations in the backward pass (less memory, ~30%% slower)")
    g.add_argument("--seed", type=int, default=None, help="global seed (default: 0)")
    g.add_argument("--device", default=None, help="auto (default), cpu, cuda or cuda:N")

    g = parser.add_argument_group("run directory, logging and checkpoints")
    g.add_argument("--results-dir", default=None, help="parent of numbered run directories (default: results)")
    g.add_argument("--run-dir", default=None, help="use this run directory (resumes it if it has checkpoints; "
                                                   "one process at a time)")
    g.add_argument("--resume", default=None, metavar="auto|never|PATH",
                   help="auto: continue from the run directory's newest checkpoint if any; without --run-dir, "
                        "the newest unfinished run of the same configuration (default); never: a new run; or a "
                        "run/checkpoint directory to continue from")
    g.add_argument("--log-every", type=int, default=None, help="log metrics every N steps")
    g.add_argument("--ckpt-every", type=int, default=None, help="save a checkpoint every N steps (and at the end)")
    g.add_argument("--keep-last", type=int, default=None, help="keep the newest K checkpoints, 0 = all (default: 3)")
    g.add_argument("--sample-every", type=int, default=None, help="save an EMA sample grid every N steps")
    g.add_argument("--sample-num", type=int, default=None, help="images in the sample grid (0: no grids)")
    g.add_argument("--sample-sampler", choices=SAMPLERS, default=None, help="grid sampler")
    g.add_argument("--sample-steps", type=int, default=None, help="grid sampling steps")
    g.add_argument("--sample-cfg", type=float, default=None, help="grid guidance scale")
    g.add_argument("--no-tensorboard", dest="tensorboard", action="store_false", default=None,
                   help="do not write TensorBoard events")

    g = parser.add_argument_group("in-training evaluation (FID of EMA samples; see docs/EVALUATION.md)")
    g.add_argument("--eval-every", type=int, default=None, help="evaluate every N steps (default: 0, off)")
    g.add_argument("--eval-samples", type=int, default=None, help="samples per evaluation (default: 10000)")
    g.add_argument("--eval-ref", default=None, help="reference statistics from `lamamba evaluate --make-ref`")
    g.add_argument("--eval-features", choices=("inception", "pixels", "torchscript"), default=None,
                   help="feature network of --eval-ref (default: inception)")
    g.add_argument("--eval-feature-net", default=None, help="TorchScript feature network or Inception file")
    g.add_argument("--eval-metrics", default=None, help="comma-separated: fid, sfid, is, pr (default: fid)")
    g.add_argument("--eval-sampler", choices=SAMPLERS, default=None,
                   help="sampler for evaluation (default: dpm++2m)")
    g.add_argument("--eval-steps", type=int, default=None, help="sampling steps (default: 25)")
    g.add_argument("--eval-cfg", type=float, default=None, help="guidance scale (default: 1.0, none)")


def config_from_args(args: argparse.Namespace):
    """The resolved :class:`TrainConfig` of parsed ``lamamba train`` arguments."""
    import torch

    from lamamba.training.config import TrainConfig, resolve_config

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    overrides = {k: v for k, v in vars(args).items() if k in names}
    if overrides.get("model_args") is not None:
        overrides["model_args"] = dict(overrides["model_args"])
    device = overrides.get("device") or "auto"
    on_cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    return resolve_config(overrides, on_cpu=on_cpu)


def run(args: argparse.Namespace) -> int:
    """Train as configured by ``args``; returns 0, or 1 if training diverged (NaN/inf loss or weights).

    SIGINT/SIGTERM raise ``Interrupted`` (exit 130/143 through ``lamamba.cli.run_command``) after a checkpoint.
    """
    import torch

    from lamamba.cli import EXIT_DIVERGED
    from lamamba.distributed import barrier, init_distributed, set_cpu_threads, shutdown_distributed
    from lamamba.training.logs import RunLogger
    from lamamba.training.loop import Trainer, TrainingDiverged
    from lamamba.training.rundir import open_run_directory

    config = config_from_args(args)
    env = init_distributed(config.device)
    directory = None
    try:
        threads = set_cpu_threads(config.threads, env.device, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
        if env.device.type == "cuda":  # TF32 matmuls/convolutions, as the authors (never set at import)
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        directory = open_run_directory(config, env)
        run_dir = directory.path
        barrier()
        with RunLogger(run_dir, is_main=env.is_main, tensorboard=config.tensorboard) as log:
            if directory.resume is not None and not config.run_dir and config.resume == "auto":
                log.info("resuming %s: an unfinished run of the same configuration (--resume never starts a "
                         "new one)", run_dir)
            trainer = Trainer(config, env, run_dir, log, resume_from=directory.resume)
            if config.eval_every:
                from lamamba.training.evaluation import SampleQualityCallback

                trainer.add_callback("evaluate", config.eval_every, SampleQualityCallback(trainer))
            resolved = trainer.run_config()
            if env.is_main:
                (run_dir / "run_config.json").write_text(json.dumps(resolved, indent=2) + "\n")
            log.info("run directory %s (preset %s)", run_dir, config.preset)
            where = (f"1 process on {env.device}" if env.world_size == 1 else
                     f"{env.world_size} processes on {env.device.type}, one device each")
            log.info("%s: %.2f M parameters, %s, %s%s, %s%s, batch %d per process x %d "
                     "accumulation", config.model, trainer.num_parameters() / 1e6, resolved["data"]["dataset"],
                     where, f" ({threads} threads)" if threads else "", trainer.precision,
                     f", compiled ({trainer.compile_scope}{', CUDA graphs' if trainer.cuda_graphs else ''})"
                     if trainer.compiled else "", trainer.per_rank_batch, config.grad_accum)
            directory.started = True
            try:
                trainer.fit()
            except TrainingDiverged as error:
                log.error("%s", error)
                if not env.is_main:
                    print(f"rank {env.rank}: {error}", file=sys.stderr)
                return EXIT_DIVERGED
            log.info("done: %d steps; newest checkpoint %s", trainer.step, trainer.last_checkpoint)
    finally:
        if directory is not None:
            directory.close()
        shutdown_distributed()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lamamba.train", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    from lamamba.cli import run_command

    return run_command("train", run, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
