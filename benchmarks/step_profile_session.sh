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
source "$(dirname "$0")/experiment_variants.sh"   # left(), short_s_run, sample_s
export LAMAMBA_FASHION_MNIST=$PWD/.carry/fashion-mnist
log=$OUT/log.txt
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -1 | tee "$log"
( export CUDA_VISIBLE_DEVICES=0
  timeout "$(left)" python3 benchmarks/profile_step.py --preset fashion-mnist --model LaMamba-Diff-S --compile \
    --rows 60 > "$OUT/profile-compiled-S.txt" 2>&1
  timeout "$(left)" python3 benchmarks/profile_step.py --model LaMamba-Diff-XL --compile --rows 60 \
    > "$OUT/profile-compiled-XL.txt" 2>&1 ) &
( export LAMAMBA_CACHE_DIR=/tmp/cache CUDA_VISIBLE_DEVICES=1
  short_s_run
  for prec in fp32 bf16; do for mode in eager compiled; do
    sample_s "$mode-$prec" $mode --cfg-scale 1.5 --precision $prec; done; done
  python3 benchmarks/compare_samples.py /tmp/s-compiled-fp32:/tmp/s-eager-fp32 /tmp/s-eager-bf16:/tmp/s-eager-fp32 \
    /tmp/s-compiled-bf16:/tmp/s-eager-bf16 /tmp/s-compiled-bf16:/tmp/s-eager-fp32 > /tmp/s-compare.txt 2>&1
  cat /tmp/s-times.txt >> /tmp/s-compare.txt ) &
wait
echo "== s-compare" >> "$log"; cat /tmp/s-compare.txt >> "$log"
tail -2 /tmp/s-train.log >> "$log"
for f in "$OUT"/profile-*.txt; do echo "== $f" >> "$log"; grep -A12 "GPU time per step" "$f" >> "$log"; done
cat "$log"
