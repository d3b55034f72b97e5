"""Pixel differences between sample sets drawn from the same seeds (``lamamba sample --npz`` directories).

    python benchmarks/compare_samples.py /tmp/s-compiled-fp32:/tmp/s-eager-fp32 /tmp/s-eager-bf16:/tmp/s-eager-fp32

Each argument is ``A:B``; per pair one line: the largest and mean absolute pixel difference (of 255) and the share of
samples with any pixel off by more than 8 (device scripts: eager against compiled sampling, bf16 against fp32).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def main(pairs: list[str]) -> None:
    load = lambda d: np.load(Path(d) / "samples.npz")["arr_0"].astype(int)
    for pair in pairs:
        a, b = pair.split(":")
        d = np.abs(load(a) - load(b))
        print(f"{Path(a).name} vs {Path(b).name}, {len(d):,} samples: max |pixel difference| {d.max()} of 255, "
              f"mean {d.mean():.3f}, samples with any pixel off by > 8: {(d.reshape(len(d), -1).max(1) > 8).mean():.1%}")


if __name__ == "__main__":
    main(sys.argv[1:])
