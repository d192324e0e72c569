"""The model's x_0 error table: E[(x_0 - x0hat(x_t, t))^2] per timestep and channel.

Analytic-DPM (Bao et al. 2022) turns a network's prediction error into the reverse variance
that minimises the KL of every step, for any pair of timesteps (:func:`diffcodec.diffusion.
analytic_variance`), and into the expected KL of any step, which is what the codec's trajectory
optimiser (:mod:`diffcodec.trajectory`) needs.  The table is measured once per model on
held-out photos and stored in its checkpoint (covered by the fingerprint):

    diffcodec errtable --data PHOTOS --model in.pt -o out.pt

x0hat is the clipped estimate the codec uses; the error is measured on random crops with a
fresh noise draw per timestep, then made non-decreasing in t (a better-informed x_t never
predicts worse) by isotonic regression, which also averages out the draw's noise.
"""

from __future__ import annotations

from typing import Callable, Iterable

import numpy as np
import torch

from .checkpoint import Prior
from .data import ImageCrops


def isotonic_increasing(y: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    """The non-decreasing sequence closest to ``y`` in weighted least squares (pool adjacent
    violators)."""
    y = np.asarray(y, dtype=np.float64)
    w = np.ones_like(y) if w is None else np.asarray(w, dtype=np.float64)
    values, weights, counts = [], [], []
    for yi, wi in zip(y.tolist(), w.tolist()):
        values.append(yi), weights.append(wi), counts.append(1)
        while len(values) > 1 and values[-2] > values[-1]:
            v2, w2, c2 = values.pop(), weights.pop(), counts.pop()
            v1, w1, c1 = values.pop(), weights.pop(), counts.pop()
            values.append((v1 * w1 + v2 * w2) / (w1 + w2)), weights.append(w1 + w2), counts.append(c1 + c2)
    return np.repeat(values, counts)


@torch.no_grad()
def measure_xstart_mse(prior: Prior, crops: torch.Tensor, timesteps: Iterable[int] | None = None,
                       seed: int = 0, progress: Callable | None = None) -> np.ndarray:
    """Raw [T, C] mean squared error of the clipped x_0 estimate on ``crops`` ([N, C, H, W]
    on [-1, 1]), one noise draw per timestep (rows not in ``timesteps`` stay NaN)."""
    diffusion = prior.diffusion.build(None)
    T = diffusion.num_timesteps
    crops = crops.to(prior.device, torch.float64)
    out = np.full((T, crops.shape[1]), np.nan)
    g = torch.Generator(device="cpu").manual_seed(seed)
    steps = list(range(T)) if timesteps is None else list(timesteps)
    for i in progress(steps) if progress else steps:
        t = torch.full((crops.shape[0],), i, dtype=torch.long, device=prior.device)
        noise = torch.randn(crops.shape, generator=g, dtype=torch.float64).to(prior.device)
        x_t = diffusion.q_sample(crops, t, noise)
        x32 = x_t.float()
        if prior.device.type == "cpu":
            x32 = x32.contiguous(memory_format=torch.channels_last)
        eps = prior.net(x32, diffusion.model_time(t))[:, :crops.shape[1]].double()
        x0 = diffusion.predict_xstart_from_eps(x_t, t, eps).clamp(-1, 1)
        out[i] = ((x0 - crops) ** 2).mean(dim=(0, 2, 3)).cpu().numpy()
    return out


def estimate_xstart_mse(prior: Prior, folder: str, crop: int = 64, num_crops: int = 32, seed: int = 0,
                        progress: Callable | None = None) -> np.ndarray:
    """The [T, C] table for ``prior`` from ``num_crops`` fixed random crops of the photos in
    ``folder``: measured at every timestep, then isotonic in t per channel."""
    crops = ImageCrops(folder, crop).fixed_crops(num_crops, seed)
    raw = measure_xstart_mse(prior, crops, seed=seed, progress=progress)
    return np.stack([isotonic_increasing(raw[:, c]) for c in range(raw.shape[1])], axis=1)
