"""Latent diffusion: training through a VAE on the fly or on extracted latents, and sampling back to pixels."""
import json

import numpy as np

from lamamba import sample
from lamamba.autoencoder import load_vae
from lamamba.data import build_dataset, extract_latents
from lamamba.pretrained import load_model_info


# 16 px -> 8x8 latents -> 4x4 tokens (2x2 patches); one merge keeps every map larger than 1x1 (the reference
# selective scan cannot backpropagate through a length-1 sequence yet)
LATENT_MODEL = ["--model-arg", "num_downsamples=1"]


def _check_latent_run(run, vae_dir, tmp_path):
    config = json.loads((run / "run_config.json").read_text())
    assert config["data"]["space"] == "latent" and config["data"]["channels"] == 4
    assert config["model_config"]["in_channels"] == 4 and config["model_config"]["input_size"] == 8
    info = load_model_info(run)
    assert info["latent"]["vae"] == str(vae_dir) and info["image_size"] == 16 and info["image_channels"] == 3
    assert (run / "samples" / f"{info['step']:07d}.png").is_file()  # the grid is decoded through the VAE
    out = tmp_path / f"{run.name}-samples"
    assert sample.main([str(run), "--num-samples", "3", "--steps", "2", "--npz", "--out", str(out),
                        "--no-progress"]) == 0
    with np.load(out / "samples.npz") as data:
        assert data["arr_0"].shape == (3, 16, 16, 3) and data["arr_0"].dtype == np.uint8


def test_train_with_vae_on_the_fly(tmp_path, tiny_vae_dir, train_tiny):
    run = tmp_path / "vae"
    assert train_tiny(run, "--vae", tiny_vae_dir, *LATENT_MODEL, "--max-steps", 2, "--sample-num", 2, "--sample-steps", 2) == 0
    _check_latent_run(run, tiny_vae_dir, tmp_path)


def test_train_on_extracted_latents(tmp_path, tiny_vae_dir, train_tiny):
    latents = tmp_path / "latents"
    images = build_dataset("digits", split="test", channels=3)
    extract_latents(images, load_vae(tiny_vae_dir), latents, batch_size=64, progress=False)
    run = tmp_path / "latents-run"
    assert train_tiny(run, "--preset", "digits", "--data", latents, *LATENT_MODEL, "--max-steps", 2, "--sample-num", 2, "--sample-steps", 2) == 0
    _check_latent_run(run, tiny_vae_dir, tmp_path)
