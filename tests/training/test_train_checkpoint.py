"""Inference checkpoints: ``load_pretrained`` round trips, path forms, and clear errors for bad files."""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

import lamamba
from lamamba.pretrained import (list_checkpoints, load_model_info, load_pretrained, resolve_checkpoint,
                                save_pretrained)


def _tiny():
    torch.manual_seed(0)
    model = lamamba.create_model("LaMamba-Diff-S", image_size=16, in_channels=1, num_classes=10,
                                 latent_downsample=1, embed_dim=8, cond_dim=16, num_heads=2, window_size=4)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def _info(model):
    return {"model": model.config.to_dict(), "image_size": 16, "image_channels": 1, "num_classes": 10,
            "latent": None, "diffusion": {"diffusion_steps": 1000, "noise_schedule": "linear", "learn_sigma": True}}


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_round_trip_directory_and_lone_file(tmp_path):
    model = _tiny()
    save_pretrained(model, tmp_path / "ckpt", _info(model))
    loaded = load_pretrained(tmp_path / "ckpt")
    assert _same_weights(model, loaded) and not loaded.training
    x, t, y = torch.randn(2, 1, 16, 16), torch.tensor([1, 999]), torch.tensor([0, 9])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t, y), model.eval()(x, t, y), rtol=0, atol=0)
    # the weight file alone describes itself (config embedded in its metadata)
    lone = tmp_path / "elsewhere" / "weights.safetensors"
    lone.parent.mkdir()
    shutil.copy(tmp_path / "ckpt" / "model.safetensors", lone)
    assert _same_weights(model, load_pretrained(lone))
    assert load_model_info(lone)["image_size"] == 16


def test_run_directory_resolves_to_newest_checkpoint_and_raw_weights(tmp_path, train_tiny):
    run = tmp_path / "run"
    assert train_tiny(run, "--max-steps", 2, "--ckpt-every", 1) == 0
    assert resolve_checkpoint(run) == run / "checkpoints" / "0000002"
    assert resolve_checkpoint(run / "checkpoints") == run / "checkpoints" / "0000002"
    ema = load_pretrained(run)
    raw = load_pretrained(run, use_ema=False)
    state = load_file(run / "checkpoints" / "0000002" / "training_state.safetensors")
    assert all(torch.equal(v, state[f"ema.{k}"]) for k, v in ema.state_dict().items())
    assert all(torch.equal(v, state[f"model.{k}"]) for k, v in raw.state_dict().items())
    assert not _same_weights(ema, raw)
    assert load_model_info(run)["step"] == 2
    with pytest.raises(FileNotFoundError, match="raw weights"):
        load_pretrained(_strip_training_state(run), use_ema=False)


def _strip_training_state(run):
    ckpt = run / "checkpoints" / "0000002"
    (ckpt / "training_state.safetensors").unlink()
    return ckpt


def test_missing_and_corrupt_files_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_pretrained(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_pretrained(tmp_path / "empty")
    model = _tiny()
    save_pretrained(model, tmp_path / "ckpt", _info(model))
    weights = tmp_path / "ckpt" / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(ValueError, match="corrupt"):
        load_pretrained(tmp_path / "ckpt")
    weights.write_bytes(b"\x00" * 64)  # garbage
    with pytest.raises(ValueError, match="corrupt"):
        load_pretrained(weights)
    weights.write_bytes(data)
    (tmp_path / "ckpt" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="corrupt"):
        load_pretrained(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match="not a lamamba model config"):
        load_pretrained(tmp_path / "ckpt")


def test_weights_that_do_not_fit_the_config_are_rejected(tmp_path):
    model = _tiny()
    info = _info(model)
    info["model"] = dict(info["model"], embed_dim=16, cond_dim=32)
    save_pretrained(model, tmp_path / "ckpt", info)
    with pytest.raises(ValueError, match="do not fit"):
        load_pretrained(tmp_path / "ckpt")


def test_list_checkpoints_ignores_unfinished(tmp_path):
    root = tmp_path / "checkpoints"
    for name in ("0000010", "0000002", ".tmp-0000020-1", "notes"):
        (root / name).mkdir(parents=True)
        (root / name / "model.safetensors").write_bytes(b"")
    (root / "0000030").mkdir()  # no weights: not a checkpoint
    assert [s for s, _ in list_checkpoints(root)] == [2, 10]
