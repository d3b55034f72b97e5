#!/usr/bin/env bash
# Issue 13, item 1: the failed-sample remedies side by side, in one call on nvidia-h200-x2 (~9 minutes).
# Carry .carry/fashion-mnist. Every sample set: N (5,000) class-balanced EMA samples of `lamamba experiment`'s
# lamamba-s run (the Table 4 recipe), DPM-Solver++(2M) 20 steps; each comes back as $OUT/<name>.npz with its
# noise-sample fraction in log.txt. Scoring runs afterwards on the CPU (the FID Inception and the Fashion-MNIST
# data do not fit in one carry together): put each file at <dir>/runs/lamamba-s/samples/samples.npz and run
#   lamamba experiment fashion-mnist --runs lamamba-s --out <dir> --stages score,report
#   GPU 0: the faithful run, sampled twice from the same checkpoint: plain Gaussian initial noise (/tmp/plain)
#          and --center-noise (/tmp/center: the trained run copied, then only its sample and score stages).
#   GPU 1: the same run trained with --noise-offset $OFFSET (0.1) (/tmp/offset), sampled with plain noise.
# The experiment resumes: if the call's limit stops a stage, the same command on the still-warm machine continues.
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
source "$(dirname "$0")/experiment_variants.sh"
export LAMAMBA_FASHION_MNIST=$PWD/.carry/fashion-mnist
N=${N:-5000}
EXP="python3 -m lamamba.cli experiment fashion-mnist --runs lamamba-s --num-samples $N --sample-batch 1000"
DEADLINE_S=${DEADLINE_S:-560}   # this script's deadline for left() (experiment_variants.sh)
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -1 | tee "$OUT/log.txt"
( export CUDA_VISIBLE_DEVICES=0
  timeout "$(left)" $EXP --out /tmp/plain --stages train,sample > /tmp/plain.log 2>&1
  fork_run /tmp/plain /tmp/center lamamba-s
  timeout "$(left)" $EXP --out /tmp/center --center-noise --stages sample > /tmp/center.log 2>&1 ) &
( export CUDA_VISIBLE_DEVICES=1
  timeout "$(left)" $EXP --out /tmp/offset --noise-offset "${OFFSET:-0.1}" --stages train,sample \
    > /tmp/offset.log 2>&1 ) &
wait
for name in plain center offset; do report_samples "$name" "/tmp/$name" lamamba-s; done
cat "$OUT/log.txt"
