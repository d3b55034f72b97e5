#!/usr/bin/env bash
# Issue 11 (fused glue kernels) and issue 13 (samplers on the failing noises) in one call on nvidia-h200-x2.
# Carry .carry/fashion-mnist and .carry/base (the source tree before the change: git archive BASE src | tar -x -C
# .carry/base). GPU 1: GPU tests of the kernels, then `lamamba bench` of the change and of the base tree (same
# commands, same card, one after the other), profiles of one XL step. GPU 0 meanwhile retrains LaMamba-Diff-S on
# Fashion-MNIST and compares samplers on its failing noises (benchmarks/noise_samples.py; COMPARE_SETTINGS; the
# call in docs/RESULTS.md used dpm++2m:20,dpm++2m-sde:25,dpm++2m-sde:50,ddpm:100). NOISE=0: only the GPU 1 part.
# COMPILE_FM=1: then the small models compiled, regional and with CUDA graphs, until DEADLINE_S (560) seconds.
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
export LAMAMBA_FASHION_MNIST=$PWD/.carry/fashion-mnist
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"
if [ "${NOISE:-1}" = 1 ]; then
  ( export CUDA_VISIBLE_DEVICES=0
    timeout "${TRAIN_LIMIT_S:-330}" python3 benchmarks/noise_samples.py train /tmp/faithful --ckpt-every 480 \
      > "$OUT/noise-train.log" 2>&1
    grep -aE "img/s" "$OUT/noise-train.log" | tail -1 > "$OUT/noise-train-tail.txt"; rm -f "$OUT/noise-train.log"
    timeout "${COMPARE_LIMIT_S:-140}" python3 benchmarks/noise_samples.py compare /tmp/faithful --json "$OUT/compare.json" \
      --settings ${COMPARE_SETTINGS:-dpm++2m:20,dpm++2m:20:center,dpm++2m-sde:25,dpm++2m-sde:25:center} \
      > "$OUT/compare.txt" 2>&1 ) &
fi
export CUDA_VISIBLE_DEVICES=$([ "${NOISE:-1}" = 1 ] && echo 1 || echo 0)  # NOISE=0 runs on a one-GPU machine
timeout 150 python3 -m pytest -q -p no:warnings -m gpu tests/ops/test_fused_adaln.py tests/ops/test_gated_norm.py \
  tests/ops/test_triton_ss2d.py tests/ops/test_recompute.py tests/models 2>&1 | tail -4 | tee "$OUT/gpu_tests.txt"
timeout 120 python3 -m pytest -q -p no:warnings tests/ops/test_kernel_route_model.py 2>&1 | tail -2 \
  | tee -a "$OUT/gpu_tests.txt"   # the whole tiny model, kernels vs PyTorch route, on CUDA tensors
bench() {  # tree, name, args...
  local tree=$1 name=$2; shift 2
  PYTHONPATH=$tree timeout 150 python3 -m lamamba.cli bench --steps 10 --warmup 3 --out "$OUT/$name.json" "$@" 2>&1 \
    | grep -aE "^(LaMamba|DiT|card|model)" | sed "s|^|$name |" | tee -a "$OUT/bench.txt"
}
for tree in .carry/base/src src; do
  tag=$([ "$tree" = src ] && echo new || echo base)
  bench $tree fm-$tag --preset fashion-mnist --compile none
  bench $tree xl256-$tag --model LaMamba-Diff-XL --model DiT-XL/2 --compile none
  [ "${PROFILE_XL:-1}" = 1 ] && [ $tag = new ] && PYTHONPATH=$tree timeout 100 python3 benchmarks/profile_step.py \
    --model LaMamba-Diff-XL > "$OUT/profile-$tag.txt" 2>&1
  PYTHONPATH=$tree timeout 60 python3 benchmarks/profile_step.py --preset fashion-mnist --model LaMamba-Diff-S \
    > "$OUT/profile-s-$tag.txt" 2>&1
done
# The small models compiled (regional, then with CUDA graphs), in whatever time the call has left (COMPILE_FM=1).
if [ "${COMPILE_FM:-0}" = 1 ]; then
  export LAMAMBA_CACHE_DIR=/tmp/lamamba-compile-cache
  for extra in "" "--cuda-graphs"; do
    left=$(( ${DEADLINE_S:-560} - SECONDS )); [ $left -gt 30 ] || break
    PYTHONPATH=src timeout $left python3 -m lamamba.cli bench --preset fashion-mnist --compile all \
      --compile-scope regional $extra --steps 20 --warmup 5 --out "$OUT/fm-compiled${extra:+-cg}.json" 2>&1 \
      | grep -aE "^(LaMamba|DiT|card|model)" | sed "s|^|fm-compiled$extra |" | tee -a "$OUT/bench.txt"
  done
fi
wait
cat "$OUT"/compare.txt "$OUT"/noise-train-tail.txt 2>/dev/null
for f in "$OUT"/profile-*.txt; do echo "== $f"; grep -A12 "GPU time per step" "$f"; done
