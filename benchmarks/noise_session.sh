#!/usr/bin/env bash
# The failed-sample diagnosis (issue 13, docs/RESULTS.md) on a two-GPU device machine: GPU 0 trains the faithful
# LaMamba-Diff-S recipe (checkpoints every 480 steps), GPU 1 the same with the opt-in qk_norm; each is then
# diagnosed by benchmarks/noise_samples.py. Carry .carry/fashion-mnist. Usage: bash benchmarks/noise_session.sh
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
export LAMAMBA_FASHION_MNIST=$PWD/.carry/fashion-mnist
nvidia-smi --query-gpu=name --format=csv,noheader | tee "$OUT/gpu.txt"
one() {  # GPU, name, extra train arguments
  local gpu=$1 name=$2; shift 2
  CUDA_VISIBLE_DEVICES=$gpu timeout "${TRAIN_LIMIT_S:-420}" python3 benchmarks/noise_samples.py train /tmp/$name \
    --ckpt-every 480 "$@" > "$OUT/train-$name.log" 2>&1
  grep -aE "img/s" "$OUT/train-$name.log" | tail -2
  CUDA_VISIBLE_DEVICES=$gpu python3 benchmarks/noise_samples.py diagnose /tmp/$name --json "$OUT/diag-$name.json" \
    > "$OUT/diag-$name.txt" 2>&1
  cp /tmp/$name/metrics.jsonl "$OUT/metrics-$name.jsonl" 2>/dev/null
}
one 0 faithful &
one 1 qk-norm --model-arg qk_norm=true &
CUDA_VISIBLE_DEVICES=0 python3 -m pytest -q -p no:warnings -m gpu tests/models/test_window_attention.py 2>&1 | tail -3 \
  | tee "$OUT/gpu_tests.txt"
wait
tail -40 "$OUT"/diag-*.txt
