#!/usr/bin/env bash
# Issue 13, items 2 and 3: LaMamba-Diff-S and DiT-S/2 on Fashion-MNIST for IMAGES (600,000: 10 epochs) training
# images each, 2 seeds each, class-conditional, compiled with CUDA graphs (batch 128), curves along training (4
# points: FD in the Fashion-MNIST classifier's features and class accuracy without and with guidance 1.5), then
# 10,000 samples per run; beside them, from the seed-0 checkpoints: 10,000 guided samples (scale 1.5), 2,000 with
# the paper's DDPM-250 (does it order the models as the fast sampler?) and 10,000 with --center-noise; and how much
# each seed-0 model reads its label per noise level (benchmarks/label_use.py, added after session 6's run).
# nvidia-h200-x2, ~20 minutes: run the SAME command in back-to-back calls (the machine stays warm for 30 s; every
# step resumes or is skipped when its result exists). The first call carries .carry/fashion-mnist and .carry/exp10
# (classifier.pt + .json, trained on the CPU: one feature network for the curves and the scores); the later ones
# .carry/exp10 and .carry/inception (the FID Inception rounded to fp16: with the data set it exceeds one carry),
# and score every sample set with both networks once its samples exist. Each call brings back, as archives, every
# run's curve, logs, train.json, samples and scores (no checkpoints). Afterwards, on the CPU, the tables:
#   lamamba experiment fashion-mnist --runs seeds --out <dir> --train-images 600000 --batch-size 128 --stages report
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
source "$(dirname "$0")/experiment_variants.sh"
# the data set stays in /tmp for the later calls, which carry the FID Inception instead (both exceed one carry)
[ -d /tmp/fm ] || cp -r .carry/fashion-mnist /tmp/fm
export LAMAMBA_FASHION_MNIST=/tmp/fm LAMAMBA_CACHE_DIR=/tmp/compile-cache
# the FID Inception travels rounded to fp16 (.carry/inception/inception-fp16.pt) and is widened back here
if [ -e .carry/inception/inception-fp16.pt ] && [ ! -e /tmp/inception.pt ]; then
  python3 -c "import torch; n = torch.jit.load('.carry/inception/inception-fp16.pt'); n.float(); \
torch.jit.save(n, '/tmp/inception.pt')"
fi
D=/tmp/exp10; mkdir -p "$D"; [ -e "$D/classifier.pt" ] || cp .carry/exp10/classifier.* "$D/"
N=${N:-10000}   # samples per set (IMAGES, N, CURVE_N and TRAIN_FLAGS smaller for a CPU rehearsal)
ARGS="--train-images ${IMAGES:-600000} --batch-size 128 ${TRAIN_FLAGS:---compile --cuda-graphs} --curve-points 4
 --curve-samples ${CURVE_N:-1000} --features classifier --num-samples $N --sample-batch 1000"
EXP="python3 -m lamamba.cli experiment fashion-mnist $ARGS"
score() {  # experiment dir, runs: Inception and classifier scores on this GPU (once the Inception is here)
  [ -e /tmp/inception.pt ] || return 1
  step "score-$(basename "$1")-$2" $EXP --out "$1" --runs "$2" --stages score --features inception,classifier \
    --inception /tmp/inception.pt
}
side() {  # name, run, extra experiment args...: sample the trained run's final checkpoint again into $D-name
  local name=$1 run=$2; shift 2
  fork_run "$D" "$D-$name" "$run" || return 1
  step "$name-$run" $EXP --out "$D-$name" --runs "$run" --stages sample "$@"
}
mkdir -p "$D/logs"; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -1 > "$D/logs/gpu.txt"
( export CUDA_VISIBLE_DEVICES=0
  step kernel-route-test bash -c "python3 -m pytest -q -p no:cacheprovider --tb=short tests/ops/test_kernel_route_model.py; true"
  step train-lamamba-s $EXP --out "$D" --runs lamamba-s --stages train,curve,sample
  step label-use-lamamba-s python3 benchmarks/label_use.py "$D/runs/lamamba-s" --json "$D/runs/lamamba-s/label_use.jsonl"
  side guided lamamba-s --sample-cfg 1.5
  side ddpm lamamba-s --sampler ddpm --sample-steps 250 --num-samples $(( N / 5 ))
  side center lamamba-s --center-noise
  score "$D" lamamba-s,lamamba-s-seed1; for name in guided ddpm center; do score "$D-$name" lamamba-s; done ) &
( export CUDA_VISIBLE_DEVICES=1
  step train-dit $EXP --out "$D" --runs dit-s2,dit-s2-seed1 --stages train,curve,sample
  step label-use-dit-s2 python3 benchmarks/label_use.py "$D/runs/dit-s2" --json "$D/runs/dit-s2/label_use.jsonl"
  step train-lamamba-s-seed1 $EXP --out "$D" --runs lamamba-s-seed1 --stages train,curve,sample
  side guided dit-s2 --sample-cfg 1.5
  side ddpm dit-s2 --sampler ddpm --sample-steps 250 --num-samples $(( N / 5 ))
  score "$D" dit-s2,dit-s2-seed1; for name in guided ddpm; do score "$D-$name" dit-s2; done ) &
wait
ls "$D/done"
# at most 8 files of 16 MiB come back: one archive per run (10,000 samples: ~10 MB) or per pair of side sets
cd /tmp
for run in lamamba-s lamamba-s-seed1 dit-s2 dit-s2-seed1; do
  [ -d "exp10/runs/$run" ] && tar -czf "$OUT/$run.tgz" --exclude=checkpoints "exp10/runs/$run"
done
for name in guided ddpm center; do
  ls -d exp10-$name >/dev/null 2>&1 && tar -czf "$OUT/$name.tgz" --exclude=checkpoints --exclude='classifier.*' \
    --exclude='reference-*' exp10-$name   # the cached test-set statistics (32 MB) stay
done
tar -czf "$OUT/logs.tgz" exp10/logs exp10/done
tail -n 3 "$D"/logs/*.log
