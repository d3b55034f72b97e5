#!/usr/bin/env bash
# Issue 11: where a training step goes, before and after the issue's work, in one call on one GPU (~7 min).
# Carry BEFORE (default .carry/base11: `git archive bd71203 src benchmarks`, the tree before issue 11's first
# commit). Output in $OUT (log.txt and the profiles; benchmarks/profile_step.py, 256 px batch 64 unless named):
#   the BEFORE tree's LaMamba-Diff-XL eager (its own profile_step.py: the same kernel groups); the working tree's
#   LaMamba-Diff-XL eager, then in lamamba train's GPU default (regional + CUDA graphs), then LaMamba-Diff-S (32 px,
#   batch 128) in that default. With TESTS=1 first the GPU tests (-m gpu), at most 260 s.
# Sessions 8-10 ran versions of this script on two GPUs (see git history).
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
source "$(dirname "$0")/experiment_variants.sh"   # left()
BEFORE=${BEFORE:-.carry/base11}
log=$OUT/log.txt
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -1 | tee "$log"
export LAMAMBA_CACHE_DIR=/tmp/cache-profile
[ "${TESTS:-0}" = 1 ] && gpu_tests 260 tests/ops tests/models tests/sampling/test_sample_cli.py \
  tests/training/test_train_loop.py tests/training/test_train_ddp.py
(cd "$BEFORE" && PYTHONPATH=src timeout "$(left)" python3 benchmarks/profile_step.py --model LaMamba-Diff-XL \
  --rows 60) > "$OUT/profile-before-eager-XL.txt" 2>&1
profile eager-XL --model LaMamba-Diff-XL
profile regional-cg-XL --model LaMamba-Diff-XL --compile --compile-scope regional --cuda-graphs
profile regional-cg-S --preset fashion-mnist --model LaMamba-Diff-S --compile --compile-scope regional --cuda-graphs
echo "== gpu tests" >> "$log"; cat "$OUT/gpu-tests.txt" >> "$log" 2>/dev/null
for f in "$OUT"/profile-*.txt; do echo "== $f" >> "$log"; grep -A12 "GPU time per step" "$f" >> "$log"; done
cat "$log"
