"""``lamamba export-diffusers RUN OUT``: a lamamba checkpoint as a diffusers ``DiTPipeline`` directory.

``OUT`` holds ``model_index.json`` and the pipeline's components, each in safetensors: ``transformer/`` (the EMA
weights in :class:`~lamamba.interop.diffusers_model.LaMambaTransformer2DModel`, with the run's inference config),
``scheduler/`` (DDIM with the run's betas) and ``vae/`` (the run's Stable Diffusion VAE, or the identity
:class:`~lamamba.interop.diffusers_model.PixelSpaceVAE` for pixel-space models). ``lamamba import-diffusers``
converts it back. Needs ``pip install "lamamba[diffusers]"``.
"""
from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

__all__ = ["add_arguments", "run", "export_diffusers"]


def export_diffusers(checkpoint: str | os.PathLike, out: str | os.PathLike, *, vae: str | None = None) -> Path:
    """Write the pipeline directory ``out`` (which must not exist or be empty) for ``checkpoint``.

    ``checkpoint``: anything ``lamamba.load_pretrained`` takes. ``vae`` overrides the VAE named in the
    checkpoint's config (latent models; a Hub id or a local ``save_pretrained`` directory).
    """
    from lamamba.interop.diffusers_model import LaMambaTransformer2DModel, PixelSpaceVAE, scheduler_config

    from diffusers import DDIMScheduler, DiTPipeline  # importable: diffusers_model checked it

    from lamamba.pretrained import load_model_info, load_pretrained, resolve_checkpoint

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} already exists and is not an empty directory; choose a new output directory")
    resolved = resolve_checkpoint(checkpoint)
    info = load_model_info(resolved)
    transformer = LaMambaTransformer2DModel.from_lamamba(load_pretrained(resolved), info)
    latent = info.get("latent")
    if latent:
        if latent.get("shift"):
            raise ValueError(f"this model's latents are shifted by {latent['shift']}; DiTPipeline only scales "
                             "latents, so it cannot decode them")
        from lamamba.autoencoder import load_vae

        name = vae or latent.get("vae")
        if not name:
            raise ValueError("this latent model's config names no VAE; pass --vae (Hub id or local directory)")
        autoencoder = load_vae(name, scale=latent.get("scale")).model
        autoencoder.register_to_config(scaling_factor=float(latent.get("scale") or autoencoder.config.scaling_factor))
    else:
        autoencoder = PixelSpaceVAE()
    pipe = DiTPipeline(transformer=transformer, vae=autoencoder,
                       scheduler=DDIMScheduler.from_config(scheduler_config(info["diffusion"])))
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        pipe.save_pretrained(tmp, safe_serialization=True)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="RUN",
                        help="run directory (newest checkpoint), checkpoint directory, .safetensors file or Hub id")
    parser.add_argument("out", metavar="OUT", help="new directory for the DiTPipeline")
    parser.add_argument("--vae", default=None, help="VAE of latent models (default: the one in config.json)")


def run(args: argparse.Namespace) -> int:
    out = export_diffusers(args.checkpoint, args.out, vae=args.vae)
    print(f"wrote a DiTPipeline to {out}: DiTPipeline.from_pretrained({str(out)!r}) after "
          "`import lamamba.interop.diffusers_model`")
    return 0
