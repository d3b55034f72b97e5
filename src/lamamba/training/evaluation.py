"""In-training sample quality: every ``eval_every`` steps, sample ``eval_samples`` images from the EMA model
(sharded over the ranks, class labels balanced) and log FID (and the other ADM-suite metrics asked for)
against reference statistics written by ``lamamba evaluate --make-ref DATA OUT``.

The reference statistics name the feature network that produced them; the run builds the same network
(``--eval-features``) and refuses to start if they differ. Values go to ``metrics.jsonl`` and TensorBoard
as ``eval_<metric>``, with the sample count and the feature network beside them. FID from N samples is
biased upwards as N shrinks: compare values only at the same N (see docs/EVALUATION.md).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from lamamba.distributed import all_gather_objects, barrier
from lamamba.sample import clip_default, generate, shard_range, to_uint8

if TYPE_CHECKING:
    from lamamba.training.loop import Trainer


class SampleQualityCallback:
    """A ``Trainer`` callback; build it before training so that a bad reference fails at start-up."""

    def __init__(self, trainer: Trainer):
        from lamamba.evaluation import load_feature_extractor, load_stats

        cfg = trainer.config
        if not cfg.eval_ref or not Path(cfg.eval_ref).is_file():
            raise FileNotFoundError(f"--eval-ref {cfg.eval_ref!r} is not a file; make one with "
                                    "`lamamba evaluate --make-ref DATA OUT`")
        self.metrics = tuple(m.strip() for m in cfg.eval_metrics.split(",") if m.strip())
        self.ref = self.extractor = None
        if trainer.env.is_main:  # only rank 0 scores; the others only sample
            self.ref = load_stats(cfg.eval_ref)
            self.extractor = load_feature_extractor(cfg.eval_features, cfg.eval_feature_net, trainer.env.device,
                                                    logits="is" in self.metrics)
            if self.ref.network != self.extractor.name:
                raise ValueError(f"--eval-ref was computed with the feature network {self.ref.network!r}, but "
                                 f"--eval-features gives {self.extractor.name!r}; use the same network for both")
        self.labels = self._balanced_labels(cfg.eval_samples, trainer.data.info["num_classes"])

    @staticmethod
    def _balanced_labels(n: int, num_classes: int) -> torch.Tensor | None:
        return None if num_classes == 0 else torch.arange(n) % num_classes

    def __call__(self, trainer: Trainer) -> None:
        cfg, env = trainer.config, trainer.env
        decode = trainer._grid_decoder()
        if decode is None:  # a latent run whose VAE cannot be loaded: already warned once
            return
        mine = shard_range(cfg.eval_samples, env.rank, env.world_size)
        images = []
        for start in range(mine.start, mine.stop, trainer.per_rank_batch):
            idx = range(start, min(start + trainer.per_rank_batch, mine.stop))
            z = generate(trainer.ema.model, trainer.diffusion, indices=idx,
                         labels=None if self.labels is None else self.labels[idx.start:idx.stop],
                         seed=cfg.seed, sampler=cfg.eval_sampler, steps=cfg.eval_steps, cfg_scale=cfg.eval_cfg,
                         device=env.device, autocast_dtype=trainer.autocast_dtype,
                         clip_denoised=clip_default(trainer.data.info))
            images.append(to_uint8(decode(z)))
        shards = all_gather_objects(np.concatenate(images) if images else None)  # a rank may get none
        if env.is_main:
            from lamamba.evaluation import evaluate_samples

            samples = np.concatenate([s for s in shards if s is not None])
            result = evaluate_samples(samples, self.ref, self.extractor, metrics=self.metrics)
            values = {f"eval_{k}": v for k, v in result.items()}
            trainer.log.metrics(trainer.step, values)
            scores = ", ".join(f"{k} {v:.3f}" for k, v in result.items() if isinstance(v, float))
            trainer.log.info("step %d: %s (%d EMA samples, %s)", trainer.step, scores, result["num_samples"],
                             result["feature_network"])
        barrier()
