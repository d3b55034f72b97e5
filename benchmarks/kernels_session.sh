#!/usr/bin/env bash
# Issue 11, session 8: the AdaLN and SS2D backward kernels with fewer registers against the session's start, and the
# scan's launch settings at LaMamba-Diff-S's shapes, in one call on nvidia-h200-x2 (~9 min). Carry .carry/base8
# (git archive a68fefe src: the tree before the kernel changes). Output in $OUT.
#   GPU 0: the GPU tests of the kernels; benchmarks/scan_launch_sweep.py (kernel GPU time in CUDA graphs) for the new
#          tree under six launches and the base tree under its default; then LaMamba-Diff-XL (256 px,
#          batch 64) compiled with CUDA graphs, as time allows.
#   GPU 1: lamamba bench, LaMamba-Diff-S at 32 px batch 128 compiled with CUDA graphs, new / base / new, then DiT-S/2.
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
source "$(dirname "$0")/experiment_variants.sh"   # left()
log=$OUT/log.txt
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -1 | tee "$log"
bench() {  # TREE NAME ARGS...: lamamba bench from src/ (new) or .carry/base8/src (base), rows to $OUT/bench.txt
  local tree=$1 name=$2; shift 2
  echo "== $name ($tree)" >> "$OUT/bench-$CUDA_VISIBLE_DEVICES.txt"
  PYTHONPATH=$([ "$tree" = base ] && echo .carry/base8/src || echo src) timeout "$(left)" python3 -m lamamba.cli bench \
    --compile all --cuda-graphs --steps 20 --warmup 5 "$@" 2>&1 | grep -v Warning | tail -9 >> "$OUT/bench-$CUDA_VISIBLE_DEVICES.txt"
}
( export CUDA_VISIBLE_DEVICES=0 LAMAMBA_CACHE_DIR=/tmp/cache0
  timeout 200 python3 -m pytest -q -p no:warnings --tb=short tests/ops/test_fused_adaln.py tests/ops/test_triton_ss2d.py \
    tests/ops/test_kernel_route_model.py tests/ops/test_gated_norm.py 2>&1 | tail -8 > "$OUT/gpu-tests.txt"
  timeout "$(left)" python3 benchmarks/scan_launch_sweep.py --variants "" "max_block_d=16" "max_block_d=8" \
    "bwd_num_warps=2,max_block_d=64" "block_t=8" "programs_per_sm=32" > "$OUT/sweep.txt" 2>&1
  echo "== base tree" >> "$OUT/sweep.txt"
  PYTHONPATH=.carry/base8/src timeout "$(left)" python3 benchmarks/scan_launch_sweep.py --variants "" \
    >> "$OUT/sweep.txt" 2>&1
  bench new XL --model LaMamba-Diff-XL --image-size 256 --batch-size 64 ) &
( export CUDA_VISIBLE_DEVICES=1 LAMAMBA_CACHE_DIR=/tmp/cache1
  for tree in new base new; do bench $tree S --preset fashion-mnist --model LaMamba-Diff-S; done
  bench new DiT-S --preset fashion-mnist --model DiT-S/2 ) &
wait
for f in gpu-tests sweep bench-1 bench-0; do echo "== $f" >> "$log"; cat "$OUT/$f.txt" >> "$log" 2>/dev/null; done
cat "$log"
