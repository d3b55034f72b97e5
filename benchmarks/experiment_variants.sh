# Sourced by the device scripts that sample one trained `lamamba experiment` run in several ways
# (remedy_session.sh, sampler_order_session.sh). Needs $OUT (device_env.sh).

# fork_run SRC DST RUN: DST becomes a copy of experiment directory SRC without RUN's samples, so that only the
# sample (and score) stages run there, on SRC's trained checkpoint; a DST that already has the run is kept.
fork_run() {
  local src=$1 dst=$2 run=$3
  if [ -e "$src/runs/$run/train.json" ] && [ ! -e "$dst/runs/$run/train.json" ]; then
    mkdir -p "$dst" && cp -r "$src/." "$dst/"
    rm -rf "$dst/runs/$run/samples"
  fi
}

# report_samples NAME DIR RUN: the tail of /tmp/NAME.log, RUN's training speed and noise-sample fraction into
# $OUT/log.txt, and its samples to $OUT/NAME.npz (scored afterwards on the CPU).
report_samples() {
  local name=$1 run=$3 d=$2/runs/$3
  echo "== $name" >> "$OUT/log.txt"
  tail -3 "/tmp/$name.log" >> "$OUT/log.txt"
  [ -e "$d/train.json" ] && python3 -c "import json,sys; d=json.load(open(sys.argv[1])); \
print('trained', d['steps'], 'steps,', round(d['images_per_sec']), 'img/s')" "$d/train.json" >> "$OUT/log.txt"
  if [ -e "$d/samples/samples.npz" ]; then
    cp "$d/samples/samples.npz" "$OUT/$name.npz"
    python3 -c "import sys, numpy as np; from lamamba.experiment.fashion_mnist import noise_fraction; \
print('noise samples', noise_fraction(np.load(sys.argv[1])['arr_0']))" "$d/samples/samples.npz" >> "$OUT/log.txt" 2>&1
  fi
}
