#!/usr/bin/env bash
# Issue 11: where the compiled steps go, and whether compiled sampling draws the same pictures, in one call on
# nvidia-h200-x2 (~7 min). Carry .carry/fashion-mnist. Output in $OUT (log.txt and the profiles).
#   GPU 0: profiles of the compiled training step of LaMamba-Diff-S (32 px, batch 128) and LaMamba-Diff-XL (256 px,
#          batch 64), whole model compiled (benchmarks/profile_step.py).
#   GPU 1: a 300-step LaMamba-Diff-S run sampled eagerly and compiled with CUDA graphs, each in fp32 and bf16, from
#          the same seeds: compiled vs eager in fp32 says whether the compiled graph computes the same function;
#          bf16 vs fp32 eager is the size of the rounding differences that 20 sampler steps amplify.
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
source "$(dirname "$0")/experiment_variants.sh"   # left()
export LAMAMBA_FASHION_MNIST=$PWD/.carry/fashion-mnist
log=$OUT/log.txt
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -1 | tee "$log"
( export CUDA_VISIBLE_DEVICES=0
  timeout "$(left)" python3 benchmarks/profile_step.py --preset fashion-mnist --model LaMamba-Diff-S --compile \
    --rows 60 > "$OUT/profile-compiled-S.txt" 2>&1
  timeout "$(left)" python3 benchmarks/profile_step.py --model LaMamba-Diff-XL --compile --rows 60 \
    > "$OUT/profile-compiled-XL.txt" 2>&1 ) &
( export LAMAMBA_CACHE_DIR=/tmp/cache CUDA_VISIBLE_DEVICES=1
  timeout "$(left)" python3 -m lamamba.cli train --preset paper --data fashion-mnist --image-size 32 \
    --model LaMamba-Diff-S --global-batch-size 128 --max-steps 300 --ckpt-every 300 --sample-every 300 \
    --sample-num 0 --ema-decay 0.99 --run-dir /tmp/s-run --no-compile --no-tensorboard > /tmp/s-train.log 2>&1
  for prec in fp32 bf16; do for mode in eager compiled; do
    flags=$([ $mode = compiled ] && echo "--compile --cuda-graphs" || echo "--no-compile"); t0=$SECONDS
    timeout "$(left)" python3 -m lamamba.cli sample /tmp/s-run --num-samples 1000 --batch-size 500 --sampler dpm++2m \
      --steps 20 --cfg-scale 1.5 --precision $prec --npz --no-progress --out "/tmp/s-$mode-$prec" $flags \
      > "/tmp/s-$mode-$prec.log" 2>&1
    echo "sample $mode $prec: rc $?, $((SECONDS - t0)) s wall for 1,000 samples (start-up and compilation" \
      "included)" >> /tmp/s-times.txt
  done; done
  python3 - > /tmp/s-compare.txt 2>&1 <<'PY'
import numpy as np
load = lambda name: np.load(f"/tmp/s-{name}/samples.npz")["arr_0"].astype(int)
for a, b in (("compiled-fp32", "eager-fp32"), ("eager-bf16", "eager-fp32"), ("compiled-bf16", "eager-bf16"),
             ("compiled-bf16", "eager-fp32")):
    d = np.abs(load(a) - load(b))
    print(f"{a} vs {b}, 1,000 samples (guidance 1.5): max |pixel difference| {d.max()} of 255, mean {d.mean():.3f}, "
          f"samples with any pixel off by > 8: {(d.reshape(len(d), -1).max(1) > 8).mean():.1%}")
PY
  cat /tmp/s-times.txt >> /tmp/s-compare.txt ) &
wait
echo "== s-compare" >> "$log"; cat /tmp/s-compare.txt >> "$log"
tail -2 /tmp/s-train.log >> "$log"
for f in "$OUT"/profile-*.txt; do echo "== $f" >> "$log"; grep -A12 "GPU time per step" "$f" >> "$log"; done
cat "$log"
