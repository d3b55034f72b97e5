"""Session setup and fixtures shared across the test tree.

On machines without CUDA the Triton kernels run through Triton's interpreter: TRITON_INTERPRET=1 is set here,
before any test module (or torch.compile, diffusers, ...) imports triton, which fixes "compile or interpret" at
its first import. So the kernel tests of tests/ops run in a full session, not only alone.
Fixture: a tiny randomly initialised AutoencoderKL saved to disk (VAE, latent and latent-training tests).
"""
import os
import sys

import pytest
import torch

if "triton" not in sys.modules and not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


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
