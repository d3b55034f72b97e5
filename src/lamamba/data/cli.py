"""``lamamba extract-latents DATA OUT``: encode a dataset once with the VAE into latent shards.

Single process by default; under ``torchrun --nproc-per-node N`` each rank (``RANK``/``WORLD_SIZE`` from the
environment, GPU ``LOCAL_RANK``) encodes its share of the shards, and the last to finish writes ``meta.json``.
Rerunning an interrupted extraction with the same arguments resumes it.
"""
from __future__ import annotations

import argparse
import logging
import os

import torch

__all__ = ["add_arguments", "run"]

_VAE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..autoencoder import DEFAULT_VAE

    parser.add_argument("data", metavar="DATA", help="image folder, 'digits' or 'fashion-mnist'")
    parser.add_argument("out", metavar="OUT", help="output directory for the shards and meta.json")
    parser.add_argument("--vae", default=DEFAULT_VAE, help="hub id or local directory of an AutoencoderKL "
                        f"(default: {DEFAULT_VAE})")
    parser.add_argument("--vae-subfolder", default=None, help="subfolder of the VAE in a pipeline repository")
    parser.add_argument("--vae-dtype", choices=sorted(_VAE_DTYPES), default="float32",
                        help="precision the VAE runs in (default: float32, as the authors)")
    parser.add_argument("--scale", type=float, default=None,
                        help="latent scale (default: the VAE's scaling_factor, 0.18215 for the SD VAEs)")
    parser.add_argument("--image-size", type=int, default=256, help="pixel side of the centre crop (default: 256)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per VAE call (default: 32; x2 with flips)")
    parser.add_argument("--shard-size", type=int, default=10_000, help="images per shard file (default: 10000)")
    parser.add_argument("--num-workers", type=int, default=4, help="DataLoader workers (default: 4)")
    parser.add_argument("--dtype", choices=("float16", "float32"), default="float16",
                        help="storage precision of the latents (default: float16)")
    parser.add_argument("--no-flips", dest="flips", action="store_false",
                        help="do not store the latents of mirrored images")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    parser.add_argument("--overwrite", action="store_true", help="delete existing shards in OUT first")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from ..autoencoder import load_vae
    from .latents import extract_latents, is_latent_dir
    from .registry import build_dataset

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    device = args.device
    if device == "auto":
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"
    if os.path.isdir(args.data) and is_latent_dir(args.data):
        raise ValueError(f"{args.data} already holds latents; DATA must be images")
    dataset = build_dataset(args.data, image_size=args.image_size, channels=3, flip_p=0.0)
    vae = load_vae(args.vae, device=device, dtype=_VAE_DTYPES[args.vae_dtype], scale=args.scale,
                   subfolder=args.vae_subfolder)
    out = extract_latents(
        dataset, vae, args.out, batch_size=args.batch_size, shard_size=args.shard_size, flips=args.flips,
        dtype=args.dtype, num_workers=args.num_workers, rank=rank, world_size=world_size,
        overwrite=args.overwrite, progress=args.progress and rank == 0,
    )
    done = (out / "meta.json").exists()
    print(f"{out}: {len(dataset)} images {'complete' if done else 'in progress (other ranks still running)'}")
    return 0
