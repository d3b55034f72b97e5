#!/usr/bin/env bash
# Issue 11: where the warps of the two largest kernels of LaMamba-Diff-S's step stall, and the GPU tests of the
# kernels, in one call on nvidia-h200-x2 (~4 min, no carry). Output in $OUT.
#   GPU 0: Nsight Compute (if the image has it: speed of light, occupancy, launch statistics, warp states, memory
#          workload, scheduler) on one SS2D scan backward and one AdaLN backward at S's first-stage shapes; then the
#          AdaLN kernels under launch variants (benchmarks/adaln_launch_sweep.py).
#   GPU 1: the GPU tests of the kernels and the compiled-sampling GPU test.
# Session 9's first call ran the scan part alone (before the scan's fast_math/EVEN change): issue-bound at 12.5%
# occupancy (255 registers), 0.57 instructions per cycle per scheduler.
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
log=$OUT/log.txt
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -1 | tee "$log"
ncu=$(command -v ncu || ls /usr/local/cuda*/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
sections="--section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
  --section MemoryWorkloadAnalysis --section SchedulerStats"
( export CUDA_VISIBLE_DEVICES=0
  if [ -n "$ncu" ]; then
    timeout 90 "$ncu" --kernel-name regex:ss2d_bwd_kernel --launch-count 1 $sections python3 \
      benchmarks/scan_launch_sweep.py --variants "" --rep 1 --only "S stage 1" > "$OUT/ncu-scan.txt" 2>&1
    timeout 90 "$ncu" --kernel-name regex:adaln_bwd_kernel --launch-count 1 $sections python3 \
      benchmarks/adaln_launch_sweep.py --variants "" --rep 1 --only "S stage 1" > "$OUT/ncu-adaln.txt" 2>&1
  else
    echo "no ncu in this image" > "$OUT/ncu-none.txt"
  fi
  timeout 150 python3 benchmarks/adaln_launch_sweep.py > "$OUT/adaln-sweep.txt" 2>&1 ) &
( export CUDA_VISIBLE_DEVICES=1
  timeout 280 python3 -m pytest -q -p no:warnings --tb=short tests/ops/test_triton_ss2d.py tests/ops/test_fused_adaln.py \
    tests/ops/test_kernel_route_model.py tests/ops/test_gated_norm.py \
    "tests/sampling/test_sample_cli.py::test_compiled_cuda_graph_sampling_equals_eager" 2>&1 | tail -15 \
    > "$OUT/gpu-tests.txt" ) &
wait
for f in "$OUT"/gpu-tests.txt "$OUT"/adaln-sweep.txt; do echo "== $f" >> "$log"; cat "$f" >> "$log"; done
for f in "$OUT"/ncu-*.txt; do
  echo "== $f" >> "$log"; grep -E "^\s+(Memory Throughput|DRAM Throughput|Compute \(SM\) Throughput|Duration|Registers Per|Achieved Occupancy|Theoretical Occupancy|Issued Warp|No Eligible|Warp Cycles Per Issued|Local Memory Spilling Requests|Block Size|Grid Size|L1/TEX Hit|L2 Hit)" "$f" >> "$log"
done
cat "$log"
