"""What each payload layout of the UQ and final steps costs on real files: the encoder estimates
the plain, channel-predicted, context (checkerboard), texture (context with widths per class
of activity) and neighbourhood (texture over 2 x 2 phases reading every channel's neighbours)
layouts of every such step from their symbols' -log2 p and codes the smallest
(``diffcodec.coders.uq`` / ``final``); this encodes images, every layout fitted whatever the
image's size (``EncodeOptions.every_layout``: the file may differ from a plain encode's, whose
encoder skips the checkerboard layouts above 128 x 128 pixels), and reports, per step and in
total, the five estimates and the bytes coded.

Usage (from the repository root)::

    python -m benchmarks.layouts --images <folder> --out benchmarks/results/texture/kodak4_128.json \\
        [--crop 128] [--limit 4] [--effort 5] [--model M] [--seed 0]

``--crop 0`` codes the whole images.  A layout's estimate excludes its side information and
framing (a few bytes; the encoder adds them when it compares).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from benchmarks.common import load_images, provenance, write_json
from diffcodec.checkpoint import load_prior
from diffcodec.codec import EncodeOptions, encode

LAYOUTS = ("plain", "predicted", "context", "texture", "neighbours")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.layouts", description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--model", default=None)
    ap.add_argument("--crop", type=int, default=128, help="centre crop in px (0: whole images)")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--effort", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    prior = load_prior(args.model, "cpu")
    images = load_images(args.images, args.limit, args.crop or None)
    rows, totals = [], {"dims": 0, "file_bytes": 0, **{k: 0.0 for k in LAYOUTS}, "coded": 0.0}
    print(f"{'image':>12} {'step':>5} {'t':>5} {'kind':>11} " + " ".join(f"{k:>10}" for k in LAYOUTS)
          + f" {'coded':>10}  (bits/dim)")
    for name, img in images.items():
        res = encode(img, prior, EncodeOptions(effort=args.effort, seed=args.seed, every_layout=True))
        dims = img.size
        totals["dims"] += dims
        totals["file_bytes"] += len(res.data)
        for i, s in enumerate(res.steps):
            est = {k: s.extra.get(f"{k}_symbol_bits") for k in LAYOUTS}
            if est["plain"] is None:
                continue  # a PFR step: one layout
            if est["neighbours"] is None:  # a grey final step: plain only
                continue
            row = {"image": name, "step": i + 1, "t": s.timestep, "kind": s.kind.label,
                   **{k: v / dims for k, v in est.items()}, "coded": s.coded_bits / dims}
            rows.append(row)
            for k in LAYOUTS:
                totals[k] += est[k]
            totals["coded"] += s.coded_bits
            print(f"{name:>12} {i + 1:>5} {s.timestep:>5} {s.kind.label:>11} "
                  + " ".join(f"{row[k]:>10.4f}" for k in LAYOUTS) + f" {row['coded']:>10.4f}")
    summary = {k: totals[k] / totals["dims"] for k in (*LAYOUTS, "coded")}
    summary["file_bits_per_dim"] = 8 * totals["file_bytes"] / totals["dims"]
    print("all UQ and final steps, bits/dim of the images: " + ", ".join(f"{k} {v:.4f}" for k, v in summary.items()))
    if args.out:
        write_json(args.out, {"provenance": provenance("benchmarks.layouts", argv), "effort": args.effort,
                              "model": prior.fingerprint, "summary": summary, "steps": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
