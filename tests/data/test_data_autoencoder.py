"""lamamba.autoencoder on a tiny random AutoencoderKL, checked against diffusers called directly."""
import sys

import pytest
import torch

from lamamba.autoencoder import VAE, load_vae


def test_load_and_round_trip(tiny_vae_dir):
    from diffusers import AutoencoderKL

    vae = load_vae(tiny_vae_dir)
    assert isinstance(vae, VAE) and vae.scale == 0.18215 and vae.latent_channels == 4 and vae.downsample == 2
    assert not any(p.requires_grad for p in vae.model.parameters())
    reference = AutoencoderKL.from_pretrained(tiny_vae_dir).eval()
    x = torch.rand(5, 3, 16, 16) * 2 - 1

    with torch.no_grad():
        dist = reference.encode(x).latent_dist
        expected_z = dist.mean * 0.18215
        expected_img = reference.decode(expected_z / 0.18215).sample.clamp(-1, 1)
    z = vae.encode(x, sample=False, batch_size=2)  # batched in 2 + 2 + 1
    assert z.shape == (5, 4, 8, 8) and z.dtype == torch.float32 and not z.requires_grad
    torch.testing.assert_close(z, expected_z, atol=1e-5, rtol=1e-5)
    img = vae.decode(z, batch_size=3)
    assert img.shape == x.shape and img.min() >= -1 and img.max() <= 1
    torch.testing.assert_close(img, expected_img, atol=1e-5, rtol=1e-5)

    mean, std = vae.posterior(x)
    torch.testing.assert_close(std, dist.std * 0.18215, atol=1e-6, rtol=1e-5)
    g = torch.Generator().manual_seed(0)
    sampled = vae.encode(x, generator=g)
    noise = torch.randn(mean.shape, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(sampled, mean + std * noise)


def test_scale_and_dtype_options(tiny_vae_dir):
    vae = load_vae(tiny_vae_dir, scale=0.5, dtype=torch.float64)
    assert vae.scale == 0.5 and vae.dtype == torch.float64
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    ref = load_vae(tiny_vae_dir)
    torch.testing.assert_close(vae.encode(x, sample=False) / 0.5, ref.encode(x, sample=False) / ref.scale,
                               atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="divisible by 2"):
        vae.encode(torch.zeros(1, 3, 15, 16))
    with pytest.raises(ValueError, match="latents"):
        vae.decode(torch.zeros(1, 3, 8, 8))


@pytest.mark.filterwarnings("ignore::UserWarning")  # huggingface_hub deprecation noise
def test_load_errors(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_vae(tmp_path / "nowhere")
    pytest.importorskip("diffusers")
    with pytest.raises(FileNotFoundError, match="hub cache"):
        load_vae("no-such-org/no-such-vae", local_files_only=True)
    monkeypatch.setitem(sys.modules, "diffusers", None)  # simulate diffusers not installed
    with pytest.raises(ImportError, match=r'pip install "lamamba\[vae\]"'):
        load_vae(tmp_path)
