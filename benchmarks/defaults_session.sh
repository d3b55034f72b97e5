#!/usr/bin/env bash
# Issue 11: the evidence before `lamamba sample` compiled by default, in one call on nvidia-h200-x2 (~9 min).
# Session 7 ran its first version (XL eager base/new, XL with CUDA graphs, compiled sampling that failed under
# regional compilation), session 8 this one (docs/PERFORMANCE.md; its S profile failed on a plain torch.compile,
# since fixed in profile_step.py, and its scan rows bench whole autograd calls: scan_launch_sweep.py times kernels).
# Carry .carry/fashion-mnist. Everything lands in $OUT/log.txt.
#   GPU 0: the GPU tests (the kernel-route model test, the fused kernels, the compiled-sampling test against eager),
#          profiles of the compiled LaMamba-Diff-S and DiT-S/2 steps, the scan at S's shapes under five launches.
#   GPU 1: a short LaMamba-Diff-S run sampled eagerly and with --compile --cuda-graphs from the same seeds (do the
#          pictures agree? how long does each take, compilation included?), guided (the sampler keeps earlier
#          network outputs) and unguided.
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
source "$(dirname "$0")/experiment_variants.sh"   # left(), short_s_run, sample_s
export LAMAMBA_FASHION_MNIST=$PWD/.carry/fashion-mnist
log=$OUT/log.txt
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -1 | tee "$log"
( export CUDA_VISIBLE_DEVICES=0
  timeout 300 python3 -m pytest -q -p no:warnings --tb=short tests/ops/test_kernel_route_model.py \
    tests/ops/test_fused_adaln.py tests/ops/test_gated_norm.py tests/ops/test_triton_ss2d.py tests/ops/test_recompute.py \
    tests/sampling/test_sample_cli.py::test_compiled_cuda_graph_sampling_equals_eager 2>&1 | tail -15 > /tmp/gpu-tests.txt
  # where the compiled small-model step goes (the issue's S target), then the scan at LaMamba-Diff-S's shapes
  for m in LaMamba-Diff-S DiT-S/2; do
    timeout "$(left)" python3 benchmarks/profile_step.py --preset fashion-mnist --model $m --compile --rows 45 \
      > "$OUT/profile-compiled-${m%%/*}.txt" 2>&1; done
  for launch in "" "--programs-per-sm 32" "--programs-per-sm 64" "--bwd-num-warps 2" "--block-t 32"; do
    for shape in "16 192" "8 384" "4 768"; do set -- $shape
      timeout "$(left)" python3 benchmarks/bench_scan.py --shapes 128x$1 --vae-factor 1 --d $2 $launch 2>&1 \
        | grep -v "^ *px" | sed "s/^/[$launch] /"; done; done > /tmp/scan-s.txt ) &
( export LAMAMBA_CACHE_DIR=/tmp/cache CUDA_VISIBLE_DEVICES=1
  short_s_run
  for cfg in 1 1.5; do for mode in eager compiled; do
    sample_s "$mode-$cfg" $mode --cfg-scale $cfg --precision bf16; done; done
  python3 benchmarks/compare_samples.py /tmp/s-compiled-1:/tmp/s-eager-1 /tmp/s-compiled-1.5:/tmp/s-eager-1.5 \
    > /tmp/s-compare.txt 2>&1
  cat /tmp/s-times.txt >> /tmp/s-compare.txt; tail -2 /tmp/s-compiled-1.5.log >> /tmp/s-compare.txt ) &
wait
for f in gpu-tests scan-s s-compare; do
  echo "== $f" >> "$log"; cat "/tmp/$f.txt" >> "$log" 2>/dev/null; done
tail -3 /tmp/s-train.log >> "$log"
cat "$log"
