#!/usr/bin/env bash
# Issue 11: the targets' runs, every model compiled with CUDA graphs in both scopes, cold and warm, in one call on
# nvidia-h200-x2 (~8 min; on one GPU two calls, PART=large then PART=small); output in $OUT.
#   GPU 0 (large, 256 px batch 64): LaMamba-Diff-XL regional in an empty cache (cold), the same in a second process
#          (the warm start users get), DiT-XL/2 whole-model and regional, then LaMamba-Diff-XL whole-model (each
#          model's fastest mode is what the issue's targets compare).
#   GPU 1 (small, 32 px batch 128): LaMamba-Diff-S, DiT-S/2 the same.
#   TESTS=1: each part first runs the compiled paths' GPU tests (at most TESTS_S seconds, 200); PROFILE=1: a profile
#   of a LaMamba-Diff training step in that default (benchmarks/profile_step.py) before the whole-model run.
# Training steps compile with the scope given; sampling forwards as lamamba sample does (compile_for_sampling: regional
# = blocks compiled, the whole forward captured as one CUDA graph). On two GPUs both processes compile at the same time
# on one host, so cold compile times are upper bounds.
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
source "$(dirname "$0")/experiment_variants.sh"   # left()
log=$OUT/log.txt
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -1 | tee "$log"
bench() {  # LABEL CACHE ARGS...: lamamba bench, every model compiled with CUDA graphs, into $OUT/bench-GPU.txt
  local label=$1 cache=$2; shift 2
  echo "== $label" >> "$OUT/bench-$CUDA_VISIBLE_DEVICES.txt"
  [ "$(left)" -gt 20 ] || { echo "skipped (the call's deadline)" >> "$OUT/bench-$CUDA_VISIBLE_DEVICES.txt"; return; }
  LAMAMBA_CACHE_DIR=$cache timeout "$(left)" python3 -m lamamba.cli bench --compile only --cuda-graphs --steps 20 \
    --warmup 5 "$@" 2>&1 | grep -v Warning | tail -7 >> "$OUT/bench-$CUDA_VISIBLE_DEVICES.txt"
}
XL="--model LaMamba-Diff-XL --image-size 256 --batch-size 64"
S="--preset fashion-mnist --model LaMamba-Diff-S"
tests() {  # the compiled paths' GPU tests (-m gpu: a -k on names also picked CPU tests, which compiled for minutes)
  gpu_tests "${TESTS_S:-200}" tests/models/test_compile.py tests/training/test_train_loop.py \
    tests/models/test_capture.py tests/sampling/test_sample_cli.py tests/training/test_train_ddp.py
}
cg_profile() {  # NAME CACHE ARGS...: a training step in lamamba train's GPU default (regional + CUDA graphs)
  local name=$1 cache=$2; shift 2
  LAMAMBA_CACHE_DIR=$cache profile "$name" --compile --compile-scope regional --cuda-graphs "$@"
}
large() {
  [ "${TESTS:-0}" = 1 ] && tests
  bench "XL regional, cold" /tmp/c-XL-regional --compile-scope regional $XL
  bench "XL regional, new process" /tmp/c-XL-regional --compile-scope regional $XL
  bench "DiT-XL/2 full, cold" /tmp/c-dit-xl --compile-scope full --model DiT-XL/2 --image-size 256 --batch-size 64
  bench "DiT-XL/2 regional, cold" /tmp/c-dit-xl-regional --compile-scope regional --model DiT-XL/2 --image-size 256 \
    --batch-size 64
  [ "${PROFILE:-0}" = 1 ] && cg_profile regional-cg-XL /tmp/c-XL-regional --model LaMamba-Diff-XL   # a warm cache
  bench "XL full, cold" /tmp/c-XL-full --compile-scope full $XL
}
small() {
  [ "${TESTS:-0}" = 1 ] && tests
  bench "S regional, cold" /tmp/c-S-regional --compile-scope regional $S
  bench "S regional, new process" /tmp/c-S-regional --compile-scope regional $S
  bench "DiT-S/2 full, cold" /tmp/c-dit-s --compile-scope full --preset fashion-mnist --model DiT-S/2
  bench "DiT-S/2 regional, cold" /tmp/c-dit-s-regional --compile-scope regional --preset fashion-mnist --model DiT-S/2
  [ "${PROFILE:-0}" = 1 ] && cg_profile regional-cg-S /tmp/c-S-regional --preset fashion-mnist --model LaMamba-Diff-S
  bench "S full, cold" /tmp/c-S-full --compile-scope full $S
}
if [ "$(nvidia-smi -L | wc -l)" -ge 2 ]; then
  ( export CUDA_VISIBLE_DEVICES=0; large ) &
  ( export CUDA_VISIBLE_DEVICES=1; small ) &
else  # one GPU: PART=large or PART=small, one call each
  export CUDA_VISIBLE_DEVICES=0; ${PART:?one GPU: set PART=large or PART=small}
fi
wait
for f in gpu-tests bench-1 bench-0; do echo "== $f" >> "$log"; cat "$OUT/$f.txt" >> "$log" 2>/dev/null; done
for f in "$OUT"/profile-*.txt; do echo "== $f" >> "$log"; grep -A12 "GPU time per step" "$f" >> "$log"; done
cat "$log"
