"""Merge runs of ``benchmarks.rd_diffcodec`` made on parts of one image set (e.g. one part per
core) and report what the whole set gives: mean lossless bits/dim and PSNR at fixed rates.

Usage (from the repository root)::

    python -m benchmarks.rd_merge PART1/diffcodec.json PART2/diffcodec.json ... \\
        --out benchmarks/results/kodak256_effort8/merged.json

The runs must have coded the same chain (same image size, effort and model: every image has the
same number of steps).  PSNR at a rate is given two ways: on the curve of per-step means over
the images, interpolated linearly (what ``rd_diffcodec`` and RESULTS.md report), and as the mean
over images of each image's own interpolated PSNR.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from benchmarks.common import provenance, write_json

RATES = (0.1, 0.25, 0.5, 1.0)


def merge(docs: Sequence[dict[str, Any]], rates: Sequence[float] = RATES) -> dict[str, Any]:
    """The merged per-image records and the summary of a list of ``diffcodec.json`` documents."""
    per_image: dict[str, Any] = {}
    for doc in docs:
        overlap = set(per_image) & set(doc["per_image"])
        if overlap:
            raise ValueError(f"images in more than one run: {sorted(overlap)}")
        per_image.update(doc["per_image"])
    fingerprints = {doc.get("model_fingerprint") for doc in docs}
    if len(fingerprints) != 1:
        raise ValueError("the runs used different models")
    names = sorted(per_image)
    lengths = {len(per_image[n]["steps"]) for n in names}
    if len(lengths) != 1:
        raise ValueError(f"the runs coded chains of different lengths {sorted(lengths)}")
    bpp = np.array([[s["bpp"] for s in per_image[n]["steps"]] for n in names], dtype=np.float64)
    psnr = np.array([[np.nan if s["psnr"] is None else s["psnr"] for s in per_image[n]["steps"]] for n in names],
                    dtype=np.float64)
    mean_bpp, mean_psnr = bpp.mean(axis=0), psnr.mean(axis=0)
    ok = np.isfinite(mean_psnr)

    def own(i: int, rate: float) -> float:
        good = np.isfinite(psnr[i])
        return float(np.interp(rate, bpp[i][good], psnr[i][good]))

    return {
        "images": names,
        "lossless_bits_per_dim": float(np.mean([8 * per_image[n]["bytes"] / (3 * per_image[n]["width"]
                                                                             * per_image[n]["height"])
                                                for n in names])),
        "psnr_at_bpp_mean_curve": {str(r): float(np.interp(r, mean_bpp[ok], mean_psnr[ok])) for r in rates},
        "psnr_at_bpp_mean_of_images": {str(r): float(np.mean([own(i, r) for i in range(len(names))])) for r in rates},
        "per_step_mean": {"bpp": mean_bpp.tolist(), "psnr": [float(v) if np.isfinite(v) else None for v in mean_psnr]},
        "model_fingerprint": fingerprints.pop(),
        "options": docs[0].get("options"),
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.rd_merge", description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="diffcodec.json files of rd_diffcodec runs")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    merged = merge([json.loads(p.read_text()) for p in args.runs])
    print(f"{len(merged['images'])} images, lossless {merged['lossless_bits_per_dim']:.4f} bits/dim")
    for r in RATES:
        print(f"PSNR at {r} bpp: {merged['psnr_at_bpp_mean_curve'][str(r)]:.2f} dB (mean curve), "
              f"{merged['psnr_at_bpp_mean_of_images'][str(r)]:.2f} dB (mean of images)")
    if args.out:
        write_json(args.out, {**merged, "runs": [str(p) for p in args.runs], **provenance("benchmarks.rd_merge", argv)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
