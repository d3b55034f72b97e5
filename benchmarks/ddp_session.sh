#!/usr/bin/env bash
# Multi-GPU training's compile modes (issue 11): LaMamba-Diff-XL and DiT-XL/2 (256 px, batch 64 per GPU) under
# DistributedDataParallel on every GPU of the machine (torchrun), one process group per mode: eager, the whole model
# compiled without CUDA graphs (lamamba train's multi-GPU default), regionally compiled with CUDA graphs, then the
# whole model with them. One JSON line per mode in $OUT/ddp.jsonl (benchmarks/ddp_step.py), ~8 min cold; before
# them a short lamamba train under torchrun with its defaults and the loop's GPU test (~3 min).
#   bash benchmarks/ddp_session.sh
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
source "$(dirname "$0")/experiment_variants.sh"   # left()
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/log.txt"
gpus=$(nvidia-smi -L | wc -l)
export LAMAMBA_CACHE_DIR=/tmp/c-ddp
mode() {  # MODEL MODE
  [ "$(left)" -gt 20 ] || { echo "skipped $1 $2 (deadline)" >> "$OUT/log.txt"; return; }
  timeout "$(left)" torchrun --standalone --nproc_per_node="$gpus" benchmarks/ddp_step.py --model "$1" --mode "$2" \
    > "$OUT/ddp-${1//\//}-$2.txt" 2>&1
  grep '^{' "$OUT/ddp-${1//\//}-$2.txt" >> "$OUT/ddp.jsonl" || tail -5 "$OUT/ddp-${1//\//}-$2.txt" >> "$OUT/log.txt"
}
# first the training loop itself under torchrun with the defaults (regional + CUDA graphs), two micro-batches per
# step and a sample grid, and the GPU test of CUDA-graph training with gradient accumulation
timeout 150 torchrun --standalone --nproc_per_node="$gpus" -m lamamba.train --run-dir /tmp/ddp-smoke --max-steps 30 \
  --grad-accum 2 --log-every 10 --ckpt-every 30 --sample-every 30 --no-tensorboard > "$OUT/train-smoke.txt" 2>&1
grep -E "compiled|first step|step +30|done|rror" "$OUT/train-smoke.txt" | grep -v Warn >> "$OUT/log.txt"
timeout 200 python3 -m pytest -q -m gpu -p no:warnings --tb=short tests/training/test_train_loop.py \
  tests/training/test_train_ddp.py 2>&1 | tail -3 \
  >> "$OUT/log.txt"
mode LaMamba-Diff-XL eager
mode LaMamba-Diff-XL regional+cg
mode LaMamba-Diff-XL full
mode DiT-XL/2 full
mode DiT-XL/2 full+cg
mode LaMamba-Diff-XL full+cg
cat "$OUT/log.txt" "$OUT/ddp.jsonl"
