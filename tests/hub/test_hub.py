"""The Hub without network: loading from a Hub cache laid out on disk (offline), and ``lamamba push`` with
huggingface_hub's API replaced by a fake that records the upload."""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("huggingface_hub")

import huggingface_hub  # noqa: E402
from huggingface_hub import constants  # noqa: E402

import lamamba  # noqa: E402
from lamamba import cli  # noqa: E402
from lamamba.hub.download import parse_hub_ref  # noqa: E402
from lamamba.pretrained import save_pretrained  # noqa: E402

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def hub_cache(cache, repo_id, files, *, refs=("main",), repo_type="model"):
    """Lay out huggingface_hub's cache: ``<type>s--org--name/{refs/<ref>, blobs/<sha256>, snapshots/<commit>/...}``."""
    folder = cache / f"{repo_type}s--{repo_id.replace('/', '--')}"
    snapshot = folder / "snapshots" / COMMIT
    for sub in (snapshot, folder / "blobs", folder / "refs"):
        sub.mkdir(parents=True, exist_ok=True)
    for name, source in files.items():
        data = Path(source).read_bytes()
        blob = folder / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
    for ref in refs:
        (folder / "refs" / ref).write_text(COMMIT)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    model = lamamba.create_model("DiT-S/2", image_size=16, in_channels=1, num_classes=10, latent_downsample=1,
                                 hidden_size=16, depth=1, num_heads=2)
    info = {"model": model.config.to_dict(), "image_size": 16, "image_channels": 1, "num_classes": 10,
            "latent": None, "step": 3, "diffusion": {"diffusion_steps": 1000, "noise_schedule": "linear",
                                                     "learn_sigma": True}}
    path = save_pretrained(model, tmp_path_factory.mktemp("ckpt"), info)
    cache = tmp_path_factory.mktemp("hub_cache")
    hub_cache(cache, "org/tiny", {"model.safetensors": path / "model.safetensors",
                                  "config.json": path / "config.json"}, refs=("main", "v1"))
    return model, cache


@pytest.fixture
def offline(tiny, monkeypatch):
    """HF_HUB_OFFLINE=1 and the cache above, for code running in this process (constants are read at import)."""
    _, cache = tiny
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_hub_references():
    assert parse_hub_ref("org/name") == parse_hub_ref("hf://org/name")
    ref = parse_hub_ref("org/name@v1.2")
    assert (ref.repo_id, ref.revision, ref.filename) == ("org/name", "v1.2", None)
    ref = parse_hub_ref("datasets/org/stats@main/sub/ref.npz")
    assert (ref.repo_id, ref.repo_type, ref.revision, ref.filename) == ("org/stats", "dataset", "main", "sub/ref.npz")
    assert parse_hub_ref("/abs/path") is None and parse_hub_ref("model.safetensors") is None
    assert parse_hub_ref("./run/x") is None


@pytest.mark.parametrize("spec", ["org/tiny", "org/tiny@v1", f"org/tiny@{COMMIT}"])
def test_load_pretrained_from_the_offline_cache(tiny, offline, spec):
    model, _ = tiny
    loaded = lamamba.load_pretrained(spec)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


def test_local_path_wins_over_hub_id(tiny, offline, tmp_path, monkeypatch):
    model, _ = tiny
    save_pretrained(model, tmp_path / "org" / "tiny", {"model": model.config.to_dict()})
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: pytest.fail("went to the Hub"))
    lamamba.load_pretrained("org/tiny")


def test_sample_offline_in_a_fresh_process(tiny, tmp_path):
    """``lamamba sample org/name@revision`` with HF_HUB_OFFLINE=1 and HF_HUB_CACHE set in the environment."""
    _, cache = tiny
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "lamamba.cli", "sample", "org/tiny@v1", "--num-samples", "2",
                           "--steps", "2", "--no-progress", "--out", str(tmp_path / "s")],
                          env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "s" / "grid.png").is_file()


def test_model_missing_from_the_offline_cache_is_one_line(offline, tmp_path, capsys):
    assert cli.main(["sample", "org/absent", "--out", str(tmp_path / "s"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "not in the local Hugging Face cache" in err and err.count("\n") == 1


def test_evaluate_reads_npz_from_the_hub_cache(tiny, offline, tmp_path):
    from lamamba.evaluation import open_input

    images = np.random.default_rng(0).integers(0, 256, (6, 8, 8, 1), dtype=np.uint8)
    np.savez(tmp_path / "ref.npz", arr_0=images)
    hub_cache(offline, "org/stats", {"ref.npz": tmp_path / "ref.npz"}, repo_type="dataset")
    source, stats = open_input("datasets/org/stats/ref.npz")
    assert stats is None and source.num_images == 6
    with pytest.raises(FileNotFoundError, match="not in the local Hugging Face cache"):
        open_input("datasets/org/stats/other.npz")


class FakeHfApi:
    """Records create_repo / create_branch / upload_folder and keeps a copy of the uploaded files."""

    calls: list = []
    uploaded: dict = {}

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def create_branch(self, repo_id, **kwargs):
        self.calls.append(("create_branch", repo_id, kwargs))

    def upload_folder(self, *, repo_id, folder_path, revision=None, commit_message=None):
        self.calls.append(("upload_folder", repo_id, revision))
        FakeHfApi.uploaded = {p.name: p.read_bytes() for p in Path(folder_path).iterdir()}
        return f"https://huggingface.co/{repo_id}/commit/{COMMIT}"


def test_push_uploads_weights_config_card_and_grid(tmp_path, monkeypatch, capsys):
    from lamamba import train

    run = tmp_path / "run"
    assert train.main(["--run-dir", str(run), "--model-arg", "embed_dim=8", "--model-arg", "cond_dim=16",
                       "--global-batch-size", "8", "--no-tensorboard", "--max-steps", "2", "--ckpt-every", "2",
                       "--sample-num", "10", "--sample-every", "2", "--sample-steps", "2"]) == 0
    with open(run / "metrics.jsonl", "a") as f:  # an in-training FID, as --eval-every would log it
        f.write(json.dumps({"step": 2, "eval_fid": 123.4, "eval_num_samples": 100,
                            "eval_feature_network": "pixels"}) + "\n")
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    FakeHfApi.calls.clear()
    assert cli.main(["push", str(run), "me/tiny-digits", "--private", "--revision", "dev"]) == 0
    assert "me/tiny-digits" in capsys.readouterr().out
    assert [c[0] for c in FakeHfApi.calls] == ["create_repo", "create_branch", "upload_folder"]
    assert FakeHfApi.calls[0][2]["private"] is True and FakeHfApi.calls[2][2] == "dev"
    files = FakeHfApi.uploaded
    assert sorted(files) == ["README.md", "config.json", "grid.png", "model.safetensors"]
    assert files["model.safetensors"] == (run / "checkpoints" / "0000002" / "model.safetensors").read_bytes()
    card = files["README.md"].decode()
    params = sum(p.numel() for p in lamamba.load_pretrained(run).parameters())
    for text in ("# me/tiny-digits", "LaMamba-Diff-S", f"{params:,}", "GFLOPs", "2 steps, 16 training images",
                 "123.40 at step 2", "![samples", "lamamba sample me/tiny-digits"):
        assert text in card, text


def test_push_refuses_bad_repo_ids(tmp_path, capsys):
    assert cli.main(["push", str(tmp_path), "not a repo"]) == 2
    assert "not a Hub model id" in capsys.readouterr().err


def test_missing_huggingface_hub_names_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    assert cli.main(["push", str(tmp_path), "me/x"]) == 2
    assert 'pip install "lamamba[hub]"' in capsys.readouterr().err
    assert cli.main(["sample", "me/x", "--no-progress"]) == 2  # no such local path, and no Hub support
    assert 'does not exist locally; as a Hub id it needs huggingface_hub: pip install "lamamba[hub]"' in \
        capsys.readouterr().err
