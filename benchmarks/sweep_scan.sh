#!/usr/bin/env bash
# One device call for the SS2D scan: GPU tests of the kernels, the scan benchmark at the three XL stage-1 shapes,
# a sweep of launch settings, and (when .baseline/ holds an older checkout's src/ and benchmarks/, carried) the
# older kernels timed in the same call. Results under $OUT.
#   device: bash benchmarks/sweep_scan.sh            (carry .baseline to time the older kernels beside)
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"
echo "== GPU tests"
python3 -m pytest -o addopts="" -q -x -p no:cacheprovider tests/ops/test_triton_ss2d.py tests/ops/test_triton_scan.py -k "gpu or kernel_paths or reverse" \
  2>&1 | tail -15 | tee "$OUT/gpu_tests.txt"
echo "== scan (this checkout)"
python3 benchmarks/bench_scan.py --out "$OUT/scan.json" 2>&1 | tail -12 | tee "$OUT/scan.txt"
if [ -d .baseline/src ]; then
  echo "== scan (baseline checkout, same call)"
  for shape in "256 64" "1024 4" "2048 1"; do set -- $shape
    PYTHONPATH=.baseline/src timeout 120 python3 .baseline/benchmarks/bench_scan.py --px $1 --batch $2 --dtypes bf16 \
      --impls triton --copy-gib 0.25 2>&1 | grep -E "^ss2d " | tee -a "$OUT/scan_baseline.txt"
  done
fi
echo "== launch sweep"
W1="--num-warps 1 --bwd-num-warps 1"; W2="--num-warps 2 --bwd-num-warps 2"
for flags in "$W1" "$W1 --block-t 64" "$W1 --block-t 16" "$W1 --max-block-d 64" "$W1 --max-block-d 16" "$W2" \
             "$W2 --max-block-d 64" "--num-stages 2" "$W1 --num-stages 2" "$W1 --block-t 64 --max-block-d 64"; do
  echo "-- $flags" | tee -a "$OUT/sweep.txt"
  timeout 120 python3 benchmarks/bench_scan.py --shapes ${SWEEP_SHAPES:-64x256} --copy-gib 0.25 $flags 2>&1 \
    | grep -E "triton" | tee -a "$OUT/sweep.txt"
done
