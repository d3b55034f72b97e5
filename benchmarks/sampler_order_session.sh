#!/usr/bin/env bash
# Issue 13, item 3: does the paper's sampler (DDPM, 250 steps) order LaMamba-Diff-S and DiT-S/2 as the fast one
# used for the curves (DPM-Solver++(2M), 20 steps)? One call on nvidia-h200-x2 (~10 minutes; the experiment
# resumes, so a second call on the still-warm machine finishes what the limit stopped). Carry .carry/fashion-mnist.
# GPU 0 trains lamamba-s, GPU 1 dit-s2 (the Table 4 recipe); each run is sampled twice from its checkpoint,
# N (2,000) class-balanced samples per sampler; the samples come back as $OUT/<run>-<sampler>.npz and are scored
# on the CPU as in benchmarks/remedy_session.sh:
#   put each at <dir>/runs/<run>/samples/samples.npz, then
#   lamamba experiment fashion-mnist --runs <run> --out <dir> --stages score,report
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
source "$(dirname "$0")/experiment_variants.sh"
export LAMAMBA_FASHION_MNIST=$PWD/.carry/fashion-mnist
N=${N:-2000}
DEADLINE_S=${DEADLINE_S:-560}   # this script's deadline for left() (experiment_variants.sh)
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -1 | tee "$OUT/log.txt"
one() {  # gpu, run
  local gpu=$1 run=$2
  local exp="python3 -m lamamba.cli experiment fashion-mnist --runs $run --num-samples $N --sample-batch 1000"
  export CUDA_VISIBLE_DEVICES=$gpu
  timeout "$(left)" $exp --out "/tmp/$run-fast" --stages train,sample > "/tmp/$run-fast.log" 2>&1
  fork_run "/tmp/$run-fast" "/tmp/$run-ddpm" "$run"
  timeout "$(left)" $exp --out "/tmp/$run-ddpm" --sampler ddpm --sample-steps 250 --stages sample \
    > "/tmp/$run-ddpm.log" 2>&1
}
one 0 lamamba-s &
one 1 dit-s2 &
wait
for run in lamamba-s dit-s2; do
  for sampler in fast ddpm; do report_samples "$run-$sampler" "/tmp/$run-$sampler" "$run"; done
done
cat "$OUT/log.txt"
