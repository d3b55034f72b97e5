#!/usr/bin/env bash
# One device call for issue 10's tables: GPU kernel tests, the SS2D scan at the three XL stage-1 shapes, and
# `lamamba bench` LaMamba-Diff-XL vs DiT-XL/2 at 256 / 512 / 1024 / 2048 px (eager; DiT-XL/2 also compiled at
# 256 px), then the profile of one XL training step. Results under $OUT.   device: bash benchmarks/speed_session.sh
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"
echo "== GPU tests"
python3 -m pytest -o addopts="" -q -x -p no:cacheprovider tests/ops/test_triton_ss2d.py tests/ops/test_triton_scan.py \
  -k "gpu or kernel_paths or reverse" 2>&1 | grep -E "passed|failed|Error|assert" | tee "$OUT/gpu_tests.txt"
echo "== scan"
python3 benchmarks/bench_scan.py --out "$OUT/scan.json" 2>&1 | grep -vi warn | tail -11 | tee "$OUT/scan.txt"
[ "${1:-}" = scan ] && exit 0
echo "== bench"
for cfg in "256 64 auto" "512 16 none" "1024 4 none" "2048 1 none"; do set -- $cfg
  timeout 200 python3 -m lamamba.cli bench --model LaMamba-Diff-XL --model DiT-XL/2 --image-size $1 --batch-size $2 \
    --compile $3 --steps 10 --warmup 3 --out "$OUT/bench$1.json" 2>&1 | grep -vi warn | tail -5 | tee -a "$OUT/bench.txt"
done
echo "== profile"
timeout 120 python3 benchmarks/profile_step.py --model LaMamba-Diff-XL --image-size 256 --batch-size 64 2>&1 \
  | grep -vi warn | tail -25 | tee "$OUT/profile.txt"
