#!/usr/bin/env bash
# Issue 11: where the small model's eager step loses its time, and the compiled paths (one call, nvidia-h200-x2).
# GPU 0, alone on the host first (launch-bound timings are sensitive to other processes' CPU use): the fused ops'
# host and GPU time per call (benchmarks/op_overhead.py), LaMamba-Diff-S / DiT-S/2 eager for the base tree
# (.carry/base/src) and this one, the S step's profile with its host-side table; then the small models compiled
# (regional; regional with CUDA graphs). GPU 1, once GPU 0's eager part is done: LaMamba-Diff-XL compiled from an
# empty cache (regional), then DiT-XL/2 compiled (whole model), the baseline. All logs are kept whole.
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
export LAMAMBA_CACHE_DIR=/tmp/lamamba-compile-cache
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1 | tee "$OUT/log.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/log.txt"
bench() {  # gpu, tree, name, limit, args...
  local gpu=$1 tree=$2 name=$3 limit=$4; shift 4
  CUDA_VISIBLE_DEVICES=$gpu PYTHONPATH=$tree timeout "$limit" python3 -m lamamba.cli bench --out "/tmp/$name.json" "$@" \
    > "/tmp/$name.log" 2>&1; echo "rc=$? $name" >> "/tmp/$name.log"
  grep -avE "^\s*$" "/tmp/$name.log" | tail -${TAIL:-8} | sed "s|^|$name |" >> "$OUT/$name.txt"
}
( export CUDA_VISIBLE_DEVICES=0
  timeout 120 python3 benchmarks/op_overhead.py > "$OUT/ops.txt" 2>&1
  for tree in .carry/base/src src; do
    tag=$([ "$tree" = src ] && echo new || echo base)
    bench 0 $tree fm-eager-$tag 120 --preset fashion-mnist --compile none --steps 20 --warmup 5
    cat "$OUT/fm-eager-$tag.txt" >> "$OUT/log.txt"; rm "$OUT/fm-eager-$tag.txt"
  done
  timeout 90 python3 benchmarks/profile_step.py --preset fashion-mnist --model LaMamba-Diff-S --rows 40 \
    > "$OUT/profile-s.txt" 2>&1
  touch /tmp/eager-done
  bench 0 src fm-regional 240 --preset fashion-mnist --compile all --compile-scope regional --steps 20 --warmup 5
  bench 0 src fm-regional-cg $(( ${DEADLINE_S:-560} - SECONDS )) --preset fashion-mnist --compile all \
    --compile-scope regional --cuda-graphs --steps 20 --warmup 5 ) &
( while [ ! -e /tmp/eager-done ] && [ $SECONDS -lt 200 ]; do sleep 2; done
  bench 1 src xl-regional 300 --model LaMamba-Diff-XL --compile all --compile-scope regional --fresh-cache \
    --steps 10 --warmup 3
  bench 1 src dit-xl-full $(( ${DEADLINE_S:-560} - SECONDS )) --model DiT-XL/2 --compile all --compile-scope full \
    --steps 10 --warmup 3 ) &
wait
cd "$OUT" && for f in fm-regional fm-regional-cg xl-regional dit-xl-full; do [ -e $f.txt ] && cat $f.txt >> log.txt && rm $f.txt; done
cat log.txt ops.txt; grep -A12 "GPU time per step" profile-s.txt
