#!/usr/bin/env bash
# Inception FID of experiment samples on the device machine (docs/RESULTS.md). The FID Inception travels as an
# fp16 copy (.carry-inception/inception-fp16.pt; the fp32 file alone exceeds the 64 MiB carry limit) and is
# widened back to fp32 here; samples travel xz-compressed. Usage: bash benchmarks/fashion_mnist_score.sh CARRY_DIR
# with CARRY_DIR/runs/<run>/samples/samples.npz.xz and CARRY_DIR/fashion-mnist/t10k-*.gz; carry .whl-min (tqdm).
set -euo pipefail
CARRY=$1
WHEELS=.whl-min source "$(dirname "$0")/device_env.sh"
python3 - "$CARRY" <<'PY'
import lzma, pathlib, sys, torch
carry = pathlib.Path(sys.argv[1])
net = torch.jit.load(".carry-inception/inception-fp16.pt")
net.float()
torch.jit.save(net, "/tmp/inception.pt")
for xz in carry.glob("runs/*/samples/samples.npz.xz"):
    out = pathlib.Path("results/score") / xz.relative_to(carry).with_suffix("")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(lzma.decompress(xz.read_bytes()))
PY
runs=$(ls "$CARRY/runs" | paste -sd, -)
python3 -m lamamba.cli experiment fashion-mnist --runs "$runs" --stages score --features inception \
  --inception /tmp/inception.pt --out results/score --data-root "$CARRY/fashion-mnist" 2>&1 | grep -v "it/s\]" | tail -20
(cd results/score && tar -czf "$OUT/scores-$(basename "$CARRY").tgz" runs/*/scores.json)
