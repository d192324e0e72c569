#!/usr/bin/env bash
# Run HERE (not on the GPU machine) before a GPU session's first `run`: stage what the GPU
# machine lacks into ignored folders that `run` can carry (64 MiB in all, with the tree).
#   data/train     the 561 training photos (43 MB)             -> carry for training
#   data/val       16 CBSD68 photos for held-out bits/dim      -> carry for training
#   data/kodak     Kodak-24 (15 MB)                            -> carry for the benchmark
#   .wheels/       constriction and pytorch-msssim for the GPU image's Python 3.12 (it already
#                  has torch 2.11, numpy, pillow, click, tqdm, scikit-image, matplotlib)
# Training:   run(command="bash bin/gpu_train.sh 540", carry=["data/train", "data/val", ".wheels", "gpu"])
# Benchmark:  run(command="bash bin/gpu_bench.sh", carry=["data/kodak", ".wheels"])
set -euo pipefail
cd "$(dirname "$0")/.."
shared=../shared/data
mkdir -p data .wheels runs
[ -d data/train ] || cp -r "$shared/train" data/train
if [ ! -d data/val ]; then
  mkdir -p data/val
  ls "$shared/cbsd68"/*.png | head -n 16 | xargs -I{} cp {} data/val/
fi
[ -d data/kodak ] || cp -r "$shared/kodak" data/kodak
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
  --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 -d .wheels \
  constriction pytorch-msssim 2>&1 | grep -v '^WARNING: Location' || true
du -sh data/* .wheels runs
