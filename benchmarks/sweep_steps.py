"""Choose the codec's defaults by measurement: lossless file size against the number of coded
steps, the last latent timestep t_min and the side-information tile.

    python benchmarks/sweep_steps.py --images ../shared/data/kodak --crop 128 --limit 6 \
        --steps 2,4,8,12,16,24 --t-min 0,20,60 --tile 0,32,64 --out benchmarks/results/sweep.json

Prints one row per setting: mean real bits/dim of the lossless file (latent steps + final step),
the model's ideal bits/dim of the same chain (sum of KLs + decoder NLL), and their ratio.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import list_images, load_rgb, machine_description, now_iso  # noqa: E402
from rd_diffcodec import center_crop  # noqa: E402

from diffcodec.checkpoint import load_prior  # noqa: E402
from diffcodec.codec import EncodeOptions, encode  # noqa: E402


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=Path, required=True)
    ap.add_argument("--model", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--limit", type=int, default=6)
    ap.add_argument("--steps", type=_ints, default=[2, 4, 8, 12, 16, 24])
    ap.add_argument("--t-min", type=_ints, default=[0])
    ap.add_argument("--tile", type=_ints, default=[64])
    ap.add_argument("--spacing", type=lambda s: [float(x) for x in s.split(",") if x], default=[1.0])
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    prior = load_prior(args.model, args.device)
    images = [center_crop(load_rgb(p), args.crop) for p in list_images(args.images)[: args.limit]]
    rows = []
    print(f"{'steps':>5} {'t_min':>5} {'tile':>4} {'space':>5} {'file b/dim':>10} {'latent':>8} {'final':>8} "
          f"{'ideal':>8} {'file/ideal':>10}")
    for steps, t_min, tile, spacing in itertools.product(args.steps, args.t_min, args.tile, args.spacing):
        try:
            opts = EncodeOptions(steps=steps, t_min=t_min, tile=tile, spacing=spacing, seed=0)
            res = [encode(img, prior, opts) for img in images]
        except ValueError as e:
            print(f"skip steps={steps} t_min={t_min}: {e}")
            continue
        dims = [img.size for img in images]
        file_bpd = np.mean([8 * len(r.data) / d for r, d in zip(res, dims)])
        lat = np.mean([sum(8 * s.bytes for s in r.steps if s.kind == "latent") / d for r, d in zip(res, dims)])
        fin = np.mean([sum(8 * s.bytes for s in r.steps if s.kind == "final") / d for r, d in zip(res, dims)])
        ideal = np.mean([sum(s.ideal_bits for s in r.steps) / d for r, d in zip(res, dims)])
        rows.append({"steps": steps, "t_min": t_min, "tile": tile, "spacing": spacing, "file_bits_per_dim": file_bpd,
                     "latent_bits_per_dim": lat, "final_bits_per_dim": fin, "ideal_bits_per_dim": ideal})
        print(f"{steps:>5} {t_min:>5} {tile:>4} {spacing:>5.2f} {file_bpd:>10.4f} {lat:>8.4f} {fin:>8.4f} {ideal:>8.4f} "
              f"{file_bpd / ideal:>10.3f}", flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"rows": rows, "model": prior.fingerprint, "images": len(images),
                                        "crop": args.crop, "machine": machine_description(), "date": now_iso(),
                                        "command": " ".join(sys.argv)}, indent=2))
    best = min(rows, key=lambda r: r["file_bits_per_dim"]) if rows else None
    print("best:", best)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
