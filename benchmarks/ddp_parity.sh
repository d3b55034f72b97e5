#!/usr/bin/env bash
# One GPU vs two GPUs (torchrun, DDP) at the same global batch: LaMamba-Diff-S (Fashion-MNIST preset),
# same seed; prints both loss curves side by side. Needs the Fashion-MNIST IDX files in
# $LAMAMBA_FASHION_MNIST (default .carry/fashion-mnist) and two GPUs.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export LAMAMBA_FASHION_MNIST=${LAMAMBA_FASHION_MNIST:-.carry/fashion-mnist}
export PYTHONUNBUFFERED=1
STEPS=${STEPS:-300}
COMMON=(--data fashion-mnist --max-steps "$STEPS" --global-batch-size 128 --log-every 10 --ckpt-every "$STEPS"
        --sample-num 0 --no-tensorboard --seed 0)
python3 -m lamamba.train "${COMMON[@]}" --run-dir /tmp/ddp_gpu1 2>&1 | tail -3
torchrun --standalone --nproc_per_node=2 -m lamamba.train "${COMMON[@]}" --run-dir /tmp/ddp_gpu2 2>&1 | tail -3
cp /tmp/ddp_gpu1/metrics.jsonl "$OUT/metrics_1gpu.jsonl"; cp /tmp/ddp_gpu2/metrics.jsonl "$OUT/metrics_2gpu.jsonl"
cp /tmp/ddp_gpu2/run_config.json "$OUT/run_config_2gpu.json"
python3 - "$OUT/metrics_1gpu.jsonl" "$OUT/metrics_2gpu.jsonl" <<'PY'
import json, sys
a, b = ([json.loads(l) for l in open(p)] for p in sys.argv[1:3])
print(f"{'step':>6} {'loss 1 GPU':>11} {'loss 2 GPUs':>11} {'rel diff':>9}  {'img/s 1':>8} {'img/s 2':>8}")
worst = 0.0
for r1, r2 in zip(a, b):
    assert r1["step"] == r2["step"]
    rel = abs(r1["loss"] - r2["loss"]) / abs(r1["loss"])
    worst = max(worst, rel)
    print(f"{r1['step']:>6} {r1['loss']:>11.5f} {r2['loss']:>11.5f} {rel:>9.2e}  "
          f"{r1.get('images_per_sec', 0):>8.0f} {r2.get('images_per_sec', 0):>8.0f}")
print(f"max relative difference of the logged loss: {worst:.2e} over {len(a)} logged steps")
PY
