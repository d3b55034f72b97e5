#!/usr/bin/env bash
# Issue 11: the evidence still missing before the next defaults change, in one call on nvidia-h200-x2 (~9 min).
# Carry .carry/base (the tree to compare with: git archive <commit> src | tar -x -C .carry/base) and
# .carry/fashion-mnist. Everything lands in $OUT/log.txt.
#   GPU 0: the kernel-route model test (fixed in session 6, never run on a GPU) and the GPU tests; then
#          LaMamba-Diff-XL eager, base and new interleaved three times each (session 5 and 6 both saw its eager
#          sampling row 25% lower in the second process: code or process order?).
#   GPU 1: LaMamba-Diff-XL training compiled whole-model with and without CUDA graphs (speed and peak memory:
#          may the CUDA-graph default of `lamamba train` extend past 50 M parameters?), then a short
#          LaMamba-Diff-S run sampled eagerly and with regional compilation + CUDA graphs from the same seeds
#          (do the pictures agree? the condition for compiling `lamamba sample` by default).
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
export LAMAMBA_FASHION_MNIST=$PWD/.carry/fashion-mnist
left() { echo $(( ${DEADLINE_S:-550} - SECONDS )); }
log=$OUT/log.txt
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -1 | tee "$log"
bench() {  # gpu, tree, name, args...: one `lamamba bench` row set into /tmp/<name>.txt
  local gpu=$1 tree=$2 name=$3; shift 3
  [ "$(left)" -gt 30 ] || { echo "$name: no time left" > "/tmp/$name.txt"; return; }
  CUDA_VISIBLE_DEVICES=$gpu PYTHONPATH=$tree timeout "$(left)" python3 -m lamamba.cli bench "$@" 2>&1 \
    | grep -aE "^(LaMamba|DiT)|Error|error" | sed "s|^|$name |" > "/tmp/$name.txt"
}
( export CUDA_VISIBLE_DEVICES=0
  timeout 200 python3 -m pytest -q -p no:warnings --tb=short tests/ops/test_kernel_route_model.py \
    tests/ops/test_fused_adaln.py tests/ops/test_gated_norm.py tests/ops/test_triton_ss2d.py tests/ops/test_recompute.py \
    2>&1 | tail -15 > /tmp/gpu-tests.txt
  for i in 1 2 3; do
    bench 0 .carry/base/src "xl-base-$i" --model LaMamba-Diff-XL --compile none --steps 10 --warmup 3
    bench 0 src "xl-new-$i" --model LaMamba-Diff-XL --compile none --steps 10 --warmup 3
  done ) &
( export LAMAMBA_CACHE_DIR=/tmp/cache
  bench 1 src xl-full --model LaMamba-Diff-XL --compile all --compile-scope full --steps 10 --warmup 3
  bench 1 src xl-full-cg --model LaMamba-Diff-XL --compile all --compile-scope full --cuda-graphs --steps 10 --warmup 3
  export CUDA_VISIBLE_DEVICES=1
  timeout "$(left)" python3 -m lamamba.cli train --preset paper --data fashion-mnist --image-size 32 \
    --model LaMamba-Diff-S --global-batch-size 128 --max-steps 300 --ckpt-every 300 --sample-every 300 \
    --sample-num 0 --ema-decay 0.99 --run-dir /tmp/s-run --no-compile --no-tensorboard > /tmp/s-train.log 2>&1
  for mode in eager compiled; do
    flags=$([ $mode = compiled ] && echo "--compile --cuda-graphs" || echo "--no-compile"); t0=$SECONDS
    timeout "$(left)" python3 -m lamamba.cli sample /tmp/s-run --num-samples 1000 --batch-size 500 --sampler dpm++2m --steps 20 \
      --precision bf16 --npz --no-progress --out "/tmp/s-$mode" $flags > "/tmp/s-$mode.log" 2>&1
    echo "sample $mode: rc $?, $((SECONDS - t0)) s wall for 1,000 samples (start-up and compilation included)" \
      >> /tmp/s-times.txt
  done
  python3 - > /tmp/s-compare.txt 2>&1 <<'PY'
import numpy as np
a, b = (np.load(f"/tmp/s-{m}/samples.npz")["arr_0"].astype(int) for m in ("eager", "compiled"))
d = np.abs(a - b)
print(f"compiled + CUDA graphs vs eager, 1,000 samples: max |pixel difference| {d.max()} of 255, mean {d.mean():.3f}, "
      f"samples with any pixel off by > 8: {(d.reshape(len(d), -1).max(1) > 8).mean():.1%}")
PY
  cat /tmp/s-times.txt >> /tmp/s-compare.txt; tail -2 /tmp/s-compiled.log >> /tmp/s-compare.txt ) &
wait
for f in gpu-tests xl-base-1 xl-new-1 xl-base-2 xl-new-2 xl-base-3 xl-new-3 xl-full xl-full-cg s-compare; do
  echo "== $f" >> "$log"; cat "/tmp/$f.txt" >> "$log" 2>/dev/null; done
tail -3 /tmp/s-train.log >> "$log"
cat "$log"
