#!/usr/bin/env bash
# Run ON the GPU machine (device tool), in chunks under its 10-minute limit:
#   run(command="bash bin/gpu_train.sh 520", carry=["data/train", "data/val", ".wheels", "gpu"])
# Trains the `base` prior (hybrid loss, cosine schedule, learned variance) and resumes from
# gpu/base.pt, which stays on a warm machine between calls (call again within ~30 s) or is
# carried in. Each call returns the EMA weights as float16 ($OUT/base_fp16.pt, < 16 MiB) and the
# log; a later session without the warm state starts from them with INIT=gpu/base_fp16.pt.
# MODEL and BATCH override the configuration (e.g. MODEL=tiny BATCH=4 for a CPU smoke run).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-520}"
OUT="${OUT:-out}"
mkdir -p "$OUT" gpu
python3 -c "import constriction" 2>/dev/null || python3 -m pip install --quiet --no-index --no-deps .wheels/*.whl
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
init=()
if [ -n "${INIT:-}" ] && [ ! -f gpu/base.pt ]; then init=(--init-from "$INIT"); fi
python3 -m diffcodec.cli train --data data/train --eval-data data/val --out gpu/base.pt --model "${MODEL:-base}" \
  --loss hybrid --schedule cosine --batch-size "${BATCH:-64}" --crop 96 --rescale-min 0.5 --lr 1e-4 --warmup 500 \
  --ema-rate 0.9995 --steps 1000000 --save-every 1000 --eval-every 2000 --eval-crops 16 --eval-steps 1000 \
  --max-seconds "$seconds" --log-file gpu/base.log "${init[@]}" 2>&1 | tr '\r' '\n' | tail -n 3
python3 bin/export_model.py gpu/base.pt "$OUT/base_fp16.pt" --dtype float16
cp gpu/base.log "$OUT/base.log"
nvidia-smi --query-gpu=name,memory.used --format=csv,noheader || true
