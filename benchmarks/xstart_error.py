"""Which model predicts x_0 better where the codec calls it: the mean squared error of each
model's clipped x_0 estimate from x_t, at chosen timesteps, on the same noisy images (one noise
draw per timestep, shared by every model), relative to the first model.

A step s <- t of the codec's chain costs 1/2 log2(1 + c1^2 mse(t) / lambda^2) bits/dim, so a
ratio rho of x_0 errors at a high-SNR step (t <= ~50 on the planned chains) is worth about
1/2 log2(rho) bits/dim there; at the high-noise steps it is worth far less.

Usage (from the repository root)::

    python -m benchmarks.xstart_error --models A.pt,B.pt --images <folder> --out R.json \\
        [--crop 128] [--limit 16] [--timesteps 0,1,3,7,14,30,52,100,200,400]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Sequence

import torch

from benchmarks.common import load_images, provenance, write_json
from diffcodec.checkpoint import load_prior
from diffcodec.data import to_tensor


def xstart_errors(priors: Sequence, x0: torch.Tensor, timesteps: Sequence[int], seed: int = 1) -> list[dict]:
    """Per timestep {"t", "mse": [one per prior]} on ``x0`` ([N, 3, H, W] on [-1, 1])."""
    diffusion = priors[0].diffusion.build(None)
    g = torch.Generator().manual_seed(seed)
    rows = []
    for t in timesteps:
        tt = torch.full((len(x0),), t, dtype=torch.long)
        x_t = diffusion.q_sample(x0, tt, torch.randn(x0.shape, generator=g, dtype=torch.float64))
        mse = []
        with torch.inference_mode():
            for prior in priors:
                x32 = x_t.float().contiguous(memory_format=torch.channels_last)
                eps = prior.net(x32, diffusion.model_time(tt))[:, :3].double()
                x0_hat = diffusion.predict_xstart_from_eps(x_t, tt, eps).clamp(-1, 1)
                mse.append(float(((x0_hat - x0) ** 2).mean()))
        rows.append({"t": int(t), "mse": mse})
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.xstart_error", description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", required=True, help="comma-separated checkpoints ('default': the shipped one)")
    ap.add_argument("--images", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--limit", type=int, default=16)
    ap.add_argument("--timesteps", default="0,1,3,7,14,30,52,100,200,400")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    names = args.models.split(",")
    priors = [load_prior(None if m == "default" else m, "cpu") for m in names]
    if len({p.diffusion for p in priors}) != 1:
        raise SystemExit("the models have different diffusions: their timesteps are not comparable")
    images = load_images(args.images, args.limit, args.crop)
    x0 = torch.stack([to_tensor(img) for img in images.values()]).double()
    rows = xstart_errors(priors, x0, [int(v) for v in args.timesteps.split(",")], args.seed)
    print(f"{'t':>4} {'mse (' + names[0][-20:] + ')':>28} " + " ".join(f"{n[-24:]:>34}" for n in names[1:]))
    for row in rows:
        base = row["mse"][0]
        print(f"{row['t']:>4} {base:>28.4e} " + " ".join(
            f"{m / base:>24.4f} ({0.5 * math.log2(m / base):+.4f})" for m in row["mse"][1:]))
    if args.out:
        write_json(args.out, {"rows": rows, "models": names, "fingerprints": [p.fingerprint for p in priors],
                              "images": list(images), "crop": args.crop,
                              **provenance("benchmarks.xstart_error", argv)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
