"""Bits/dim of images under a prior: the variational bound, term by term."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .checkpoint import Prior
from .container import ALL_TIMESTEPS
from .data import to_tensor
from .diffusion import VARIANCE_SOURCES
from .errors import OptionError
from .kinds import check_symmetry
from .unet import forward_symmetrised


@dataclass
class BoundTerms:
    """The bound of one image in bits/dim: total = prior (L_T) + sum of latent KLs + decoder (L_0)."""

    total: float
    prior: float
    latent: float
    decoder: float
    per_step: np.ndarray  # [K] bits/dim per chain index (index 0 = decoder term)
    timesteps: np.ndarray  # [K] original timesteps of the chain


def bits_per_dim(image: np.ndarray, prior: Prior, steps: int | Sequence[int] | None = None, seed: int = 0,
                 progress=None, variance: str = "model", symmetry: int = 1,
                 symmetry_max_t: int = ALL_TIMESTEPS) -> BoundTerms:
    """The variational bound of a uint8 H x W x 3 image under ``prior`` with the full chain
    (``steps=None``), one respaced to ``steps`` timesteps, or the given timesteps.  ``variance``:
    the model's own reverse variances (``model``: learned or fixed) or the analytic ones from the
    checkpoint's x_0 error table (``analytic``; the x_0 estimate is then the linear one at the
    timesteps where the model has it, as in the codec).  ``symmetry``: the network averaged over that many
    of the square's symmetries (:func:`diffcodec.unet.forward_symmetrised`) at the timesteps up to
    ``symmetry_max_t``, as a file's header may ask."""
    check_symmetry(symmetry)
    if variance not in VARIANCE_SOURCES:
        raise OptionError(f"variance must be one of {VARIANCE_SOURCES}")
    if variance == "analytic" and prior.xstart_mse is None:
        raise OptionError("the analytic variance needs a model with an x_0 error table (diffcodec errtable)")
    analytic = variance == "analytic"
    diffusion = prior.diffusion.build(steps, prior.xstart_mse if analytic else None, prior.linear if analytic else None)
    x = to_tensor(image)[None].to(prior.device)
    g = torch.Generator(device=prior.device).manual_seed(seed)

    def model(x_t, s):  # s: the original timestep scaled to [0, 1000)
        t = int(round(float(s.reshape(-1)[0]) * prior.diffusion.num_timesteps / 1000.0))
        return forward_symmetrised(prior.net, x_t, s, symmetry if t <= symmetry_max_t else 1, tile_pixels=math.inf)

    out = diffusion.calc_bpd_loop(model, x, generator=g, progress=progress)
    vb = out["vb"][0].numpy()
    return BoundTerms(float(out["total_bpd"][0]), float(out["prior_bpd"][0]), float(vb[1:].sum()),
                      float(vb[0]), vb, diffusion.timestep_map.copy())
