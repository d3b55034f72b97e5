"""Census of the digits demo's samples (issue 13, items 1 and 4): accuracy, outlier pixels, noise, diversity.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/digits_samples.py results/demo0 \
        --checkpoints 400,800 --settings dpm++2m:25:1:0:ema,dpm++2m:25:1:1:ema --n 500 [--json out.json]

A setting is ``sampler:steps:cfg:clip:weights[:center]`` (clip 1 = ``clip_denoised``; weights ``ema`` or ``raw``;
``center``: zero-mean initial noise, ``generate(center_noise=True)``).
Samples are ``n / 10`` per class, sample i of the run seed 0 with label ``i // (n / 10)``, drawn with
``lamamba.sample.generate`` (the function ``lamamba sample`` calls), in fp32. Per setting it prints:

* ``acc``: share classified as their label by a logistic regression fitted on scikit-learn's real 8x8
  digits (the demo test's judge), on samples clamped to [-1, 1] and averaged 2x2 back to 8x8;
* ``spike``: share of samples with an *isolated outlier pixel*: a pixel differing from the mean of its 4
  neighbours (edge-replicated) by more than the largest such difference in any real 16x16 digit (0.357);
  ``outlier``: the same with a difference above 1.0 (half the pixel range: an isolated saturated pixel);
* ``range``: share of samples with a raw pixel outside [-1.1, 1.1] before the clamp;
* ``noise``: share of *noise samples*: mean absolute difference between horizontal neighbours above the
  largest of any real digit (0.345); ``lowconf``: the classifier's top probability below 0.3;
* with ``--eps-probe``, per checkpoint: the EMA model's eps estimate at t = 999 on the initial noise of the
  samples, averaged over pixels binned by their value x_t (the right answer is x_t to within 0.006);
* ``bright``: the spread of the samples' mean brightness (std over samples of the mean pixel) / the same
  for real digits; ``shift``: (samples' mean brightness - real digits') / the real std (does a sampling
  option narrow or move the brightness distribution?);
* ``div``: mean pairwise L2 distance of same-class samples / the same for real digits of that class,
  averaged over classes; ``dup``: share of same-class sample pairs closer than the closest real pair of
  that class (near-identical images).
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

from lamamba.data import build_dataset
from lamamba.diffusion import create_diffusion
from lamamba.pretrained import list_checkpoints, load_model_info, load_pretrained
from lamamba.sample import generate, sample_seed


def to_8x8(images: torch.Tensor) -> np.ndarray:
    """(N, 1, 16, 16) in [-1, 1] -> (N, 64) in [0, 1], the scale of ``load_digits().images / 16``."""
    return ((F.interpolate(images.clamp(-1, 1), size=(8, 8), mode="area") + 1) / 2).reshape(len(images), -1).numpy()


def spike(images: torch.Tensor) -> torch.Tensor:
    """Per image, the largest |pixel - mean of its 4 neighbours| (edges replicated)."""
    p = F.pad(images, (1, 1, 1, 1), mode="replicate")
    mean4 = (p[..., :-2, 1:-1] + p[..., 2:, 1:-1] + p[..., 1:-1, :-2] + p[..., 1:-1, 2:]) / 4
    return (images - mean4).abs().flatten(1).amax(1)


def roughness(images: torch.Tensor) -> torch.Tensor:
    """Per image, the mean |difference| of horizontal neighbours (the Fashion-MNIST noise statistic)."""
    return (images[..., 1:] - images[..., :-1]).abs().flatten(1).mean(1)


def pairwise(images: torch.Tensor) -> torch.Tensor:
    flat = images.flatten(1)
    d = torch.cdist(flat, flat)
    return d[torch.triu(torch.ones_like(d, dtype=torch.bool), diagonal=1)]


class Judge:
    """Everything measured against real data: the classifier and the real-digit thresholds."""

    def __init__(self):
        digits = load_digits()
        self.classifier = LogisticRegression(max_iter=2000).fit(digits.images.reshape(len(digits.images), -1) / 16,
                                                                digits.target)
        real = build_dataset("digits", split="all")
        self.spike_max = float(spike(real.images).max())
        self.rough_max = float(roughness(real.images).max())
        brightness = real.images.flatten(1).mean(1)
        self.bright_mean, self.bright_std = float(brightness.mean()), float(brightness.std())
        self.real_spread, self.real_min = {}, {}
        for c in range(10):
            d = pairwise(real.images[real.labels == c])
            self.real_spread[c], self.real_min[c] = float(d.mean()), float(d.min())

    def __call__(self, raw: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        x = raw.clamp(-1, 1)
        proba = self.classifier.predict_proba(to_8x8(x))
        div, dup = [], []
        for c in labels.unique().tolist():
            d = pairwise(x[labels == c])
            div.append(float(d.mean()) / self.real_spread[c])
            dup.append(float((d < self.real_min[c]).float().mean()))
        return dict(acc=float((proba.argmax(1) == labels.numpy()).mean()),
                    spike=float((spike(x) > self.spike_max).float().mean()),
                    outlier=float((spike(x) > 1.0).float().mean()),
                    range=float((raw.abs().flatten(1).amax(1) > 1.1).float().mean()),
                    noise=float((roughness(x) > self.rough_max).float().mean()),
                    lowconf=float((proba.max(1) < 0.3).mean()),
                    bright=float(x.flatten(1).mean(1).std()) / self.bright_std,
                    shift=(float(x.mean()) - self.bright_mean) / self.bright_std,
                    div=float(np.mean(div)), dup=float(np.mean(dup)))


@torch.no_grad()
def eps_probe(model: torch.nn.Module, labels: torch.Tensor, seed: int, t: int = 999) -> str:
    """Mean eps estimate at step ``t`` on the samples' initial noise, binned by the pixel value (see above)."""
    shape = (model.config.in_channels, model.config.input_size, model.config.input_size)
    x = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(sample_seed(seed, i)))
                     for i in range(len(labels))])
    eps = model(x, torch.full((len(x),), t), labels)[:, :shape[0]].flatten()
    x = x.flatten()
    bins = [(lo, (x >= lo) & (x < lo + 0.5)) for lo in (-4.5, -4.0, -3.5, -3.0, 0.0, 3.0, 3.5, 4.0)]
    return " ".join(f"[{lo:+.1f},{lo + 0.5:+.1f}): x {x[m].mean():+.2f} eps {eps[m].mean():+.2f}"
                    for lo, m in bins if m.any())


def parse_setting(text: str) -> dict:
    sampler, steps, cfg, clip, weights, *flags = text.split(":")
    if weights not in ("ema", "raw") or flags not in ([], ["center"]):
        raise ValueError(f"a setting is sampler:steps:cfg:clip:ema|raw[:center], got {text!r}")
    return dict(sampler=sampler, steps=int(steps), cfg_scale=float(cfg), clip_denoised=clip == "1",
                use_ema=weights == "ema", center_noise=flags == ["center"], name=text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--checkpoints", default=None, help="comma-separated steps (default: the newest)")
    parser.add_argument("--settings", default="dpm++2m:25:1:0:ema")
    parser.add_argument("--n", type=int, default=500, help="samples per setting (a multiple of 10)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=250)
    parser.add_argument("--json", default=None, help="append one JSON line per result to this file")
    parser.add_argument("--save", default=None, help="save the raw samples of each result to PREFIX-<k>.pt")
    parser.add_argument("--eps-probe", action="store_true", help="print the eps estimate at t = 999 by pixel value")
    args = parser.parse_args()

    judge = Judge()
    print(f"real-digit thresholds: spike {judge.spike_max:.3f}, roughness {judge.rough_max:.3f}")
    checkpoints = dict(list_checkpoints(f"{args.run}/checkpoints"))
    steps = [int(s) for s in args.checkpoints.split(",")] if args.checkpoints else [max(checkpoints)]
    labels = torch.arange(10).repeat_interleave(args.n // 10)
    k = 0
    for step in steps:
        info = load_model_info(checkpoints[step])
        diffusion = create_diffusion(**info["diffusion"])
        if args.eps_probe:
            probe = eps_probe(load_pretrained(checkpoints[step]), labels, args.seed)
            print(f"step {step}, eps at t = 999 by x_t: {probe}")
        for setting in map(parse_setting, args.settings.split(",")):
            model = load_pretrained(checkpoints[step], use_ema=setting["use_ema"]).eval()
            tic = time.perf_counter()
            raw = torch.cat([generate(model, diffusion, indices=range(s, min(s + args.batch, len(labels))),
                                      labels=labels[s:s + args.batch], seed=args.seed, sampler=setting["sampler"],
                                      steps=setting["steps"], cfg_scale=setting["cfg_scale"],
                                      clip_denoised=setting["clip_denoised"], center_noise=setting["center_noise"])
                             for s in range(0, len(labels), args.batch)])
            result = dict(step=step, setting=setting["name"], n=len(labels), **judge(raw, labels),
                          seconds=round(time.perf_counter() - tic, 1))
            print(" ".join(f"{key}={value:.3f}" if isinstance(value, float) else f"{key}={value}"
                           for key, value in result.items()), flush=True)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps(result) + "\n")
            if args.save:
                torch.save(raw, f"{args.save}-{k}.pt")
            k += 1


if __name__ == "__main__":
    main()
