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


def pytest_configure(config):
    """Under pytest-xdist (``-n logical``, the README's command) the workers share the cores: each gets its share of
    threads instead of one per core (two cores, two workers of two threads each ran several times slower). Through
    ``OMP_NUM_THREADS``, so that ``lamamba train`` in a test uses it too instead of counting idle cores, which the
    other worker's load changes between a run and its resumption (CPU losses depend on the thread count)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def pytest_collection_modifyitems(config, items):
    """The long tests (marked ``slow``) first, so that parallel workers start them early and finish together."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


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
