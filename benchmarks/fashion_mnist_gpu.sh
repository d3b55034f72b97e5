#!/usr/bin/env bash
# The Fashion-MNIST experiment on the device machine (docs/RESULTS.md). Needs, carried: .carry/fashion-mnist (the
# IDX files), .whl (tqdm and friends as wheels). Usage:
#   bash benchmarks/fashion_mnist_gpu.sh probe            # one GPU: short eager/compiled runs of every model
#   bash benchmarks/fashion_mnist_gpu.sh train "RUNS0" "RUNS1" ...   # GPU i trains+samples the runs in RUNSi
#                                                         # (comma-separated, in order); results under $OUT
# Extra arguments for `lamamba experiment` go in $EXP_ARGS, its stages in $STAGES (default train,sample). Runs longer
# than one call (issue 13's 10-epoch runs with curves) continue in back-to-back calls on the still-warm machine:
#   EXP_DIR=results/fashion-mnist-10ep STAGES=train,curve RUN_LIMIT_S=540 \
#   EXP_ARGS="--train-images 600000 --curve-points 10 --compile" \
#   bash benchmarks/fashion_mnist_gpu.sh train lamamba-s,dit-s2 lamamba-s-seed1,dit-s2-seed1
# (a run stopped by the limit saves a checkpoint; the next call resumes it; curve.jsonl travels back each call).
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
export LAMAMBA_FASHION_MNIST=$PWD/.carry/fashion-mnist
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"
EXP="python3 -m lamamba.cli experiment fashion-mnist --stages ${STAGES:-train,sample} ${EXP_ARGS:-}"
mode=${1:-probe}; shift
summary() {  # speed, wall time and sampling time of every run under $1 -> stdout and $2
  python3 - "$1" "$2" <<'PY'
import json, sys, pathlib
rows = {}
for d in sorted(pathlib.Path(sys.argv[1]).glob("runs/*")):
    t = json.loads((d / "train.json").read_text()) if (d / "train.json").is_file() else {}
    s = json.loads((d / "samples/sample.json").read_text()) if (d / "samples/sample.json").is_file() else {}
    rows[d.name] = dict(img_s=t.get("images_per_sec"), train_wall_s=t.get("wall_s"), steps=t.get("steps"),
                        loss=t.get("final_loss"), sample_wall_s=s.get("wall_s"), card=t.get("environment", {}).get("card"))
    if (d / "samples/samples.npz").is_file():  # pure-noise samples (mean |horizontal difference| > 45 of 255)
        import numpy as np
        x = np.load(d / "samples/samples.npz")["arr_0"].astype(np.float32)
        rows[d.name]["noisy_fraction"] = float((np.abs(np.diff(x, axis=2)).mean(axis=(1, 2, 3)) > 45).mean())
    print(f"{d.name:20s} {rows[d.name]}")
pathlib.Path(sys.argv[2]).write_text(json.dumps(rows, indent=2))
PY
}
if [ "$mode" = probe ]; then
  $EXP --runs all --out /tmp/probe-eager --no-compile --train-images 6144 --batch-size 128 \
    --num-samples 500 --sample-steps 50 --sample-batch 500 > "$OUT/probe-eager.log" 2>&1 || tail -30 "$OUT/probe-eager.log"
  summary /tmp/probe-eager "$OUT/probe-eager.json"
  $EXP --runs lamamba-s,dit-s2,isotropic-p2 --out /tmp/probe-compiled --compile --train-images 6144 --batch-size 128 \
    --num-samples 500 --sample-steps 50 --sample-batch 500 > "$OUT/probe-compiled.log" 2>&1 || tail -30 "$OUT/probe-compiled.log"
  summary /tmp/probe-compiled "$OUT/probe-compiled.json"
  exit 0
fi
# train mode: one background process per GPU, each with its own list of runs, all into one experiment directory
EXP_DIR=${EXP_DIR:-/tmp/exp}   # a git-ignored folder of the repo (results/...) survives between calls on a warm machine
i=0; pids=(); mkdir -p "$EXP_DIR"
for runs in "$@"; do
  CUDA_VISIBLE_DEVICES=$i timeout "${RUN_LIMIT_S:-570}" $EXP --runs "$runs" --out "$EXP_DIR" > "$EXP_DIR/gpu$i.log" 2>&1 &
  pids+=($!); i=$((i + 1))
done
for p in "${pids[@]}"; do wait "$p"; done
summary "$EXP_DIR" "$OUT/summary.json"
# bring back what the score and report stages need (no checkpoints), one archive per GPU (<= 8 files in all)
i=0
for runs in "$@"; do
  dirs=$(echo "$runs" | tr , '\n' | sed 's|^|runs/|' | tr '\n' ' ')
  (cd "$EXP_DIR" && tar -czf "$OUT/gpu$i.tgz" --exclude=checkpoints "gpu$i.log" $dirs)
  tail -5 "$EXP_DIR/gpu$i.log"
  i=$((i + 1))
done
ls -la "$OUT"
