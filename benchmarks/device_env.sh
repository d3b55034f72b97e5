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
