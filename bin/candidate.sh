#!/usr/bin/env bash
# Is a trained prior better than the shipped one?  Measures what the shipping rule asks for
# (README, "The shipped default model"): on four 128 px Kodak centre crops (kodim03/07/15/23) and
# twelve 128 px CBSD68 centre crops (the folder's first twelve), the lossless files at effort 5
# with the candidate's own x_0 error table, then (BOUND=1, the default; hours on one CPU core)
# its 1,000-step bound; the shipped model the same way (SHIPPED=1) for a same-machine comparison.
#
#   bash bin/candidate.sh runs/m.pt NAME [OUTDIR]     # OUTDIR: benchmarks/results/default_model
#
# Writes OUTDIR/NAME_{kodak4,cbsd68_12}_effort5.json, ..._bound_1000.json, and WORK/NAME.pt with
# its error table and (LINEAR=1, the default) its linear x_0 estimate as the shipped model has
# (WORK=/tmp/candidate); DATA=../shared/data; THREADS=1.
set -euo pipefail
cd "$(dirname "$0")/.."
ckpt="$1"; name="$2"; out="${3:-benchmarks/results/default_model}"
data="${DATA:-../shared/data}"; work="${WORK:-/tmp/candidate}"; threads="${THREADS:-1}"
mkdir -p "$work/kodak4" "$work/cbsd68_12" "$out"
python - "$data" "$work" <<'PY'
import sys
from pathlib import Path
from PIL import Image
from benchmarks.common import load_images
data, work = Path(sys.argv[1]), Path(sys.argv[2])
crops = load_images(data / "kodak", 0, 128)
for n in ("kodim03.png", "kodim07.png", "kodim15.png", "kodim23.png"):
    Image.fromarray(crops[n]).save(work / "kodak4" / n)
for n, a in load_images(data / "cbsd68", 12, 128).items():
    Image.fromarray(a).save(work / "cbsd68_12" / n)
PY
python bin/export_model.py "$ckpt" "$work/$name.pt"
OMP_NUM_THREADS=$threads diffcodec errtable --data "$data/cbsd68" --model "$work/$name.pt" -o "$work/${name}_table.pt"
model="$work/${name}_table.pt"
if [ "${LINEAR:-1}" = 1 ]; then  # the shipped model codes with its linear x_0 estimate: so must the candidate
  OMP_NUM_THREADS=$threads diffcodec linear --train "$data/train" --data "$data/cbsd68" --model "$model" \
    -o "$work/${name}_linear.pt"
  model="$work/${name}_linear.pt"
fi
models=("$name=$model")
if [ "${SHIPPED:-1}" = 1 ]; then models+=("shipped=diffcodec/models/default.pt"); fi
for set in kodak4 cbsd68_12; do
  for entry in "${models[@]}"; do
    tag="${entry%%=*}"; model="${entry#*=}"
    OMP_NUM_THREADS=$threads python -m benchmarks.sweep_steps --images "$work/$set" --crop 128 --limit 12 \
      --effort 5 --seed 0 --model "$model" --out "$out/${tag}_${set}_effort5.json"
  done
done
if [ "${BOUND:-1}" = 1 ]; then
  for set in kodak4 cbsd68_12; do
    OMP_NUM_THREADS=$threads python -m benchmarks.bound --images "$work/$set" --model "$work/${name}_table.pt" \
      --out "$out/${name}_${set}_bound_1000.json"
  done
fi
