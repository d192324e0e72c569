"""Texture classes: the network misses more where the image is busy, so a belief's width is
scaled per pixel by the class of local activity of the network's own x_0 estimate.

The *texture* layout (chunk kinds UQ_TEX and FINAL_TEX, format version 6, RGB only) is the
context layout (:mod:`diffcodec.coders.spatial`) with each pixel's width, in both passes,
multiplied by ``2 ** ((t[c, k] - 128) / 8)`` for its channel c and class k (the neighbourhood
layout, kinds UQ_NBR and FINAL_NBR of format version 7, carries the same block and scales every
one of its passes' widths so):

* the **activity** of a pixel is the sum over its 5 x 5 neighbourhood (edges replicated) of the
  mean over channels of |4-neighbour Laplacian| of the estimate m in levels (edges replicated):
  both sides compute it from the same floats;
* the :data:`CLASSES` classes split the pixels into equal parts by the activity's rank (a stable
  sort: ties go by raster order), so class 0 is the flattest eighth of the image, 7 the busiest;
* the multiplier codes ``t`` (3 channels x :data:`CLASSES` bytes, channel-major, the block
  :data:`TEXTURE_BYTES` long) are fitted by the encoder on the real cost of every pass.

Measured on four 128 px Kodak crops (shipped model, effort 5): the two UQ steps and the final step
cost 0.001-0.06 bits/dim less each than with the context layout alone (README, "Texture classes").
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..sideinfo import ByteQuantizer

#: Classes of activity (equal parts of the image by rank).
CLASSES = 8
#: The activity's box: BOX x BOX pixels.
BOX = 5
#: Bytes of the texture block: a code per channel and class.
TEXTURE_BYTES = 3 * CLASSES
#: A class's width multiplier: 2 ** ((code - 128) / 8).
MULTIPLIER = ByteQuantizer(128, 8.0)
#: Codes (- 128) the encoder tries first (then further out while the best is at an end), then
#: +-1 and +-2 around the best.
COARSE = (-12, -8, -4, 0, 4, 8, 12)
#: Pixels per pass and channel the encoder fits the multipliers on at most (an even subsample).
FIT_SAMPLE = 1 << 16


def activity(m: np.ndarray) -> np.ndarray:
    """[H, W] float64: the :data:`BOX` x :data:`BOX` box sum of the channel mean of |4-neighbour
    Laplacian| of ``m`` ([C, H, W] levels), edges replicated (for both)."""
    c, h, w = m.shape
    lap = np.zeros((h, w), dtype=np.float64)
    for i in range(c):  # a channel at a time (memory), summed in channel order
        p = np.pad(np.asarray(m[i], dtype=np.float64), 1, mode="edge")
        lap += np.abs(4.0 * p[1:-1, 1:-1] - p[:-2, 1:-1] - p[2:, 1:-1] - p[1:-1, :-2] - p[1:-1, 2:])
    lap /= c
    a = np.pad(lap, BOX // 2, mode="edge")
    del lap
    out = np.zeros((h, w), dtype=np.float64)
    for dy in range(BOX):
        for dx in range(BOX):
            out += a[dy:dy + h, dx:dx + w]
    return out


def classes(m: np.ndarray, k: int = CLASSES) -> np.ndarray:
    """[H, W] uint8: each pixel's class 0 .. k - 1 by the rank of its :func:`activity` (equal
    parts; a stable sort, so ties go by raster order)."""
    a = activity(m)
    n = a.size
    order = np.argsort(a.reshape(-1), kind="stable")
    del a
    out = np.empty(n, dtype=np.uint8)
    out[order] = (np.arange(n, dtype=np.int64) * k // n).astype(np.uint8)
    return out.reshape(m.shape[1:])


def multipliers(block: bytes) -> np.ndarray:
    """[3, CLASSES] float64 width multipliers of a texture block."""
    codes = np.frombuffer(block, dtype=np.uint8).astype(np.int64)
    return MULTIPLIER.value(codes).reshape(3, CLASSES)


def sample_stride(n: int) -> int:
    """Every how many pixels of a pass of ``n`` the encoder fits on (at most :data:`FIT_SAMPLE`)."""
    return max(1, -(-n // FIT_SAMPLE))


def fit_code(cost: Callable[[float], float]) -> int:
    """The :data:`MULTIPLIER` code minimising ``cost(multiplier)``: :data:`COARSE`, further out
    by 4 while the best is the farthest tried (to the codes' ends), then +-1 and +-2 around the
    best (ties go to the smaller change)."""
    seen = {d: cost(float(MULTIPLIER.value(128 + d))) for d in COARSE}

    def best() -> int:
        return min(seen, key=lambda d: (seen[d], abs(d)))

    b = best()
    while b in (min(seen), max(seen)) and b != 0:
        d = max(-128, min(127, b + (4 if b > 0 else -4)))
        if d in seen:
            break
        seen[d] = cost(float(MULTIPLIER.value(128 + d)))
        b = best()
    for d in (b - 2, b - 1, b + 1, b + 2):
        if -128 <= d <= 127 and d not in seen:
            seen[d] = cost(float(MULTIPLIER.value(128 + d)))
    return 128 + best()
