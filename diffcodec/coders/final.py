"""The final step: x_0 (256 levels per channel) coded exactly under the model's x_0 estimate.

Each pixel level v is coded with the probability a belief N(m, s^2) over levels gives it
among the pixel's feasible levels [lo, hi] (what the universal-quantization steps left, see
:mod:`diffcodec.intervals`): m is the network's prediction of x_0 from the last latent, s is
side information per tile and channel.  Five layouts:

* **plain** (chunk kind FINAL): every channel under its own mean m_c, one stream;
* **channel-predicted** (kind FINAL_PRED, RGB only): channel 1 is coded with mean m_1 + a e_0
  and channel 2 with m_2 + b e_0 + c e_1, e_c = v_c - m_c (:mod:`diffcodec.coders.chanpred`);
  one stream per channel, decoded in order so e_0 and e_1 are known when needed;
* **context** (kind FINAL_CTX, RGB only): the channel-predicted layout over a checkerboard's
  anchors, then the other pixels predicted from their anchors too (:mod:`diffcodec.coders.spatial`);
* **texture** (kind FINAL_TEX, RGB only, format version 6): the context layout with every width
  scaled by its pixel's class of activity (:mod:`diffcodec.coders.texture`);
* **neighbourhood** (kind FINAL_NBR, RGB only, format version 7): the texture layout's widths over
  four passes, the 2 x 2 phases, each predicted from all three channels' decoded neighbours
  (:mod:`diffcodec.coders.spatial`; the checkerboard layouts are fitted only up to 128 x 128
  pixels).

The encoder fits them all, estimates their sizes from the levels' -log2 p (within a word of the
range coder's) and codes the smaller.  A grey image's three chain channels hold the
same level, so its one coded channel uses the mean of their estimates and the intersection of
their intervals.

Payloads (format versions 5-7; S = tiles x coded channels, P = 3 x tiles; the side information
bit-packed, :mod:`diffcodec.coders.chanpred`)::

    plain:      S widths | range-coded v - lo of every coded dimension
    predicted:  S widths, P predictor codes (a, b, c per tile)
                | one range-coded stream: v - lo of channel 0, then 1, then 2
    context:    S widths, P predictor codes, 6-byte spatial block
                | one range-coded stream: v - lo of the six passes in order (pixels in raster
                order within a pass)
    texture:    S widths, P predictor codes, 6-byte spatial block, 24-byte texture block
                | one range-coded stream, as the context layout's
    neighbours: S widths, P predictor codes, 63-byte spatial block, 24-byte texture block
                | one range-coded stream: v - lo of the twelve passes in order (version 7)

Versions 2-4 sent the side information as bytes after u32 counts and gave each channel (pass)
its own stream after its u32 length.
"""

from __future__ import annotations


import numpy as np

from ..entropy import PassStreams, code_passes, table_chunks
from ..errors import FormatError
from ..intervals import fit_belief_widths, level_mass, restricted_cost
from ..kinds import ChunkKind
from ..sideinfo import SCALE, TileGrid
from .base import EncodeTarget, StepContext, StepOutput
from . import spatial
from .chanpred import Layout, Payload, coefficients, fit_coefficients, join_payload, predicted_mean, split_payload

#: Each kind's payload layout.
LAYOUTS = {ChunkKind.FINAL: Layout.PLAIN, ChunkKind.FINAL_PRED: Layout.PREDICTED, ChunkKind.FINAL_CTX: Layout.CONTEXT,
           ChunkKind.FINAL_TEX: Layout.TEXTURE, ChunkKind.FINAL_NBR: Layout.NEIGHBOURS}
KINDS = {layout: kind for kind, layout in LAYOUTS.items()}


def level_tables(lo: np.ndarray, hi: np.ndarray, mean: np.ndarray, std: np.ndarray):
    """Yield the table of each run of dimensions: row i, column c = the belief mass of level
    lo + c (zero past hi)."""
    width = hi.astype(np.int32) - lo + 1
    for start, end, w in table_chunks(width):
        idx = slice(start, end)
        v = lo[idx, None].astype(np.int64) + np.arange(w)[None]
        valid = v <= hi[idx, None]
        mass = level_mass(np.where(valid, v, 0), np.where(valid, v, 0), mean[idx][:, None], std[idx][:, None])
        yield np.where(valid, mass, 0.0)


def _runs(symbols, lo, hi, mean, std):
    """(symbols, table) of each run of dimensions (a pass for :func:`code_passes`)."""
    width = hi.astype(np.int32) - lo + 1
    return ((symbols[s:e], t) for (s, e, _), t in zip(table_chunks(width), level_tables(lo, hi, mean, std)))


def _decode(streams: PassStreams, lo, hi, mean, std) -> np.ndarray:
    sym = streams.decode(level_tables(lo, hi, mean, std))
    if len(sym) != len(lo) or (sym > hi - lo).any():  # int32: levels and widths fit
        raise FormatError("final step decodes to levels outside their intervals: the stream is corrupt")
    return lo + sym


def _bits(v: np.ndarray, mean: np.ndarray, std: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> float:
    """-log2 of the levels' probabilities under the restricted beliefs (what the stream will take
    to within a word), at the range coder's 24-bit probability floor."""
    return float(restricted_cost(v, v, lo, hi, mean, std, 2.0**-24).sum())


def _fit_scales(grid: TileGrid, v: np.ndarray, mean: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> bytes:
    return fit_belief_widths(grid, v, mean, lo, hi, v, v)  # a level's cell is the level


class FinalCoder:
    """Both layouts; ``kind`` is decided per file by the encoder (the shorter)."""

    kind = ChunkKind.FINAL
    needs_latent = False

    @staticmethod
    def setup(ctx: StepContext, channels: int) -> tuple[TileGrid, np.ndarray, np.ndarray, np.ndarray]:
        """(grid, mean, lo, hi) of the coded channels, [C, H, W] each."""
        chain = ctx.chain
        h, w = chain.height, chain.width
        mean = ctx.xstart_levels.reshape(3, h, w)
        lo = ctx.intervals.lo.reshape(3, h, w).astype(np.int32)
        hi = ctx.intervals.hi.reshape(3, h, w).astype(np.int32)
        if channels == 1:
            mean, lo, hi = mean.mean(axis=0, keepdims=True), lo.max(axis=0, keepdims=True), hi.min(axis=0, keepdims=True)
        return TileGrid(channels, h, w, chain.header.tile), mean, lo, hi

    def encode(self, ctx: StepContext, target: EncodeTarget) -> StepOutput:
        ch = target.coded_channels
        grid, mean, lo, hi = self.setup(ctx, ch)
        v = target.levels[:ch].astype(np.int32)
        if ((v < lo) | (v > hi)).any():
            raise AssertionError("a pixel lies outside its feasible interval: the chain is inconsistent")
        # Memory: per-pixel float maps are made one channel at a time (the same floats as the
        # whole-image formulas), so the step never holds more than a few image-sized arrays.
        codes = _fit_scales(grid, v, mean, lo, hi)
        sizes = {"plain_symbol_bits": sum(_bits(v[c], mean[c], grid.channel_values(codes, SCALE, c), lo[c], hi[c])
                                          for c in range(ch))}
        kind = ChunkKind.FINAL
        if ch == 3:
            resid = [v[c] - mean[c] for c in range(3)]
            pred_codes = fit_coefficients(resid, resid, grid)
            coef = coefficients(pred_codes, grid)
            means = np.stack([predicted_mean(mean, resid, coef, c) for c in range(3)])
            del resid
            scale_codes = _fit_scales(grid, v, means, lo, hi)
            sizes["predicted_symbol_bits"] = sum(
                _bits(v[c], means[c], grid.channel_values(scale_codes, SCALE, c), lo[c], hi[c]) for c in range(3))
            cells = spatial.Cells(mean, v, lo, hi, v, v)

            def residual(c, sel, mean_, std):
                return v[c][sel] - mean[c][sel]

            fits = {KINDS[layout]: fit for layout, fit in
                    spatial.fit_layouts(grid, cells, pred_codes, residual, target.every_layout).items()}
            del cells
            sizes.update({f"{LAYOUTS[k].name.lower()}_symbol_bits": fit.bits for k, fit in fits.items()})
            symbol_bits = {ChunkKind.FINAL: sizes["plain_symbol_bits"], ChunkKind.FINAL_PRED: sizes["predicted_symbol_bits"],
                           **{k: fit.bits for k, fit in fits.items()}}
            totals = spatial.layout_totals(symbol_bits, LAYOUTS, pred_codes, fits)
            kind = min(totals, key=totals.get)
            sizes["layout_bits"] = totals
        if LAYOUTS[kind] >= Layout.CONTEXT:
            fit = fits[kind]
            stream = code_passes(_runs(v[step.c][step.sel] - lo[step.c][step.sel], lo[step.c][step.sel],
                                       hi[step.c][step.sel], m_, std)
                                 for step, m_, std in spatial.context_beliefs(mean, fit.known, fit.payload, grid,
                                                                              fit.classes, fit.scheme))
            payload = join_payload(fit.widths, stream, pred_codes, fit.block, fit.texture)
        elif kind == ChunkKind.FINAL:
            stream = code_passes([_runs((v - lo).ravel(), lo.ravel(), hi.ravel(), mean.ravel(),
                                        grid.flat_values(codes, SCALE))])
            payload = join_payload(codes, stream)
        else:
            stream = code_passes(_runs((v[c] - lo[c]).ravel(), lo[c].ravel(), hi[c].ravel(), means[c].ravel(),
                                       grid.channel_values(scale_codes, SCALE, c).ravel()) for c in range(3))
            payload = join_payload(scale_codes, stream, pred_codes)
        bits = 8 * len(stream)
        return StepOutput(payload, ctx.intervals, pixels=v.astype(np.uint8), coded_bits=bits,
                          stats={"kind": kind, "channel_prediction": kind != ChunkKind.FINAL, **sizes})

    @staticmethod
    def split(payload: bytes, kind: ChunkKind, grid: TileGrid, compact: bool = True) -> Payload:
        """The payload's fields, checked against the tile grid."""
        if kind != ChunkKind.FINAL and grid.c != 3:
            raise FormatError("a channel-predicted final step needs an RGB image")
        return split_payload(payload, grid.size, LAYOUTS[kind], "final step", compact)

    def check(self, payload: bytes, header, kind: ChunkKind) -> None:
        channels = 1 if header.mode in ("L", "1") else 3
        self.split(payload, kind, TileGrid(channels, header.height, header.width, header.tile), header.compact)

    def decode(self, ctx: StepContext, payload: bytes, kind: ChunkKind = ChunkKind.FINAL) -> StepOutput:
        channels = 1 if ctx.chain.header.mode in ("L", "1") else 3
        grid, mean, lo, hi = self.setup(ctx, channels)
        fields = self.split(payload, kind, grid, ctx.chain.header.compact)
        codes, pred_codes = fields.widths, fields.predictors
        if LAYOUTS[kind] >= Layout.CONTEXT:
            scheme = spatial.scheme_for(LAYOUTS[kind])
            streams = PassStreams(fields.streams, scheme.passes * grid.c)
            v = np.zeros(mean.shape, dtype=np.uint8)
            known = spatial.Known.exact(mean.shape)
            for step, m_, std in spatial.context_beliefs(mean, known, fields, grid, scheme=scheme):
                c, sel = step.c, step.sel
                vc = _decode(streams, lo[c][sel], hi[c][sel], m_, std)
                v[c][sel] = vc
                known.fill(step, vc - mean[c][sel], vc, vc, mean[c][sel])
        elif kind == ChunkKind.FINAL:
            streams = PassStreams(fields.streams, 1)
            v = _decode(streams, lo.ravel(), hi.ravel(), mean.ravel(), grid.flat_values(codes, SCALE))
            v = v.reshape(mean.shape)
        else:
            streams = PassStreams(fields.streams, 3)
            coef = coefficients(pred_codes, grid)
            v = np.zeros(mean.shape, dtype=np.uint8)
            resid = []  # v_c - m_c of the channels decoded so far
            for c in range(3):
                m = predicted_mean(mean, resid, coef, c)
                std = grid.channel_values(codes, SCALE, c)
                vc = _decode(streams, lo[c].ravel(), hi[c].ravel(), m.ravel(), std.ravel())
                v[c] = vc.reshape(m.shape)
                if c < 2:
                    resid.append(vc.reshape(m.shape) - mean[c])
        streams.finish()
        return StepOutput(payload, ctx.intervals, pixels=v.astype(np.uint8, copy=False))
