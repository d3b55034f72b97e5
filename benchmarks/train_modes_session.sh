#!/usr/bin/env bash
# Issue 11: does `lamamba train` learn the same with torch.compile and CUDA graphs as eager, and how fast is each
# mode? The Fashion-MNIST recipe of `lamamba experiment` (its `lamamba train` flags, seed 0) for STEPS (300) steps
# per mode, one GPU (CUDA_VISIBLE_DEVICES as given), modes in MODES order until DEADLINE_S (540) seconds.
# Carry .carry/fashion-mnist. Writes $OUT/${TAG:-train-modes}.txt: per mode the losses at the logged steps, the
# largest difference from the first mode's, the median images/s after the first window, and the time to the
# first step.
#   MODES: model:mode,... with mode eager | full | full-cg | regional | regional-cg
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
export LAMAMBA_FASHION_MNIST=$PWD/.carry/fashion-mnist
export LAMAMBA_CACHE_DIR=${LAMAMBA_CACHE_DIR:-/tmp/train-modes-cache}
STEPS=${STEPS:-300}; BATCH=${BATCH:-64}
MODES=${MODES:-LaMamba-Diff-S:eager,LaMamba-Diff-S:full-cg,LaMamba-Diff-S:regional-cg,DiT-S/2:eager,DiT-S/2:full-cg}
rm -rf /tmp/tm; report=$OUT/${TAG:-train-modes}.txt
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -1 | tee "$report"
for spec in ${MODES//,/ }; do
  model=${spec%:*}; mode=${spec##*:}; name=$(echo "$model-$mode" | tr '/' '_')
  left=$(( ${DEADLINE_S:-540} - SECONDS )); [ $left -gt 30 ] || { echo "$name: no time left" >> "$report"; continue; }
  case $mode in
    eager) flags="--no-compile" ;;
    full) flags="--compile --compile-scope full" ;;
    full-cg) flags="--compile --compile-scope full --cuda-graphs" ;;
    regional) flags="--compile --compile-scope regional" ;;
    regional-cg) flags="--compile --compile-scope regional --cuda-graphs" ;;
    *) echo "unknown mode $mode" >> "$report"; continue ;;
  esac
  rm -rf "/tmp/tm/$name"; mkdir -p /tmp/tm; printf '%s\t%s\n' "$name" "$model" >> /tmp/tm/order.tsv
  timeout $left python3 -m lamamba.cli train --preset paper --data fashion-mnist --image-size 32 --model "$model" \
    --global-batch-size "$BATCH" --lr 1e-4 --weight-decay 0 --ema-decay 0.999 --ema-warmup --max-steps "$STEPS" \
    --seed 0 --run-dir "/tmp/tm/$name" --log-every "${LOG_EVERY:-20}" --ckpt-every "$STEPS" --keep-last 1 \
    --sample-every "$STEPS" --sample-num 0 --num-workers "${WORKERS:-4}" --no-tensorboard $flags \
    > "/tmp/tm/$name.log" 2>&1 || tail -5 "/tmp/tm/$name.log" >> "$report"
done
python3 - <<'PY' | tee -a "$report"
import json, pathlib, re, statistics
baseline = {}  # model -> (mode name, losses) of its first mode
for line in pathlib.Path("/tmp/tm/order.tsv").read_text().splitlines():
    name, model = line.split("\t")
    metrics = pathlib.Path("/tmp/tm", name, "metrics.jsonl")
    rows = [json.loads(l) for l in metrics.read_text().splitlines() if l.strip()] if metrics.is_file() else []
    losses = {r["step"]: r["loss"] for r in rows if "loss" in r}
    speeds = [r["images_per_sec"] for r in rows if "images_per_sec" in r][1:]
    first = re.findall(r"first step in [^\n]*", pathlib.Path("/tmp/tm", name + ".log").read_text(errors="replace"))
    base = baseline.setdefault(model, (name, losses))
    shared = sorted(set(losses) & set(base[1]))
    diff = max((abs(losses[s] - base[1][s]) for s in shared), default=float("nan"))
    print(f"{name:26s} img/s {statistics.median(speeds) if speeds else float('nan'):8.1f}  max |loss - {base[0]}| "
          f"{diff:.4f} over {len(shared)} logged steps  {first[0] if first else ''}")
    print("   losses", " ".join(f"{losses[s]:.4f}" for s in sorted(losses)))
PY
