"""The table of issue 13's conditioning runs (docs/RESULTS.md, "Why LaMamba-Diff-S hardly follows its label").

Reads an experiment directory written by ``benchmarks/conditioning_session.sh`` (per run: ``train.json``,
``curve.jsonl`` and ``label-use-<step>.jsonl`` from ``benchmarks/label_use.py``) and prints one Markdown row per
run: training speed, FD in the Fashion-MNIST classifier's features and class accuracy at each curve point, the
label's effect on the noise-prediction error (``mse wrong / mse true - 1`` averaged over t = 350-750, where the
class is decided) per checkpoint, and the sizes of the condition's two parts at the last checkpoint. ``--reference``
adds the curve points of earlier runs at the same training images (e.g. session 6's 10-epoch runs, both seeds).

    python benchmarks/conditioning_table.py docs/results/fashion-mnist-conditioning \\
        --reference docs/results/fashion-mnist-10ep
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lamamba.experiment.curves import read_curve

MIDDLE = range(350, 751)  # noise levels whose label-use gap is averaged


def _rows(path: Path) -> list[dict]:  # a label_use.py --json file
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def label_gap(rows: list[dict]) -> float | None:
    """Mean of ``mse_wrong / mse_true - 1`` over the middle noise levels, in percent."""
    gaps = [r["mse_wrong"] / r["mse_true"] - 1 for r in rows if r.get("t") in MIDDLE]
    return 100 * sum(gaps) / len(gaps) if gaps else None


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def run_row(directory: Path, images: set[int] | None = None) -> str | None:
    """One Markdown row for a run directory (None when it has neither curve nor label-use results)."""
    curve = [c for c in read_curve(directory) if images is None or c["images"] in images]
    probes = sorted(directory.glob("label-use-*.jsonl"))
    if not curve and not probes:
        return None
    train = json.loads((directory / "train.json").read_text()) if (directory / "train.json").is_file() else {}
    points = " / ".join(f"{c['images'] // 1000}k" for c in curve) or "—"
    fd = " / ".join(f"{c['fd_classifier']:.1f}" for c in curve) or "—"
    acc = " / ".join(f"{c['class_accuracy']:.3f} ({c['class_accuracy_cfg']:.3f})" for c in curve) or "—"
    gaps = " / ".join(_fmt(label_gap(_rows(p)), ".1f") + "%" for p in probes) or "—"
    sizes = next((r for r in _rows(probes[-1]) if "timestep_rms" in r), {}) if probes else {}
    return (f"| {directory.name} | {_fmt(train.get('images_per_sec'), '.0f')} | {points} | {fd} | {acc} | {gaps} | "
            f"{_fmt(sizes.get('timestep_rms'), '.2f')} | {_fmt(sizes.get('label_spread_rms'), '.3f')} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("experiment", type=Path, help="experiment directory (runs/<run>/...)")
    p.add_argument("--reference", type=Path, default=None,
                   help="another experiment directory: its runs' curve points at the same training images")
    args = p.parse_args(argv)
    runs = sorted(d for d in (args.experiment / "runs").glob("*") if d.is_dir())
    if not runs:
        print(f"conditioning_table.py: no runs under {args.experiment / 'runs'}", file=sys.stderr)
        return 2
    print("| run | train img/s | training images | FD (classifier) | class acc. (guided 1.5) | label gap, t=350-750 "
          "| t_emb RMS | label rows' spread |\n" + "|---" * 8 + "|")
    images = set()
    for run in runs:
        row = run_row(run)
        if row:
            print(row)
            images |= {c["images"] for c in read_curve(run)}
    if args.reference is not None:
        for run in sorted(d for d in (args.reference / "runs").glob("*") if d.is_dir()):
            row = run_row(run, images)
            if row:
                print(row.replace(f"| {run.name} |", f"| {run.name} ({args.reference.name}) |", 1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
