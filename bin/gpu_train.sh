#!/usr/bin/env bash
# Run ON the GPU machine (device tool), in chunks under its 10-minute limit:
#   run(command="bash bin/gpu_train.sh 520", carry=["data", ".wheels", "runs"])
# Trains the `base` prior (hybrid loss, cosine schedule, learned variance) and resumes from
# runs/base.pt, which stays on a warm machine between calls (call again within ~30 s) or is
# carried in. Each call returns the EMA weights as float16 ($OUT/base_fp16.pt, < 16 MiB) and the
# log; a later session without the warm state starts from them with INIT=runs/base_fp16.pt.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-520}"
OUT="${OUT:-out}"
mkdir -p "$OUT" runs
python3 -c "import constriction" 2>/dev/null || python3 -m pip install --quiet --no-index --no-deps .wheels/*.whl
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
init=()
[ -n "${INIT:-}" ] && [ ! -f runs/base.pt ] && init=(--init-from "$INIT")
python3 -m diffcodec.cli train --data data/train --eval-data data/cbsd68 --out runs/base.pt --model base \
  --loss hybrid --schedule cosine --batch-size 64 --crop 96 --rescale-min 0.5 --lr 1e-4 --warmup 500 \
  --ema-rate 0.9995 --steps 1000000 --save-every 1000 --eval-every 2000 --eval-crops 16 --eval-steps 100 \
  --max-seconds "$seconds" --log-file runs/base.log "${init[@]}" 2>&1 | tail -n 5
python3 bin/export_model.py runs/base.pt "$OUT/base_fp16.pt" --dtype float16
cp runs/base.log "$OUT/base.log"
nvidia-smi --query-gpu=name,memory.used --format=csv,noheader || true
