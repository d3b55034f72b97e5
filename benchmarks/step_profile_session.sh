#!/usr/bin/env bash
# Issue 11: where a training step goes, before and after the issue's work, in one call on nvidia-h200-x2 (~6 min).
# Carry BEFORE (default .carry/base11: `git archive bd71203 src benchmarks`, the tree before issue 11's first
# commit). Output in $OUT (log.txt and the profiles; benchmarks/profile_step.py, 256 px batch 64 unless named).
#   GPU 0: the working tree: LaMamba-Diff-XL eager, then compiled (whole model).
#   GPU 1: the BEFORE tree's LaMamba-Diff-XL eager (its own profile_step.py: the same kernel groups), then the working
#          tree's LaMamba-Diff-S (32 px, batch 128) compiled.
# Session 8's version of this script compared compiled and eager sampling instead (see git history).
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
source "$(dirname "$0")/experiment_variants.sh"   # left()
BEFORE=${BEFORE:-.carry/base11}
log=$OUT/log.txt
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -1 | tee "$log"
profile() {  # NAME ARGS...: the working tree's benchmarks/profile_step.py, output in $OUT/profile-NAME.txt
  local name=$1; shift
  timeout "$(left)" python3 benchmarks/profile_step.py --rows 60 "$@" > "$OUT/profile-$name.txt" 2>&1
}
( export CUDA_VISIBLE_DEVICES=0 LAMAMBA_CACHE_DIR=/tmp/cache0
  profile eager-XL --model LaMamba-Diff-XL
  profile compiled-XL --model LaMamba-Diff-XL --compile ) &
( export CUDA_VISIBLE_DEVICES=1 LAMAMBA_CACHE_DIR=/tmp/cache1
  (cd "$BEFORE" && PYTHONPATH=src timeout "$(left)" python3 benchmarks/profile_step.py --model LaMamba-Diff-XL \
    --rows 60) > "$OUT/profile-before-eager-XL.txt" 2>&1
  profile compiled-S --preset fashion-mnist --model LaMamba-Diff-S --compile ) &
wait
for f in "$OUT"/profile-*.txt; do echo "== $f" >> "$log"; grep -A12 "GPU time per step" "$f" >> "$log"; done
cat "$log"
