"""The training loop (paper section 5.1, SPEC section 7): DDP, EMA, bf16 autocast, checkpoints, sample grids.

One optimizer step (``Trainer.train_step``):

1. for each of ``grad_accum`` micro-batches: draw the timesteps and noise of the *global* micro-batch from a
   generator seeded by (seed, micro-step) and keep this rank's share (the rows the data sampler gave this
   rank: ``r, r + W, ...``), so the samples, their noise and their timesteps -- hence the loss curve -- are the
   same on any number of ranks; run the loss ``MSE(eps) + L_vb`` (SPEC 7.1) and backpropagate (DDP
   synchronises gradients on the last micro-batch only);
2. sum loss/mse/vb over ranks and take the gradient norm (one small all-reduce and one host sync per step,
   which also carries a pending stop request, so that every rank stops after the same step);
   a non-finite loss or norm stops the run *before* the weights change (``TrainingDiverged``);
3. AdamW step, EMA update. Before a checkpoint is written the weights are checked to be finite, so a
   checkpoint on disk is always a good one.

On SIGINT/SIGTERM (``training/interrupt.py``) the loop finishes the step in progress, saves a checkpoint of
it and raises ``Interrupted``.

Periodic work runs through callbacks (``Trainer.add_callback``): checkpoints and sample grids are two of
them, an in-training FID evaluation would be a third. Label dropout (the model's ``class_dropout_prob``) and
on-the-fly VAE sampling draw from each rank's global generator, which checkpoints save; dataset flips and
latent noise are seeded per item by the loader (``data/loader.py``), so workers do not change them.
"""
from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel

from lamamba.diffusion import create_diffusion
from lamamba.distributed import DistEnv, all_gather_objects, all_reduce_sum, barrier
from lamamba.flops import measure, model_tflops, peak_tflops
from lamamba.models import compile_model, create_model
from lamamba.models.compile import (cache_counts, describe_cache, release_compiled, resolve_compile,
                                    resolve_compile_scope, resolve_cuda_graphs, run_or_fall_back, uncompile)
from lamamba.sample import clip_default, generate, sample_seed, save_grid, to_uint8
from lamamba.training.checkpoint import capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint
from lamamba.training.config import TrainConfig
from lamamba.training.data import build_training_data, forever
from lamamba.training.ema import EMA
from lamamba.training.grad_checkpoint import enable_gradient_checkpointing
from lamamba.training.interrupt import Interrupted, StopSignals, signal_name
from lamamba.training.logs import RunLogger
from lamamba.training.optim import adamw

__all__ = ["Callback", "Trainer", "TrainingDiverged"]


class TrainingDiverged(RuntimeError):
    """The loss, the gradient norm or the weights became NaN or infinite; nothing of it was saved."""


@dataclass
class Callback:
    """``fn(trainer)`` after every ``every``-th optimizer step (and after the last step if ``at_end``).

    Callbacks run on every rank (so collective work such as sharded sampling is possible); use
    ``trainer.env.is_main`` for rank-0-only work.
    """

    name: str
    every: int
    fn: Callable[[Trainer], None]
    at_end: bool = True


class Trainer:
    """Builds data, model, EMA, optimizer and diffusion from a :class:`TrainConfig`; ``fit()`` trains.

    ``resume_from``: a training checkpoint directory to continue from (same step, data position and RNG).
    """

    def __init__(self, config: TrainConfig, env: DistEnv, run_dir: Path, log: RunLogger,
                 resume_from: Path | None = None) -> None:
        self.config, self.env, self.run_dir, self.log = config, env, Path(run_dir), log
        self.per_rank_batch = config.per_rank_batch(env.world_size)
        self.data = build_training_data(config, env, self.per_rank_batch)

        torch.manual_seed(config.seed)  # identical initial weights on every rank
        self.model = create_model(config.model, **self.data.model_kwargs, **config.model_args).to(env.device)
        self.diffusion = create_diffusion(noise_schedule=config.noise_schedule, diffusion_steps=config.diffusion_steps,
                                          learn_sigma=self.model.config.learn_sigma)
        self.ema = EMA(self.model, config.ema_decay, warmup=config.ema_warmup)
        if config.grad_checkpointing:
            enable_gradient_checkpointing(self.model)
        self.optimizer = adamw(self.model.parameters(), lr=config.lr, betas=tuple(config.betas),
                                weight_decay=config.weight_decay)
        self.precision = config.precision
        if self.precision == "auto":
            self.precision = "bf16" if env.device.type == "cuda" else "fp32"
        self.autocast_dtype = torch.bfloat16 if self.precision == "bf16" else None
        torch.manual_seed(config.seed * env.world_size + env.rank)  # per-rank stream (DiT, SPEC 7.4)
        self.step = 0
        if resume_from is not None:
            self._resume(Path(resume_from))

        self.ddp = (DistributedDataParallel(self.model, device_ids=[env.device.index] if env.device.type == "cuda"
                                            else None) if env.distributed else None)
        net = self.ddp if self.ddp is not None else self.model
        self.compiled = resolve_compile(config.compile, env.device, log.warning)
        self.cuda_graphs = resolve_cuda_graphs(config.cuda_graphs, compiled=self.compiled, device=env.device,
                                               distributed=env.distributed, scope=config.compile_scope)
        self.compile_scope = resolve_compile_scope(config.compile_scope, cuda_graphs=self.cuda_graphs)
        self.net = self._eager_net = net
        if self.compiled:
            self.net = compile_model(self.model, net, scope=self.compile_scope, cuda_graphs=self.cuda_graphs)
            if self.compile_scope == "regional":  # the EMA's blocks too: sample grids run compiled, without
                # CUDA graphs (a sampler keeps earlier outputs, which a later replay would overwrite)
                compile_model(self.ema.model, scope="regional")
        # the card's peak and the model FLOPs of a training image (paper convention), for MFU in the log
        card = torch.cuda.get_device_name(env.device) if env.device.type == "cuda" else "cpu"
        self.peak_tflops = config.peak_tflops or peak_tflops(card)
        self.gflops_per_image = None
        if self.peak_tflops is None:
            log.info("MFU not logged: no peak FLOP/s known for %r (--peak-tflops sets it)", card)
        else:
            self.gflops_per_image = measure(config.model, **self.data.model_kwargs, **config.model_args)["gflops"]
        self.callbacks: list[Callback] = [
            Callback("checkpoint", config.ckpt_every, Trainer.save_checkpoint),
            Callback("sample grid", config.sample_every, Trainer.save_sample_grid),
        ]
        self.last_checkpoint: Path | None = resume_from
        self.stop_signals = StopSignals()  # fit() listens to SIGINT/SIGTERM through it
        self._stop = False
        self._grid_vae: Any = self.data.vae
        self._grid_warned = False

    # ---------------------------------------------------------------------------------------------
    #                                        Setup
    # ---------------------------------------------------------------------------------------------

    def add_callback(self, name: str, every: int, fn: Callable[[Trainer], None], *, at_end: bool = True) -> None:
        """Run ``fn(trainer)`` every ``every`` steps (e.g. an FID evaluation of ``trainer.ema.model``)."""
        if every < 1:
            raise ValueError(f"callback {name!r}: every must be a positive number of steps, got {every}")
        self.callbacks.append(Callback(name, every, fn, at_end))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def run_config(self) -> dict[str, Any]:
        """The resolved configuration saved as ``run_config.json``: arguments, model, diffusion, data, ranks."""
        return {
            "train": self.config.to_dict(),
            "model_config": self.model.config.to_dict(),
            "diffusion": self.diffusion_config(),
            "data": self.data.info,
            "world_size": self.env.world_size,
            "per_rank_batch_size": self.per_rank_batch,
            "precision": self.precision,
            "compiled": self.compiled,
            "cuda_graphs": self.cuda_graphs,                  # resolved: --cuda-graphs may be left to the default
            "compile_scope": self.compile_scope,              # resolved likewise
            "device": str(self.env.device),
            "num_parameters": self.num_parameters(),
            "torch_version": torch.__version__,
        }

    def diffusion_config(self) -> dict[str, Any]:
        return {"diffusion_steps": self.config.diffusion_steps, "noise_schedule": self.config.noise_schedule,
                "learn_sigma": bool(self.model.config.learn_sigma)}

    def inference_info(self) -> dict[str, Any]:
        """``config.json`` of the inference weights: enough to rebuild the model and sample from it."""
        d = self.data.info
        return {"model": self.model.config.to_dict(), "weights": "ema", "step": self.step,
                "image_size": d["image_size"], "image_channels": d["image_channels"],
                "num_classes": d["num_classes"], "class_names": d["class_names"], "latent": d["latent"],
                "diffusion": self.diffusion_config(), "ema_decay": self.config.ema_decay, "run": self.run_dir.name}

    def _resume(self, directory: Path) -> None:
        state, meta = load_checkpoint(directory)
        saved_model = meta.get("run_config", {}).get("model_config")
        if saved_model is not None and saved_model != json.loads(json.dumps(self.model.config.to_dict())):
            raise ValueError(f"{directory} was trained with a different model configuration; resume with the "
                             "same --model/--model-arg/data settings or start a new --run-dir")
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"], meta["ema"]["num_updates"])
        self.optimizer.load_state_dict(state["optimizer"])
        for group in self.optimizer.param_groups:  # hyper-parameters come from this run's configuration
            group.update(betas=tuple(self.config.betas), weight_decay=self.config.weight_decay)
        self.data.loader.load_state_dict(meta["data"])
        self.step = int(meta["step"])
        self.log.rewind_metrics(self.step)  # the steps after the checkpoint are trained again
        if len(state["rng"]) == self.env.world_size:
            restore_rng_state(state["rng"][self.env.rank], self.env.device)
        else:
            self.log.warning("the checkpoint was written by %d rank(s), this run has %d: random streams restart "
                             "(noise and timesteps do not depend on the rank count)", len(state["rng"]),
                             self.env.world_size)
        self.log.info("resumed from %s at step %d", directory, self.step)

    # ---------------------------------------------------------------------------------------------
    #                                      One step
    # ---------------------------------------------------------------------------------------------

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.env.device.type, dtype=self.autocast_dtype)

    def _model_fn(self, x: Tensor, t: Tensor, **kwargs: Any) -> Tensor:
        with self._autocast():
            return self.net(x, t, **kwargs).float()  # the diffusion arithmetic stays float32

    def _noise_and_timesteps(self, micro_step: int, shape: torch.Size) -> tuple[Tensor, Tensor]:
        """This rank's rows of the global micro-batch's timesteps and noise (see the module docstring)."""
        W, r, dev = self.env.world_size, self.env.rank, self.env.device
        g = torch.Generator(dev).manual_seed(sample_seed(self.config.seed, micro_step))
        n = shape[0] * W
        t = torch.randint(0, self.diffusion.num_timesteps, (n,), generator=g, device=dev)[r::W]
        noise = torch.randn((n, *shape[1:]), generator=g, device=dev)
        if self.config.noise_offset:  # drawn after the noise: runs without an offset keep their random stream
            noise = noise + self.config.noise_offset * torch.randn((n, shape[1], 1, 1), generator=g, device=dev)
        return t, noise[r::W]

    def _lr(self, step: int) -> float:
        warmup = self.config.lr_warmup
        return self.config.lr * (min(1.0, step / warmup) if warmup else 1.0)

    @property
    def _gradients_in_own_tensors(self) -> bool:
        """Whether gradients accumulate in place in tensors of their own (zeroed, not freed, between steps). Needed
        with CUDA graphs and several micro-batches: autograd installs a first gradient as ``.grad`` without a copy,
        and from a CUDA graph's backward that is graph-owned memory, which the next micro-batch's replay overwrites
        (PyTorch issues 146569 and 169545: an error, or gradients that hold one micro-batch instead of the sum)."""
        return self.cuda_graphs and self.config.grad_accum > 1

    def train_step(self, batches) -> dict[str, float]:
        """One optimizer step on ``grad_accum`` micro-batches from ``batches``; returns global means."""
        cfg, dev = self.config, self.env.device
        self.model.train()
        sums = torch.zeros(3, device=dev, dtype=torch.float64)
        if self._gradients_in_own_tensors:
            for p in self.model.parameters():
                if p.requires_grad and p.grad is None:
                    p.grad = torch.zeros_like(p)
        for micro in range(cfg.grad_accum):
            if self.cuda_graphs:  # a new iteration: outputs of the previous replays may be overwritten
                torch.compiler.cudagraph_mark_step_begin()
            x, y = next(batches)
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            if self.data.encode is not None:
                x = self.data.encode(x)
            t, noise = self._noise_and_timesteps(self.step * cfg.grad_accum + micro, x.shape)
            last = micro == cfg.grad_accum - 1
            with self.ddp.no_sync() if self.ddp is not None and not last else contextlib.nullcontext():
                losses = self.diffusion.training_losses(self._model_fn, x, t, {"y": y}, noise=noise)
                (losses["loss"].mean() / cfg.grad_accum).backward()
            sums += torch.stack([losses[k].detach().sum() for k in ("loss", "mse", "vb")]).double()
        # the total norm; with no clipping the max norm is infinite and the gradients are scaled by exactly 1
        grad_norm = torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.grad is not None],
                                                   cfg.grad_clip if cfg.grad_clip is not None else math.inf)
        # gradients are identical on every rank after DDP's all-reduce, so the summed norm / W is that norm
        stop = torch.tensor([float(self.stop_signals.signum is not None)], device=dev, dtype=torch.float64)
        stats = all_reduce_sum(torch.cat([sums, grad_norm.double().reshape(1) / self.env.world_size, stop]))
        loss, mse, vb, norm, stops = stats.tolist()
        self._stop = stops > 0
        loss, mse, vb = (v / cfg.global_batch_size for v in (loss, mse, vb))
        if not (math.isfinite(loss) and math.isfinite(norm)):
            self.optimizer.zero_grad(set_to_none=True)
            cause = ("the weights were not updated with it" if self.weights_finite() else
                     "the previous update had already made the weights non-finite")
            raise TrainingDiverged(
                f"training diverged at step {self.step + 1}: loss {loss}, gradient norm {norm}; {cause}, and "
                f"{self._kept()}. Lower --lr, set --grad-clip, or use --precision fp32")
        lr = self._lr(self.step + 1)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=not self._gradients_in_own_tensors)
        self.ema.update()
        self.step += 1
        return {"loss": loss, "mse": mse, "vb": vb, "grad_norm": norm, "lr": lr}

    def weights_finite(self) -> bool:
        """Whether every weight of the trained and the EMA model is finite (one host sync)."""
        params = [*self.model.parameters(), *self.ema.model.parameters()]
        return bool(torch.stack([torch.isfinite(p).all() for p in params]).all())

    def _kept(self) -> str:
        return (f"the last good checkpoint is {self.last_checkpoint}" if self.last_checkpoint else
                "no checkpoint was written yet")

    # ---------------------------------------------------------------------------------------------
    #                                       The loop
    # ---------------------------------------------------------------------------------------------

    def fit(self) -> None:
        """Train until ``max_steps``, logging every ``log_every`` steps and running the callbacks.

        Raises ``Interrupted`` after saving a checkpoint when SIGINT or SIGTERM arrives, and
        ``TrainingDiverged`` on a non-finite loss, gradient or weights.
        """
        with self.stop_signals:
            self._fit()

    def _fit(self) -> None:
        cfg = self.config
        batches = forever(self.data.loader)
        self.log.progress(self.step, cfg.max_steps)
        window: dict[str, float] = {}
        window_steps, timed_steps, window_time = 0, 0, 0.0
        first = self.step
        cache_before = cache_counts()
        while self.step < cfg.max_steps:
            tic = time.perf_counter()
            stats = self._first_step(batches) if self.step == first else self.train_step(batches)
            elapsed = time.perf_counter() - tic
            window_steps += 1
            if self.step == first + 1:  # this process's first step: it compiles, so it is not in img/s
                self._log_first_step(elapsed, cache_before)
                first_elapsed = elapsed
            else:
                timed_steps, window_time = timed_steps + 1, window_time + elapsed
            for key in ("loss", "mse", "vb", "grad_norm"):
                window[key] = window.get(key, 0.0) + stats[key]
            self.log.advance(loss=f"{stats['loss']:.4f}", img_s=f"{cfg.global_batch_size / elapsed:.0f}")
            if self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
                values = {k: v / window_steps for k, v in window.items()}
                images_per_sec = (cfg.global_batch_size * timed_steps / window_time if timed_steps else
                                  cfg.global_batch_size / first_elapsed)
                values.update(lr=stats["lr"], images_per_sec=images_per_sec, epoch=self.data.loader.epoch)
                mfu = ""
                if self.peak_tflops:
                    values["mfu"] = (model_tflops(self.gflops_per_image, images_per_sec, training=True)
                                     / (self.peak_tflops * self.env.world_size))
                    mfu = f"  MFU {100 * values['mfu']:.1f}%"
                self.log.metrics(self.step, values)
                self.log.info("step %d  loss %.4f  mse %.4f  vb %.4f  grad %.3f  %.1f img/s%s", self.step,
                              values["loss"], values["mse"], values["vb"], values["grad_norm"],
                              values["images_per_sec"], mfu)
                window, window_steps, timed_steps, window_time = {}, 0, 0, 0.0
            if self._stop:
                self._stop_now()
            for callback in self.callbacks:
                if self.step % callback.every == 0 or (callback.at_end and self.step == cfg.max_steps):
                    callback.fn(self)

    def _first_step(self, batches) -> dict[str, float]:
        """This process's first step, which compiles. When compiling was the default (``--compile`` not given) and
        fails, one warning, then the run goes on eagerly from the same micro-batches and random state (gradients of
        the failed attempt cleared; no optimizer step was taken), so it trains exactly as a ``--no-compile`` run
        would. An explicit ``--compile`` that fails raises."""
        if not self.compiled or self.config.compile is not None:
            return self.train_step(batches)
        micro = [next(batches) for _ in range(self.config.grad_accum)]
        rng = capture_rng_state(self.env.device)                 # e.g. the label dropout's draws

        def undo() -> None:
            restore_rng_state(rng, self.env.device)
            self.optimizer.zero_grad(set_to_none=True)
            uncompile(self.model)
            uncompile(self.ema.model)
            release_compiled()
            self.net, self.compiled, self.cuda_graphs = self._eager_net, False, False

        return run_or_fall_back(
            lambda: self.train_step(iter(micro)), allowed=True, undo=undo,
            warn=lambda reason: self.log.warning("compiling failed (%s); training without torch.compile instead "
                                                 "(--no-compile skips compiling)", reason))

    def _log_first_step(self, elapsed: float, cache_before: dict[str, int]) -> None:
        """Time to the first step, which compiles: cold (Inductor cache misses) or warm (hits only)."""
        if not self.compiled:
            self.log.info("first step in %.1f s", elapsed)
            return
        self.log.info("first step in %.1f s, compiling (%s scope; Inductor cache %s in %s)", elapsed,
                      self.compile_scope, describe_cache(cache_before), os.environ["TORCHINDUCTOR_CACHE_DIR"])

    # ---------------------------------------------------------------------------------------------
    #                                 Checkpoints and samples
    # ---------------------------------------------------------------------------------------------

    def _stop_now(self) -> None:
        """Save the step just finished (all ranks) and raise ``Interrupted``."""
        saved = self.last_checkpoint is not None and self.last_checkpoint.name == f"{self.step:07d}"
        if not saved:
            self.save_checkpoint()
        signum = self.stop_signals.signum or signal.SIGTERM  # a rank that was not signalled itself
        raise Interrupted(signum, f"interrupted by {signal_name(signum)} at step {self.step}: saved "
                                  f"{self.last_checkpoint}; the same command (or --run-dir {self.run_dir}) resumes it")

    def save_checkpoint(self) -> Path | None:
        """Write the full training state of every rank (rank 0 writes; all ranks must call this).

        Non-finite weights (a finite loss can still make them so, e.g. with a huge learning rate) raise
        ``TrainingDiverged`` instead, so that every checkpoint on disk is a good one.
        """
        if not self.weights_finite():
            raise TrainingDiverged(f"training diverged by step {self.step}: the weights are no longer finite "
                                   f"although the loss was; nothing was saved and {self._kept()}. Lower --lr, "
                                   "set --grad-clip, or use --precision fp32")
        rng_states = all_gather_objects(capture_rng_state(self.env.device))
        path = None
        if self.env.is_main:
            meta = {"data": self.data.loader.state_dict(), "world_size": self.env.world_size,
                    "ema": {"decay": self.ema.decay, "warmup": self.ema.warmup, "num_updates": self.ema.num_updates},
                    "run_config": self.run_config()}
            path = save_checkpoint(self.run_dir / "checkpoints", self.step, model=self.model,
                                   ema_model=self.ema.model, optimizer=self.optimizer, rng_states=rng_states,
                                   meta=meta, info=self.inference_info(), keep_last=self.config.keep_last)
            self.log.info("saved checkpoint %s", path)
        barrier()
        self.last_checkpoint = path or self.run_dir / "checkpoints" / f"{self.step:07d}"
        return path

    def grid_labels(self) -> Tensor | None:
        """Fixed labels of the sample grid: every class in turn, or a fixed random draw if there are many."""
        n, k = self.config.sample_num, self.data.info["num_classes"]
        if k == 0:
            return None
        if k <= n:
            return torch.arange(n) % k
        return torch.randint(k, (n,), generator=torch.Generator().manual_seed(self.config.seed))

    def save_sample_grid(self) -> Path | None:
        """Rank 0 samples the EMA model from fixed noise and labels into ``samples/<step>.png``."""
        cfg = self.config
        if not self.env.is_main or cfg.sample_num == 0:
            return None
        decode = self._grid_decoder()
        if decode is None:
            return None
        labels, images = self.grid_labels(), []
        for start in range(0, cfg.sample_num, self.per_rank_batch):
            idx = range(start, min(start + self.per_rank_batch, cfg.sample_num))
            draw = functools.partial(
                generate, self.ema.model, self.diffusion, indices=idx,
                labels=None if labels is None else labels[start:idx.stop], seed=cfg.seed, sampler=cfg.sample_sampler,
                steps=cfg.sample_steps, cfg_scale=cfg.sample_cfg, device=self.env.device,
                autocast_dtype=self.autocast_dtype, clip_denoised=clip_default(self.data.info))
            # the EMA's blocks (regional scope) compile at the first grid
            z = run_or_fall_back(
                draw, allowed=self.config.compile is None, undo=lambda: uncompile(self.ema.model),
                warn=lambda reason: self.log.warning("compiling the EMA model for sample grids failed (%s); "
                                                     "sampling them without torch.compile instead", reason))
            images.append(to_uint8(decode(z)))
        k = self.data.info["num_classes"]
        nrow = k if 0 < k <= 16 and cfg.sample_num % k == 0 else None
        path = save_grid(np.concatenate(images), self.run_dir / "samples" / f"{self.step:07d}.png",
                         nrow=nrow)
        self.log.info("saved sample grid %s", path)
        return path

    def _grid_decoder(self) -> Callable[[Tensor], Tensor] | None:
        latent = self.data.info["latent"]
        if latent is None:
            return lambda z: z.clamp(-1, 1)
        if self._grid_vae is None:
            try:
                from lamamba.autoencoder import load_vae

                self._grid_vae = load_vae(latent["vae"], device=self.env.device)
            except (ImportError, OSError, ValueError) as error:
                if not self._grid_warned:
                    self.log.warning("no sample grids: cannot load the VAE %r to decode them (%s)", latent["vae"],
                                     error)
                    self._grid_warned = True
                return None
        return self._grid_vae.decode
