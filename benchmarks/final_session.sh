#!/usr/bin/env bash
# One device call: sweep the SS2D backward's launch settings at XL stage 1 (256 px, batch 64), keep the fastest
# forward + backward (LAMAMBA_SS2D_LAUNCH), then time the scan at the three shapes, `lamamba bench`
# LaMamba-Diff-XL vs DiT-XL/2 at 256 px (DiT-XL/2 eager and compiled) and 1024 px, and profile one XL step.
#   device: bash benchmarks/final_session.sh                   results under $OUT
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
best=""; best_ms=1e9
for cfg in "" "max_block_d=16" "bwd_num_warps=2" "block_t=8" "max_block_d=16,bwd_num_warps=2" "bwd_num_stages=2" \
           "block_t=32,max_block_d=16,bwd_num_warps=2"; do
  ms=$(LAMAMBA_SS2D_LAUNCH="$cfg" timeout 90 python3 benchmarks/bench_scan.py --shapes 64x256 --copy-gib 0.25 2>/dev/null \
       | awk '$5=="fwd+bwd" {print $7}')
  echo "cfg [$cfg] fwd+bwd ${ms:-failed} ms" | tee -a "$OUT/sweep.txt"
  if [ -n "$ms" ] && awk "BEGIN {exit !($ms < $best_ms)}"; then best="$cfg"; best_ms=$ms; fi
done
export LAMAMBA_SS2D_LAUNCH="$best"; echo "best [$best] $best_ms ms" | tee -a "$OUT/sweep.txt"
python3 benchmarks/bench_scan.py --out "$OUT/scan.json" 2>&1 | grep -E "triton|launch|copy" | tee "$OUT/scan.txt"
for cfg in "256 64 auto" "1024 4 none"; do set -- $cfg
  timeout 200 python3 -m lamamba.cli bench --model LaMamba-Diff-XL --model DiT-XL/2 --image-size $1 --batch-size $2 \
    --compile $3 --steps 10 --warmup 3 --out "$OUT/bench$1.json" 2>&1 | grep -E "^(LaMamba|DiT|card)" | tee -a "$OUT/bench.txt"
done
timeout 100 python3 benchmarks/profile_step.py --model LaMamba-Diff-XL --image-size 256 --batch-size 64 > "$OUT/profile.txt" 2>&1
grep -A12 "GPU time per step" "$OUT/profile.txt"
