"""extract_latents + LatentDataset round trip, resume, corruption checks, and the extract-latents CLI."""
import argparse
import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from lamamba.autoencoder import load_vae
from lamamba.data import ImageFolderDataset, LatentDataset, build_dataset, extract_latents, hflip


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(7):
        path = tmp_path / "images" / ("abc"[i % 3]) / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(path)
    return ImageFolderDataset(tmp_path / "images", 16, flip_p=0.0)


@pytest.fixture
def vae(tiny_vae_dir):
    return load_vae(tiny_vae_dir)


def test_round_trip(images, vae, tmp_path):
    out = extract_latents(images, vae, tmp_path / "lat", batch_size=2, shard_size=3, progress=False)
    assert sorted(p.name for p in out.glob("shard-*")) == [f"shard-0000{k}.safetensors" for k in range(3)]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["count"] == 7 and meta["flips"] and meta["num_classes"] == 3 and meta["class_names"] == ["a", "b", "c"]
    assert meta["image_size"] == 16 and meta["latent_shape"] == [4, 8, 8] and meta["scale"] == vae.scale

    ds = LatentDataset(out, sample=False, flip_p=0.0)
    assert (len(ds), ds.channels, ds.image_size, ds.source_image_size, ds.num_classes) == (7, 4, 8, 16, 3)
    x = torch.stack([images[i][0] for i in range(7)])
    mean, std = vae.posterior(x)
    mean_flip, _ = vae.posterior(hflip(x))
    for i in range(7):
        z, y = ds[i]
        assert z.dtype == torch.float32 and y.dtype == torch.int64 and int(y) == int(images[i][1])
        torch.testing.assert_close(z, mean[i], atol=2e-3, rtol=1e-3)  # float16 storage
    flipped = LatentDataset(out, sample=False, flip_p=1.0)
    torch.testing.assert_close(flipped[4][0], mean_flip[4], atol=2e-3, rtol=1e-3)
    assert not torch.allclose(flipped[4][0], mean[4], atol=1e-2)

    sampled = LatentDataset(out, sample=True, flip_p=0.0)
    torch.manual_seed(0)
    z, _ = sampled[1]
    torch.manual_seed(0)
    noise = torch.randn(4, 8, 8)
    torch.testing.assert_close(z, mean[1] + std[1] * noise, atol=3e-3, rtol=1e-3)

    mixed = LatentDataset(out, sample=False, flip_p=0.5)
    torch.manual_seed(1)
    picks = [torch.allclose(mixed[0][0], mean_flip[0], atol=2e-3) for _ in range(40)]
    assert 5 < sum(picks) < 35
    pickle.loads(pickle.dumps(mixed))[0]  # picklable for DataLoader workers after shards were opened

    via_registry = build_dataset(str(out), image_size=16)
    assert isinstance(via_registry, LatentDataset) and via_registry.channels == 4
    with pytest.raises(ValueError, match="32px"):
        build_dataset(str(out), image_size=32)


def test_float32_without_flips(images, vae, tmp_path):
    out = extract_latents(images, vae, tmp_path / "lat", shard_size=100, flips=False, dtype="float32", progress=False)
    ds = LatentDataset(out, sample=False)
    mean, _ = vae.posterior(torch.stack([images[i][0] for i in range(7)]))
    torch.testing.assert_close(torch.stack([ds[i][0] for i in range(7)]), mean, atol=1e-5, rtol=1e-5)


def test_resume_and_settings_mismatch(images, vae, tmp_path, monkeypatch):
    out = tmp_path / "lat"
    # rank 1 of 2 does shard 1 only: no meta.json yet, so the directory is refused as incomplete
    extract_latents(images, vae, out, shard_size=3, rank=1, world_size=2, progress=False)
    assert [p.name for p in out.glob("shard-*")] == ["shard-00001.safetensors"]
    with pytest.raises(FileNotFoundError, match="did not finish"):
        LatentDataset(out)
    before = (out / "shard-00001.safetensors").stat().st_mtime_ns
    calls = []
    original = vae.posterior
    monkeypatch.setattr(vae, "posterior", lambda x, **kw: calls.append(len(x)) or original(x, **kw))
    extract_latents(images, vae, out, shard_size=3, batch_size=8, progress=False)  # resumes: shards 0 and 2
    assert calls == [6, 2] and (out / "shard-00001.safetensors").stat().st_mtime_ns == before
    assert len(LatentDataset(out)) == 7
    calls.clear()
    extract_latents(images, vae, out, shard_size=3, progress=False)  # complete: nothing to do
    assert calls == []
    with pytest.raises(ValueError, match="different latent set"):
        extract_latents(images, vae, out, shard_size=4, progress=False)
    extract_latents(images, vae, out, shard_size=4, overwrite=True, progress=False)
    assert len(list(out.glob("shard-*"))) == 2 and not list(out.glob(".*tmp"))


def test_corrupt_or_inconsistent_meta(images, vae, tmp_path):
    out = extract_latents(images, vae, tmp_path / "lat", shard_size=3, progress=False)
    meta_path = out / "meta.json"
    good = json.loads(meta_path.read_text())

    meta_path.write_text(json.dumps({**good, "count": 8}))
    with pytest.raises(ValueError, match="inconsistent"):
        LatentDataset(out)
    meta_path.write_text(json.dumps({**good, "latent_shape": [4, 4, 4]}))
    with pytest.raises(ValueError, match="does not match meta.json"):
        LatentDataset(out)
    meta_path.write_text("{ truncated")
    with pytest.raises(ValueError, match="corrupt"):
        LatentDataset(out)
    meta_path.write_text(json.dumps(good))
    (out / "shard-00002.safetensors").unlink()
    with pytest.raises(ValueError, match="shard-00002"):
        LatentDataset(out)


def test_extract_refuses_bad_input(images, vae, tmp_path):
    flipping = ImageFolderDataset(images.root, 16, flip_p=0.5)
    with pytest.raises(ValueError, match="flip_p=0"):
        extract_latents(flipping, vae, tmp_path / "x")
    grey = ImageFolderDataset(images.root, 16, channels=1, flip_p=0.0)
    with pytest.raises(ValueError, match="channels=3"):
        extract_latents(grey, vae, tmp_path / "x")


def test_cli(images, tiny_vae_dir, tmp_path, capsys):
    from lamamba.data import cli

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args([str(images.root), str(tmp_path / "cli"), "--vae", str(tiny_vae_dir), "--image-size",
                              "16", "--batch-size", "4", "--shard-size", "5", "--num-workers", "0", "--device", "cpu",
                              "--no-progress"])
    assert cli.run(args) == 0
    assert "7 images complete" in capsys.readouterr().out
    ds = LatentDataset(tmp_path / "cli")
    assert len(ds) == 7 and ds.vae_name == str(tiny_vae_dir)
    args.data = str(tmp_path / "cli")
    with pytest.raises(ValueError, match="already holds latents"):
        cli.run(args)
