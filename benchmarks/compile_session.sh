#!/usr/bin/env bash
# Issue 11, built without a GPU: what a GPU session must measure. One card, one call; results under $OUT.
#   device: bash benchmarks/compile_session.sh            (~25 minutes: split it over calls by PART=1..4)
# Part 4's training runs need, carried: .carry/fashion-mnist (the IDX files), as benchmarks/fashion_mnist_gpu.sh.
# 1. LaMamba-Diff-XL compile, 256 px batch 64: regional (default) and whole-model, cold (empty cache) and warm
#    (after torch._dynamo.reset(); a second process's warm start is step 2). Targets: <= 60 s cold, <= 15 s warm.
# 2. The same regional command again in a new process on the cache step 1 wrote: the warm start users get.
# 3. The small-model setting (Fashion-MNIST: 32x32, 1 channel, batch 128): LaMamba-Diff-S vs DiT-S/2, eager,
#    regional and whole-model with CUDA graphs. Targets: training >= 0.8x, sampling >= 1.0x, memory <= 1.0x.
# 4. LaMamba-Diff-XL vs DiT-XL/2 at 256 px, both compiled (sampling forward target >= 1.5x), and the training
#    log's time to the first step, cold then warm, with images/s and MFU.
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
export LAMAMBA_CACHE_DIR=/tmp/lamamba-compile-cache   # emptied by part 1: its first compile is cold
export LAMAMBA_FASHION_MNIST=$PWD/.carry/fashion-mnist
bench() { timeout 580 python3 -m lamamba.cli bench --steps 10 --warmup 3 "$@" 2>&1 | tee -a "$OUT/bench.txt"; }
part() { [ -z "${PART:-}" ] || [ "${PART}" = "$1" ]; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
if part 1; then
  rm -rf "$LAMAMBA_CACHE_DIR"
  bench --model LaMamba-Diff-XL --compile all --fresh-cache --out "$OUT/xl_regional.json"
  bench --model LaMamba-Diff-XL --compile all --compile-scope full --fresh-cache --out "$OUT/xl_full.json"
fi
if part 2; then
  bench --model LaMamba-Diff-XL --compile all --out "$OUT/xl_regional_warm.json"
fi
if part 3; then
  bench --preset fashion-mnist --compile all --steps 20 --warmup 5 --out "$OUT/fm_regional.json"
  bench --preset fashion-mnist --compile all --compile-scope full --cuda-graphs --steps 20 --warmup 5 \
    --out "$OUT/fm_full_cudagraphs.json"
  bench --preset fashion-mnist --compile all --cuda-graphs --steps 20 --warmup 5 --out "$OUT/fm_regional_cg.json"
fi
if part 4; then
  bench --model LaMamba-Diff-XL --model DiT-XL/2 --compile all --out "$OUT/xl_vs_dit.json"
  for run in cold warm; do
    timeout 300 python3 -m lamamba.cli train --data fashion-mnist --max-steps 300 --log-every 100 --sample-num 0 \
      --no-tensorboard --resume never --results-dir "$OUT/runs" 2>&1 | grep -E "first step|img/s" | tee -a "$OUT/train.txt"
  done
fi
