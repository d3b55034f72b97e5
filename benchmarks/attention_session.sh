#!/usr/bin/env bash
# Window attention as Triton kernels (issue 11), one call on nvidia-h200-x2 (~9 min), or two on one GPU (PART=gpu0,
# then PART=gpu1); output in $OUT.
#   GPU 0: the GPU tests of the kernels (op at model shapes, the whole kernel-route model, window attention), the
#          op alone against the PyTorch route with launch variants (benchmarks/bench_window_attention.py), then
#          LaMamba-Diff-S (32 px, batch 128) eager and regional + CUDA graphs, this tree and the base tree.
#   GPU 1: LaMamba-Diff-XL (256 px, batch 64) the same, this tree first; on one GPU (PART=gpu1) the kernel's GPU
#          tests first and DiT-XL/2 (compiled) last.
# BASE: the tree before the kernels (git archive <commit> src | tar -x -C .carry/base13; carry .carry/base13).
# Both GPUs' processes compile at the same time on one host: cold compile times are upper bounds.
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
source "$(dirname "$0")/experiment_variants.sh"   # left()
BASE=${BASE:-.carry/base13}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -1 | tee "$OUT/log.txt"
bench() {  # TREE ARGS...: lamamba bench of src (new) or $BASE/src (base), eager and compiled with CUDA graphs
  local tree=$1; shift
  local src=src; [ "$tree" = base ] && src=$BASE/src
  local f="$OUT/bench-$CUDA_VISIBLE_DEVICES.txt"
  echo "== $tree $*" >> "$f"
  [ "$(left)" -gt 30 ] || { echo "skipped (the call's deadline)" >> "$f"; return; }
  PYTHONPATH=$src LAMAMBA_CACHE_DIR=/tmp/c-$tree-$CUDA_VISIBLE_DEVICES timeout "$(left)" python3 -m lamamba.cli bench \
    --compile all --cuda-graphs --steps 20 --warmup 5 "$@" 2>&1 | grep -v Warning | grep -A4 "^model" >> "$f"
}
gpu0() {
  timeout 200 python3 -m pytest -q -p no:warnings --tb=short tests/ops/test_triton_window_attention.py \
    tests/ops/test_kernel_route_model.py tests/models/test_window_attention.py 2>&1 | tail -8 > "$OUT/gpu-tests.txt"
  timeout 120 python3 benchmarks/bench_window_attention.py > "$OUT/attention.txt" 2>&1
  bench new --preset fashion-mnist --model LaMamba-Diff-S
  bench base --preset fashion-mnist --model LaMamba-Diff-S
}
gpu1() {
  [ -f "$OUT/gpu-tests.txt" ] || timeout 100 python3 -m pytest -q -p no:warnings --tb=short \
    tests/ops/test_triton_window_attention.py 2>&1 | tail -8 > "$OUT/gpu-tests.txt"
  bench new --model LaMamba-Diff-XL --image-size 256 --batch-size 64
  bench base --model LaMamba-Diff-XL --image-size 256 --batch-size 64
  [ "${CUDA_VISIBLE_DEVICES}" = 0 ] && bench new --compile only --model DiT-XL/2 --image-size 256 --batch-size 64
}
if [ "$(nvidia-smi -L | wc -l)" -ge 2 ]; then
  ( export CUDA_VISIBLE_DEVICES=0; gpu0 ) &
  ( export CUDA_VISIBLE_DEVICES=1; gpu1 ) &
  wait
else
  export CUDA_VISIBLE_DEVICES=0; ${PART:?one GPU: set PART=gpu0 or PART=gpu1}
fi
for f in gpu-tests attention bench-0 bench-1; do
  [ -f "$OUT/$f.txt" ] && { echo "== $f" >> "$OUT/log.txt"; cat "$OUT/$f.txt" >> "$OUT/log.txt"; }
done
cat "$OUT/log.txt"
