# Sourced by the device-machine scripts: $OUT exists, the wheels carried in ${WHEELS:-.whl} (pytest, tqdm, ...;
# the device machine lacks them) are installed into /tmp/site, the package runs from src/, output is unbuffered.
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
if ls "${WHEELS:-.whl}"/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "${WHEELS:-.whl}"/*.whl
  export PYTHONPATH=/tmp/site:src
else
  export PYTHONPATH=src
fi
export PYTHONUNBUFFERED=1

# gpu_tests SECONDS PATHS...: the GPU tests (-m gpu) in PATHS, at most SECONDS, in their own Inductor cache; pytest's
# report goes straight to $OUT/gpu-tests.txt (each test's result as it ends: a timeout keeps what ran), then its exit.
gpu_tests() {
  local seconds=$1; shift
  LAMAMBA_CACHE_DIR=/tmp/c-tests timeout "$seconds" python3 -m pytest -v -m gpu -p no:warnings -p no:logging \
    -p no:cacheprovider --tb=short "$@" > "$OUT/gpu-tests.txt" 2>&1
  echo "pytest exit $?" >> "$OUT/gpu-tests.txt"
}

# profile NAME ARGS...: benchmarks/profile_step.py --rows 60 ARGS until the call's deadline (left(), from
# experiment_variants.sh), output in $OUT/profile-NAME.txt; the Inductor cache is the caller's LAMAMBA_CACHE_DIR.
profile() {
  local name=$1; shift
  [ "$(left)" -gt 30 ] || { echo "skipped (the call's deadline)" > "$OUT/profile-$name.txt"; return; }
  timeout "$(left)" python3 benchmarks/profile_step.py --rows 60 "$@" > "$OUT/profile-$name.txt" 2>&1
}
