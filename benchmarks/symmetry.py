"""How much the network's self-ensemble lowers its x_0 error: the mean squared error of the
clipped x_0 estimate from x_t with the plain call and with the call averaged over 2, 4 and 8 of
the square's symmetries (:func:`diffcodec.unet.forward_symmetrised`), at chosen timesteps, on
the same noisy images (one noise draw per timestep, shared by every symmetry).

Usage (from the repository root)::

    python -m benchmarks.symmetry --images <crops> --out benchmarks/results/symmetry/kodak4_128.json \\
        [--model M] [--crop 128] [--limit 4] [--timesteps 1,3,7,14,30,52,100,200,400]

Prints per timestep the plain call's MSE (on [-1, 1]) and each symmetry's MSE relative to it,
with what that ratio is worth per dimension of a high-SNR step, ½ log2(ratio) bits.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from benchmarks.common import load_images, provenance, write_json
from diffcodec.checkpoint import load_prior
from diffcodec.data import to_tensor
from diffcodec.kinds import SYMMETRIES
from diffcodec.unet import forward_symmetrised


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.symmetry", description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--model", default=None)
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--limit", type=int, default=4)
    ap.add_argument("--timesteps", default="1,3,7,14,30,52,100,200,400")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    prior = load_prior(args.model, "cpu")
    diffusion = prior.diffusion.build(None)
    images = load_images(args.images, args.limit, args.crop)
    x0 = torch.stack([to_tensor(img) for img in images.values()]).double()
    g = torch.Generator().manual_seed(args.seed)
    rows = []
    print(f"{'t':>4} {'mse (plain)':>12} " + " ".join(f"{f'x{n} ratio (bits)':>18}" for n in SYMMETRIES[1:]))
    for t in (int(v) for v in args.timesteps.split(",")):
        tt = torch.full((len(x0),), t, dtype=torch.long)
        x_t = diffusion.q_sample(x0, tt, torch.randn(x0.shape, generator=g, dtype=torch.float64))
        mse = {}
        with torch.inference_mode():
            for n in SYMMETRIES:
                eps = torch.cat([forward_symmetrised(prior.net, x_t[i:i + 1].float(), diffusion.model_time(tt[:1]), n)
                                 for i in range(len(x0))])[:, :3].double()
                x0_hat = diffusion.predict_xstart_from_eps(x_t, tt, eps).clamp(-1, 1)
                mse[n] = float(((x0_hat - x0) ** 2).mean())
        row = {"t": t, "mse": mse, "ratio": {n: mse[n] / mse[1] for n in SYMMETRIES}}
        rows.append(row)
        print(f"{t:>4} {mse[1]:>12.4e} " + " ".join(
            f"{row['ratio'][n]:>9.4f} ({0.5 * math.log2(row['ratio'][n]):+.4f})" for n in SYMMETRIES[1:]), flush=True)
    if args.out:
        write_json(args.out, {"rows": rows, "images": list(images), "crop": args.crop,
                              "model_fingerprint": prior.fingerprint, **provenance("benchmarks.symmetry", argv)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
