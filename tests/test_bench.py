"""``lamamba bench`` runs end to end on the CPU (timing values are not checked: timing is not a test)."""
import json

from lamamba.bench import bench_model
from lamamba.cli import main


def test_bench_model_reports_all_fields():
    import torch
    r = bench_model("LaMamba-Diff-S", image_size=16, batch_size=2, device=torch.device("cpu"), precision="fp32",
                    steps=1, warmup=0, latent_downsample=1, in_channels=1, num_classes=10,
                    embed_dim=8, cond_dim=16, num_heads=2, window_size=4)
    for key in ("train_ms", "train_images_per_s", "sample_images_per_s", "gflops_per_image", "train_tflops"):
        assert r[key] > 0


def test_bench_cli_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--model", "DiT-S/8", "--image-size", "64", "--batch-size", "2", "--steps", "1",
                 "--warmup", "0", "--device", "cpu", "--precision", "fp32", "--compile", "none",
                 "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["rows"][0]["model"] == "DiT-S/8" and "card" in data["environment"]
    assert "train img/s" in capsys.readouterr().out
