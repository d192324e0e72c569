"""Side information: per-tile, per-channel parameters sent as one byte each.

Every coder sends a few parameters per tile of ``tile`` x ``tile`` pixels and per channel (the
width of a belief, a PFR prior's width, a channel predictor's coefficient).  :class:`TileGrid`
maps tiles to pixels and sums per-pixel costs per tile; a :class:`ByteQuantizer` maps a byte
to the parameter's value; :func:`fit_tile_codes` picks, per tile, the byte whose real cost is
lowest among candidates.  The quantizers of the whole codec are declared here, in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np

from .errors import FormatError


@dataclass(frozen=True)
class ByteQuantizer:
    """value = 2 ** ((code - zero) / res) (``log``) or (code - zero) / res (linear)."""

    zero: int
    res: float
    log: bool = True

    def value(self, codes: np.ndarray) -> np.ndarray:
        c = (np.asarray(codes, dtype=np.float64) - self.zero) / self.res
        return 2.0**c if self.log else c

    def code(self, values: np.ndarray) -> np.ndarray:
        """The nearest code (in the log domain for ``log``), clipped to 0..255, as int64."""
        v = np.asarray(values, dtype=np.float64)
        x = np.log2(np.maximum(v, 1e-300)) if self.log else v
        return np.clip(np.round(x * self.res + self.zero), 0, 255).astype(np.int64)


# Belief widths (UQ and final steps), in the coded quantity's units: 2 ** ((code - 160) / 8).
SCALE = ByteQuantizer(160, 8.0)
# PFR prior width: kappa = log2(sigma_p / sigma_q) in bits/dim, 2 ** ((code - 200) / 10).
KAPPA = ByteQuantizer(200, 10.0)
# Spectral PFR prior's gain over the linear prior's error spectrum: 2 ** ((code - 200) / 8).
GAIN = ByteQuantizer(200, 8.0)
# Channel predictor coefficients of the final step: (code - 128) / 32, in [-4, 3.97].
COEF = ByteQuantizer(128, 32.0, log=False)
# PFR index model: offset of the mean (code - 128) / 8 bits, std code / 16 bits.
INDEX_OFFSET = ByteQuantizer(128, 8.0, log=False)
INDEX_STD = ByteQuantizer(0, 16.0, log=False)


class TileGrid:
    """Tiles of ``tile`` pixels (0 or >= the image: one tile) over C x H x W."""

    def __init__(self, channels: int, height: int, width: int, tile: int) -> None:
        self.c, self.h, self.w = channels, height, width
        self.tile = tile if tile and tile < max(height, width) else 0
        t = self.tile or max(height, width)
        self.gh, self.gw = -(-height // t), -(-width // t)
        self.rows = np.arange(height) // t
        self.cols = np.arange(width) // t

    @property
    def size(self) -> int:
        """Number of codes one parameter takes: tiles x channels."""
        return self.c * self.gh * self.gw

    def group_ids(self, stride: int = 1) -> np.ndarray:
        """[C, H, W] index of each pixel's (channel, tile) group, 0 .. size - 1; with ``stride``,
        of every stride-th row and column only (made at that size)."""
        rows, cols = self.rows[::stride], self.cols[::stride]
        return (np.arange(self.c)[:, None, None] * (self.gh * self.gw) + rows[None, :, None] * self.gw
                + cols[None, None, :])

    def expand(self, per_tile: np.ndarray) -> np.ndarray:
        """[C, H, W] from per-(channel, tile) values (any shape of ``size`` elements)."""
        grid = np.asarray(per_tile).reshape(self.c, self.gh, self.gw)
        return grid[:, self.rows][:, :, self.cols]

    def expand_channel(self, per_tile: np.ndarray, channel: int) -> np.ndarray:
        """``expand(per_tile)[channel]`` without expanding the other channels ([H, W])."""
        grid = np.asarray(per_tile).reshape(self.c, self.gh, self.gw)[channel]
        return grid[self.rows][:, self.cols]

    def channel_values(self, codes: bytes, quantizer: "ByteQuantizer", channel: int) -> np.ndarray:
        """``quantizer.value(expand(codes))[channel]``, made for that channel alone ([H, W])."""
        return quantizer.value(self.expand_channel(np.frombuffer(codes, dtype=np.uint8), channel))

    def flat_values(self, codes: bytes, quantizer: "ByteQuantizer") -> "FlatTileValues":
        """``quantizer.value(expand(codes)).reshape(-1)``, computed slice by slice when indexed."""
        return FlatTileValues(self, np.frombuffer(codes, dtype=np.uint8), quantizer)

    def tile_sums(self, values: np.ndarray) -> np.ndarray:
        """[C, gh, gw] sums of a [C, H, W] array over each tile."""
        rows = np.add.reduceat(values, np.flatnonzero(np.diff(self.rows, prepend=-1)), axis=1)
        return np.add.reduceat(rows, np.flatnonzero(np.diff(self.cols, prepend=-1)), axis=2)

    def tile_counts(self) -> np.ndarray:
        """[C, gh, gw] pixels per (channel, tile) (exact float64 integers; no image of ones)."""
        rows = np.bincount(self.rows, minlength=self.gh).astype(np.float64)
        cols = np.bincount(self.cols, minlength=self.gw).astype(np.float64)
        return np.broadcast_to(rows[:, None] * cols[None, :], (self.c, self.gh, self.gw))

    def tile_means(self, values: np.ndarray) -> np.ndarray:
        """[C, gh, gw] means of a [C, H, W] array over each tile."""
        return self.tile_sums(values) / self.tile_counts()


class FlatTileValues:
    """A per-tile parameter as a flat [C * H * W] map that is never made whole: ``values[a:b]``
    holds the same floats as ``quantizer.value(grid.expand(codes)).reshape(-1)[a:b]``."""

    def __init__(self, grid: TileGrid, codes: np.ndarray, quantizer: ByteQuantizer) -> None:
        if codes.size != grid.size:
            raise ValueError("one code per tile and channel")
        self.grid, self.codes, self.quantizer = grid, codes, quantizer

    def __len__(self) -> int:
        return self.grid.c * self.grid.h * self.grid.w

    def __getitem__(self, key: slice) -> np.ndarray:
        if not isinstance(key, slice):
            raise TypeError("FlatTileValues takes slices")
        g = self.grid
        idx = np.arange(*key.indices(len(self)), dtype=np.int64)
        c, rest = np.divmod(idx, g.h * g.w)
        y, x = np.divmod(rest, g.w)
        return self.quantizer.value(self.codes[(c * g.gh + g.rows[y]) * g.gw + g.cols[x]])


#: Images of more pixels fit their side information on every other row and column (a quarter of
#: the pixels: the encoder's search, never the decoder's probabilities); smaller ones on all;
#: above a megapixel on every fourth (1/16 of the pixels, still 256 a 64 px tile).
SUBSAMPLE_ABOVE = 1 << 16
SUBSAMPLE_MORE_ABOVE = 1 << 20


def fit_tile_codes(grid: TileGrid, start: np.ndarray, cost: Callable[[np.ndarray, tuple], np.ndarray],
                   coarse: Iterable[int] = (-16, -8, 0, 8, 16), fine: Iterable[int] = (-4, -2, -1, 1, 2, 4)) -> bytes:
    """Per (channel, tile), the code with the lowest total ``cost`` among ``start`` + coarse
    offsets, then the best of those + fine offsets.  ``cost(codes, where)`` takes int codes for
    the pixels ``arr[where]`` of a [C, H, W] array (constant on each tile) and returns their cost
    under them; ``where`` samples every other (or every fourth) row and column of large images
    (:data:`SUBSAMPLE_ABOVE`).  A tile with no sampled pixel keeps its start code."""
    pixels = grid.h * grid.w
    stride = 4 if pixels > SUBSAMPLE_MORE_ABOVE and grid.tile >= 64 else 2 if pixels > SUBSAMPLE_ABOVE else 1
    where = (slice(None), slice(None, None, stride), slice(None, None, stride))
    ids = grid.group_ids(stride)  # = group_ids()[where]
    flat_ids = ids.ravel()
    start = np.clip(np.asarray(start, dtype=np.int64).reshape(-1), 0, 255)
    seen = np.bincount(flat_ids, minlength=grid.size) > 0
    best, best_cost = None, None

    def consider(codes: np.ndarray) -> None:
        nonlocal best, best_cost
        codes = np.where(seen, np.clip(codes, 0, 255), start)
        total = np.bincount(flat_ids, cost(codes[ids], where).ravel(), minlength=grid.size)
        if best is None:
            best, best_cost = codes, total
        else:
            better = total < best_cost
            best, best_cost = np.where(better, codes, best), np.where(better, total, best_cost)

    for d in coarse:
        consider(start + d)
    centre = best.copy()
    for d in fine:
        consider(centre + d)
    return best.astype(np.uint8).tobytes()


def codes_array(codes: bytes, grid: TileGrid) -> np.ndarray:
    """Per-tile codes as an int64 [C, gh, gw] array."""
    return np.frombuffer(codes, dtype=np.uint8).astype(np.int64).reshape(grid.c, grid.gh, grid.gw)


#: Order of the exp-Golomb code of the side-information differences (format version 5).
GOLOMB_K = 2
_MAX_ZEROS = (510 + (1 << GOLOMB_K)).bit_length() - GOLOMB_K - 1  # the longest prefix a code in 0..255 needs


def pack_fields(fields: Iterable[bytes]) -> bytes:
    """A step's side-information fields (byte codes: widths, predictor codes, ...) as one
    bit-packed block, most significant bit first: per non-empty field its first code in 8 bits,
    then each code's difference from the one before it, zigzagged (0, -1, 1, -2, ... -> 0, 1, 2,
    3, ...), in order-:data:`GOLOMB_K` exp-Golomb; zero-padded to a whole byte.  Neighbouring
    tiles' codes differ by a few steps, so a code takes ~4-5 bits instead of 8."""
    bits: list[str] = []
    for field in fields:
        codes = list(field)
        if not codes:
            continue
        bits.append(f"{codes[0]:08b}")
        for prev, code in zip(codes, codes[1:]):
            d = code - prev
            v = (2 * d if d >= 0 else -2 * d - 1) + (1 << GOLOMB_K)
            n = v.bit_length()
            bits.append("0" * (n - GOLOMB_K - 1) + format(v, "b"))
    s = "".join(bits)
    s += "0" * (-len(s) % 8)
    return int(s, 2).to_bytes(len(s) // 8, "big") if s else b""


def unpack_fields(data: bytes, sizes: Iterable[int], what: str = "side information") -> tuple[list[bytes], int]:
    """Inverse of :func:`pack_fields` for fields of ``sizes`` codes: (the fields, bytes read).
    A block the data cannot hold, a prefix no code in 0..255 needs or a code outside 0..255 is
    a :class:`~diffcodec.errors.FormatError`; the work is bounded by the data's length."""
    sizes = [int(n) for n in sizes]
    least = sum(8 + (n - 1) * (GOLOMB_K + 1) for n in sizes if n)  # every difference 0
    if 8 * len(data) < least:
        raise FormatError(f"step payload is shorter than its {what}")
    bits = np.unpackbits(np.frombuffer(bytes(data[:(least + _longest(sizes) + 7) // 8]), dtype=np.uint8))
    pos, out = 0, []

    def take(n: int) -> int:
        nonlocal pos
        if pos + n > len(bits):
            raise FormatError(f"step payload ends inside its {what}")
        v = 0
        for b in bits[pos:pos + n]:
            v = (v << 1) | int(b)
        pos += n
        return v

    for n in sizes:
        if not n:
            out.append(b"")
            continue
        code = take(8)
        codes = [code]
        for _ in range(n - 1):
            zeros = 0
            while take(1) == 0:
                zeros += 1
                if zeros > _MAX_ZEROS:
                    raise FormatError(f"step payload has a corrupt {what} (an overlong code)")
            v = ((1 << (zeros + GOLOMB_K)) | take(zeros + GOLOMB_K)) - (1 << GOLOMB_K)
            code += v // 2 if v % 2 == 0 else -(v + 1) // 2
            if not 0 <= code <= 255:
                raise FormatError(f"step payload has a corrupt {what} (a code outside 0..255)")
            codes.append(code)
        out.append(bytes(codes))
    return out, (pos + 7) // 8


def _longest(sizes: list[int]) -> int:
    """The most bits a block of ``sizes`` codes can take beyond every difference being 0."""
    return sum(max(0, n - 1) for n in sizes) * 2 * _MAX_ZEROS
