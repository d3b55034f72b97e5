"""The model card (``README.md``) of a run pushed to the Hub: architecture, size, training, FID, sample grid."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

__all__ = ["model_card", "run_directory", "newest_grid"]


def run_directory(checkpoint: Path) -> Path | None:
    """The run directory of a ``<run>/checkpoints/<step>`` checkpoint (None for a loose checkpoint)."""
    directory = checkpoint if checkpoint.is_dir() else checkpoint.parent
    return directory.parent.parent if directory.parent.name == "checkpoints" else None


def newest_grid(run: Path | None, step: int) -> Path | None:
    """The run's sample grid (``samples/<step>.png``) of the newest step up to ``step``."""
    if run is None or not (run / "samples").is_dir():
        return None
    grids = sorted((int(p.stem), p) for p in (run / "samples").glob("*.png")
                   if p.stem.isdigit() and int(p.stem) <= step)
    return grids[-1][1] if grids else None


def _read_json_lines(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
    return records


def _size(info: dict[str, Any]) -> tuple[int, float]:
    """Parameters and GFLOPs of one forward pass at batch 1 (counted on the meta device: no memory)."""
    from lamamba.flops import count
    from lamamba.models import model_from_config

    with torch.device("meta"):
        model = model_from_config(info["model"])
    result = count(model, model.config.input_size, model.config.in_channels)
    return result["params"], result["gflops"]


def _fid(run: Path | None, step: int) -> str:
    evals = [r for r in _read_json_lines(run / "metrics.jsonl") if "eval_fid" in r and r["step"] <= step] if run else []
    if not evals:
        return "not measured"
    r = evals[-1]
    samples = f"{r['eval_num_samples']:,} samples, " if isinstance(r.get("eval_num_samples"), int) else ""
    return (f"{r['eval_fid']:.2f} at step {r['step']:,} (in-training, {samples}"
            f"{r.get('eval_feature_network', 'features as configured')}; a proxy unless 50,000 samples against ADM's "
            "reference batch)")


def model_card(repo_id: str, info: dict[str, Any], checkpoint: Path, grid_name: str | None) -> str:
    """Markdown with YAML metadata for the Hub page of ``checkpoint`` (its ``config.json`` is ``info``)."""
    run = run_directory(checkpoint)
    config_file = run / "run_config.json" if run else None
    run_config = json.loads(config_file.read_text()) if config_file and config_file.is_file() else {}
    train = run_config.get("train", {})
    step, model = int(info.get("step", 0)), info["model"]
    name = model.get("extra", {}).get("name", "lamamba model")
    params, gflops = _size(info)
    k = int(info.get("num_classes", model.get("num_classes", 0)))
    side = info.get("image_size", "?")
    latent = info.get("latent")
    space = f"latent space of `{latent.get('vae')}`" if latent else "pixel space"
    batch = train.get("global_batch_size")
    training = f"{step:,} steps" + (f", {step * batch:,} training images (batch {batch})" if batch else "")
    if train.get("data"):
        training += f", data `{train['data']}`"
    d = info.get("diffusion", {})
    rows = [
        ("architecture", f"{name}, {side}x{side} px, image channels {info.get('image_channels', '?')}, {space}"),
        ("conditioning", f"class-conditional, {k} classes (null label {k})" if k else "unconditional"),
        ("parameters", f"{params:,}"),
        ("GFLOPs per forward", f"{gflops:.4g} (batch 1; one multiply-add = one FLOP, as the paper)"),
        ("training", training),
        ("weights", f"EMA (decay {info['ema_decay']})" if "ema_decay" in info else "EMA"),
        ("diffusion", f"{d.get('diffusion_steps', 1000)} steps, {d.get('noise_schedule', 'linear')} schedule, "
                      f"{'learned' if d.get('learn_sigma', True) else 'fixed'} variance"),
        ("FID", _fid(run, step)),
    ]
    labels = " --labels 0,1,2,3" if k else ""
    lines = ["---", "library_name: lamamba",
             f"tags: [lamamba, diffusion, image-generation, {'class-conditional' if k else 'unconditional'}]",
             "---", "", f"# {repo_id}", "",
             f"A {name} diffusion model trained with [lamamba](https://pypi.org/project/lamamba/).", "",
             "| | |", "| --- | --- |", *[f"| {a} | {b} |" for a, b in rows], ""]
    if grid_name:
        lines += [f"![samples of this model at step {step:,}]({grid_name})", ""]
    lines += ["## Use", "", "```bash", 'pip install "lamamba[hub]"',
              f"lamamba sample {repo_id}{labels} --out samples      # samples/grid.png", "```", "",
              "```python", "import lamamba", "", f'model = lamamba.load_pretrained("{repo_id}")  # safetensors only',
              "```", "", "Only `model.safetensors` and `config.json` are downloaded; nothing is unpickled.", "",
              "## Model config", "", "```json", json.dumps(model, indent=2, sort_keys=True), "```", ""]
    return "\n".join(lines)
