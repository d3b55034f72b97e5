"""Fixtures shared across the test tree: a tiny randomly initialised AutoencoderKL saved to disk (VAE, latent and
latent-training tests)."""
import pytest


@pytest.fixture(scope="session")
def tiny_vae_dir(tmp_path_factory):
    diffusers = pytest.importorskip("diffusers")
    import torch

    torch.manual_seed(0)
    model = diffusers.AutoencoderKL(
        block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, latent_channels=4, norm_num_groups=8,
        sample_size=16,
    )
    path = tmp_path_factory.mktemp("tiny_vae")
    model.save_pretrained(path)
    return path
