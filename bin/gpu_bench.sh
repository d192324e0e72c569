#!/usr/bin/env bash
# Run ON the GPU machine: the rate-distortion / likelihood benchmark of the shipped default
# model (or MODEL=path) on Kodak-24, full size, against the committed baseline JSONs.
#   run(command="bash bin/gpu_bench.sh", carry=["data/kodak", ".wheels"])
# Results (JSON, table, plots) land in $OUT; copy them to benchmarks/results/kodak/.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-out}"
mkdir -p "$OUT"
python3 -c "import constriction, pytorch_msssim" 2>/dev/null || python3 -m pip install --quiet --no-index --no-deps .wheels/*.whl
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
model=()
[ -n "${MODEL:-}" ] && model=(--model "$MODEL")
python3 benchmarks/rd_diffcodec.py --images data/kodak --out "$OUT" --device cuda "${model[@]}" \
  --baselines benchmarks/results/kodak --bound-steps "${BOUND_STEPS:-250}" ${LIMIT:+--limit "$LIMIT"}
