"""Latent step by universal (dithered) quantization, coded consistently with what is known.

The step sends x_s = mu_q + (uniform noise of the posterior's variance): step Delta =
sqrt(12) lambda, a dither u ~ U(-1/2, 1/2) from the shared seed, symbol k = round((mu_q -
mu_p) / Delta - u), receiver x_s = mu_p + Delta (k + u).  Because mu_q = coef1 x_0 + coef2 x_t is
affine in x_0, the symbol of every dimension is a function of its pixel level, k(v), whose
cells are intervals of levels (:class:`diffcodec.intervals.Quantizer`).  So:

* only the symbols whose cells meet the pixel's feasible interval [lo, hi] can occur: the
  alphabet of a dimension is k(lo) .. k(hi), often one or two symbols at high noise;
* each is coded with the probability that the belief N(mean, s^2) over levels (mean = the
  network's x_0 estimate m, s per tile and channel as side information) gives its cell within
  [lo, hi];
* after the step the pixel's feasible interval is its symbol's cell within [lo, hi], and the
  next steps (and the final step) code under beliefs restricted to it.

Five layouts, the encoder keeps the shortest:

* **plain** (chunk kind UQ): every channel's belief centred on m, one stream;
* **channel-predicted** (kind UQ_PRED): channels in order, each belief mean shifted by the
  residuals the receiver estimates for the channels before it (:mod:`diffcodec.coders.chanpred`);
* **context** (kind UQ_CTX): the channel-predicted layout over a checkerboard's anchors, then the
  other pixels predicted from their anchors too (:mod:`diffcodec.coders.spatial`);
* **texture** (kind UQ_TEX, format version 6): the context layout with every width scaled by its
  pixel's class of activity (:mod:`diffcodec.coders.texture`);
* **neighbourhood** (kind UQ_NBR, format version 7): the texture layout's widths over four passes,
  the 2 x 2 phases, each predicted from all three channels' decoded neighbours
  (:mod:`diffcodec.coders.spatial`).  The checkerboard layouts (context, texture) are fitted only
  on images of up to 128 x 128 pixels (:data:`diffcodec.coders.spatial.CHECKERBOARD_UP_TO`).

Plain universal quantization pays ~0.25 bits/dim over the step's KL at high KL (a uniform
cell coded under a Gaussian); restricted beliefs recover it in the final step.

Payloads (format versions 5-7; S = tiles x 3 channels, P = 3 x tiles; the side information
bit-packed, :mod:`diffcodec.coders.chanpred`)::

    plain:      S widths s = 2 ** ((code - 160) / 8) levels (tile x channel)
                | range-coded k - k(lo) of every dimension in C, H, W order (Categorical tables)
    predicted:  S widths, P predictor codes (a, b, c per tile)
                | one range-coded stream: k - k(lo) of channel 0, then 1, then 2
    context:    S widths, P predictor codes, 6-byte spatial block
                | one range-coded stream: k - k(lo) of the six passes in order (pixels in
                raster order within a pass)
    texture:    S widths, P predictor codes, 6-byte spatial block, 24-byte texture block
                | one range-coded stream, as the context layout's
    neighbours: S widths, P predictor codes, 63-byte spatial block, 24-byte texture block
                | one range-coded stream: k - k(lo) of the twelve passes in order (version 7)

Versions 2-4 sent the side information as bytes after u32 counts and gave each channel (pass)
its own stream after its u32 length.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..entropy import PassStreams, code_passes, table_chunks
from ..errors import FormatError
from ..intervals import Intervals, Quantizer, fit_belief_widths, level_mass, restricted_cost
from ..kinds import ChunkKind
from ..sideinfo import SCALE, TileGrid
from .base import EncodeTarget, StepContext, StepOutput
from . import spatial
from .chanpred import (Layout, Payload, coefficients, fit_coefficients, interval_residual, join_payload, predicted_mean,
                       split_payload)

#: Each kind's payload layout.
LAYOUTS = {ChunkKind.UQ: Layout.PLAIN, ChunkKind.UQ_PRED: Layout.PREDICTED, ChunkKind.UQ_CTX: Layout.CONTEXT,
           ChunkKind.UQ_TEX: Layout.TEXTURE, ChunkKind.UQ_NBR: Layout.NEIGHBOURS}
KINDS = {layout: kind for kind, layout in LAYOUTS.items()}

def symbol_tables(q: Quantizer, k_lo: np.ndarray, alphabet: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                  mean: np.ndarray, std: np.ndarray, dims: slice):
    """Yield the probability table of each run of the dimensions ``dims`` (see
    :func:`table_chunks`): row i, column c is the belief N(mean, std) mass of cell k(lo) + c
    within [lo, hi].  ``mean``/``std`` are indexed relative to ``dims``; the rest absolutely."""
    offset = dims.start
    for start, end, width in table_chunks(alphabet[dims]):
        idx = slice(offset + start, offset + end)
        k = k_lo[idx, None] + np.arange(width + 1)[None]
        first = q.first(k, idx)
        lo_i, hi_i = lo[idx, None].astype(np.int64), hi[idx, None].astype(np.int64)
        a = np.maximum(first[:, :-1], lo_i)
        b = np.minimum(first[:, 1:] - 1, hi_i)
        valid = (np.arange(width)[None] < alphabet[idx, None]) & (a <= b)
        mass = level_mass(np.where(valid, a, 0), np.where(valid, b, 0), mean[start:end][:, None], std[start:end][:, None])
        yield np.where(valid, mass, 0.0)


def _pass_tables(q: Quantizer, k_lo: np.ndarray, alphabet: np.ndarray, ints: Intervals, dims: np.ndarray,
                 mean: np.ndarray, std: np.ndarray):
    """The quantizer of the dimensions ``dims`` (an index array: one pass of the context layout)
    and their probability tables (:func:`symbol_tables`; ``mean``/``std`` of those dimensions)."""
    sub = Quantizer(q.a, q.m[dims], q.u[dims])
    return sub, symbol_tables(sub, k_lo[dims], alphabet[dims], ints.lo[dims], ints.hi[dims], mean, std,
                              slice(0, len(dims)))


class UqCoder:
    kind = ChunkKind.UQ
    needs_latent = False

    @staticmethod
    def _setup(ctx: StepContext):
        c1, _, lam2 = ctx.coefs
        delta = math.sqrt(12.0 * lam2)
        q = Quantizer(c1 / (127.5 * delta), ctx.xstart_levels, ctx.chain.dither(ctx.index))
        ints = ctx.intervals
        k_lo = q.symbol(ints.lo)
        alphabet = q.symbol(ints.hi)
        alphabet -= k_lo - 1  # k(hi) - k(lo) + 1, in place
        return delta, q, k_lo, alphabet

    @staticmethod
    def _next_x(ctx: StepContext, delta: float, q: Quantizer, k: np.ndarray) -> torch.Tensor:
        # mean + delta (k + u), made in one image-sized buffer (the same floats)
        shift = k.astype(np.float64)
        shift += q.u
        shift *= delta
        out = torch.from_numpy(shift.reshape(ctx.chain.shape))
        out += ctx.pred["mean"].double()
        return out


    def encode(self, ctx: StepContext, target: EncodeTarget) -> StepOutput:
        """All layouts' widths (and predictors) are fitted, their sizes estimated from the real
        -log2 p of the symbols (within a word of the range coder's), and only the smaller one
        is range-coded."""
        delta, q, k_lo, alphabet = self._setup(ctx)
        v = target.flat_levels
        ints = ctx.intervals
        k = q.symbol(v)
        new = q.cells(k, ints)
        grid = ctx.chain.grid
        shape = (grid.c, grid.h, grid.w)
        lo, hi, nlo, nhi, m, vv = (a.reshape(shape) for a in (ints.lo, ints.hi, new.lo, new.hi, q.m, v))
        n = grid.h * grid.w

        def bits(mean: np.ndarray, std: np.ndarray, c: int) -> float:  # at the coder's 24-bit floor
            return float(restricted_cost(nlo[c], nhi[c], lo[c], hi[c], mean, std, 2.0**-24).sum())

        # Memory: every per-pixel float map below is made for one channel at a time, and remade
        # rather than kept (an image's would take 8 bytes a dimension each); the floats are
        # those of the whole-image formulas.
        # plain: every channel under m, one stream
        codes = fit_belief_widths(grid, vv, m, lo, hi, nlo, nhi)
        plain_bits = sum(bits(m[c], grid.channel_values(codes, SCALE, c), c) for c in range(3))
        # channel-predicted: channels in order, means shifted by the residuals estimated before them
        g1 = TileGrid(1, grid.h, grid.w, grid.tile)
        # the residual estimates are float32 on both sides (the decoder's means must be the same bits)
        width_codes, resid = [], np.zeros(shape, dtype=np.float32)
        pred_codes, pred_bits = b"", 0.0
        targets = [None, vv[1] - m[1], vv[2] - m[2]]  # what channels 1 and 2 are predicted from

        def channel_mean(c: int) -> np.ndarray:
            return m[0] if c == 0 else predicted_mean(m, resid, coefficients(pred_codes, grid), c)

        for c in range(3):
            if c == 1:  # a needs channel 0's estimated residual; (b, c) are refitted below
                pred_codes = fit_coefficients(targets, resid, grid)
            mean_c = channel_mean(c)
            wc = fit_belief_widths(g1, vv[c:c + 1], mean_c[None], lo[c:c + 1], hi[c:c + 1], nlo[c:c + 1],
                                   nhi[c:c + 1])
            width_codes.append(wc)
            std_c = g1.channel_values(wc, SCALE, 0)
            pred_bits += bits(mean_c, std_c, c)
            resid[c] = interval_residual(nlo[c], nhi[c], mean_c, std_c, m[c])
            if c == 1:
                pred_codes = fit_coefficients(targets, resid, grid)
        del targets
        # the context layout (checkerboard) starts from the channel predictor just fitted
        cells = spatial.Cells(m, vv, lo, hi, nlo, nhi)

        def residual(c, sel, mean, std):
            return interval_residual(nlo[c][sel], nhi[c][sel], mean, std, m[c][sel])

        fits = {KINDS[layout]: fit for layout, fit in
                spatial.fit_layouts(grid, cells, pred_codes, residual, target.every_layout).items()}
        symbol_bits = {ChunkKind.UQ: plain_bits, ChunkKind.UQ_PRED: pred_bits,
                       **{kind: fit.bits for kind, fit in fits.items()}}
        totals = spatial.layout_totals(symbol_bits, LAYOUTS, pred_codes, fits)
        kind = min(totals, key=totals.get)

        def runs(mean: np.ndarray, std_: np.ndarray, dims: slice):
            """(symbols k - k(lo), table) of each run of ``dims``."""
            tables = symbol_tables(q, k_lo, alphabet, ints.lo, ints.hi, mean, std_, dims)
            first = dims.start
            for (a, b, _), t in zip(table_chunks(alphabet[dims]), tables):
                yield k[first + a:first + b] - k_lo[first + a:first + b], t

        if kind in fits:
            fit = fits[kind]
            stream = self._context_stream(q, k, k_lo, alphabet, ints, m, fit.known, fit.payload, grid, fit.classes,
                                          fit.scheme)
            payload = join_payload(fit.widths, stream, pred_codes, fit.block, fit.texture)
        elif kind == ChunkKind.UQ_PRED:
            # the refit left a unchanged (it reads only channel 0's residual), so channel 1's mean
            # under the final codes is the one its residual was estimated with
            stream = code_passes(runs(channel_mean(c).reshape(-1), g1.channel_values(width_codes[c], SCALE, 0).reshape(-1),
                                      slice(c * n, (c + 1) * n)) for c in range(3))
            payload = join_payload(b"".join(width_codes), stream, pred_codes)
        else:
            stream = code_passes([runs(q.m, grid.flat_values(codes, SCALE), slice(0, len(v)))])
            payload = join_payload(codes, stream)
        coded = 8 * len(stream)
        stats = {"kind": kind, "plain_symbol_bits": plain_bits, "predicted_symbol_bits": pred_bits,
                 **{f"{LAYOUTS[k].name.lower()}_symbol_bits": fit.bits for k, fit in fits.items()},
                 "layout_bits": totals,
                 "mean_alphabet": float(alphabet.mean()), "mean_log2_width": new.mean_log2_width()}
        del k_lo, alphabet, resid, fits, cells  # image-sized: gone before the next latent is made
        return StepOutput(payload, new, x=self._next_x(ctx, delta, q, k), coded_bits=coded, stats=stats)

    @staticmethod
    def _context_stream(q: Quantizer, k, k_lo, alphabet, ints: Intervals, m, known: spatial.Known, fields: Payload,
                        grid: TileGrid, classes: np.ndarray | None, scheme: spatial.Scheme) -> bytes:
        """A context layout's stream, its passes in order (``known`` as the fit left it: every
        pass's values; ``classes`` the texture fit's class map)."""

        def passes():
            for step, mean, std in spatial.context_beliefs(m.reshape(known.resid.shape), known, fields, grid, classes,
                                                           scheme):
                d = step.dims
                _, tables = _pass_tables(q, k_lo, alphabet, ints, d, mean, std)
                sym = k[d] - k_lo[d]
                yield ((sym[a:b], t) for (a, b, _), t in zip(table_chunks(alphabet[d]), tables))

        return code_passes(passes())

    @staticmethod
    def _decode_context(q: Quantizer, k_lo, alphabet, ints: Intervals, fields: Payload, grid: TileGrid,
                        layout: Layout) -> np.ndarray:
        """The symbols k - k(lo) of a context-layout payload."""
        m = q.m.reshape(grid.c, grid.h, grid.w)
        known = spatial.Known.zeros(m.shape)
        symbols = np.empty(len(k_lo), dtype=np.int32)
        scheme = spatial.scheme_for(layout)
        streams = PassStreams(fields.streams, scheme.passes * grid.c)
        for step, mean, std in spatial.context_beliefs(m, known, fields, grid, scheme=scheme):
            d = step.dims
            sub, tables = _pass_tables(q, k_lo, alphabet, ints, d, mean, std)
            sym = streams.decode(tables)
            if len(sym) != len(d) or (sym >= alphabet[d]).any():
                raise FormatError("UQ step decodes to symbols outside their cells: the stream is corrupt")
            symbols[d] = sym
            cell = sub.cells(k_lo[d] + sym, Intervals(len(d), ints.lo[d], ints.hi[d]))
            mc = m[step.c][step.sel]
            known.fill(step, interval_residual(cell.lo, cell.hi, mean, std, mc), cell.lo, cell.hi, mc)
        streams.finish()
        return symbols

    @staticmethod
    def split(payload: bytes, grid: TileGrid, kind: ChunkKind = ChunkKind.UQ, compact: bool = True) -> Payload:
        """The payload's fields, checked against the tile grid."""
        return split_payload(payload, grid.size, LAYOUTS[kind], "UQ step", compact)

    def check(self, payload: bytes, header, kind: ChunkKind = ChunkKind.UQ) -> None:
        self.split(payload, TileGrid(3, header.height, header.width, header.tile), kind, header.compact)

    def decode(self, ctx: StepContext, payload: bytes, kind: ChunkKind = ChunkKind.UQ) -> StepOutput:
        grid = ctx.chain.grid
        fields = self.split(payload, grid, kind, ctx.chain.header.compact)
        codes, pred_codes, streams = fields.widths, fields.predictors, fields.streams
        delta, q, k_lo, alphabet = self._setup(ctx)
        ints = ctx.intervals
        if LAYOUTS[kind] >= Layout.CONTEXT:
            symbols = self._decode_context(q, k_lo, alphabet, ints, fields, grid, LAYOUTS[kind])
        elif kind == ChunkKind.UQ:
            plain = PassStreams(streams, 1)
            symbols = plain.decode(symbol_tables(q, k_lo, alphabet, ints.lo, ints.hi, q.m,
                                                 grid.flat_values(codes, SCALE), slice(0, len(k_lo))))
            plain.finish()
        else:
            channels = PassStreams(streams, 3)
            n = grid.h * grid.w
            m = q.m.reshape(grid.c, grid.h, grid.w)
            coef = coefficients(pred_codes, grid)
            resid = np.zeros((grid.c, grid.h, grid.w), dtype=np.float32)
            symbols = np.empty(len(k_lo), dtype=np.int32)
            for c in range(3):
                dims = slice(c * n, (c + 1) * n)
                mean_c = predicted_mean(m, resid, coef, c).reshape(-1)
                std_c = grid.channel_values(codes, SCALE, c).reshape(-1)
                sym = channels.decode(symbol_tables(q, k_lo, alphabet, ints.lo, ints.hi, mean_c, std_c, dims))
                if len(sym) != n or (sym >= alphabet[dims]).any():
                    raise FormatError("UQ step decodes to symbols outside their cells: the stream is corrupt")
                symbols[dims] = sym
                if c == 2:
                    channels.finish()
                    break  # no channel is predicted from channel 2
                kc = k_lo[dims] + sym
                clo = np.maximum(q.first(kc, dims), ints.lo[dims])
                chi = np.minimum(q.first(kc.astype(np.int64) + 1, dims) - 1, ints.hi[dims])
                resid[c] = interval_residual(clo, chi, mean_c, std_c, q.m[dims]).reshape(grid.h, grid.w)
        if len(symbols) != len(k_lo) or (symbols >= alphabet).any():
            raise FormatError("UQ step decodes to symbols outside their cells: the stream is corrupt")
        k = k_lo + symbols
        del symbols, k_lo, alphabet  # image-sized: gone before the next latent is made
        new = q.cells(k, ints)
        if (new.lo > new.hi).any():
            raise FormatError("UQ step leaves a pixel with no feasible level: the stream is corrupt")
        return StepOutput(payload, new, x=self._next_x(ctx, delta, q, k), coded_bits=8 * sum(len(s) for s in streams))
