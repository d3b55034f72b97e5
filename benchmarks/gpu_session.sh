#!/usr/bin/env bash
# One device call: GPU tests, kernel benchmark, and `lamamba bench` at 256 and 512 px, results under $OUT.
# Usage (device tool): bash benchmarks/gpu_session.sh [quick]     (carry .whl: pytest and friends as wheels)
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"
echo "== GPU tests"; python3 -m pytest -q -x -m gpu tests/ops/test_triton_scan.py tests/models/test_window_attention.py \
  2>&1 | tail -25 | tee "$OUT/gpu_tests.txt"
[ "${1:-}" = quick ] && exit 0
echo "== scan kernel"; python3 benchmarks/bench_scan.py --out "$OUT/scan.json" 2>&1 | tail -45
echo "== bench 256"; python3 -m lamamba.cli bench --model LaMamba-Diff-XL --model DiT-XL/2 --image-size 256 \
  --batch-size 64 --out "$OUT/bench256.json" 2>&1 | tail -12
echo "== bench 512"; python3 -m lamamba.cli bench --model LaMamba-Diff-XL --model DiT-XL/2 --image-size 512 \
  --batch-size 16 --out "$OUT/bench512.json" 2>&1 | tail -12
