"""``lamamba sample``: images from a checkpoint as a PNG grid, individual PNGs and an ADM-style ``.npz``.

Every sample's randomness comes from its own generator, seeded from ``(seed, sample index)``: its initial
noise and, for DDPM and DPM-Solver++(2M) SDE, the noise of every step. A sample therefore does not depend on
the batch size or on how many processes share the work: under ``torchrun`` each rank takes a contiguous block of
indices, writes its images to a shard, and rank 0 assembles ONE grid and ONE ``.npz`` in index order.

The ``.npz`` follows ADM's ``image_sample.py``: ``arr_0`` uint8 images (N, H, W, C) and, for class-conditional
models, ``arr_1`` int64 labels. Pixels are quantised as DiT/ADM do: ``uint8(clamp(127.5 x + 128, 0, 255))``.

Library use::

    model = lamamba.load_pretrained("results/000-LaMamba-Diff-S")
    images = generate(model, create_diffusion(), indices=range(16), labels=torch.arange(16) % 10, seed=0)
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import math
import os
import shutil
import sys
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from tqdm.auto import tqdm

__all__ = ["add_arguments", "run", "generate", "clip_default", "sample_seed", "shard_range", "to_uint8",
           "make_grid", "save_grid", "write_npz"]


# ------------------------------------------------------------------------------------------------
#                                   Per-sample randomness
# ------------------------------------------------------------------------------------------------

def sample_seed(seed: int, index: int) -> int:
    """A 63-bit seed for sample ``index`` of a run seeded with ``seed`` (NumPy ``SeedSequence`` mixing, so
    nearby (seed, index) pairs give unrelated streams)."""
    if seed < 0 or index < 0:
        raise ValueError(f"seed and sample index must be >= 0, got {seed} and {index}")
    low, high = np.random.SeedSequence([seed, index]).generate_state(2, dtype=np.uint32)
    return (int(high) << 32 | int(low)) & (2**63 - 1)


def _draw(generators: Sequence[torch.Generator], shape: Sequence[int], device: torch.device) -> Tensor:
    """One standard-normal tensor of ``shape`` from each generator, stacked: (len(generators), *shape)."""
    return torch.stack([torch.randn(tuple(shape), generator=g, device=device) for g in generators])


def shard_range(n: int, rank: int, world_size: int) -> range:
    """The contiguous block of ``range(n)`` that ``rank`` of ``world_size`` samples (sizes differ by <= 1)."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (rank < extra))


# ------------------------------------------------------------------------------------------------
#                                          Sampling
# ------------------------------------------------------------------------------------------------

@torch.no_grad()
def generate(
    model: torch.nn.Module,
    diffusion,
    *,
    indices: Sequence[int],
    labels: Tensor | None,
    seed: int = 0,
    sampler: str = "ddpm",
    steps: int | None = None,
    cfg_scale: float = 1.0,
    guided_channels: int | None = None,
    device: torch.device | str | None = None,
    autocast_dtype: torch.dtype | None = None,
    clip_denoised: bool = False,
    center_noise: bool = False,
    progress: bool = False,
) -> Tensor:
    """Samples number ``indices`` of the run ``seed``, in the model's space: (len(indices), C, h, w) float32.

    ``labels`` (one per index; ignored by unconditional models) condition the model; ``cfg_scale != 1`` uses
    classifier-free guidance through ``model.forward_with_cfg``. ``sampler``/``steps`` as
    ``GaussianDiffusion.sample`` (DDIM deterministic, eta 0; dpm++2m-sde eta 1, its step noise from the
    per-sample generators like DDPM's). ``autocast_dtype`` (e.g. ``torch.bfloat16``)
    runs the network under autocast; the diffusion arithmetic stays float32. ``clip_denoised`` clamps every
    prediction of the clean image to [-1, 1] (ADM's choice for pixel-space models; off in latent space; the
    CLI and the training grids choose it with :func:`clip_default`). ``center_noise`` removes each sample's
    per-channel spatial mean from its initial noise x_T (later steps' noise is untouched): an opt-in remedy for
    the "pure noise" samples of pixel-space LaMamba-Diff (docs/RESULTS.md: the noise's mean predicts them; with
    DPM-Solver++(2M) they fell from 8.7% to 0.7%), which also narrows the spread of the samples' brightness.
    """
    from lamamba.diffusion import DEFAULT_STEPS, SAMPLERS, cfg_first_half, cfg_model_kwargs, cfg_noise
    from lamamba.diffusion import evenly_spaced_timesteps

    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}: use one of {', '.join(SAMPLERS)}")
    steps = DEFAULT_STEPS[sampler] if steps is None else steps
    device = torch.device(device) if device is not None else next(model.parameters()).device
    cfg = model.config
    shape = (cfg.in_channels, cfg.input_size, cfg.input_size)
    generators = [torch.Generator(device).manual_seed(sample_seed(seed, int(i))) for i in indices]
    x_T = _draw(generators, shape, device)
    if center_noise:
        x_T = x_T - x_T.mean(dim=(-2, -1), keepdim=True)

    conditional = cfg.num_classes > 0
    if conditional:
        if labels is None or labels.shape != (len(generators),):
            raise ValueError(f"a class-conditional model needs one label per sample ({len(generators)})")
        labels = labels.to(device=device, dtype=torch.long)
    guided = conditional and cfg_scale != 1.0
    if guided:
        net: Callable[..., Tensor] = functools.partial(model.forward_with_cfg, guided_channels=guided_channels)
        kwargs = cfg_model_kwargs(labels, cfg.num_classes, cfg_scale)
        noise = cfg_noise(x_T)
    else:
        net, kwargs, noise = model, {"y": labels if conditional else None}, x_T

    def model_fn(x: Tensor, t: Tensor, **kw) -> Tensor:
        with (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()):
            return net(x, t, **kw).float()

    if sampler == "ddpm":
        out = _ancestral(diffusion.respace(evenly_spaced_timesteps(diffusion.num_timesteps, steps)), model_fn,
                         noise, kwargs, generators, shape, doubled=guided, clip_denoised=clip_denoised,
                         progress=progress)
    elif sampler == "dpm++2m-sde":
        out = diffusion.dpm_solver_sde_sample_loop(
            model_fn, None, noise, steps=steps, model_kwargs=kwargs, clip_denoised=clip_denoised, progress=progress,
            noise_fn=_step_noise(generators, shape, device, doubled=guided))
    else:
        out = diffusion.sample(model_fn, None, noise, sampler=sampler, steps=steps, model_kwargs=kwargs,
                               clip_denoised=clip_denoised, progress=progress)
    return cfg_first_half(out) if guided else out


def _step_noise(generators: Sequence[torch.Generator], shape: Sequence[int], device: torch.device, *,
                doubled: bool) -> Callable[[Sequence[int]], Tensor]:
    """``noise_fn`` for the SDE solver: each sample's step noise from its own generator (as ``_ancestral``)."""

    def noise_fn(batch_shape: Sequence[int]) -> Tensor:
        z = _draw(generators, shape, device)
        return torch.cat([z, z]) if doubled else z  # the unconditional half only mirrors the conditional one

    return noise_fn


def _ancestral(diffusion, model_fn, x: Tensor, kwargs: dict, generators: Sequence[torch.Generator],
               shape: Sequence[int], *, doubled: bool, clip_denoised: bool = False, progress: bool) -> Tensor:
    """DDPM ancestral sampling (Ho et al. 2020, Alg. 2): ``x_{t-1} = mu + sigma z`` with each sample's ``z``
    from its own generator. For one sample this is ``GaussianDiffusion.p_sample_loop`` with that generator."""
    for i in tqdm(range(diffusion.num_timesteps - 1, -1, -1), disable=not progress, desc="DDPM"):
        t = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
        out = diffusion.p_mean_variance(model_fn, x, t, kwargs, clip_denoised)
        z = _draw(generators, shape, x.device)  # drawn at every step, as p_sample does
        if doubled:
            z = torch.cat([z, z])  # the unconditional half only mirrors the conditional one
        x = out["mean"] + torch.exp(0.5 * out["log_variance"]) * z if i > 0 else out["mean"]
    return x


# ------------------------------------------------------------------------------------------------
#                                        Image output
# ------------------------------------------------------------------------------------------------

def to_uint8(images: Tensor) -> np.ndarray:
    """Images (N, C, H, W) in [-1, 1] -> uint8 (N, H, W, C) as DiT/ADM quantise them."""
    return (images.float() * 127.5 + 128.0).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def make_grid(images: np.ndarray, nrow: int | None = None, *, padding: int = 2, pad_value: int = 255,
              min_side: int = 64) -> np.ndarray:
    """uint8 (N, H, W, C) -> one uint8 (rows, cols, C) grid, ``nrow`` images per row (default: ~square).

    Images smaller than ``min_side`` are enlarged by an integer factor (nearest neighbour) for viewing.
    """
    n, h, w, c = images.shape
    if n == 0:
        raise ValueError("no images to put in a grid")
    nrow = nrow or math.ceil(math.sqrt(n))
    factor = max(1, min_side // max(h, w))
    if factor > 1:
        images = images.repeat(factor, axis=1).repeat(factor, axis=2)
        h, w = h * factor, w * factor
    rows = math.ceil(n / nrow)
    grid = np.full((padding + rows * (h + padding), padding + nrow * (w + padding), c), pad_value, dtype=np.uint8)
    for k, image in enumerate(images):
        r, col = divmod(k, nrow)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[top:top + h, left:left + w] = image
    return grid


def _pil(image: np.ndarray) -> Image.Image:
    return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


def save_grid(images: np.ndarray, path: str | os.PathLike, nrow: int | None = None) -> Path:
    """Save uint8 (N, H, W, C) images as one PNG grid."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _pil(make_grid(images, nrow)).save(path)
    return path


def write_npz(path: str | os.PathLike, image_shards: Sequence[Path], labels: np.ndarray | None) -> Path:
    """Stream uint8 ``.npy`` shards (in order) into one ``.npz`` (``arr_0`` images, ``arr_1`` labels) without
    holding all images in memory; written to a temporary name and renamed."""
    path = Path(path)
    arrays = [np.load(p, mmap_mode="r") for p in image_shards]
    total = sum(len(a) for a in arrays)
    item_shape = arrays[0].shape[1:]
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            with zf.open("arr_0.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)),
                                                         "fortran_order": False, "shape": (total, *item_shape)})
                for array in arrays:
                    for start in range(0, len(array), 1024):
                        f.write(np.ascontiguousarray(array[start:start + 1024]).tobytes())
            if labels is not None:
                with zf.open("arr_1.npy", "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, np.asarray(labels, dtype=np.int64))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


# ------------------------------------------------------------------------------------------------
#                                            CLI
# ------------------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    from lamamba.diffusion import SAMPLERS

    parser.add_argument("checkpoint", metavar="CHECKPOINT",
                        help="run directory (newest checkpoint), checkpoint directory, .safetensors file or "
                             "Hugging Face Hub id org/name[@revision]")
    parser.add_argument("--labels", default=None,
                        help="comma-separated class labels, repeated to --num-samples (default: random labels)")
    parser.add_argument("--num-samples", type=int, default=None,
                        help="how many images (default: the number of --labels, else 16)")
    parser.add_argument("--sampler", choices=SAMPLERS, default="ddpm",
                        help="ddpm (the paper), ddim, dpm++2m, or dpm++2m-sde: stochastic and fast, robust for "
                             "early-training models where the deterministic samplers emit some pure-noise images "
                             "(default: ddpm)")
    parser.add_argument("--steps", type=int, default=None,
                        help="sampling steps (default: 250 for ddpm as the paper, 50 ddim, 20 dpm++2m, "
                             "25 dpm++2m-sde)")
    parser.add_argument("--cfg-scale", type=float, default=None,
                        help="classifier-free guidance scale, 1 = off (default: 1.5, as the authors' sample.py; "
                             "unconditional models take none)")
    parser.add_argument("--guided-channels", type=int, default=None,
                        help="guide only the first N noise channels (3 = DiT's convention; default: all)")
    parser.add_argument("--seed", type=int, default=0, help="global seed; sample i uses (seed, i) (default: 0)")
    parser.add_argument("--batch-size", type=int, default=32, help="samples per forward pass per process")
    parser.add_argument("--out", default=None,
                        help="output directory (default: samples/<run>-<step>-<sampler>-<steps>-cfg<scale>-seed<seed>)")
    parser.add_argument("--save-images", action="store_true", help="also write every sample as images/NNNNNN.png")
    parser.add_argument("--npz", action="store_true", help="also write samples.npz (ADM evaluator format)")
    parser.add_argument("--grid-max", type=int, default=64, help="at most this many images in grid.png")
    parser.add_argument("--raw-weights", action="store_true",
                        help="use the raw training weights instead of the EMA weights")
    parser.add_argument("--vae", default=None, help="VAE for latent models (default: the one in config.json)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="network precision; bf16 runs it under autocast (default: fp32)")
    parser.add_argument("--clip-denoised", action=argparse.BooleanOptionalAction, default=None,
                        help="clamp the predicted clean image to [-1, 1] at every step (default: on for pixel-space "
                             "models, as ADM, off for latent models, as the paper; see docs/RESULTS.md, digits demo)")
    parser.add_argument("--center-noise", action="store_true",
                        help="zero-mean initial noise per sample and channel: removes most of the pure-noise "
                             "samples of briefly trained pixel-space LaMamba-Diff models with deterministic "
                             "samplers, but narrows the samples' brightness spread; trained longer, such models "
                             "have none left and centering costs quality (docs/RESULTS.md; off by default: the "
                             "paper's sampler draws plain Gaussian noise)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile the network (default: on CUDA for jobs of at least a million network "
                             "evaluations, images x steps, x2 with guidance: the compilation, ~40 s to 2 minutes "
                             "with a cold cache, then pays for itself; docs/PERFORMANCE.md)")
    parser.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=None,
                        help="replay the compiled forward as a CUDA graph (default: on whenever compiled on CUDA; "
                             "1.6-1.8x the eager speed of LaMamba-Diff-XL's sampling forward on an H200, same images)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads (default: OMP_NUM_THREADS, else the cores not busy with other work)")


def _check_args(args: argparse.Namespace) -> None:
    """Reject impossible flags before anything is loaded or written."""
    for flag, value, least in (("--batch-size", args.batch_size, 1), ("--grid-max", args.grid_max, 0),
                               ("--steps", args.steps, 1), ("--seed", args.seed, 0),
                               ("--num-samples", args.num_samples, 1), ("--guided-channels", args.guided_channels, 1),
                               ("--threads", args.threads, 1)):
        if value is not None and value < least:
            raise ValueError(f"{flag} must be at least {least}, got {value}")
    if args.cuda_graphs and args.compile is False:
        raise ValueError("--cuda-graphs replays compiled graphs: drop --no-compile")
    if args.cfg_scale is not None and not math.isfinite(args.cfg_scale):
        raise ValueError(f"--cfg-scale must be a finite number, got {args.cfg_scale}")
    _parse_labels(args.labels)


def _parse_labels(text: str | None) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()] if text else []
    except ValueError:
        raise ValueError(f"--labels expects comma-separated class indices such as 0,1,2, got {text!r}") from None


def _labels(args: argparse.Namespace, num_classes: int) -> tuple[int, Tensor | None]:
    given = _parse_labels(args.labels)
    n = args.num_samples if args.num_samples is not None else (len(given) or 16)
    if n < 1:
        raise ValueError(f"--num-samples must be positive, got {n}")
    if num_classes == 0:
        if given:
            raise ValueError("this model is unconditional: drop --labels")
        return n, None
    bad = [v for v in given if not 0 <= v < num_classes]
    if bad:
        raise ValueError(f"labels {bad} are outside [0, {num_classes - 1}] for this model")
    if given:
        return n, torch.tensor([given[i % len(given)] for i in range(n)])
    return n, torch.randint(num_classes, (n,), generator=torch.Generator().manual_seed(args.seed))


def _guidance(cfg_scale: float | None, num_classes: int) -> float:
    """The guidance scale to use: 1.5 by default; an unconditional model cannot be guided."""
    if num_classes == 0:
        if cfg_scale not in (None, 1.0):
            raise ValueError("this model is unconditional: classifier-free guidance needs a class-conditional "
                             "model (drop --cfg-scale)")
        return 1.0
    return 1.5 if cfg_scale is None else cfg_scale


def clip_default(info: dict) -> bool:
    """Whether sampling clamps the predicted clean image by default: in pixel space yes, in latent space no.

    In pixel space the data lie in [-1, 1]. At the noisiest steps an eps-prediction's x0 estimate
    ``(x_t - sigma eps) / alpha`` magnifies any error of eps by sigma / alpha (156 at the linear schedule's
    last step), and a small model under-predicts the rare extreme values of the initial noise; unclamped, such
    a pixel's estimate lands at +-100 and the sampler carries it to the end (docs/RESULTS.md, digits demo).
    Latents have no fixed range, so they are never clamped.
    """
    return not info.get("latent")


def _default_out(checkpoint: Path, info: dict, args: argparse.Namespace, steps: int) -> Path:
    parts = checkpoint.resolve().parts
    run = parts[-3] if len(parts) >= 3 and parts[-2] == "checkpoints" else checkpoint.stem
    return Path("samples") / (f"{run}-{int(info.get('step', 0)):07d}-{args.sampler}-{steps}-"
                              f"cfg{args.cfg_scale:g}-seed{args.seed}{'-centered' if args.center_noise else ''}")


def run(args: argparse.Namespace) -> int:
    from lamamba.diffusion import DEFAULT_STEPS, create_diffusion
    from lamamba.distributed import barrier, init_distributed, set_cpu_threads, shutdown_distributed
    from lamamba.models.compile import (compile_for_sampling, release_compiled, resolve_cuda_graphs,
                                        resolve_sampling_compile, run_or_fall_back, uncompile)
    from lamamba.pretrained import load_model_info, load_pretrained, resolve_checkpoint

    _check_args(args)
    env = init_distributed(args.device)
    shard_dir = None
    try:
        set_cpu_threads(args.threads, env.device, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
        if env.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        checkpoint = resolve_checkpoint(args.checkpoint)
        info = load_model_info(checkpoint)
        model = load_pretrained(checkpoint, use_ema=not args.raw_weights, device=env.device)
        diffusion = create_diffusion(**info["diffusion"])
        n, labels = _labels(args, model.config.num_classes)
        args.cfg_scale = _guidance(args.cfg_scale, model.config.num_classes)
        if args.clip_denoised is None:
            args.clip_denoised = clip_default(info)
        steps = args.steps if args.steps is not None else DEFAULT_STEPS[args.sampler]
        mine = shard_range(n, env.rank, env.world_size)
        evaluations = len(mine) * steps * (1 if args.cfg_scale == 1 else 2)
        compiled = resolve_sampling_compile(args.compile, env.device, evaluations,
                                            lambda message: print(message, file=sys.stderr))
        cuda_graphs = resolve_cuda_graphs(args.cuda_graphs, compiled=compiled, device=env.device, distributed=False)
        if compiled:
            if env.is_main and args.compile is None:
                print(f"compiling the network{' with CUDA graphs' if cuda_graphs else ''} for {evaluations:,} "
                      f"network evaluations (--no-compile to skip)", file=sys.stderr)
            compile_for_sampling(model, cuda_graphs=cuda_graphs)  # in place: forward_with_cfg uses it
        decode = _decoder(info, args.vae, env.device)
        out = Path(args.out) if args.out else _default_out(checkpoint, info, args, steps)
        created = not out.exists()
        shard_dir = out / ".shards"
        if env.is_main:
            shutil.rmtree(shard_dir, ignore_errors=True)
            shard_dir.mkdir(parents=True, exist_ok=True)
            if args.save_images:
                (out / "images").mkdir(exist_ok=True)
        barrier()

        side, channels = info["image_size"], info["image_channels"]
        shard = np.lib.format.open_memmap(shard_dir / f"rank-{env.rank:05d}.npy", mode="w+", dtype=np.uint8,
                                          shape=(len(mine), side, side, channels))
        bar = tqdm(total=len(mine), unit="img", desc="sampling", disable=not (args.progress and env.is_main))

        def uncompiled() -> None:
            nonlocal compiled
            uncompile(model)
            release_compiled()
            compiled = False

        for start in range(0, len(mine), args.batch_size):
            batch = mine[start:start + args.batch_size]
            # compiled graphs are per batch size: rather than compiling again for the last, smaller batch, fill it
            # up with repeats of its last sample (a sample depends only on its seed and index) and drop them
            indices = list(batch) + [batch[-1]] * (args.batch_size - len(batch)) if compiled and start else batch
            draw = functools.partial(
                generate, model, diffusion, indices=indices, labels=None if labels is None else labels[list(indices)],
                seed=args.seed, sampler=args.sampler, steps=steps, cfg_scale=args.cfg_scale,
                guided_channels=args.guided_channels, device=env.device,
                autocast_dtype=torch.bfloat16 if args.precision == "bf16" else None,
                clip_denoised=args.clip_denoised, center_noise=args.center_noise)
            z = run_or_fall_back(  # the first batch compiles: a default compilation falls back to eager
                draw, allowed=compiled and args.compile is None and start == 0, undo=uncompiled,
                warn=lambda reason: print(f"compiling failed ({reason}); sampling without torch.compile instead "
                                          "(--no-compile skips compiling)", file=sys.stderr))[:len(batch)]
            images = to_uint8(decode(z))
            shard[start:start + len(batch)] = images
            if args.save_images:
                for i, image in zip(batch, images):
                    _pil(image).save(out / "images" / f"{i:06d}.png")
            bar.update(len(batch))
        bar.close()
        shard.flush()
        del shard
        barrier()
        if env.is_main:
            shards = [shard_dir / f"rank-{r:05d}.npy" for r in range(env.world_size)]
            first = np.concatenate([np.load(p, mmap_mode="r")[: args.grid_max] for p in shards])[: args.grid_max]
            if len(first):
                save_grid(first, out / "grid.png")
            if args.npz:
                write_npz(out / "samples.npz", shards, None if labels is None else labels.numpy())
            written = ["grid.png"] * bool(len(first)) + ["samples.npz"] * args.npz + ["images/"] * args.save_images
            print(f"{n} samples ({args.sampler}, {steps} steps, cfg {args.cfg_scale:g}"
                  f"{', clipped x0' if args.clip_denoised else ''}"
                  f"{', centered noise' if args.center_noise else ''}) -> {out}: "
                  f"{', '.join(written) or 'nothing (use --grid-max, --npz or --save-images)'}")
        barrier()
    finally:
        if shard_dir is not None and env.is_main:  # also after a failure: no half-written shards left behind
            shutil.rmtree(shard_dir, ignore_errors=True)
            if created and not any(shard_dir.parent.iterdir()):
                shard_dir.parent.rmdir()
        shutdown_distributed()
    return 0


def _decoder(info: dict, vae_override: str | None, device: torch.device) -> Callable[[Tensor], Tensor]:
    """Model-space samples -> images in [-1, 1]: the identity (clamped) in pixel space, else the VAE."""
    latent = info.get("latent")
    if not latent:
        return lambda z: z.clamp(-1, 1)
    from lamamba.autoencoder import load_vae

    name = vae_override or latent.get("vae")
    if not name:
        raise ValueError("this latent model's config names no VAE; pass --vae (hub id or local directory)")
    vae = load_vae(name, device=device, scale=latent.get("scale"), shift=latent.get("shift"))
    return vae.decode


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lamamba.sample", description=__doc__.splitlines()[0])
    add_arguments(parser)
    from lamamba.cli import run_command

    return run_command("sample", run, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
