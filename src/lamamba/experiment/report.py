"""Collect the runs of an experiment into ``results.json`` and Markdown tables beside the paper's rows."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from lamamba.experiment.fashion_mnist import GROUPS, IMAGE_SIZE, NUM_CLASSES, ExperimentConfig, Run, run_dir

__all__ = ["collect_results", "format_tables", "write_report"]

TITLES = {
    "table4": "Table 4: LaMamba-Diff-S vs DiT-S/2 (equal parameters)",
    "table5": "Table 5: attention in the LaMamba block",
    "table7": "Table 7: architecture (skips, isotropic layout)",
    "seeds": "Run-to-run spread: the same models, another seed",
    "conditioning": "Class conditioning: local attention, U-Net and condition width against DiT-S/2",
}


def _read(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def collect_results(cfg: ExperimentConfig, runs: list[Run]) -> list[dict[str, Any]]:
    """One row per run: size and cost (counted), speed (from training), scores, and the paper's numbers."""
    from lamamba.flops import measure

    rows = []
    for run in runs:
        directory = run_dir(cfg, run)
        cost = measure(run.model, IMAGE_SIZE, latent_downsample=1, in_channels=1, num_classes=NUM_CLASSES,
                       **run.overrides)
        train = _read(directory / "train.json") or {}
        scores = _read(directory / "scores.json") or {}
        inception, classifier = scores.get("inception", {}), scores.get("classifier", {})
        noise = scores.get("pixels", {}).get("noise_fraction")
        rows.append(dict(
            run=run.name, table=run.table, label=run.label, model=run.model, overrides=run.overrides,
            seed=run.seed, params_m=cost["params"] / 1e6, gflops=cost["gflops"],
            train_images_per_s=train.get("images_per_sec"), train_images=train.get("train_images"),
            card=(train.get("environment") or {}).get("card"), final_loss=train.get("final_loss"),
            fid=inception.get("fid"), precision=inception.get("precision"), recall=inception.get("recall"),
            fd_classifier=classifier.get("fid"), class_accuracy=classifier.get("class_accuracy"),
            classifier_score=classifier.get("inception_score"), noise_fraction=noise, paper=run.paper,
        ))
    return rows


def _num(value: float | None, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def format_tables(rows: list[dict[str, Any]]) -> str:
    """Markdown: one table per group of ``TITLES`` with at least two selected runs, one of them new (a group whose
    runs all appeared in earlier tables is left out)."""
    by_name = {r["run"]: r for r in rows}
    head = ("| row | params (M) | GFLOPs | train img/s | FID (Inception) | FD (classifier) | class acc. | "
            "precision / recall | noise samples | paper: params / GFLOPs / FID |\n" + "|---" * 10 + "|")
    parts, shown = [], set()
    for group, title in TITLES.items():
        members = [by_name[n] for n in GROUPS[group] if n in by_name]
        names = {r["run"] for r in members}
        if len(members) < 2 or names <= shown:
            continue  # e.g. the spread table without a second seed: nothing an earlier table did not show
        shown |= names
        lines = [f"### {title}", "", head]
        for r in members:
            p = r["paper"]
            paper = " / ".join(_num(p.get(k), f) for k, f in (("params_m", ".0f"), ("gflops", ".2f"),
                                                                ("fid", ".2f"))) if p else "—"
            pr = f"{_num(r['precision'], '.3f')} / {_num(r['recall'], '.3f')}"
            lines.append(f"| {r['label']} | {r['params_m']:.1f} | {r['gflops']:.2f} | "
                         f"{_num(r['train_images_per_s'], '.0f')} | {_num(r['fid'], '.2f')} | "
                         f"{_num(r['fd_classifier'], '.2f')} | {_num(r['class_accuracy'], '.3f')} | {pr} | "
                         f"{_pct(r['noise_fraction'])} | {paper} |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def write_report(cfg: ExperimentConfig, runs: list[Run]) -> Path:
    """``results.json``, ``results.md`` and ``grids/<run>.png`` (the first 100 samples: one class per column)."""
    out = Path(cfg.out)
    missing = [r.name for r in runs if not (run_dir(cfg, r) / "train.json").is_file()]
    if len(missing) == len(runs):
        raise ValueError(f"no trained runs under {out / 'runs'} ({', '.join(missing)}); run the train, sample and "
                         "score stages first (or point --out at the experiment directory)")
    rows = collect_results(cfg, runs)
    cards = sorted({r["card"] for r in rows if r["card"]})
    (out / "results.json").write_text(json.dumps(dict(config=cfg.__dict__, cards=cards, runs=rows), indent=2,
                                                  default=str) + "\n")
    grids = out / "grids"
    grids.mkdir(parents=True, exist_ok=True)
    for run in runs:
        grid = run_dir(cfg, run) / "samples" / "grid.png"
        if grid.is_file():
            shutil.copyfile(grid, grids / f"{run.name}.png")
    steps = f"{cfg.sampler} {cfg.sample_steps} steps"
    text = (f"Fashion-MNIST 32x32, {cfg.max_steps * cfg.batch_size:,} training images per run (batch "
            f"{cfg.batch_size}, AdamW {cfg.lr:g}, EMA {cfg.ema_decay}), {cfg.num_samples:,} class-balanced samples "
            f"({steps}, no guidance) vs the 10,000 test images. Cards: {', '.join(cards) or 'unknown'}.\n\n"
            + format_tables(rows))
    curves = _plot_curves(cfg, runs)
    if curves is not None:
        text += (f"\nSample quality along training ({cfg.curve_samples:,} samples per point, EMA weights): "
                 f"`{curves.name}` (against training images and GPU-seconds), per run `runs/<run>/curve.jsonl`.\n")
    (out / "results.md").write_text(text)
    return out / "results.md"


def _plot_curves(cfg: ExperimentConfig, runs: list[Run]) -> Path | None:
    from lamamba.experiment.curves import plot_curves
    from lamamba.extras import MissingExtraError

    try:
        return plot_curves(cfg, runs)
    except MissingExtraError as error:  # matplotlib missing: the tables are still written
        logging.getLogger("lamamba.experiment").warning("curves.png not drawn: %s", error)
        return None
