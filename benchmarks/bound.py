"""The model's variational bound (bits/dim, term by term) on a folder of images.

    python benchmarks/bound.py --images ../shared/data/kodak --steps 100 --crop 128 \
        --out benchmarks/results/kodak/bound.json [--model M] [--device cuda] [--limit N]

With ``--steps`` the chain is respaced to that many timesteps (a looser bound than the full T,
but the one a K-step codec could reach with an ideal coder); ``--crop`` takes centre crops (CPU).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import list_images, load_rgb, machine_description, now_iso, write_results_json  # noqa: E402
from rd_diffcodec import center_crop  # noqa: E402

from diffcodec.checkpoint import load_prior  # noqa: E402
from diffcodec.likelihood import bits_per_dim  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--model", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=None, help="respaced chain length (default: full T)")
    ap.add_argument("--crop", type=int, default=0)
    ap.add_argument("--limit", type=int, default=0)
    args = ap.parse_args(argv)
    prior = load_prior(args.model, args.device)
    per_image = {}
    t0 = time.perf_counter()
    for path in list_images(args.images)[: args.limit or None]:
        terms = bits_per_dim(center_crop(load_rgb(path), args.crop), prior, args.steps)
        per_image[path.name] = {"total": terms.total, "prior": terms.prior, "latent": terms.latent,
                                "decoder": terms.decoder}
        print(f"{path.name}: {terms.total:.4f} bits/dim (L_T {terms.prior:.4f}, latents {terms.latent:.4f}, "
              f"L_0 {terms.decoder:.4f})", flush=True)
    mean = {k: float(np.mean([v[k] for v in per_image.values()])) for k in ("total", "prior", "latent", "decoder")}
    steps = args.steps or prior.diffusion.num_timesteps
    write_results_json(
        args.out, "diffcodec-bound", f"variational bound, {steps}-step chain, "
        + (f"centre crops {args.crop}px" if args.crop else "full images"),
        {"bits_per_dim": [mean["total"]]}, mean=mean, per_image=per_image, steps=steps, crop=args.crop,
        model_fingerprint=prior.fingerprint, seconds=time.perf_counter() - t0, machine=machine_description(),
        command=" ".join(sys.argv), date=now_iso(),
    )
    print(f"mean over {len(per_image)} images: {mean['total']:.4f} bits/dim "
          f"(L_T {mean['prior']:.4f} + latents {mean['latent']:.4f} + L_0 {mean['decoder']:.4f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
