"""Spatial prediction: the network's residuals are spatially correlated (it misses an edge over
several pixels, in all three channels), so some pixels are coded first and the others are
predicted from them.

The *context* layout (chunk kinds UQ_CTX and FINAL_CTX, RGB only; format versions 3-7) codes a
step's dimensions in two passes over a checkerboard (:data:`CHECKERBOARD`):

* pass 0, the **anchors** (pixels with y + x even), channels in order, exactly as the
  channel-predicted layout does (:mod:`diffcodec.coders.chanpred`): belief mean
  ``m_c + (channel prediction from the residuals of the channels before c)``, width per tile;
* pass 1, the **others** (y + x odd), channels in order: the same channel-predicted mean plus
  ``w_c * A_c``, where ``A_c`` is the sum of channel c's residuals at the pixel's (up to) four
  axial neighbours (all anchors, known after pass 0; a missing neighbour at the border counts 0),
  and the tile's width times ``2 ** ((o_c - 128) / 8)``.

The *neighbourhood* layout (kinds UQ_NBR and FINAL_NBR, format version 7, :data:`QUINCUNX`) codes
four passes, the 2 x 2 phases (y % 2, x % 2) = (0, 0), (1, 1), (0, 1), (1, 0), channels in order
within each; pass p > 0 adds to channel c's channel-predicted mean ``sum_g sum_k w[p, c, g, k] *
S_g(r_k)``: for each neighbour sum g the pass reads and each channel k (all three), the sum of
channel k's residuals at the offsets of g that landed on earlier passes (0 past the border):

* pass 1 (1, 1): g = diagonal (the 4 diagonal pixels, all of pass 0): 3 weights a channel;
* pass 2 (0, 1): axial (4: passes 0 and 1), knight (the 8 pixels a knight's move away: passes 0
  and 1): 6 weights;
* pass 3 (1, 0): axial, knight and diagonal (pass 2's): 9 weights;

and its width is the tile's times ``2 ** ((o[p, c] - 128) / 8)``; every width also scales by the
texture classes (:mod:`diffcodec.coders.texture`).  Its spatial block holds the 54 weight codes
(pass, channel, sum, channel read) then the 9 offset codes (pass, channel): 63 bytes.

A residual is what the receiver knows after the pixel's symbol: ``v - m_c`` in the final step;
in a UQ step the channel predictor reads the mean of the belief restricted to the decoded cell
minus ``m_c`` (:func:`diffcodec.coders.chanpred.interval_residual`), the spatial one the cell's
midpoint minus ``m_c`` (:class:`Known`).  The weights and offsets are per image, one byte each
(:data:`WEIGHT`, :data:`OFFSET`), fitted by least squares and by the real cost.  Measured on
kodim07 (shipped model, effort 5): the checkerboard made the two UQ steps and the final step of
a 128 px crop 0.064, 0.041 and 0.020 bits/dim cheaper than channel prediction alone (README,
"Spatial context"); the neighbourhood layout took four 128 px Kodak crops from 3.584 to 3.527
bits/dim and the whole kodim07 photo from 3.132 to 3.051 (README, "Neighbourhood layout").
"""

from __future__ import annotations

from typing import Iterator, NamedTuple

import numpy as np

from ..intervals import fit_belief_widths, restricted_cost
from ..sideinfo import SCALE, ByteQuantizer, TileGrid
from . import texture
from .chanpred import Layout, Payload, coefficients, predicted_mean, side_bits

#: Weight of the axial-neighbour residual sum: (code - 128) / 256, in [-0.5, 0.496].
WEIGHT = ByteQuantizer(128, 256.0, log=False)
#: The others' belief width relative to the tile's: 2 ** ((code - 128) / 8).
OFFSET = ByteQuantizer(128, 8.0)
#: Width offsets tried by the encoder (codes - 128), then +-1, +-2 around the best.
OFFSET_COARSE = (-24, -18, -12, -8, -4, 0, 4)
#: Passes of more pixels than this search their width offset on every 4th pixel.
OFFSET_SAMPLE_ABOVE = 1 << 15
#: The encoders fit the checkerboard layouts (context, texture) besides the neighbourhood layout
#: only on images of at most this many pixels, where their block, 57 bytes shorter, can pay for
#: itself: above, they never won a step on four 128 px Kodak crops (shipped model, effort 5), and
#: fitting them took ~15 % of a 256 px crop's encode.
CHECKERBOARD_UP_TO = 128 * 128


def anchors(h: int, w: int) -> np.ndarray:
    """[H, W] bool: the pixels of pass 0 (y + x even)."""
    yy, xx = np.indices((h, w))
    return (yy + xx) % 2 == 0


def axial_sum(resid: np.ndarray) -> np.ndarray:
    """[H, W] float64: the sum of each pixel's four axial neighbours in ``resid`` (0 past the
    border).  Read only at the others, where every neighbour is an anchor."""
    r = np.asarray(resid, dtype=np.float64)
    out = np.zeros(r.shape, dtype=np.float64)
    out[1:] += r[:-1]
    out[:-1] += r[1:]
    out[:, 1:] += r[:, :-1]
    out[:, :-1] += r[:, 1:]
    return out


def _offset_sum(resid: np.ndarray, offsets: tuple[tuple[int, int], ...]) -> np.ndarray:
    """[H, W] float64: the sum of ``resid`` at (y + dy, x + dx) over ``offsets`` (0 past the border)."""
    r = np.asarray(resid, dtype=np.float64)
    h, w = r.shape
    out = np.zeros((h, w), dtype=np.float64)
    for dy, dx in offsets:
        ys, yd = slice(max(dy, 0), h + min(dy, 0)), slice(max(-dy, 0), h + min(-dy, 0))
        xs, xd = slice(max(dx, 0), w + min(dx, 0)), slice(max(-dx, 0), w + min(-dx, 0))
        out[yd, xd] += r[ys, xs]
    return out


DIAGONAL = ((-1, -1), (-1, 1), (1, -1), (1, 1))
KNIGHT = ((-2, -1), (-2, 1), (-1, -2), (-1, 2), (1, -2), (1, 2), (2, -1), (2, 1))


def diagonal_sum(resid: np.ndarray) -> np.ndarray:
    """[H, W] float64: the sum of each pixel's four diagonal neighbours (0 past the border)."""
    return _offset_sum(resid, DIAGONAL)


def knight_sum(resid: np.ndarray) -> np.ndarray:
    """[H, W] float64: the sum of the eight pixels a knight's move away (0 past the border)."""
    return _offset_sum(resid, KNIGHT)


#: The neighbour sums a pass's means may read, by name, and the offsets each sums over.
NEIGHBOUR_SUMS = {"axial": axial_sum, "diagonal": diagonal_sum, "knight": knight_sum}
NEIGHBOUR_OFFSETS = {"axial": ((-1, 0), (1, 0), (0, -1), (0, 1)), "diagonal": DIAGONAL, "knight": KNIGHT}
#: The 2 x 2 phases (y % 2, x % 2) of the passes of :data:`QUINCUNX`, in coding order.
PHASES = ((0, 0), (1, 1), (0, 1), (1, 0))


def _phase_sum(resid: np.ndarray, p: int, offsets: tuple[tuple[int, int], ...], rows: tuple[int, int],
               out: np.ndarray) -> None:
    """Add into ``out`` (zeros, [end - first, ceil((W - px) / 2)] float64) rows ``rows`` = (first,
    end) of the phase image of p = (py, px) of the masked neighbour sum: at each of its pixels, the
    sum of ``resid`` at the offsets that land on a phase coded before p (0 past the border and
    elsewhere).  Each element adds its offsets in the same order whatever the rows (the same
    floats in any blocking)."""
    py, px = PHASES[p]
    n_cols = out.shape[1]
    r0, r1 = rows
    for dy, dx in offsets:
        qy, qx = (py + dy) % 2, (px + dx) % 2
        if (qy, qx) not in PHASES[:p]:
            continue
        src = resid[qy::2, qx::2]
        sy, sx = (py + dy - qy) // 2, (px + dx - qx) // 2  # out[i, j] reads src[i + sy, j + sx]
        i0, i1 = max(r0, -sy), min(r1, src.shape[0] - sy)
        j0, j1 = max(0, -sx), min(n_cols, src.shape[1] - sx)
        if i1 > i0 and j1 > j0:
            out[i0 - r0:i1 - r0, j0:j1] += src[i0 + sy:i1 + sy, j0 + sx:j1 + sx]


class Scheme(NamedTuple):
    """How a context layout splits a step's pixels into passes and predicts them: the pixels of
    pass p > 0 read, per channel, the neighbour sums ``groups[p]`` of the residuals decoded in the
    passes before p (of every channel when ``cross``, else of their own channel only), each with
    its weight.  Pass 0 reads no neighbour."""

    name: str
    passes: int  # 2: a checkerboard; 4: the 2 x 2 phases (0, 0), (1, 1), (0, 1), (1, 0)
    groups: tuple[tuple[str, ...], ...]
    cross: bool

    def masks(self, h: int, w: int) -> list[np.ndarray]:
        """[H, W] bool per pass, in coding order."""
        if self.passes == 2:
            first = anchors(h, w)
            return [first, ~first]
        yy, xx = np.indices((h, w))
        return [(yy % 2 == py) & (xx % 2 == px) for py, px in PHASES]

    def features(self, p: int, channels: int) -> int:
        """Weights of a channel in pass ``p``."""
        return len(self.groups[p]) * (channels if self.cross else 1)

    def block_bytes(self, channels: int = 3) -> int:
        """The spatial block's length: every weight code, then a width offset per pass > 0 and channel."""
        return sum(self.features(p, channels) + 1 for p in range(1, self.passes)) * channels


#: The context and texture layouts' scheme (format versions 3-6): a checkerboard, the others read
#: their own channel's four axial anchors.
CHECKERBOARD = Scheme("checkerboard", 2, ((), ("axial",)), cross=False)
#: The neighbourhood layout's scheme (format version 7): the 2 x 2 phases, each pass reading the
#: sums of all three channels' residuals around it that are decoded: pass 1 its four diagonal
#: neighbours (pass 0's), pass 2 its axial ones (passes 0 and 1) and the knight's-move ring
#: (passes 0 and 1), pass 3 all three sums.
QUINCUNX = Scheme("2x2", 4, ((), ("diagonal",), ("axial", "knight"), ("axial", "knight", "diagonal")), cross=True)


def scheme_for(layout: Layout) -> Scheme:
    """The scheme of a context layout's passes."""
    return QUINCUNX if layout == Layout.NEIGHBOURS else CHECKERBOARD


def fit_weight(target: np.ndarray, feature: np.ndarray, where: np.ndarray) -> int:
    """The :data:`WEIGHT` code of the least-squares w in target ~ w feature over ``where``."""
    f, t = feature[where], target[where]
    den = float(np.dot(f, f))
    return int(WEIGHT.code(float(np.dot(f, t)) / den if den > 0 else 0.0))


def fit_weights(target: np.ndarray, features: "Features | np.ndarray") -> list[int]:
    """The :data:`WEIGHT` codes of the least-squares w in target ~ features.T @ w (1-D target,
    [F, N] features or :class:`Features`; minimum norm where they are dependent, zeros without
    data), from the normal equations accumulated block by block (no [N, F] copy).  One feature
    takes :func:`fit_weight`'s formula (the codes of the checkerboard since format version 3)."""
    whole = isinstance(features, np.ndarray)
    if len(features) == 1:  # the checkerboard's one feature (image-sized anyway)
        return [fit_weight(target, (features if whole else features.whole())[0], slice(None))]
    n_feat = len(features)
    gram, rhs = np.zeros((n_feat, n_feat)), np.zeros(n_feat)
    for a, b, f in [(0, features.shape[1], features)] if whole else features.blocks():
        gram += f @ f.T
        rhs += f @ target[a:b]
    w = np.linalg.lstsq(gram, rhs, rcond=None)[0]
    return [int(WEIGHT.code(float(x))) for x in w]


def fit_offset(cost) -> int:
    """The :data:`OFFSET` code minimising ``cost(multiplier)`` (the others' total bits with the
    tile widths times the multiplier): coarse candidates, then +-1 and +-2 around the best."""
    def total(d: int) -> float:
        return cost(float(OFFSET.value(128 + d)))

    seen = {d: total(d) for d in OFFSET_COARSE}
    best = min(seen, key=seen.get)
    for d in (best - 2, best - 1, best + 1, best + 2):
        if -128 <= d <= 127 and d not in seen:
            seen[d] = total(d)
    return 128 + min(seen, key=seen.get)


def block(weights: list[int], offsets: list[int]) -> bytes:
    """The spatial block: the weight codes (pass, then channel, then neighbour sum, then the
    channel it reads), then the width offset codes (pass, then channel)."""
    return bytes(list(weights) + list(offsets))


def unblock(data: bytes, scheme: Scheme = CHECKERBOARD, channels: int = 3) -> tuple[list[np.ndarray], np.ndarray]:
    """(weights, width multipliers) from a spatial block: entry (p - 1) * channels + c of each
    is pass p's channel c's (the weights an array of :meth:`Scheme.features` values)."""
    codes = np.frombuffer(data, dtype=np.uint8).astype(np.int64)
    weights, pos = [], 0
    for p in range(1, scheme.passes):
        n = scheme.features(p, channels)
        for _ in range(channels):
            weights.append(WEIGHT.value(codes[pos:pos + n]))
            pos += n
    return weights, OFFSET.value(codes[pos:pos + (scheme.passes - 1) * channels])


class Pass(NamedTuple):
    """One stream of a context layout: channel ``c``'s pixels of pass ``p``."""

    p: int  # 0: anchors (no neighbour read), then the scheme's later passes
    c: int
    sel: np.ndarray  # [H, W] bool: the pass's pixels
    dims: np.ndarray  # their flat indices among the step's C x H x W dimensions
    known: np.ndarray  # [H, W] bool: the pixels of the passes before (every channel decoded)


def passes(channels: int, h: int, w: int, scheme: Scheme = CHECKERBOARD) -> Iterator[Pass]:
    """A context layout's streams in their order: each pass's channels 0 .. C-1 in turn."""
    known = np.zeros((h, w), dtype=bool)
    for p, sel in enumerate(scheme.masks(h, w)):
        flat = np.flatnonzero(sel)
        for c in range(channels):
            yield Pass(p, c, sel, c * h * w + flat, known)
        known = known | sel


#: About this many pixels of a pass get their neighbour sums made at once (whole rows of the
#: phase image; 288 KiB for nine sums): the neighbourhood layout's nine sums of a whole pass would
#: take 18 bytes a pixel of the image (216 MiB at 12 megapixels), and its least-squares fit as
#: much again.
FEATURE_BLOCK = 1 << 12


class Features(NamedTuple):
    """The neighbour sums a pass reads at its N pixels (in the pass's order), [F, N] float64 per
    sum of ``scheme.groups[step.p]`` and channel read (every channel, or its own): the sums of
    the cell-midpoint residuals ``mid`` of the pixels decoded in the passes before (others read as
    0).  The 2 x 2 phases' sums are made on the quarter-size phase images, a block of rows at a
    time (:meth:`blocks`), and never held for a whole pass; they read only earlier passes'
    pixels, so they are the same floats whenever they are made while the pass is coded."""

    mid: np.ndarray  # [C, H, W]: Known.mid
    step: "Pass"
    scheme: Scheme

    def __len__(self) -> int:
        return self.scheme.features(self.step.p, self.mid.shape[0])

    def _sources(self) -> range | tuple[int]:
        return range(self.mid.shape[0]) if self.scheme.cross else (self.step.c,)

    def blocks(self) -> Iterator[tuple[int, int, np.ndarray]]:
        """(start, end, [F, end - start]) over the pass's pixels, in order."""
        step, groups = self.step, self.scheme.groups[self.step.p]
        if self.scheme.passes != 4:  # the checkerboard: image-sized sums, one block
            feats = [NEIGHBOUR_SUMS[g](np.where(step.known, self.mid[k], 0.0))[step.sel]
                     for g in groups for k in self._sources()]
            n = int(step.sel.sum())
            yield 0, n, np.stack(feats) if feats else np.zeros((0, n))
            return
        py, px = PHASES[step.p]
        h, w = self.mid.shape[1:]
        n_rows, n_cols = (h - py + 1) // 2, (w - px + 1) // 2
        per = max(1, FEATURE_BLOCK // max(n_cols, 1))
        sums = [(g, k) for g in groups for k in self._sources()]
        for r0 in range(0, n_rows, per):
            r1 = min(n_rows, r0 + per)
            feats = np.zeros((len(sums), r1 - r0, n_cols))  # each sum made in its row: no list, no stack
            for row, (g, k) in zip(feats, sums):
                _phase_sum(self.mid[k], step.p, NEIGHBOUR_OFFSETS[g], (r0, r1), out=row)
            yield r0 * n_cols, r1 * n_cols, feats.reshape(len(sums), -1)

    def whole(self) -> np.ndarray:
        """[F, N]: every block at once (tests; the coders read :meth:`blocks`)."""
        parts = [f for _, _, f in self.blocks()]
        return np.concatenate(parts, axis=1) if parts else np.zeros((len(self), 0))


def neighbour_features(known: "Known", step: Pass, scheme: Scheme) -> Features:
    """The neighbour sums pass ``step`` reads (:class:`Features`), from what ``known`` holds."""
    return Features(known.mid, step, scheme)


def pass_mean(base: np.ndarray, features: Features | None, step: Pass, weights) -> np.ndarray:
    """The belief means of ``step``'s pixels (1-D): ``base``, the channel-predicted mean [H, W]
    (:func:`diffcodec.coders.chanpred.predicted_mean`), plus, in passes after the first, each
    weight times its neighbour feature (:class:`Features`), in order, block by block (the same
    floats as whole: the sums are element-wise).  Both sides call this with the same arrays."""
    mean = base[step.sel]
    if step.p > 0:
        w = np.asarray(weights, dtype=np.float64).reshape(-1)
        for a, b, block_ in features.blocks():
            seg = mean[a:b]
            for wk, fk in zip(w, block_):
                seg = seg + wk * fk
            mean[a:b] = seg
    return mean


class Known(NamedTuple):
    """What the receiver knows of the residuals of the pixels coded so far, [C, H, W] float32
    (zero elsewhere): ``resid`` as the channel predictor reads it (the restricted belief's mean
    minus m, :func:`diffcodec.coders.chanpred.interval_residual`) and ``mid``, the coded cell's
    midpoint minus m, which the spatial predictor reads (measured better for it: the anchors'
    beliefs were centred on their own prediction).  In the final step both are v - m."""

    resid: np.ndarray
    mid: np.ndarray

    @staticmethod
    def zeros(shape: tuple[int, ...]) -> "Known":
        return Known(np.zeros(shape, dtype=np.float32), np.zeros(shape, dtype=np.float32))

    @staticmethod
    def exact(shape: tuple[int, ...]) -> "Known":
        """For the final step, whose residuals are exact (both views are v - m): one array."""
        resid = np.zeros(shape, dtype=np.float32)
        return Known(resid, resid)

    def fill(self, step: Pass, resid: np.ndarray, cell_lo: np.ndarray, cell_hi: np.ndarray, m: np.ndarray) -> None:
        """Record channel ``step.c``'s values at the pass's pixels (1-D arrays, ``m`` the network's
        estimate there)."""
        self.resid[step.c][step.sel] = resid
        self.mid[step.c][step.sel] = 0.5 * (np.asarray(cell_lo, dtype=np.float64) + cell_hi) - m


class Cells(NamedTuple):
    """What the encoder fits a step's context layout to, [C, H, W] each: the network's estimate
    ``m``, the true levels ``v``, the feasible levels before the step and the coded cells."""

    m: np.ndarray
    v: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    cell_lo: np.ndarray
    cell_hi: np.ndarray


class ContextFit(NamedTuple):
    """A step's fitted context (texture, neighbourhood) layout: its symbols' bits, its side
    information and the :class:`Known` residuals its streams are coded with (every pass's)."""

    bits: float
    widths: bytes
    predictors: bytes
    block: bytes  # the spatial block
    texture: bytes  # the texture block (empty: the context layout)
    known: Known
    classes: np.ndarray | None = None  # the texture layout's class map (texture.classes), made once
    scheme: Scheme = CHECKERBOARD

    @property
    def payload(self) -> Payload:
        """The payload fields, without the stream."""
        return Payload(self.widths, self.predictors, self.block, [], self.texture)


def fit_context(grid: TileGrid, cells: Cells, predictors: bytes, residual, scheme: Scheme = CHECKERBOARD) -> ContextFit:
    """Fit a context layout of a step (the channel predictor given): per tile the first pass's
    widths, per later pass and channel the neighbour weights (least squares) and width offset
    (real cost).  ``residual(c, sel, mean, std)`` is what the receiver knows of channel c's
    residuals at the pixels ``sel`` once they are coded under N(mean, std)."""
    m, v, lo, hi, clo, chi = cells
    g1 = TileGrid(1, grid.h, grid.w, grid.tile)
    coef = coefficients(predictors, grid)
    known = Known.zeros(v.shape)
    widths, weights, offsets, total = [], [], [], 0.0
    for step in passes(grid.c, grid.h, grid.w, scheme):
        c, sel = step.c, step.sel
        base = predicted_mean(m, known.resid, coef, c)
        codes = []
        features = neighbour_features(known, step, scheme) if step.p else None
        if step.p == 0:  # the later passes cost nothing while the first pass's widths are fitted
            widths.append(fit_belief_widths(g1, v[c:c + 1], base[None], lo[c:c + 1], hi[c:c + 1],
                                            np.where(sel, clo[c], lo[c])[None], np.where(sel, chi[c], hi[c])[None]))
        else:
            codes = fit_weights((v[c] - base)[sel], features)
            weights.extend(codes)
        mean = pass_mean(base, features, step, WEIGHT.value(np.array(codes, dtype=np.int64)))
        del base  # image-sized
        std = g1.channel_values(widths[c], SCALE, 0)[sel]
        cell = (clo[c][sel], chi[c][sel], lo[c][sel], hi[c][sel])
        if step.p > 0:  # the search sees every 4th pixel of a large image's pass
            pick = slice(None, None, 4) if len(mean) > OFFSET_SAMPLE_ABOVE else slice(None)
            sample = tuple(a[pick] for a in cell + (mean, std))
            offsets.append(fit_offset(lambda k: float(restricted_cost(*sample[:5], sample[5] * k, 2.0**-24).sum())))
            std = std * float(OFFSET.value(offsets[-1]))
        total += float(restricted_cost(*cell, mean, std, 2.0**-24).sum())
        known.fill(step, residual(c, sel, mean, std), cell[0], cell[1], m[c][sel])
    return ContextFit(total, b"".join(widths), predictors, block(weights, offsets), b"", known, scheme=scheme)


def context_beliefs(m: np.ndarray, known: Known, fields: Payload, grid: TileGrid, classes: np.ndarray | None = None,
                    scheme: Scheme = CHECKERBOARD):
    """Yield (pass, mean, std) of each stream of a context-, texture- or neighbourhood-layout
    payload in order (``scheme`` its passes; widths scaled per texture class where
    ``fields.texture`` is not empty, ``classes`` its class map of ``m`` where the caller made it
    already); the caller fills ``known`` at the pass's pixels before asking for the next (the
    encoder's is full)."""
    coef = coefficients(fields.predictors, grid)
    weights, mults = unblock(fields.spatial, scheme, grid.c)
    if not fields.texture:
        classes = None
    elif classes is None:
        classes = texture.classes(m)
    scale = texture.multipliers(fields.texture) if fields.texture else None
    for step in passes(grid.c, grid.h, grid.w, scheme):
        j = (step.p - 1) * grid.c + step.c
        features = neighbour_features(known, step, scheme) if step.p else None
        mean = pass_mean(predicted_mean(m, known.resid, coef, step.c), features, step, weights[j] if step.p else ())
        std = grid.channel_values(fields.widths, SCALE, step.c)[step.sel]
        if step.p > 0:
            std = std * float(mults[j])
        if classes is not None:
            std = std * scale[step.c][classes[step.sel]]
        yield step, mean, std


def fit_texture(grid: TileGrid, cells: Cells, fit: "ContextFit", residual, reuse_known: bool = False) -> "ContextFit":
    """The texture (or neighbourhood) layout of a step from its context layout ``fit`` (of either
    scheme): the multiplier of each channel and class (:mod:`diffcodec.coders.texture`)
    minimising every pass's cost under the context layout's means (on a subsample of large
    passes), then the step refitted with them (the means of a UQ step's later passes move with
    the residuals its widths estimate).  ``residual`` as for :func:`fit_context`.  With
    ``reuse_known`` the refit writes its residuals over ``fit.known`` (``fit`` is not kept): each
    pass reads only the passes written before it, so the beliefs are those of a fresh one, and
    a large image holds one :class:`Known` fewer."""
    m, v, lo, hi, clo, chi = cells
    cls = texture.classes(m)
    samples: list[list[tuple]] = [[] for _ in range(grid.c)]
    for step, mean, std in context_beliefs(m, fit.known, fit.payload, grid, scheme=fit.scheme):
        pick = slice(None, None, texture.sample_stride(len(mean)))
        c, sel = step.c, step.sel
        cell = tuple(a[sel][pick] for a in (clo[c], chi[c], lo[c], hi[c]))
        samples[c].append((cell, mean[pick], std[pick], cls[sel][pick]))
    codes = np.full((grid.c, texture.CLASSES), 128, dtype=np.uint8)
    for c in range(grid.c):
        for k in range(texture.CLASSES):
            parts = []
            for cell, mean, std, kk in samples[c]:
                i = kk == k
                parts.append(tuple(a[i] for a in cell) + (mean[i], std[i]))

            def cost(mult: float) -> float:
                return sum(float(restricted_cost(*p[:5], p[5] * mult, 2.0**-24).sum()) for p in parts)

            codes[c, k] = texture.fit_code(cost)
    del samples
    fields = fit.payload._replace(texture=codes.tobytes())
    known = fit.known if reuse_known else Known.zeros(v.shape)
    total = 0.0
    for step, mean, std in context_beliefs(m, known, fields, grid, cls, fit.scheme):
        c, sel = step.c, step.sel
        cell = (clo[c][sel], chi[c][sel], lo[c][sel], hi[c][sel])
        total += float(restricted_cost(*cell, mean, std, 2.0**-24).sum())
        known.fill(step, residual(c, sel, mean, std), cell[0], cell[1], m[c][sel])
    return ContextFit(total, fit.widths, fit.predictors, fit.block, fields.texture, known, cls, fit.scheme)


def fit_layouts(grid: TileGrid, cells: Cells, predictors: bytes, residual, every: bool = False) -> dict:
    """The context-family layouts of a step that the encoder compares, by :class:`Layout`: the
    neighbourhood layout, and the checkerboard's (context, texture) on images of at most
    :data:`CHECKERBOARD_UP_TO` pixels (or ``every``).  ``residual`` as for :func:`fit_context`."""
    fits = {}
    if grid.h * grid.w <= CHECKERBOARD_UP_TO or every:
        fits[Layout.CONTEXT] = fit_context(grid, cells, predictors, residual)
        # the texture layout scales the context layout's widths per class of activity
        fits[Layout.TEXTURE] = fit_texture(grid, cells, fits[Layout.CONTEXT], residual)
    # the neighbourhood layout: the 2 x 2 phases' context fit, then its texture classes
    fits[Layout.NEIGHBOURS] = fit_texture(grid, cells, fit_context(grid, cells, predictors, residual, QUINCUNX),
                                          residual, reuse_known=True)
    return fits


def layout_totals(symbol_bits: dict, layouts: dict, predictors: bytes, fits: dict) -> dict:
    """What the encoder compares, per chunk kind: its symbols' bits plus what its layout sends
    besides them (:func:`diffcodec.coders.chanpred.side_bits`; ``fits`` the context-family fits by
    kind)."""
    return {k: b + (side_bits(layouts[k], predictors, fits[k].block, fits[k].texture) if k in fits
                    else side_bits(layouts[k], predictors)) for k, b in symbol_bits.items()}
