#!/usr/bin/env bash
# Run HERE (not on the GPU machine) before a GPU session's first `run`: stage what the GPU
# machine lacks into ignored folders that `run` can carry.
#   data/train, data/cbsd68  the training and validation images (from ../shared/data)
#   .wheels/                 constriction, imagecodecs, pytorch-msssim for the GPU image's
#                            Python 3.12 (it has torch 2.11, numpy, pillow, click, tqdm, skimage)
# Then carry ["data", ".wheels", "runs"] (see bin/gpu_train.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p data .wheels runs
[ -d data/train ] || cp -r ../shared/data/train data/train
[ -d data/cbsd68 ] || cp -r ../shared/data/cbsd68 data/cbsd68
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
  --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 -d .wheels \
  constriction imagecodecs pytorch-msssim
du -sh data .wheels runs
