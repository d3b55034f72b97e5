# Sourced by the device scripts that train `lamamba experiment` runs over back-to-back calls or sample one trained
# run in several ways (remedy_session.sh, sampler_order_session.sh, long_runs_session.sh,
# conditioning_session.sh; the others use left() and the short LaMamba-Diff-S run below). Needs $OUT (device_env.sh).

# left: seconds to this call's deadline (DEADLINE_S, default 555 s; a call may run 600 s)
left() { echo $(( ${DEADLINE_S:-555} - SECONDS )); }

# step NAME COMMAND...: run COMMAND unless $D/done/NAME exists (an earlier call finished it) and while more than 20 s
# are left, at most until the deadline; output appended to $D/logs/NAME.log, success leaves $D/done/NAME.
step() {
  local name=$1; shift; mkdir -p "$D/done" "$D/logs"
  [ -e "$D/done/$name" ] && return 0
  [ "$(left)" -gt 20 ] || return 1
  timeout "$(left)" "$@" >> "$D/logs/$name.log" 2>&1 && touch "$D/done/$name"
}

# fork_run SRC DST RUN: experiment directory DST gets RUN's files from experiment directory SRC, its newest
# checkpoint only and no samples (and SRC's feature network, where it has one), so that only the sample (and
# score) stages run there, on SRC's trained checkpoint; fails while RUN is not trained; a DST that already has
# the run is kept. DST may lie anywhere, SRC's other runs and older checkpoints are not copied.
fork_run() {
  local src=$1/runs/$3 dst=$2/runs/$3
  [ -e "$src/train.json" ] || return 1
  [ -e "$dst/checkpoints" ] && return 0
  mkdir -p "$dst/checkpoints"
  if ls "$1"/classifier.* >/dev/null 2>&1; then cp "$1"/classifier.* "$2/"; fi
  find "$src" -maxdepth 1 -type f -exec cp {} "$dst/" \;
  cp -r "$src/checkpoints/$(ls "$src/checkpoints" | sort | tail -1)" "$dst/checkpoints/"
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

# short_s_run: a 300-step eager LaMamba-Diff-S on Fashion-MNIST (32 px, batch 128) in /tmp/s-run, the checkpoint that
# the sampling comparisons (defaults_session.sh, step_profile_session.sh) draw from; log in /tmp/s-train.log.
short_s_run() {
  timeout "$(left)" python3 -m lamamba.cli train --preset paper --data fashion-mnist --image-size 32 \
    --model LaMamba-Diff-S --global-batch-size 128 --max-steps 300 --ckpt-every 300 --sample-every 300 \
    --sample-num 0 --ema-decay 0.99 --run-dir /tmp/s-run --no-compile --no-tensorboard > /tmp/s-train.log 2>&1
}

# sample_s NAME MODE ARGS...: 1,000 samples of /tmp/s-run (dpm++2m, 20 steps, batch 500, ARGS added) into /tmp/s-NAME,
# MODE eager (--no-compile) or compiled (--compile --cuda-graphs); its wall time, start-up and compilation included,
# appended to /tmp/s-times.txt.
sample_s() {
  local name=$1 mode=$2 t0=$SECONDS; shift 2
  local flags=$([ "$mode" = compiled ] && echo "--compile --cuda-graphs" || echo "--no-compile")
  timeout "$(left)" python3 -m lamamba.cli sample /tmp/s-run --num-samples 1000 --batch-size 500 --sampler dpm++2m \
    --steps 20 --npz --no-progress --out "/tmp/s-$name" $flags "$@" > "/tmp/s-$name.log" 2>&1
  echo "sample $name: rc $?, $((SECONDS - t0)) s wall for 1,000 samples (start-up and compilation included)" \
    >> /tmp/s-times.txt
}
