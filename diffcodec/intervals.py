"""What the decoder knows of each pixel: an interval of levels, and beliefs over levels.

Pixels take 256 levels v = 0 .. 255 (value v / 127.5 - 1).  A universal-quantization step
tells the receiver that every pixel lies in a known interval of levels (the step's *box*:
the dithered quantizer's cell, mapped back through the posterior mean, which is affine in
x_0); the intersection of all boxes so far is the pixel's feasible interval [lo, hi].  The
coders give every step's symbols, and the final step's levels, the probability that a
Gaussian *belief* N(m, s^2) over levels (mean from the network, width from side
information) gives them *restricted to the feasible interval*, so no probability is spent
on levels the receiver has already ruled out.  Without that restriction each universally
quantized step costs ~0.25 bits/dim over its KL (a uniform box coded under a Gaussian); with
it the final step recovers most of it (README, "How a step is coded").

Level masses use a discretized Gaussian with the edge levels 0 and 255 open to -inf / +inf,
computed from the upper tail where that is more precise, in float64.
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtr as _ndtr  # erfc-based: accurate deep into the lower tail

from .sideinfo import SCALE, TileGrid, fit_tile_codes

NUM_LEVELS = 256
MAX_LEVEL = NUM_LEVELS - 1
BLOCK = 1 << 20  # dimensions per block of the quantizer's element-wise work


def level_value(v: np.ndarray) -> np.ndarray:
    """Levels as values on [-1, 1]."""
    return np.asarray(v, dtype=np.float64) / 127.5 - 1.0


def value_level(x: np.ndarray) -> np.ndarray:
    """Values on [-1, 1] as (fractional) levels."""
    return (np.asarray(x, dtype=np.float64) + 1.0) * 127.5


MASS_BLOCK = 1 << 16  # elements per block of elementwise_in_blocks: temporaries stay in cache (~3x faster)


def level_mass(a: np.ndarray, b: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Belief mass of the levels a .. b (inclusive, a <= b) under N(mean, std^2) in level
    units, the bins [v - 1/2, v + 1/2] with the edges of level 0 and level 255 open.

    The arguments broadcast; large inputs are evaluated in blocks of rows (element-wise, so
    the result does not depend on the blocking)."""
    return elementwise_in_blocks(_level_mass, np.asarray(a), np.asarray(b), np.asarray(mean, dtype=np.float64),
                                 np.asarray(std, dtype=np.float64))


def elementwise_in_blocks(fn, *args: np.ndarray) -> np.ndarray:
    """``fn(*args)`` for an element-wise float64 ``fn`` of broadcasting arrays, evaluated in
    blocks of about :data:`MASS_BLOCK` elements (rows, or rows of rows for [C, H, W] inputs):
    the same floats, with temporaries that stay in cache and never image-sized."""
    shape = np.broadcast_shapes(*(x.shape for x in args))
    size = int(np.prod(shape))
    if not shape or size <= MASS_BLOCK:
        return fn(*args)
    split = [x.ndim == len(shape) and x.shape[0] == shape[0] for x in args]
    out = np.empty(shape)
    row = size // shape[0]
    if row > MASS_BLOCK:  # a row is itself large ([C, H, W]): one row at a time, blocked within
        for r in range(shape[0]):
            out[r] = elementwise_in_blocks(fn, *(x[r] if cut else x[0] if x.ndim == len(shape) else x
                                                 for x, cut in zip(args, split)))
        return out
    rows = MASS_BLOCK // row
    for r in range(0, shape[0], rows):
        sl = slice(r, r + rows)
        out[sl] = fn(*(x[sl] if cut else x for x, cut in zip(args, split)))
    return out


def _level_mass(a: np.ndarray, b: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    lo = (a.astype(np.float64) - 0.5 - mean) / std
    hi = (b.astype(np.float64) + 0.5 - mean) / std
    return normal_mass(np.where(a <= 0, -np.inf, lo), np.where(b >= MAX_LEVEL, np.inf, hi))


def normal_mass(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Phi(hi) - Phi(lo) of standardized bounds lo <= hi, taken from the upper tail where both
    lie in it (Phi(-lo) - Phi(-hi) loses nothing there); the arguments are chosen before
    ndtr, so it is evaluated twice per element, not four times."""
    upper = lo > 0
    return _ndtr(np.where(upper, -lo, hi)) - _ndtr(np.where(upper, -hi, lo))


class Intervals:
    """Feasible levels [lo, hi] of every dimension (flat int16 arrays)."""

    def __init__(self, n: int, lo: np.ndarray | None = None, hi: np.ndarray | None = None) -> None:
        self.lo = np.zeros(n, dtype=np.int16) if lo is None else np.asarray(lo, dtype=np.int16)
        self.hi = np.full(n, MAX_LEVEL, dtype=np.int16) if hi is None else np.asarray(hi, dtype=np.int16)

    def copy(self) -> "Intervals":
        return Intervals(len(self.lo), self.lo.copy(), self.hi.copy())

    @property
    def widths(self) -> np.ndarray:
        return self.hi.astype(np.int64) - self.lo + 1

    def mean_log2_width(self) -> float:
        """Mean log2 of the number of feasible levels: what is left to send, if uniform."""
        return float(np.log2(self.widths).mean())


class Quantizer:
    """The cells of one universal-quantization step in level units.

    With x_s = mu_p + Delta (k + u), mu_q = c1 x_0 + c2 x_t and mu_p = c1 x0hat + c2 x_t, the
    symbol of level v is k(v) = floor(a (v - m) - u + 1/2), a = c1 / (127.5 Delta), m the
    network's x0hat in levels.  Cell k holds the levels v >= first(k) and < first(k + 1) with
    first(k) = ceil(m + (k + u - 1/2) / a): both sides evaluate exactly this expression, so the
    cells are consistent whatever the rounding of the real-valued boundary."""

    def __init__(self, a: float, m: np.ndarray, u: np.ndarray) -> None:
        if not a > 0:
            raise ValueError("quantizer slope must be positive")
        self.a, self.m, self.u = float(a), np.asarray(m, dtype=np.float64), np.asarray(u, dtype=np.float64)

    def first(self, k: np.ndarray, idx: np.ndarray | slice = slice(None)) -> np.ndarray:
        """First level of cell k (may lie outside 0 .. 255); ``k`` is [n] or [n, w] for the
        dimensions ``idx``."""
        k = np.asarray(k, dtype=np.float64)
        m, u = self.m[idx], self.u[idx]
        if k.ndim == 2:
            m, u = m[:, None], u[:, None]
        f = np.ceil(m + (k + u - 0.5) / self.a)
        return np.clip(f, -1e9, 1e9).astype(np.int64)

    def symbol(self, v: np.ndarray, idx: slice = slice(None)) -> np.ndarray:
        """k (int32) with first(k) <= v < first(k + 1), for the dimensions ``idx`` (a slice),
        computed in blocks so that the temporaries stay small whatever the image."""
        v = np.asarray(v)
        start, stop, _ = idx.indices(len(self.m))
        out = np.empty(stop - start, dtype=np.int32)
        for a in range(0, stop - start, BLOCK):
            b = min(a + BLOCK, stop - start)
            sl = slice(start + a, start + b)
            vb = v[a:b].astype(np.int64)
            k = np.floor(self.a * (vb - self.m[sl]) - self.u[sl] + 0.5).astype(np.int64)
            for _ in range(2):  # the float guess is off by at most one near a boundary
                k = np.where(self.first(k, sl) > vb, k - 1, k)
                k = np.where(self.first(k + 1, sl) <= vb, k + 1, k)
            out[a:b] = k
        return out

    def cells(self, k: np.ndarray, ints: "Intervals") -> "Intervals":
        """The feasible intervals after symbols ``k``: each cell within the old interval."""
        lo, hi = np.empty_like(ints.lo), np.empty_like(ints.hi)
        for a in range(0, len(k), BLOCK):
            sl = slice(a, min(a + BLOCK, len(k)))
            lo[sl] = np.maximum(self.first(k[sl], sl), ints.lo[sl])
            hi[sl] = np.minimum(self.first(k[sl].astype(np.int64) + 1, sl) - 1, ints.hi[sl])
        return Intervals(len(k), lo, hi)


def restricted_cost(cell_lo: np.ndarray, cell_hi: np.ndarray, lo: np.ndarray, hi: np.ndarray, mean: np.ndarray,
                    std: np.ndarray, floor: float = 1e-300) -> np.ndarray:
    """-log2 of the probability that the belief N(mean, std^2), restricted to the feasible levels
    [lo, hi], gives the cell [cell_lo, cell_hi] (a UQ step's symbol, or a single level)."""
    def cost(cell_lo, cell_hi, lo, hi, mean, std):
        p = _level_mass(cell_lo, cell_hi, mean, std) / np.maximum(_level_mass(lo, hi, mean, std), 1e-300)
        return -np.log2(np.clip(p, floor, 1.0))

    return elementwise_in_blocks(cost, *(np.asarray(x) for x in (cell_lo, cell_hi, lo, hi)),
                                 np.asarray(mean, dtype=np.float64), np.asarray(std, dtype=np.float64))


MIN_START_STD = 0.3  # levels: where a tile's belief width search starts at the least


def fit_belief_widths(grid: TileGrid, v: np.ndarray, mean: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                      cell_lo: np.ndarray, cell_hi: np.ndarray) -> bytes:
    """Per-tile, per-channel width codes (:data:`diffcodec.sideinfo.SCALE`) minimising the real
    cost of the cells (:func:`restricted_cost`); all arrays [C, H, W] on ``grid``, ``v`` the
    true levels (their spread around ``mean`` is where the search starts)."""
    def cost(codes: np.ndarray, where: tuple) -> np.ndarray:
        return restricted_cost(cell_lo[where], cell_hi[where], lo[where], hi[where], mean[where], SCALE.value(codes))

    sq = v - mean  # a new float array: squared in place (the same floats as ** 2)
    sq *= sq
    rms = np.sqrt(grid.tile_means(sq))
    del sq  # image-sized: gone before the search
    return fit_tile_codes(grid, SCALE.code(np.maximum(rms, MIN_START_STD)), cost)
