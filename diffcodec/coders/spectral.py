"""PFR in the frequency domain: a latent step's prior shaped like the x_0 estimate's error.

A PFR step (:mod:`diffcodec.coders.pfr`) sends x_s ~ q = N(mu_q, sigma_q^2 I) against a prior
p' = N(mu_p, sigma_p^2) whose width is one per tile and channel.  But
mu_q - mu_p = coef1 (x_0 - x0_hat) is the x_0 estimate's error, which is far from white: it is
large at the low frequencies the noise hides and small at the high ones, and correlated across
the colours.  The *spectral* layout (chunk kind PFR_SPEC, format version 8) codes the same
step in an orthonormal basis where that error is nearly independent, with a width per
coefficient:

* **Basis.** delta = (mu_q - mu_p) / sigma_q is turned into the colour components of the model's
  linear prior (:class:`diffcodec.linear.LinearPrior`'s orthonormal basis), then into the
  orthonormal DCT-II of each side-information tile (edge tiles at their own size).  The
  transform is orthonormal, so q is N(u, I) in these coordinates and KL is the same sum.
* **Shape.** Under the linear prior a coefficient of variance S seen through the noise of x_t
  (nu = (1 - abar_t) / abar_t on the x_0 scale) has the Wiener error S nu / (S + nu); in delta's
  units T = coef1^2 / sigma_q^2 * S nu / (S + nu) (:meth:`SpectralBasis.shape`).  The network
  errs less than the linear estimate, by a factor that varies over the image, so
* **Width.** sigma_p / sigma_q = r with r^2 = 1 + g T per coefficient, g = 2 ** ((code - 200) / 8)
  one byte per tile and component (:data:`diffcodec.sideinfo.GAIN`), fitted by the encoder on
  the step's KL (:func:`fit_gains`).  The chunk layout follows the per-dimension rates
  (:func:`diffcodec.coders.pfr.make_rate_plan`); the search, the indices and the randomness are
  PFR's, on the coefficients.
* **Sample.** The decoder regenerates each chunk's candidate z, and
  x_s = mu_p + sigma_q * B(IDCT(r z)), B the colour basis.

The payload is PFR's (:class:`diffcodec.coders.pfr.PfrPayload`) with gain codes where PFR has
its kappa codes.  The encoder takes this layout for a step where its KL is below the plain
layout's; a model without a linear prior has only the plain one.  Measured offline on four
Kodak 256 px crops (shipped model, effort 5's chain): the PFR steps' KL 0.2515 -> 0.2268
bits/dim (-10 %), most at high noise.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..linear import LinearPrior, dct2
from ..sideinfo import GAIN, TileGrid
from . import pfr

#: Bins per octave of T in which :func:`fit_gains` sums a group's coefficients (its cost is
#: evaluated from those sums, exactly enough to rank the codes).
FIT_BINS_PER_OCTAVE = 4


class SpectralBasis:
    """The colour components of ``linear`` and the orthonormal DCT of each tile of ``grid``."""

    def __init__(self, linear: LinearPrior, grid: TileGrid) -> None:
        assert grid.c == linear.channels, f"linear prior has {linear.channels} channels, the grid {grid.c}"
        self.linear, self.grid = linear, grid
        self.basis = np.asarray(linear.basis, dtype=np.float64)
        t = grid.tile or max(grid.h, grid.w)
        self.tiles = [(slice(y, min(y + t, grid.h)), slice(x, min(x + t, grid.w)))
                      for y in range(0, grid.h, t) for x in range(0, grid.w, t)]
        self._power: dict[tuple[int, int], np.ndarray] = {}

    def forward(self, x: np.ndarray) -> np.ndarray:
        """[C, H, W] -> its components' tile DCT coefficients, [C, H, W] (tile by tile in place)."""
        u = np.einsum("chw,ck->khw", np.asarray(x, dtype=np.float64), self.basis)
        for sy, sx in self.tiles:
            u[:, sy, sx] = dct2(u[:, sy, sx])
        return u

    def inverse(self, u: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`forward`."""
        v = np.array(u, dtype=np.float64)
        for sy, sx in self.tiles:
            v[:, sy, sx] = dct2(v[:, sy, sx], inverse=True)
        return np.einsum("khw,ck->chw", v, self.basis)

    def power(self, h: int, w: int) -> np.ndarray:
        """[C, h, w] the linear prior's coefficient variances of an h x w tile (cached per shape)."""
        if (h, w) not in self._power:
            self._power[(h, w)] = self.linear.power(h, w)
        return self._power[(h, w)]

    def shape(self, nu: float, scale: float) -> np.ndarray:
        """[C, H, W] T = scale * S nu / (S + nu) per coefficient (module doc)."""
        out = np.empty((self.grid.c, self.grid.h, self.grid.w), dtype=np.float64)
        for sy, sx in self.tiles:
            s = self.power(sy.stop - sy.start, sx.stop - sx.start)
            out[:, sy, sx] = scale * (s * nu / (s + nu))
        return out


def step_shape(basis: SpectralBasis, abar_t: float, coef1: float, sigma_q: float) -> np.ndarray:
    """T of a step from x_t (alpha-bar ``abar_t``) with q's coef1 and std sigma_q."""
    nu = (1.0 - abar_t) / abar_t
    return basis.shape(nu, coef1 * coef1 / (sigma_q * sigma_q))


def widths(codes: bytes, shape: np.ndarray, grid: TileGrid) -> np.ndarray:
    """r^2 = 1 + g T per coefficient, [C, H, W], from the gain codes."""
    g = GAIN.value(grid.expand(np.frombuffer(codes, dtype=np.uint8).astype(np.int64)))
    return 1.0 + g * shape


def kl_bits(u2: np.ndarray, rsq: np.ndarray) -> np.ndarray:
    """KL(N(u, 1) || N(0, r^2)) in bits per coefficient."""
    return 0.5 * np.log2(rsq) + ((1.0 + u2) / rsq - 1.0) / (2.0 * math.log(2.0))


def fit_gains(u2: np.ndarray, shape: np.ndarray, grid: TileGrid) -> bytes:
    """The gain code per tile and component minimising the KL of its coefficients (u^2 and T as
    [C, H, W]), over all 256 codes, from per-group sums over bins of T a quarter-octave wide."""
    gid = grid.group_ids().ravel()
    t = shape.reshape(-1)
    lo = math.floor(math.log2(max(float(t.min()), 1e-300)) * FIT_BINS_PER_OCTAVE)
    b = np.floor(np.log2(np.maximum(t, 1e-300)) * FIT_BINS_PER_OCTAVE).astype(np.int64) - lo
    nb = int(b.max()) + 1
    key = gid * nb + b
    size = grid.size * nb
    n = np.bincount(key, minlength=size).reshape(grid.size, nb)
    s = np.bincount(key, u2.reshape(-1), minlength=size).reshape(grid.size, nb)
    tm = np.bincount(key, t, minlength=size).reshape(grid.size, nb) / np.maximum(n, 1)
    g = GAIN.value(np.arange(256))
    best = np.zeros(grid.size, dtype=np.int64)
    best_cost = np.full(grid.size, np.inf)
    for c0 in range(0, 256, 32):
        rsq = 1.0 + tm[:, :, None] * g[None, None, c0:c0 + 32]  # [G, bins, codes]
        cost = (n[:, :, None] * (0.5 * np.log2(rsq) - 1.0 / (2.0 * math.log(2.0)))
                + (n + s)[:, :, None] / rsq / (2.0 * math.log(2.0))).sum(axis=1)
        arg = cost.argmin(axis=1)
        low = cost[np.arange(grid.size), arg]
        better = low < best_cost
        best, best_cost = np.where(better, arg + c0, best), np.where(better, low, best_cost)
    return best.astype(np.uint8).tobytes()


def encode_step(delta: np.ndarray, mu_p: torch.Tensor, sigma_q: float, shape: np.ndarray, basis: SpectralBasis,
                key: tuple[int, int], step: int, chunk_bits: int, margin: int, device: torch.device | str = "cpu",
                order: tuple[np.ndarray, np.ndarray] | None = None) -> pfr.PfrStep:
    """Send x ~ N(mu_p + sigma_q delta, sigma_q^2) ([C, H, W]) in the spectral layout (``shape``:
    :func:`step_shape`)."""
    pfr.check_params(chunk_bits, margin)
    grid = basis.grid
    u = basis.forward(delta)
    codes = fit_gains(u * u, shape, grid)
    plan = pfr.make_rate_plan(widths(codes, shape, grid), grid, key, chunk_bits, order)
    coded = pfr.code_chunks(u.reshape(-1)[plan.order], plan, key, step, chunk_bits, margin, device)
    x = _sample(plan, pfr.regenerate(key, step, plan, coded.nstar, device), mu_p, sigma_q, basis)
    return pfr.PfrStep(codes, coded.offset_code, coded.std_code, coded.stream, coded.raw, x, coded.stats)


def decode_step(payload: pfr.PfrPayload, mu_p: torch.Tensor, sigma_q: float, shape: np.ndarray,
                basis: SpectralBasis, key: tuple[int, int], step: int, device: torch.device | str = "cpu",
                order: tuple[np.ndarray, np.ndarray] | None = None) -> torch.Tensor:
    """The receiver's x ([C, H, W], float64) from one spectral step's data."""
    p, grid = payload, basis.grid
    plan = pfr.make_rate_plan(widths(p.kappa_codes, shape, grid), grid, key, p.chunk_bits, order)
    nstar = pfr.decode_indices(p.stream, p.raw, plan, p.offset_code, p.std_code,
                               pfr.index_range(p.chunk_bits, p.margin))
    return _sample(plan, pfr.regenerate(key, step, plan, nstar, device), mu_p, sigma_q, basis)


def _sample(plan: pfr.Plan, z: torch.Tensor, mu_p: torch.Tensor, sigma_q: float, basis: SpectralBasis) -> torch.Tensor:
    """x = mu_p + sigma_q B(IDCT(r z))."""
    v = basis.inverse(pfr.scaled_candidates(plan, z).reshape(basis.grid.c, basis.grid.h, basis.grid.w))
    v *= sigma_q
    return mu_p.cpu().to(torch.float64) + torch.from_numpy(v).reshape(mu_p.shape)
