#!/usr/bin/env bash
# Run ON the GPU machine: the rate-distortion / likelihood benchmark of the shipped default
# model (or MODEL=path) on Kodak-24, full size, against the committed baseline JSONs.
#   run(command="bash bin/gpu_bench.sh", carry=["data/kodak", ".wheels"])
# Results (JSON, table, plots) land in $OUT; copy them to benchmarks/results/kodak/.
# EFFORT=1..9 (default 5) and METHOD=uq|pfr|auto pick the chain; LIMIT=N the first N images;
# SPEED=1 first measures the PFR search rate on the GPU ($OUT/pfr_speed.json).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-out}"
mkdir -p "$OUT"
python3 -c "import constriction, pytorch_msssim" 2>/dev/null || python3 -m pip install --quiet --no-index --no-deps .wheels/*.whl
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
model=()
[ -n "${MODEL:-}" ] && model=(--model "$MODEL")
if [ -n "${SPEED:-}" ]; then
  python3 -m benchmarks.pfr_speed --size 256 --device cuda --out "$OUT/pfr_speed.json"
fi
python3 -m benchmarks.rd_diffcodec --images data/kodak --out "$OUT" --device cuda "${model[@]}" \
  --baselines benchmarks/results/kodak --bound-steps "${BOUND_STEPS:-250}" ${LIMIT:+--limit "$LIMIT"} \
  --effort "${EFFORT:-5}" ${METHOD:+--method "$METHOD"}
