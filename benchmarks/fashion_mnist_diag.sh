#!/usr/bin/env bash
# Diagnose the pure-noise samples of LaMamba-Diff-S (docs/RESULTS.md): retrain the run, then sample 2,000 images
# with several samplers/precisions and count the failures; meanwhile run the GPU tests and a compiled
# `lamamba train` smoke run. Carry .carry/fashion-mnist and .whl. Usage: bash benchmarks/fashion_mnist_diag.sh
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
export LAMAMBA_FASHION_MNIST=$PWD/.carry/fashion-mnist
nvidia-smi --query-gpu=name --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -m lamamba.cli experiment fashion-mnist --runs lamamba-s --stages train --out /tmp/diag > "$OUT/train.log" 2>&1 &
pid=$!
echo "== GPU tests"; python3 -m pytest -q -p no:warnings -m gpu tests/ops/test_triton_scan.py \
  tests/models/test_window_attention.py 2>&1 | tail -4 | tee "$OUT/gpu_tests.txt"
echo "== compiled lamamba train (default on CUDA)"
timeout 240 python3 -m lamamba.cli train --data fashion-mnist --max-steps 60 --log-every 20 --run-dir /tmp/ctest \
  --no-tensorboard --sample-num 0 2>&1 | grep -aE "parameters|step (20|40|60) |Error|error" | tee "$OUT/compile.txt"
wait $pid; tail -3 "$OUT/train.log"
labels=$(seq -s, 0 9)
for v in "dpm++2m 20 bf16 -" "dpm++2m 20 bf16 --clip-denoised" "dpm++2m 20 fp32 -" "ddpm 50 bf16 -"; do
  set -- $v; clip=$4; [ "$clip" = - ] && clip=""
  dir=/tmp/diag/s-$1-$2-$3${clip:+-clip}
  python3 -m lamamba.cli sample /tmp/diag/runs/lamamba-s --num-samples 2000 --labels "$labels" --sampler "$1" \
    --steps "$2" --precision "$3" $clip --cfg-scale 1 --batch-size 1000 --npz --grid-max 100 --out "$dir" --no-progress >/dev/null
  python3 -c "
import numpy as np, sys
x = np.load('$dir/samples.npz')['arr_0'].astype(np.float32)
print('$v'.replace(' -', ''), 'noisy fraction', float((np.abs(np.diff(x, axis=2)).mean(axis=(1, 2, 3)) > 45).mean()))" | tee -a "$OUT/noise.txt"
  name=$(basename "$dir"); cp "$dir/grid.png" "$OUT/grid-${name//+/p}.png"
done
