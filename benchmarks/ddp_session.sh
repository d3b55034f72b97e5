#!/usr/bin/env bash
# Multi-GPU training (issue 11), one GPU call per part, every GPU of the machine:
#   PART=loop  : lamamba train itself under torchrun with its defaults (regional compile + CUDA graphs, two
#                micro-batches per step, a sample grid), the training loop's GPU tests (CUDA-graph training with
#                gradient accumulation; two processes with CUDA graphs against one eager process), then one GPU vs
#                all GPUs at the same global batch on Fashion-MNIST (benchmarks/ddp_parity.sh; carry
#                .carry/fashion-mnist). ~8 min cold.
#   PART=modes : the compile modes' training step under DDP (benchmarks/ddp_step.py), LaMamba-Diff-XL and DiT-XL/2 at
#                256 px, batch 64 per GPU, each model's fastest mode first. One JSON line per mode in $OUT/ddp.jsonl.
#   PART=loop bash benchmarks/ddp_session.sh
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
source "$(dirname "$0")/experiment_variants.sh"   # left()
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/log.txt"
gpus=$(nvidia-smi -L | wc -l)
export LAMAMBA_CACHE_DIR=/tmp/c-ddp
mode() {  # MODEL MODE
  [ "$(left)" -gt 30 ] || { echo "skipped $1 $2 (deadline)" >> "$OUT/log.txt"; return; }
  timeout "$(left)" torchrun --standalone --nproc_per_node="$gpus" benchmarks/ddp_step.py --model "$1" --mode "$2" \
    > "$OUT/ddp-${1//\//}-${2//+/_}.txt" 2>&1
  grep '^{' "$OUT/ddp-${1//\//}-${2//+/_}.txt" >> "$OUT/ddp.jsonl" \
    || tail -5 "$OUT/ddp-${1//\//}-${2//+/_}.txt" >> "$OUT/log.txt"
}
if [ "${PART:-loop}" = loop ]; then
  timeout 150 torchrun --standalone --nproc_per_node="$gpus" -m lamamba.train --run-dir /tmp/ddp-smoke --max-steps 30 \
    --grad-accum 2 --log-every 10 --ckpt-every 30 --sample-every 30 --no-tensorboard > "$OUT/train-smoke.txt" 2>&1
  echo "train smoke rc=$?" >> "$OUT/log.txt"
  grep -E "compiled|first step|step +30|done|rror" "$OUT/train-smoke.txt" | grep -v Warn >> "$OUT/log.txt"
  cp /tmp/ddp-smoke/run_config.json "$OUT/smoke_run_config.json" 2>/dev/null
  # the two-process and sampling tests first: session 13's 200 s limit cut them after the loop's three
  timeout 300 python3 -m pytest -q -m gpu -p no:warnings --tb=short tests/training/test_train_ddp.py \
    tests/sampling/test_sample_cli.py tests/training/test_train_loop.py 2>&1 | tail -15 >> "$OUT/log.txt"
  [ "$(left)" -gt 120 ] && timeout "$(left)" env OUT="$OUT/parity" STEPS="${STEPS:-200}" bash benchmarks/ddp_parity.sh \
    > "$OUT/parity.txt" 2>&1
else
  mode LaMamba-Diff-XL regional+cg
  mode DiT-XL/2 full+cg
  mode DiT-XL/2 regional+cg
  mode DiT-XL/2 full
fi
cat "$OUT/log.txt" "$OUT/ddp.jsonl" 2>/dev/null; tail -25 "$OUT/parity.txt" 2>/dev/null
