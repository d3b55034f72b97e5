"""``lamamba convert-official``: a checkpoint in the released train.py's format, written here, becomes a run.

The file is what the authors' script saves: ``torch.save({"model", "ema", "opt", "args", "config"})`` with their
module names (``layers.{i}.downsample``, ``layers_up.{j}.upsample``), the persistent buffers
``attn.relative_position_index`` (every block) and ``attn_mask`` (shifted blocks), an ``argparse.Namespace``
and a yacs ``CfgNode`` (faked here as a class of a module named ``yacs.config``).
"""
import argparse
import re
import sys
import types

import numpy as np
import pytest
import torch

import lamamba
from lamamba import cli

# Released-code rules: conditioning width = dims[-1] (4 x embed_dim), decoder depths = encoder + 1 reversed.
TINY = dict(embed_dim=8, cond_dim=32, num_heads=2, depths=(1, 1, 1, 0), bottleneck_depth=1)


def released_names(state):
    """Our state dict -> the released code's: moved modules, plus the buffers it stores."""
    out = {}
    for key, value in state.items():
        key = re.sub(r"^downsamples\.(\d+)\.", r"layers.\1.downsample.", key)
        key = re.sub(r"^upsamples\.(\d+)\.", r"layers_up.\1.upsample.", key)
        out[key] = value
        if key.endswith("attn.relative_position_bias_table"):
            block = key[: -len("attn.relative_position_bias_table")]
            out[block + "attn.relative_position_index"] = torch.randint(225, (64, 64))
            if int(block.rstrip(".").rsplit(".", 1)[1]) % 2:  # odd blocks are shifted
                out[block + "attn_mask"] = torch.zeros(4, 64, 64)
    return out


class CfgNode(dict):
    """Stand-in for yacs.config.CfgNode (a dict with attributes), pickled under that name."""

    def __init__(self, init=None):
        super().__init__(init or {})
        self.__dict__["__immutable__"] = True


def save_official(path, state, ema, **extra):
    module = types.ModuleType("yacs.config")
    module.CfgNode = CfgNode
    CfgNode.__module__, CfgNode.__qualname__ = "yacs.config", "CfgNode"
    package = types.ModuleType("yacs")
    package.config = module
    sys.modules.update({"yacs": package, "yacs.config": module})
    try:
        config = CfgNode({"MODEL": CfgNode({"TYPE": "LaMamba-Diff", "EMBED_DIM": 8, "DEPTHS": [1, 1, 1, 0]})})
        opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=1e-4).state_dict()
        args = argparse.Namespace(image_size=64, num_classes=10, num_heads=2, global_batch_size=8, ckpt=None)
        torch.save({"model": released_names(state), "ema": released_names(ema), "opt": opt, "args": args,
                    "config": config, **extra}, path)
    finally:
        del sys.modules["yacs"], sys.modules["yacs.config"]
        CfgNode.__module__, CfgNode.__qualname__ = __name__, "CfgNode"
    return path


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    torch.manual_seed(0)
    raw = lamamba.create_model("LaMamba-Diff-S", image_size=64, in_channels=4, num_classes=10, latent_downsample=2,
                               **TINY)
    ema = lamamba.create_model("LaMamba-Diff-S", image_size=64, in_channels=4, num_classes=10, latent_downsample=2,
                               **TINY)
    with torch.no_grad():
        for p in ema.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    path = save_official(tmp_path_factory.mktemp("official") / "0000050.pt", raw.state_dict(), ema.state_dict())
    return path, raw.eval(), ema.eval()


def test_converts_to_a_run_that_load_pretrained_and_sample_use(official, tmp_path, tiny_vae_dir, capsys):
    path, _, ema = official
    assert cli.main(["convert-official", str(path), str(tmp_path / "run")]) == 0
    assert "ema weights" in capsys.readouterr().out
    model = lamamba.load_pretrained(tmp_path / "run")
    assert (tmp_path / "run" / "checkpoints" / "0000050" / "model.safetensors").is_file()
    cfg = model.config
    assert (cfg.embed_dim, cfg.cond_dim, cfg.num_heads, cfg.depths, cfg.decoder_depths, cfg.input_size) == \
        (8, 32, 2, (1, 1, 1, 0), (0, 2, 2, 2), 32)
    for key, value in ema.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    x, t, y = torch.randn(2, 4, 32, 32), torch.tensor([10, 500]), torch.tensor([1, 10])
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, y), ema(x, t, y))

    out = tmp_path / "samples"
    assert cli.main(["sample", str(tmp_path / "run"), "--vae", str(tiny_vae_dir), "--labels", "1,2", "--steps", "2",
                     "--npz", "--out", str(out), "--no-progress"]) == 0
    with np.load(out / "samples.npz") as data:
        assert data["arr_0"].shape == (2, 64, 64, 3)


def test_raw_weights_on_request(official, tmp_path):
    path, raw, _ = official
    assert cli.main(["convert-official", str(path), str(tmp_path / "run"), "--weights", "model"]) == 0
    model = lamamba.load_pretrained(tmp_path / "run")
    for key, value in raw.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def _refusal(capsys, *argv):
    assert cli.main(["convert-official", *map(str, argv)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    return err


def test_refuses_unknown_keys_shape_mismatches_and_foreign_objects(official, tmp_path, capsys):
    _, raw, ema = official
    state = ema.state_dict()
    extra = dict(state, **{"layers.0.blocks.0.op.extra_weight": torch.zeros(3)})
    bad = save_official(tmp_path / "unknown.pt", raw.state_dict(), extra)
    assert "unknown keys ['layers.0.blocks.0.op.extra_weight']" in _refusal(capsys, bad, tmp_path / "o1")

    small = dict(state, **{"layers.2.blocks.0.attn.relative_position_bias_table": torch.zeros(49, 2)})
    bad = save_official(tmp_path / "shape.pt", raw.state_dict(), small)
    assert "shape mismatch" in _refusal(capsys, bad, tmp_path / "o2")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"model": state, "ema": state, "args": Evil()}, tmp_path / "evil.pt")
    err = _refusal(capsys, tmp_path / "evil.pt", tmp_path / "o3")
    assert "full unpickle" in err and "pwned" not in err

    torch.save({"state_dict": state}, tmp_path / "other.pt")
    assert "expected keys model, ema" in _refusal(capsys, tmp_path / "other.pt", tmp_path / "o4")
    assert "does not exist" in _refusal(capsys, tmp_path / "missing.pt", tmp_path / "o5")
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 6))
