"""The model's variational bound (bits/dim, term by term) on a folder of images.

Usage (from the repository root)::

    python -m benchmarks.bound --images ../shared/data/kodak --steps 100 --crop 128 \\
        --out benchmarks/results/kodak/bound.json [--model M] [--device cuda] [--limit N] \\
        [--variance model|analytic]

With ``--steps`` the chain is respaced to that many timesteps (a looser bound than the full T,
but the one a K-step codec could reach with an ideal coder); ``--crop`` takes centre crops (CPU).
``--variance`` picks the reverse variances: the model's own (default), or the analytic ones from
its x_0 error table (what the codec codes with when the checkpoint has a table).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from benchmarks.common import (
    VARIANCES, bound, check_bound_variance, load_images, provenance, write_results_json,
)
from diffcodec.checkpoint import load_prior
from diffcodec.errors import OptionError

TERMS = ("total", "prior", "latent", "decoder")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bound", description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--model", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=None, help="respaced chain length (default: full T)")
    ap.add_argument("--variance", choices=VARIANCES, default="model",
                    help="reverse variances: the model's, or analytic from its x_0 error table")
    ap.add_argument("--crop", type=int, default=0)
    ap.add_argument("--limit", type=int, default=0)
    args = ap.parse_args(argv)
    prior = load_prior(args.model, args.device)
    try:
        check_bound_variance(prior, args.variance)
    except OptionError as e:
        ap.error(f"--variance {args.variance}: {e}")
    per_image = {}
    t0 = time.perf_counter()
    steps = args.steps or prior.diffusion.num_timesteps
    for name, img in load_images(args.images, args.limit, args.crop).items():
        terms = bound(img, prior, args.steps, args.variance)
        per_image[name] = {"total": terms.total, "prior": terms.prior, "latent": terms.latent,
                           "decoder": terms.decoder}
        steps = len(terms.timesteps)
        print(f"{name}: {terms.total:.4f} bits/dim (L_T {terms.prior:.4f}, latents {terms.latent:.4f}, "
              f"L_0 {terms.decoder:.4f})", flush=True)
    mean = {k: float(np.mean([v[k] for v in per_image.values()])) for k in TERMS}
    write_results_json(
        args.out, "diffcodec-bound", f"variational bound, {steps}-step chain, {args.variance} variances, "
        + (f"centre crops {args.crop}px" if args.crop else "full images"),
        {"bits_per_dim": [mean["total"]]}, mean=mean, per_image=per_image, steps=steps, variance=args.variance,
        crop=args.crop, model=Path(prior.source).name, model_fingerprint=prior.fingerprint,
        seconds=time.perf_counter() - t0, **provenance("benchmarks.bound", argv),
    )
    print(f"mean over {len(per_image)} images: {mean['total']:.4f} bits/dim "
          f"(L_T {mean['prior']:.4f} + latents {mean['latent']:.4f} + L_0 {mean['decoder']:.4f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
