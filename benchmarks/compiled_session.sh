#!/usr/bin/env bash
# Issue 11: the compiled paths in one call on nvidia-h200-x2. GPU 0: the small models (Fashion-MNIST setting,
# LaMamba-Diff-S vs DiT-S/2) compiled regionally, then with CUDA graphs, then whole-model with CUDA graphs.
# GPU 1: LaMamba-Diff-XL compiled regionally from an empty cache (cold), the warm start in a new process on the cache
# the first wrote (session 5's call used --fresh-cache, a temporary cache, so its second process was cold too), then
# compiled whole-model. Both GPUs compile at once, so the host's CPUs are shared: compile times are upper bounds.
# Logs are kept whole (the tail of each run goes to $OUT/log.txt); runs stop at DEADLINE_S (540) seconds.
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -1 | tee "$OUT/log.txt"
bench() {  # gpu, name, args...
  local gpu=$1 name=$2; shift 2
  local left=$(( ${DEADLINE_S:-540} - SECONDS )); [ $left -gt 20 ] || { echo "$name: no time left" > "/tmp/$name.tail"; return; }
  CUDA_VISIBLE_DEVICES=$gpu timeout $left python3 -m lamamba.cli bench --out "/tmp/$name.json" "$@" > "/tmp/$name.log" 2>&1
  echo "rc=$? after ${SECONDS}s" >> "/tmp/$name.log"
  grep -avE "^\s*$|^-+$" "/tmp/$name.log" | tail -${TAIL:-7} | sed "s|^|$name |" > "/tmp/$name.tail"
}
( export LAMAMBA_CACHE_DIR=/tmp/cache-small; rm -rf "$LAMAMBA_CACHE_DIR"
  bench 0 fm-regional --preset fashion-mnist --compile all --compile-scope regional --steps 20 --warmup 5
  bench 0 fm-regional-cg --preset fashion-mnist --compile all --compile-scope regional --cuda-graphs --steps 20 --warmup 5
  bench 0 fm-full-cg --preset fashion-mnist --compile all --compile-scope full --cuda-graphs --steps 20 --warmup 5 ) &
( export LAMAMBA_CACHE_DIR=/tmp/cache-xl; rm -rf "$LAMAMBA_CACHE_DIR"   # empty: the first run is cold, the second warm
  bench 1 xl-regional --model LaMamba-Diff-XL --compile all --compile-scope regional --steps 10 --warmup 3
  bench 1 xl-regional-warm --model LaMamba-Diff-XL --compile all --compile-scope regional --steps 10 --warmup 3
  bench 1 xl-full --model LaMamba-Diff-XL --compile all --compile-scope full --steps 10 --warmup 3 ) &
wait
for f in fm-regional fm-regional-cg fm-full-cg xl-regional xl-regional-warm xl-full; do
  cat "/tmp/$f.tail" >> "$OUT/log.txt" 2>/dev/null; done
cat "$OUT/log.txt"
