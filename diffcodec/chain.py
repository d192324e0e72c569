"""The coded chain of one file: its diffusion, the network calls, shared randomness, previews.

A file's header names the timesteps of its chain (x_T first at ``timesteps[-1]``, the last
latent at ``timesteps[0]``).  :class:`CodedChain` builds the diffusion respaced to them, with
the reverse variances from the model's x_0 error table when the checkpoint has one (the
analytic variances, :func:`diffcodec.diffusion.analytic_variance`), runs the network on its
device in float32 (over tiles for large images, :func:`diffcodec.unet.forward_tiled`; at the
timesteps the header says, averaged over its number of the square's symmetries,
:func:`diffcodec.unet.forward_symmetrised`), and
draws the randomness both sides share from Philox4x32-10 (:mod:`diffcodec.philox`) keyed by
the file's seed: x_T, the dithers of the UQ steps, the noise of sampled previews and the PFR
candidates, each under its own counter tag.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from . import container as fmt
from . import philox
from .checkpoint import Prior
from .errors import FormatError
from .kinds import Reconstruction
from .sideinfo import TileGrid
from .unet import forward_symmetrised

# Philox counter tags (word 3 = tag << 16 | step); PFR uses 1, 2, 3 (diffcodec.coders.pfr).
TAG_X_T, TAG_DITHER, TAG_SAMPLE = 4, 5, 6
# Below this alpha-bar x_t holds no usable signal: the network's x_0 estimate divides its error by
# sqrt(alpha-bar) (the cosine schedule's x_T: 2.4e-9, a factor 2e4) and clips to saturated noise,
# so the mean preview is the flat mid-grey instead (RMSE 40-71 against 132-141 on Kodak crops).
PREVIEW_MIN_ALPHA_BAR = 1e-3


GENERATOR_BLOCK = 1 << 20  # counters per Philox call: bounds the generator's temporaries (~100 MB)


def _shared(draw, key: tuple[int, int], tag: int, step: int, n: int) -> np.ndarray:
    out = np.empty(2 * ((n + 1) // 2), dtype=np.float64)
    for start in range(0, (n + 1) // 2, GENERATOR_BLOCK):
        counters = torch.arange(start, min(start + GENERATOR_BLOCK, (n + 1) // 2))
        a, b = draw(key, counters, 0, 0, (tag << 16) | step)
        out[2 * start:2 * start + 2 * len(counters)] = torch.stack([a, b], dim=1).reshape(-1).numpy()
    return out[:n]


def shared_uniforms(key: tuple[int, int], tag: int, step: int, n: int) -> np.ndarray:
    """n doubles in (0, 1), the same on every machine for (seed, tag, step): element 2i and
    2i + 1 come from Philox counter (i, 0, 0, tag << 16 | step)."""
    return _shared(philox.uniforms, key, tag, step, n)


def shared_normals(key: tuple[int, int], tag: int, step: int, n: int) -> np.ndarray:
    """n standard normals (Box-Muller on :func:`shared_uniforms`' pairs), the same on every
    machine up to the last ulp of log/cos/sin."""
    return _shared(philox.normals, key, tag, step, n)


class CodedChain:
    """The respaced diffusion of a file and the network, run float32 on its device."""

    def __init__(self, prior: Prior, header: fmt.Header, tile_pixels: int | None = None) -> None:
        cfg = prior.diffusion
        if header.fingerprint != bytes.fromhex(prior.fingerprint):
            raise FormatError("file was made with another model (fingerprint mismatch): "
                              f"file {header.fingerprint.hex()[:12]}, model {prior.fingerprint[:12]}")
        if header.schedule != cfg.schedule or header.num_timesteps != cfg.num_timesteps:
            raise FormatError("file's diffusion schedule does not match the model")
        # respaced to the header's timesteps (ascending, checked by the parser), with the analytic
        # variances and the linear x_0 estimate where the checkpoint has them
        self.diffusion = cfg.build(header.timesteps, prior.xstart_mse, prior.linear)
        self.prior, self.header = prior, header
        self.device = prior.device
        self.height, self.width = header.height, header.width
        self.shape = (1, 3, header.height, header.width)
        self.n = 3 * header.height * header.width
        self.grid = TileGrid(3, header.height, header.width, header.tile)
        self.key = philox.seed_key(header.seed)
        self.tile_pixels = tile_pixels
        self.net_seconds = 0.0
        self.net_calls = 0
        self.net_evaluations = 0  # a call averaged over n symmetries counts n
        #: called with (tiles done, tiles) during each network call: a progress bar's hook
        self.on_tile: Callable[[int, int], None] | None = None
        self._memo: dict = {}

    def memo(self, name: str, make):
        """What ``make()`` returns, computed once per chain (a coder's per-file precomputation)."""
        if name not in self._memo:
            self._memo[name] = make()
        return self._memo[name]

    # -- the network -------------------------------------------------------------------------
    def model(self, x: torch.Tensor, s: torch.Tensor, symmetry: int = 1) -> torch.Tensor:
        t0 = time.perf_counter()
        # on CPU the float32 input is made tile by tile (no whole-image copy); another device gets
        # it converted before the transfer (half the bytes); with the analytic variance only the
        # eps channels of the output are kept, tile by tile
        src = x if self.device.type == "cpu" else x.to(self.device, torch.float32)
        keep = x.shape[1] if self.diffusion.analytic_variance is not None else None
        with torch.inference_mode():
            out = forward_symmetrised(self.prior.net, src, s.to(self.device), symmetry, self.tile_pixels,
                                      self.on_tile, keep, torch.float32)
            out = out.double()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.net_seconds += time.perf_counter() - t0
        self.net_calls += 1
        self.net_evaluations += symmetry
        return out.cpu()

    def t(self, j: int) -> torch.Tensor:
        return torch.tensor([j])

    def predict(self, x: torch.Tensor, j: int) -> dict:
        """p_theta(x at chain index j - 1 | x): mean, variance, log_variance, pred_xstart (clipped);
        the eps estimate is dropped (an image-sized array no coder needs)."""
        symmetry = self.header.symmetry_at(int(self.diffusion.timestep_map[j]))
        out = self.diffusion.p_mean_variance(lambda x_, s_: self.model(x_, s_, symmetry), x, self.t(j),
                                             clip_denoised=True)
        del out["eps"]
        return out

    # -- shared randomness -------------------------------------------------------------------
    def x_T(self) -> torch.Tensor:
        return torch.from_numpy(shared_normals(self.key, TAG_X_T, 0, self.n)).reshape(self.shape)

    def dither(self, step: int) -> np.ndarray:
        """The UQ dither of coded step ``step``: n doubles in (-1/2, 1/2)."""
        u = shared_uniforms(self.key, TAG_DITHER, step, self.n)
        u -= 0.5  # in place: one image-sized array, not two
        return u

    # -- previews ----------------------------------------------------------------------------
    def has_signal(self, j: int) -> bool:
        """Whether the x_0 estimate at chain index j is a usable preview: the linear estimate
        always is; the network's only where alpha-bar is at least :data:`PREVIEW_MIN_ALPHA_BAR`."""
        return self.diffusion.uses_linear(self.t(j)) or self.diffusion.alphas_cumprod[j] >= PREVIEW_MIN_ALPHA_BAR

    def preview_mean(self, out: dict | None, j: int) -> torch.Tensor:
        """The mean preview at chain index j: the x_0 estimate (the model's, or the linear one
        where the model has it), or mid-grey where x_t carries no usable signal
        (:data:`PREVIEW_MIN_ALPHA_BAR`; no network call is needed)."""
        if out is None or not self.has_signal(j):
            return torch.zeros(self.shape, dtype=torch.float64)
        return out["pred_xstart"]

    def reconstruct(self, x: torch.Tensor, j: int, out: dict | None, how: Reconstruction) -> torch.Tensor:
        """x_0 estimate from x at chain index j: mean, an ancestral sample, or DDIM flow."""
        how = Reconstruction(how)
        if how == Reconstruction.MEAN or j == 0:
            return self.preview_mean(out, j)
        out = out if out is not None else self.predict(x, j)
        for i in range(j, 0, -1):
            if how == Reconstruction.SAMPLE:
                noise = torch.from_numpy(shared_normals(self.key, TAG_SAMPLE, i, self.n)).reshape(self.shape)
                x = out["mean"] + torch.exp(0.5 * out["log_variance"]) * noise
            else:
                x = self.diffusion.ddim_step(out, x, self.t(i))
            out = self.predict(x, i - 1)
        return out["pred_xstart"]


def to_uint8(x0: torch.Tensor) -> np.ndarray:
    """[1, 3, H, W] on [-1, 1] -> uint8 H x W x 3 (rounded, clipped)."""
    return ((x0[0].double() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
