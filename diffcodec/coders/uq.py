"""Latent step by universal (dithered) quantization, coded consistently with what is known.

The step sends x_s = mu_q + (uniform noise of the posterior's variance): step Delta =
sqrt(12) lambda, a dither u ~ U(-1/2, 1/2) from the shared seed, symbol k = round((mu_q -
mu_p) / Delta - u), receiver x_s = mu_p + Delta (k + u).  Because mu_q = coef1 x_0 + coef2 x_t is
affine in x_0, the symbol of every dimension is a function of its pixel level, k(v), whose
cells are intervals of levels (:class:`diffcodec.intervals.Quantizer`).  So:

* only the symbols whose cells meet the pixel's feasible interval [lo, hi] can occur: the
  alphabet of a dimension is k(lo) .. k(hi), often one or two symbols at high noise;
* each is coded with the probability that the belief N(m, s^2) over levels (m = the network's
  x_0 estimate, s per tile and channel as side information) gives its cell within [lo, hi];
* after the step the pixel's feasible interval is its symbol's cell within [lo, hi], and the
  next steps (and the final step) code under beliefs restricted to it.

Plain universal quantization pays ~0.25 bits/dim over the step's KL at high KL (a uniform
cell coded under a Gaussian); restricted beliefs recover most of it in the following steps.

Payload::

    u32 S, then S x u8     belief widths, one per tile and channel: s = 2 ** ((code - 160) / 8) levels
    rest                   range-coded symbols k - k(lo), every dimension in C, H, W order,
                           under Categorical tables (multiple of 4 bytes)
"""

from __future__ import annotations

import math
import struct

import numpy as np
import torch

from ..entropy import decode_tables, encode_tables, table_chunks
from ..errors import FormatError
from ..intervals import Intervals, Quantizer, level_mass
from ..kinds import ChunkKind
from ..sideinfo import SCALE, TileGrid, fit_tile_codes
from .base import EncodeTarget, StepContext, StepOutput

MIN_START_STD = 0.3  # levels: where a tile's belief width search starts at the least


def symbol_tables(q: Quantizer, k_lo: np.ndarray, alphabet: np.ndarray, ints: Intervals, std: np.ndarray):
    """Yield the probability table of each run of dimensions (see :func:`table_chunks`):
    row i, column c is the belief mass of cell k(lo) + c within [lo, hi]."""
    for start, end, width in table_chunks(alphabet):
        idx = slice(start, end)
        k = k_lo[idx, None] + np.arange(width + 1)[None]
        first = q.first(k, idx)
        lo, hi = ints.lo[idx, None].astype(np.int64), ints.hi[idx, None].astype(np.int64)
        a = np.maximum(first[:, :-1], lo)
        b = np.minimum(first[:, 1:] - 1, hi)
        valid = (np.arange(width)[None] < alphabet[idx, None]) & (a <= b)
        mass = level_mass(np.where(valid, a, 0), np.where(valid, b, 0), q.m[idx, None], std[idx, None])
        yield np.where(valid, mass, 0.0)


class UqCoder:
    kind = ChunkKind.UQ

    @staticmethod
    def _setup(ctx: StepContext):
        c1, _, lam2 = ctx.coefs
        delta = math.sqrt(12.0 * lam2)
        q = Quantizer(c1 / (127.5 * delta), ctx.xstart_levels, ctx.chain.dither(ctx.index))
        ints = ctx.intervals
        k_lo, k_hi = q.symbol(ints.lo), q.symbol(ints.hi)
        return delta, q, k_lo, k_hi - k_lo + 1

    @staticmethod
    def _next_x(ctx: StepContext, delta: float, q: Quantizer, k: np.ndarray) -> torch.Tensor:
        shift = torch.from_numpy((k.astype(np.float64) + q.u).reshape(ctx.x.shape))
        return ctx.pred["mean"].double() + delta * shift

    def encode(self, ctx: StepContext, target: EncodeTarget) -> StepOutput:
        delta, q, k_lo, alphabet = self._setup(ctx)
        v = target.flat_levels
        ints = ctx.intervals
        k = q.symbol(v)
        new = Intervals(len(v), np.maximum(q.first(k), ints.lo), np.minimum(q.first(k + 1) - 1, ints.hi))
        grid = ctx.chain.grid
        shape = (grid.c, grid.h, grid.w)
        lo, hi, nlo, nhi, m = (a.reshape(shape) for a in (ints.lo, ints.hi, new.lo, new.hi, q.m))

        def cost(codes: np.ndarray) -> np.ndarray:
            std = SCALE.value(codes)
            p = level_mass(nlo, nhi, m, std) / np.maximum(level_mass(lo, hi, m, std), 1e-300)
            return -np.log2(np.clip(p, 1e-300, 1.0))

        rms = np.sqrt(grid.tile_means((v.reshape(shape) - m) ** 2))
        codes = fit_tile_codes(grid, SCALE.code(np.maximum(rms, MIN_START_STD)), cost)
        std = SCALE.value(grid.expand(np.frombuffer(codes, dtype=np.uint8))).reshape(-1)
        symbols = k - k_lo
        tables = symbol_tables(q, k_lo, alphabet, ints, std)
        chunks = ((symbols[s:e], t) for (s, e, _), t in zip(table_chunks(alphabet), tables))
        stream = encode_tables(chunks)
        payload = struct.pack("<I", len(codes)) + codes + stream
        stats = {"mean_alphabet": float(alphabet.mean()), "mean_log2_width": new.mean_log2_width()}
        return StepOutput(payload, new, x=self._next_x(ctx, delta, q, k), coded_bits=8 * len(stream), stats=stats)

    @staticmethod
    def split(payload: bytes, grid: TileGrid) -> tuple[bytes, bytes]:
        """(width codes, stream) of a payload, checked against the image's tile grid."""
        if len(payload) < 4:
            raise FormatError("UQ step payload too short")
        (n,) = struct.unpack_from("<I", payload)
        if n != grid.size or len(payload) < 4 + n:
            raise FormatError("UQ step has the wrong amount of side information")
        if (len(payload) - 4 - n) % 4:
            raise FormatError("UQ step stream is not a whole number of words")
        return payload[4:4 + n], payload[4 + n:]

    def check(self, payload: bytes, header) -> None:
        self.split(payload, TileGrid(3, header.height, header.width, header.tile))

    def decode(self, ctx: StepContext, payload: bytes) -> StepOutput:
        grid = ctx.chain.grid
        codes, stream = self.split(payload, grid)
        delta, q, k_lo, alphabet = self._setup(ctx)
        std = SCALE.value(grid.expand(np.frombuffer(codes, dtype=np.uint8))).reshape(-1)
        symbols = decode_tables(stream, symbol_tables(q, k_lo, alphabet, ctx.intervals, std))
        if len(symbols) != len(k_lo) or (symbols >= alphabet).any():
            raise FormatError("UQ step decodes to symbols outside their cells: the stream is corrupt")
        k = k_lo + symbols
        ints = ctx.intervals
        new = Intervals(len(k), np.maximum(q.first(k), ints.lo), np.minimum(q.first(k + 1) - 1, ints.hi))
        if (new.lo > new.hi).any():
            raise FormatError("UQ step leaves a pixel with no feasible level: the stream is corrupt")
        return StepOutput(payload, new, x=self._next_x(ctx, delta, q, k), coded_bits=8 * len(stream))
