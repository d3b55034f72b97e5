#!/usr/bin/env bash
# Sweep the Triton scan's launch settings at XL stage-1 shape (256 px, bf16); prints one line per setting.
export PYTHONPATH=${PYTHONPATH:-src}
for flags in "" "--num-warps 4" "--num-warps 2" "--block-t 32" "--block-t 32 --num-warps 4" "--num-stages 2" \
             "--max-block-d 32" "--max-block-d 32 --num-warps 4" "--block-t 8" "--max-block-d 128 --state-lanes 512"; do
  echo "== $flags"
  python3 benchmarks/bench_scan.py --px 256 --dtypes bf16 --impls triton --copy-gib 0.25 $flags 2>&1 | grep -E "^(ss2d|selective_scan) " 
done
