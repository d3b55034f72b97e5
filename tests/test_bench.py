"""``lamamba bench`` runs end to end on the CPU (timing values are not checked: timing is not a test)."""
import argparse
import json

import pytest

from lamamba.bench import add_arguments, bench_model, format_table, resolve_settings
from lamamba.cli import main
from lamamba.flops import peak_tflops


def test_bench_model_reports_all_fields():
    import torch
    r = bench_model("LaMamba-Diff-S", image_size=16, batch_size=2, device=torch.device("cpu"), precision="fp32",
                    steps=1, warmup=0, latent_downsample=1, in_channels=1, num_classes=10, peak=1.0,
                    embed_dim=8, cond_dim=16, num_heads=2, window_size=4)
    for key in ("train_ms", "train_images_per_s", "sample_images_per_s", "gflops_per_image", "train_tflops",
                "train_mfu", "sample_mfu"):
        assert r[key] > 0
    assert "compile_s" not in r


def test_bench_cli_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--model", "DiT-S/8", "--image-size", "64", "--batch-size", "2", "--steps", "1",
                 "--warmup", "0", "--device", "cpu", "--precision", "fp32", "--compile", "none",
                 "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["rows"][0]["model"] == "DiT-S/8" and "card" in data["environment"]
    printed = capsys.readouterr().out
    assert "train img/s" in printed and printed.count("MFU omitted") == 1


def _settings(*argv):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return resolve_settings(parser.parse_args(list(argv)))


def test_fashion_mnist_preset_and_overrides():
    s = _settings("--preset", "fashion-mnist")
    assert s == dict(models=["LaMamba-Diff-S", "DiT-S/2"], image_size=32, batch_size=128, in_channels=1,
                     latent_downsample=1, num_classes=10)
    s = _settings("--preset", "fashion-mnist", "--batch-size", "64", "--model", "DiT-S/4")
    assert s["batch_size"] == 64 and s["models"] == ["DiT-S/4"] and s["in_channels"] == 1
    assert _settings("--in-channels", "3", "--latent-downsample", "1")["latent_downsample"] == 1
    with pytest.raises(ValueError, match="not divisible by --latent-downsample"):
        _settings("--image-size", "30", "--latent-downsample", "8")


def test_peak_table():
    assert peak_tflops("NVIDIA H100 80GB HBM3") == 989 and peak_tflops("NVIDIA H200") == 989
    assert peak_tflops("NVIDIA H100 PCIe") == 756 and peak_tflops("NVIDIA A100-SXM4-80GB") == 312
    assert peak_tflops("NVIDIA A10G") == 70 and peak_tflops("cpu") is None


def test_compiled_row_reports_compile_times(monkeypatch):
    import functools

    import torch

    import lamamba.bench
    from lamamba.models.compile import compile_for_sampling, compile_model

    for name, fn in (("compile_model", compile_model), ("compile_for_sampling", compile_for_sampling)):
        monkeypatch.setattr(lamamba.bench, name, functools.partial(fn, backend="eager"))
    r = bench_model("DiT-S/8", image_size=16, batch_size=2, device=torch.device("cpu"), precision="fp32",
                    compile=True, steps=1, warmup=0, latent_downsample=1, in_channels=1, num_classes=10,
                    hidden_size=16, depth=2, num_heads=2)
    assert r["scope"] == "regional" and not r["cuda_graphs"]
    assert {"compile_s", "warm_compile_s", "compile_cache", "warm_compile_cache", "compile_train_s",
            "compile_sample_s", "settle_train_s", "settle_sample_s", "kernel_precompile"} <= set(r)
    assert r["kernel_precompile"] == dict(submitted=0, waited=0, at_launch=0, launcher_failed=0)   # CPU: none
    r.update(model="DiT-S/8", image_size=16, in_channels=1, compiled=True, train_tflops=0.0)
    assert "Triton kernels compiled while tracing 0" in format_table([r], dict(card="cpu", torch="x", scan_backend="y"))
    torch._dynamo.reset()


@pytest.mark.parametrize("mode,expected", [("none", [False, False]), ("auto", [False, False, True]),
                                           ("all", [False, True, False, True]), ("only", [True, True])])
def test_compile_choice_picks_the_rows(monkeypatch, mode, expected):
    import lamamba.bench

    calls = []
    monkeypatch.setattr(lamamba.bench, "bench_model", lambda name, **kw: calls.append(kw["compile"]) or {})
    monkeypatch.setattr(lamamba.bench, "format_table", lambda rows, env: "")
    assert main(["bench", "--model", "LaMamba-Diff-S", "--model", "DiT-S/2", "--device", "cpu",
                 "--compile", mode]) == 0
    assert calls == expected
