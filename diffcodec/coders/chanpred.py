"""Channel prediction: the RGB channels' residuals around the network's estimate are correlated
(the model misses the same detail in all three), so a channel's belief mean is shifted by a
per-tile linear function of the residuals of the channels decoded before it:

    mean_0 = m_0,   mean_1 = m_1 + a r_0,   mean_2 = m_2 + b r_0 + c r_1

(a, b, c) are fitted by least squares per tile and sent as one byte each
(:data:`diffcodec.sideinfo.COEF`).  The UQ and final steps' payloads share their layouts
(:func:`join_payload`, :func:`split_payload`); S = tiles x coded channels, P = 3 x tiles, the
side-information fields (S widths, P predictor codes, the spatial block (6 or 63 bytes), the
texture block; those the layout has) bit-packed as one block
(:func:`diffcodec.sideinfo.pack_fields`: a field's first code in 8 bits, then exp-Golomb
differences), then one range-coded stream (the rest of the payload, a
multiple of 4 bytes):

    plain:      side information (widths) | stream: every dimension's symbol
    predicted:  side information (widths, predictor codes (a, b, c per tile))
                | stream: channel 0's symbols, then 1's, then 2's
    context:    side information (widths, predictor codes, spatial block)
                | stream: the six passes in order (anchors' channels 0, 1, 2, then the others')
    texture:    side information (widths, predictor codes, spatial block, texture block)
                | stream: as the context layout's (format version 6)
    neighbours: side information (widths, predictor codes, 63-byte spatial block, texture block)
                | stream: the twelve passes in order (the 2 x 2 phases' channels 0, 1, 2;
                format version 7)

Format versions 2-4 sent each field as bytes after a u32 count and gave each channel (pass) its
own stream, each after its u32 length.

(the context layout: :mod:`diffcodec.coders.spatial`; the texture layout:
:mod:`diffcodec.coders.texture`).  In the final step r_c is the decoded
residual v_c - m_c; in a UQ step it is the residual the receiver can estimate once channel c's cell is known: the mean
of channel c's belief restricted to its new interval, minus m_c (:func:`interval_residual`).
"""

from __future__ import annotations

from enum import IntEnum
from typing import NamedTuple

import numpy as np

from ..errors import FormatError
from ..intervals import normal_mass
from ..sideinfo import COEF, TileGrid, pack_fields, unpack_fields
from .base import take_field
from .texture import TEXTURE_BYTES

_SQRT_2PI = np.sqrt(2 * np.pi)


def _pdf(x: np.ndarray) -> np.ndarray:
    """The standard normal density (scipy.stats.norm.pdf's formula, without importing scipy.stats)."""
    return np.exp(-x**2 / 2.0) / _SQRT_2PI


def fit_coefficients(targets: np.ndarray, regressors: np.ndarray, grid: TileGrid) -> bytes:
    """Per-tile least squares: targets_1 ~ a r_0 and targets_2 ~ b r_0 + c r_1 ([3, H, W] each),
    as codes (a, b, c) x tiles."""
    g1 = TileGrid(1, grid.h, grid.w, grid.tile)
    t, r = targets, regressors

    def sums(x):
        return g1.tile_sums(x[None])[0]

    s00, s01, s11 = sums(r[0] * r[0]), sums(r[0] * r[1]), sums(r[1] * r[1])
    t10, t20, t21 = sums(t[1] * r[0]), sums(t[2] * r[0]), sums(t[2] * r[1])
    eps = 1e-9
    a = t10 / (s00 + eps)
    det = s00 * s11 - s01**2
    ok = det > 1e-6 * (s00 * s11 + eps)
    safe = np.where(ok, det, 1.0)
    b = np.where(ok, (t20 * s11 - t21 * s01) / safe, t20 / (s00 + eps))
    c = np.where(ok, (t21 * s00 - t20 * s01) / safe, 0.0)
    return COEF.code(np.stack([a, b, c])).astype(np.uint8).tobytes()


class Coefficients:
    """Per-pixel (a, b, c) from the per-tile codes: ``coef[i]`` is the [H, W] map of coefficient
    i, expanded when asked (an image's three maps would take 8 bytes a dimension)."""

    def __init__(self, codes: bytes, grid: TileGrid) -> None:
        self.codes = codes
        self.grid = TileGrid(3, grid.h, grid.w, grid.tile)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.grid.channel_values(self.codes, COEF, i)


def coefficients(codes: bytes, grid: TileGrid) -> Coefficients:
    """The per-pixel (a, b, c) of per-tile codes (see :class:`Coefficients`)."""
    return Coefficients(codes, grid)


def predicted_mean(mu: np.ndarray, resid, coef, channel: int) -> np.ndarray:
    """Belief mean of ``channel`` given the residuals of the channels before it: ``mu`` is
    [C, H, W], ``resid[c]`` and ``coef[i]`` are [H, W] maps (arrays, lists or
    :class:`Coefficients`); only the residuals of channels before ``channel`` are read."""
    if channel == 0:
        return mu[0]
    if channel == 1:
        return mu[1] + coef[0] * resid[0]
    return mu[2] + coef[1] * resid[0] + coef[2] * resid[1]


def interval_residual(lo: np.ndarray, hi: np.ndarray, mean: np.ndarray, std: np.ndarray,
                      m: np.ndarray) -> np.ndarray:
    """E[v | lo <= v <= hi] - m under the belief N(mean, std^2) (a continuous truncated normal over
    [lo - 1/2, hi + 1/2]); the interval's midpoint where the belief has no mass there."""
    a = (np.asarray(lo, dtype=np.float64) - 0.5 - mean) / std
    b = (np.asarray(hi, dtype=np.float64) + 0.5 - mean) / std
    z = normal_mass(a, b)
    inside = mean + std * (_pdf(a) - _pdf(b)) / np.maximum(z, 1e-300)
    est = np.where(z > 1e-12, np.clip(inside, lo - 0.5, hi + 0.5), 0.5 * (lo + hi))
    return est - m


class Layout(IntEnum):
    """A UQ or final step's payload layout (the chunk kind tells which)."""

    PLAIN = 0  # every channel under its own mean, one stream
    PREDICTED = 1  # channels predicted from the ones before them, one stream per channel
    CONTEXT = 2  # and the checkerboard's others from their anchors (spatial), 2 x 3 streams
    TEXTURE = 3  # the context layout with widths scaled per texture class (format version 6)
    NEIGHBOURS = 4  # the texture layout's widths over 2 x 2 phases reading all channels' neighbours (version 7)

    @property
    def has_texture(self) -> bool:
        return self >= Layout.TEXTURE


class Payload(NamedTuple):
    widths: bytes  # per tile and channel
    predictors: bytes  # (a, b, c) per tile; empty in the plain layout
    spatial: bytes  # the context and texture layouts' block (diffcodec.coders.spatial); else empty
    streams: list[bytes]
    texture: bytes = b""  # the texture layout's block (diffcodec.coders.texture); else empty


STREAMS = {Layout.PLAIN: 1, Layout.PREDICTED: 3, Layout.CONTEXT: 6, Layout.TEXTURE: 6, Layout.NEIGHBOURS: 12}
#: Bytes of each layout's spatial block (:mod:`diffcodec.coders.spatial`: ``Scheme.block_bytes``).
SPATIAL_BYTES = {Layout.PLAIN: 0, Layout.PREDICTED: 0, Layout.CONTEXT: 6, Layout.TEXTURE: 6, Layout.NEIGHBOURS: 63}


def side_bits(layout: Layout, predictors: bytes, spatial: bytes = b"", texture: bytes = b"") -> int:
    """What a layout sends besides its symbols and the width codes, as the encoder counts it
    when it compares layouts: its predictor codes, spatial block and texture block as packed
    alone (all layouts have one stream, flushed once)."""
    if layout == Layout.PLAIN:
        return 0
    return 8 * len(pack_fields([predictors, spatial if layout >= Layout.CONTEXT else b"",
                                texture if layout.has_texture else b""]))


def join_payload(widths: bytes, stream: bytes, predictors: bytes = b"", spatial: bytes = b"",
                 texture: bytes = b"") -> bytes:
    """A step's payload in the current layout: the plain layout (no predictors), the predicted
    one, the context one (a spatial block too) or the texture one (and a texture block), its side
    information packed (:func:`diffcodec.sideinfo.pack_fields`); one stream for every pass."""
    return pack_fields([widths, predictors, spatial, texture]) + stream


def split_payload(payload: bytes, codes: int, layout: Layout, step: str, compact: bool = True) -> Payload:
    """The fields of a payload whose side information holds ``codes`` bytes each; any other
    shape is a FormatError naming ``step``.  ``streams`` holds one stream (``compact``: format
    version 5) or one per pass (versions 2-4, read only)."""
    if compact:
        sizes = (codes, codes if layout != Layout.PLAIN else 0, SPATIAL_BYTES[layout],
                 TEXTURE_BYTES if layout.has_texture else 0)
        fields, pos = unpack_fields(payload, sizes, f"{step}'s side information")
        if (len(payload) - pos) % 4:
            raise FormatError(f"{step} stream is not a whole number of words")
        return Payload(fields[0], fields[1], fields[2], [bytes(payload[pos:])], fields[3])
    if layout.has_texture:
        raise FormatError(f"{step} has a layout that format versions 2-4 do not have")
    pos, widths = take_field(payload, 0, codes, "widths")
    predictors = spatial = b""
    if layout == Layout.PLAIN:
        streams = [payload[pos:]]
    else:
        pos, predictors = take_field(payload, pos, codes, "predictor codes")
        if layout == Layout.CONTEXT:
            pos, spatial = take_field(payload, pos, SPATIAL_BYTES[layout], "spatial block")
        streams = []
        for _ in range(STREAMS[layout]):
            pos, s = take_field(payload, pos, None, "stream")
            streams.append(s)
        if pos != len(payload):
            raise FormatError(f"{step} payload has data after its last stream")
    if any(len(s) % 4 for s in streams):
        raise FormatError(f"{step} stream is not a whole number of words")
    return Payload(widths, predictors, spatial, streams)
