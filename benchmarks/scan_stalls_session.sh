#!/usr/bin/env bash
# Issue 11, prepared in session 8 for the next one: why the SS2D scan backward is slow (~3 min on nvidia-h200-x2, no
# carry). The compiled profiles put it at 14.7 of LaMamba-Diff-S's 64 ms step and 28.6 of XL's 137 ms, 10-20x from
# every throughput bound, at 255 registers per thread (benchmarks/kernel_registers.py): before restructuring it, read
# where its warps stall. Output in $OUT.
#   GPU 0: Nsight Compute, if the image has it (occupancy, launch statistics, warp states, memory workload) on one
#          backward launch at S's first-stage shape and one at XL's; then the scan kernels' GPU time at S's real
#          shapes (benchmarks/scan_launch_sweep.py: 32x32, 16x16 and 8x8 maps; session 8's sweep used 16x16-4x4).
#   GPU 1: the compiled-sampling GPU test (the last batch is padded to the full one since session 8).
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
log=$OUT/log.txt
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -1 | tee "$log"
ncu=$(command -v ncu || ls /usr/local/cuda*/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
( export CUDA_VISIBLE_DEVICES=0
  if [ -n "$ncu" ]; then
    for shape in "S stage 1" "XL stage 1"; do
      timeout 120 "$ncu" --kernel-name regex:ss2d_bwd_kernel --launch-count 1 --section Occupancy \
        --section LaunchStats --section WarpStateStats --section MemoryWorkloadAnalysis --section SchedulerStats \
        python3 benchmarks/scan_launch_sweep.py --variants "" --rep 1 --only "$shape" > "$OUT/ncu-${shape// /-}.txt" 2>&1
    done
  else
    echo "no ncu in this image" > "$OUT/ncu-none.txt"
  fi
  timeout 150 python3 benchmarks/scan_launch_sweep.py --variants "" "block_t=8" "max_block_d=16" > "$OUT/sweep.txt" 2>&1 ) &
( export CUDA_VISIBLE_DEVICES=1
  timeout 200 python3 -m pytest -q -p no:warnings --tb=short \
    "tests/sampling/test_sample_cli.py::test_compiled_cuda_graph_sampling_equals_eager" > "$OUT/sample-test.txt" 2>&1 ) &
wait
for f in "$OUT"/sweep.txt "$OUT"/sample-test.txt "$OUT"/ncu-*.txt; do echo "== $f" >> "$log"; tail -60 "$f" >> "$log"; done
cat "$log"
