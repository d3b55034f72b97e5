#!/usr/bin/env bash
# Issue 11, session 15: the cold compile with this package's Triton kernels compiled in a thread pool while
# torch.compile traces (ops/triton_launch.py) against the same code compiling each at its first launch
# (LAMAMBA_COMPILE_THREADS=0), each in an empty cache (Inductor's and Triton's) and its own process, on one GPU;
# then the warm start (a new process on the first run's cache); then, with TESTS=1, the compiled paths' GPU tests in
# what is left of the call (DEADLINE_S). Output in $OUT.
#   MODEL=XL (256 px, batch 64; default) or MODEL=S (the fashion-mnist preset, 32 px, batch 128)
#   ORDER="on off" (default) or "off on": which cold run goes first
#   BREAKDOWN=1: first, benchmarks/warm_start_profile.py --no-cprofile on LaMamba-Diff-XL (256 px, batch 64) in an
#   empty cache: the first calls timed and PyTorch's per-phase compile timers
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
source "$(dirname "$0")/experiment_variants.sh"   # left()
log=$OUT/log.txt
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -1 | tee "$log"
nproc | sed 's/^/CPU cores: /' | tee -a "$log"
case "${MODEL:-XL}" in
  XL) args="--model LaMamba-Diff-XL --image-size 256 --batch-size 64" ;;
  S) args="--preset fashion-mnist --model LaMamba-Diff-S" ;;
esac
bench() {  # LABEL CACHE THREADS: lamamba bench in lamamba train's GPU default (regional + CUDA graphs)
  echo "== $1" >> "$log"
  [ "$(left)" -gt 20 ] || { echo "skipped (the call's deadline)" >> "$log"; return; }
  LAMAMBA_COMPILE_THREADS=$3 LAMAMBA_CACHE_DIR=$2 timeout "$(left)" python3 -m lamamba.cli bench --compile only \
    --cuda-graphs --compile-scope regional --steps 20 --warmup 5 $args 2>&1 | grep -v Warning | tail -7 >> "$log"
}
if [ "${BREAKDOWN:-0}" = 1 ]; then
  echo "== compile breakdown, LaMamba-Diff-XL 256 px batch 64, cold" >> "$log"
  LAMAMBA_CACHE_DIR=/tmp/c-breakdown timeout "$(left)" python3 benchmarks/warm_start_profile.py \
    --model LaMamba-Diff-XL --preset imagenet --compile-scope regional --no-cprofile 2>&1 \
    | grep -v Warning > "$OUT/breakdown-XL.txt"
  grep -v "^ *warn" "$OUT/breakdown-XL.txt" | head -60 >> "$log"
fi
for run in ${ORDER:-on off}; do
  if [ "$run" = on ]; then bench "precompile on (default threads), cold" /tmp/c-on ""; else
    bench "precompile off (LAMAMBA_COMPILE_THREADS=0), cold" /tmp/c-off 0; fi
done
bench "precompile on, new process on that cache (warm)" /tmp/c-on ""
if [ "${TESTS:-0}" = 1 ] && [ "$(left)" -gt 60 ]; then
  gpu_tests "$(( $(left) - 10 ))" tests/models/test_compile.py tests/training/test_train_loop.py \
    tests/sampling/test_sample_cli.py tests/training/test_train_ddp.py
  echo "== GPU tests" >> "$log"; tail -40 "$OUT/gpu-tests.txt" >> "$log"
fi
cat "$log"
