#!/usr/bin/env bash
# Issue 11: the working tree against a base tree (BASE, default .carry/base9: `git archive <commit> src` of the tree
# before the change; carry it), in one call on nvidia-h200-x2 (~9 min). Output in $OUT.
#   GPU 0: the GPU tests of the kernels; benchmarks/scan_launch_sweep.py (kernel GPU time in CUDA graphs) for the
#          working tree under the launches in SWEEP and the base tree under its default (SWEEP=none: no sweep); then
#          lamamba bench of LaMamba-Diff-XL (256 px, batch 64) for each tree in XL_TREES (new, base).
#   GPU 1: lamamba bench of LaMamba-Diff-S (32 px, batch 128) for each tree in S_TREES, then DiT-S/2 and DiT-XL/2.
#   lamamba bench: eager, then compiled with CUDA graphs, as time allows.
# Session 8 compared the leaner AdaLN/SS2D backward with BASE=.carry/base8; session 9 the 2D scan tiles.
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
source "$(dirname "$0")/experiment_variants.sh"   # left()
BASE=${BASE:-.carry/base9}
SWEEP=(${SWEEP:-""})   # launches of the working tree (session 9 swept fast_math=0 max_block_d=16 block_t=8); none: no sweep
S_TREES=${S_TREES:-"new base new"} XL_TREES=${XL_TREES:-new}   # lamamba bench runs, in this order
log=$OUT/log.txt
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -1 | tee "$log"
bench() {  # TREE NAME ARGS...: lamamba bench from src/ (new) or $BASE/src (base), rows to $OUT/bench-GPU.txt
  local tree=$1 name=$2; shift 2
  echo "== $name ($tree)" >> "$OUT/bench-$CUDA_VISIBLE_DEVICES.txt"
  PYTHONPATH=$([ "$tree" = base ] && echo "$BASE/src" || echo src) timeout "$(left)" python3 -m lamamba.cli bench \
    --compile all --cuda-graphs --steps 20 --warmup 5 "$@" 2>&1 | grep -v Warning | tail -9 >> "$OUT/bench-$CUDA_VISIBLE_DEVICES.txt"
}
( export CUDA_VISIBLE_DEVICES=0 LAMAMBA_CACHE_DIR=/tmp/cache0
  timeout 240 python3 -m pytest -q -p no:warnings --tb=short tests/ops/test_fused_adaln.py tests/ops/test_triton_ss2d.py \
    tests/ops/test_kernel_route_model.py tests/ops/test_gated_norm.py tests/ops/test_recompute.py 2>&1 | tail -12 \
    > "$OUT/gpu-tests.txt"
  if [ "${SWEEP[*]}" != none ]; then
    timeout "$(left)" python3 benchmarks/scan_launch_sweep.py --variants "${SWEEP[@]}" > "$OUT/sweep.txt" 2>&1
    echo "== base tree" >> "$OUT/sweep.txt"
    PYTHONPATH=$BASE/src timeout "$(left)" python3 benchmarks/scan_launch_sweep.py --variants "" >> "$OUT/sweep.txt" 2>&1
  fi
  for tree in $XL_TREES; do bench $tree XL --model LaMamba-Diff-XL --image-size 256 --batch-size 64; done ) &
( export CUDA_VISIBLE_DEVICES=1 LAMAMBA_CACHE_DIR=/tmp/cache1
  for tree in $S_TREES; do bench $tree S --preset fashion-mnist --model LaMamba-Diff-S; done
  bench new DiT-S --preset fashion-mnist --model DiT-S/2
  bench new DiT-XL --model DiT-XL/2 --image-size 256 --batch-size 64 ) &
wait
for f in gpu-tests sweep bench-1 bench-0; do echo "== $f" >> "$log"; cat "$OUT/$f.txt" >> "$log" 2>/dev/null; done
cat "$log"
