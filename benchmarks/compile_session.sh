#!/usr/bin/env bash
# Issue 11: the targets' runs, every model compiled with CUDA graphs in both scopes, cold and warm, in one call on
# nvidia-h200-x2 (~8 min; on one GPU two calls, PART=large then PART=small); output in $OUT.
#   GPU 0 (large, 256 px batch 64): LaMamba-Diff-XL regional in an empty cache (cold), the same in a second process
#          (the warm start users get), DiT-XL/2 whole-model and regional, then LaMamba-Diff-XL whole-model (each
#          model's fastest mode is what the issue's targets compare). TESTS=1: first the compiled paths' GPU tests.
#   GPU 1 (small, 32 px batch 128): LaMamba-Diff-S, DiT-S/2 the same. PROFILE=1: then a cProfile of S's warm start
#          (benchmarks/warm_start_profile.py).
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
large() {
  [ "${TESTS:-0}" = 1 ] && LAMAMBA_CACHE_DIR=/tmp/c-tests timeout 240 python3 -m pytest -q -m gpu -p no:warnings \
    -p no:logging --tb=short tests/models/test_capture.py tests/models/test_compile.py \
    tests/sampling/test_sample_cli.py 2>&1 | tail -12 > "$OUT/gpu-tests.txt"   # -m gpu: a -k also picked CPU tests
  bench "XL regional, cold" /tmp/c-XL-regional --compile-scope regional $XL
  bench "XL regional, new process" /tmp/c-XL-regional --compile-scope regional $XL
  bench "DiT-XL/2 full, cold" /tmp/c-dit-xl --compile-scope full --model DiT-XL/2 --image-size 256 --batch-size 64
  bench "DiT-XL/2 regional, cold" /tmp/c-dit-xl-regional --compile-scope regional --model DiT-XL/2 --image-size 256 \
    --batch-size 64
  bench "XL full, cold" /tmp/c-XL-full --compile-scope full $XL
}
small() {
  bench "S regional, cold" /tmp/c-S-regional --compile-scope regional $S
  bench "S regional, new process" /tmp/c-S-regional --compile-scope regional $S
  bench "DiT-S/2 full, cold" /tmp/c-dit-s --compile-scope full --preset fashion-mnist --model DiT-S/2
  bench "DiT-S/2 regional, cold" /tmp/c-dit-s-regional --compile-scope regional --preset fashion-mnist --model DiT-S/2
  bench "S full, cold" /tmp/c-S-full --compile-scope full $S
  [ "${PROFILE:-0}" = 1 ] && LAMAMBA_CACHE_DIR=/tmp/c-S-regional timeout "$(left)" python3 \
    benchmarks/warm_start_profile.py > "$OUT/warm-start-profile-S.txt" 2>&1   # where a warm start goes
}
if [ "$(nvidia-smi -L | wc -l)" -ge 2 ]; then
  ( export CUDA_VISIBLE_DEVICES=0; large ) &
  ( export CUDA_VISIBLE_DEVICES=1; small ) &
else  # one GPU: PART=large or PART=small, one call each
  export CUDA_VISIBLE_DEVICES=0; ${PART:?one GPU: set PART=large or PART=small}
fi
wait
for f in gpu-tests bench-1 bench-0; do echo "== $f" >> "$log"; cat "$OUT/$f.txt" >> "$log" 2>/dev/null; done
cat "$log"
