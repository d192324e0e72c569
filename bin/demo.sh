#!/usr/bin/env bash
# Set up diffcodec in ./.venv and run the main job: encode a photo with the shipped default
# model, show the file's per-step table, decode it losslessly and write the progression strip.
# Usage: bash bin/demo.sh [IMAGE]     (default: scikit-image's astronaut, 256x256)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/diffcodec ]; then
  python3 -m venv .venv
  .venv/bin/python -m pip install --quiet torch==2.13.0
  .venv/bin/python -m pip install --quiet -e '.[test,bench]'
fi
. .venv/bin/activate
mkdir -p demo
img="${1:-demo/astronaut.png}"
if [ $# -eq 0 ]; then
  python -c "from skimage import data; from PIL import Image; Image.fromarray(data.astronaut()).resize((256, 256), Image.Resampling.LANCZOS).save('demo/astronaut.png')"
fi
name=$(basename "${img%.*}")
diffcodec encode "$img" -o "demo/$name.dfc"
diffcodec info "demo/$name.dfc"
diffcodec decode "demo/$name.dfc" -o "demo/$name.decoded.png" --strip "demo/$name.progression.png"
diffcodec decode "demo/$name.dfc" -o "demo/$name.step3.png" --step 3
python - "$img" "demo/$name.decoded.png" <<'PY'
import sys
import numpy as np
from PIL import Image
a, b = (np.asarray(Image.open(p)) for p in sys.argv[1:3])
assert a.shape == b.shape and np.array_equal(a, b), "round trip is not lossless"
print(f"lossless round trip verified: {sys.argv[2]} == {sys.argv[1]}")
PY
