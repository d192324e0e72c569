"""The final step (diffcodec.coders.final): exact round trips, beliefs restricted to the feasible
intervals, channel and spatial prediction where they pay, the layout estimated shortest, and
damaged payloads refused."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from diffcodec.coders import EncodeTarget, StepContext
from diffcodec.coders.final import FinalCoder
from diffcodec.errors import FormatError
from diffcodec.intervals import Intervals
from diffcodec.kinds import ChunkKind

CODER = FinalCoder()


def _ctx(mu: np.ndarray, tile: int, lo=None, hi=None, mode: str = "RGB") -> StepContext:
    """A final step's context: the network's estimate ``mu`` in levels ([3, H, W])."""
    _, h, w = mu.shape
    chain = SimpleNamespace(height=h, width=w, header=SimpleNamespace(tile=tile, mode=mode, compact=True))
    pred = {"pred_xstart": torch.from_numpy(mu / 127.5 - 1.0)[None]}
    ints = Intervals(mu.size, None if lo is None else lo.ravel(), None if hi is None else hi.ravel())
    return StepContext(chain, 0, 0, None, pred, ints)


def _target(sym: np.ndarray, channels: int = 3) -> EncodeTarget:
    full = np.repeat(sym, 3, axis=0) if sym.shape[0] == 1 else sym
    return EncodeTarget(full.astype(np.int64), channels)


def _round_trip(sym, mu, tile, channels=3, **kw):
    mode = "RGB" if channels == 3 else "L"
    out = CODER.encode(_ctx(mu, tile, mode=mode, **kw), _target(sym, channels))
    kind = out.stats["kind"]
    back = CODER.decode(_ctx(mu, tile, mode=mode, **kw), out.payload, kind)
    np.testing.assert_array_equal(back.pixels, sym[:channels] if channels == 3 else sym[:1])
    return out, kind


def _pixels(rng, h, w, correlation):
    """Pixels whose residuals around mu share a common part with weight ``correlation``."""
    mu = rng.uniform(20, 235, (3, h, w))
    common = rng.normal(0, 6, (1, h, w))
    own = rng.normal(0, 6, (3, h, w))
    sym = np.clip(np.rint(mu + correlation * common + (1 - correlation) * own), 0, 255).astype(np.int64)
    return sym, mu


def _smooth_pixels(rng, h, w):
    """Pixels whose residuals around mu are a smooth field of each channel's own, plus a little
    white noise: neighbours predict each other, the other channels do not."""
    field = rng.normal(0, 8, (3, h + 4, w + 4))
    field = sum(field[:, dy:dy + h, dx:dx + w] for dy in range(5) for dx in range(5)) / 5.0  # a 5 x 5 box blur
    mu = rng.uniform(30, 225, (3, h, w))
    sym = np.clip(np.rint(mu + field + rng.normal(0, 1.5, (3, h, w))), 0, 255).astype(np.int64)
    return sym, mu


def _layout_sizes(stats: dict, side_bytes: int) -> dict:
    """What the encoder compares: each layout's symbol bits plus what it sends besides them
    (``side_bytes`` predictor codes)."""
    return {ChunkKind.FINAL: stats["plain_symbol_bits"],
            ChunkKind.FINAL_PRED: stats["predicted_symbol_bits"] + 8 * (side_bytes + 12) + 64,
            ChunkKind.FINAL_CTX: stats["context_symbol_bits"] + 8 * (side_bytes + 4 + 6 + 24) + 5 * 32}


@pytest.mark.parametrize("tile", [0, 16])
def test_spatially_correlated_residuals_take_the_neighbourhood_layout(tile):
    rng = np.random.default_rng(7)
    sym, mu = _smooth_pixels(rng, 36, 44)
    out, kind = _round_trip(sym, mu, tile)
    assert kind == ChunkKind.FINAL_NBR
    # half of the pixels predicted from their neighbours: far fewer bits than channel prediction
    # alone; three quarters, from more neighbours (every channel's): fewer still
    assert out.stats["context_symbol_bits"] < 0.9 * out.stats["predicted_symbol_bits"]
    assert out.stats["neighbours_symbol_bits"] < 0.96 * out.stats["context_symbol_bits"]
    assert abs(out.coded_bits - out.stats["neighbours_symbol_bits"]) <= 0.01 * out.coded_bits + 6 * 32


#: Context-layout payloads (tests/golden/payloads/): the checkerboard final step of
#: ``_smooth_pixels(rng 7, 36, 44)`` at tile 16, as the encoders of format versions 5 and 6 wrote it.
PAYLOADS = Path(__file__).resolve().parent / "golden" / "payloads"
#: The neighbourhood-layout payload of the same step (format version 7).
NBR_BYTES, NBR_MD5 = 2622, "6b4528e6635d81e24d0953d868b12c6e"


def test_context_payload_is_pinned():
    """The layouts' bytes (golden payloads, like tests/golden/ for whole files: the analytic
    prior of those files leaves no spatial correlation for these layouts to take): the
    neighbourhood layout the encoder writes now, and the context layout's payload of earlier
    encoders, which still decodes to its pixels."""
    import hashlib

    sym, mu = _smooth_pixels(np.random.default_rng(7), 36, 44)
    out, kind = _round_trip(sym, mu, 16)
    assert kind == ChunkKind.FINAL_NBR and len(out.payload) == NBR_BYTES
    assert hashlib.md5(out.payload).hexdigest() == NBR_MD5
    old = (PAYLOADS / "final_ctx_tile16.bin").read_bytes()
    assert len(old) == 2691 and hashlib.md5(old).hexdigest() == "22582cf0f9e29b8ca264fc1cc6da7ed1"
    back = CODER.decode(_ctx(mu, 16), old, ChunkKind.FINAL_CTX)
    np.testing.assert_array_equal(back.pixels, sym)


@pytest.mark.parametrize("tile", [0, 16])
def test_correlated_residuals_take_the_predicted_layout(tile):
    rng = np.random.default_rng(1)
    sym, mu = _pixels(rng, 40, 52, 0.9)
    out, kind = _round_trip(sym, mu, tile)
    assert kind == ChunkKind.FINAL_PRED
    assert out.stats["predicted_symbol_bits"] < 0.8 * out.stats["plain_symbol_bits"]  # a shared residual is sent once
    assert abs(out.coded_bits - out.stats["predicted_symbol_bits"]) <= 0.01 * out.coded_bits + 3 * 32


def test_never_larger_than_plain_and_grey_is_plain():
    rng = np.random.default_rng(2)
    for correlation in (0.0, 0.3, 0.6):
        sym, mu = _pixels(rng, 24, 20, correlation)
        out, kind = _round_trip(sym, mu, 8)
        sizes = _layout_sizes(out.stats, 3 * 9)  # 3 coefficients x 9 tiles
        assert kind == min(sizes, key=sizes.get)
        bits = {ChunkKind.FINAL: "plain", ChunkKind.FINAL_PRED: "predicted", ChunkKind.FINAL_CTX: "context"}[kind]
        assert abs(out.coded_bits - out.stats[f"{bits}_symbol_bits"]) <= 0.01 * out.coded_bits + 6 * 32
    grey = np.repeat(sym[:1], 3, axis=0)
    out, kind = _round_trip(grey, mu, 8, channels=1)
    assert kind == ChunkKind.FINAL and "predicted_symbol_bits" not in out.stats
    with pytest.raises(FormatError, match="RGB"):
        CODER.decode(_ctx(mu, 8, mode="L"), out.payload, ChunkKind.FINAL_PRED)


def test_edge_values_round_trip():
    sym = np.zeros((3, 9, 7), dtype=np.int64)
    sym[:, ::2] = 255
    _round_trip(sym, np.full(sym.shape, 127.5), 0)


def test_intervals_restrict_the_levels():
    """Narrower feasible intervals never cost more, and pinned levels cost nothing."""
    rng = np.random.default_rng(4)
    sym, mu = _pixels(rng, 32, 32, 0.2)
    free, _ = _round_trip(sym, mu, 0)
    lo = np.clip(sym - rng.integers(0, 4, sym.shape), 0, 255)
    hi = np.clip(sym + rng.integers(0, 4, sym.shape), 0, 255)
    narrow, _ = _round_trip(sym, mu, 0, lo=lo, hi=hi)
    assert narrow.coded_bits < 0.6 * free.coded_bits  # at most 7 levels left of ~40
    pinned, _ = _round_trip(sym, mu, 0, lo=sym, hi=sym)
    assert pinned.coded_bits == 0
    with pytest.raises(AssertionError, match="outside its feasible interval"):
        CODER.encode(_ctx(mu, 0, lo=np.minimum(sym + 1, 255), hi=np.full(sym.shape, 255)), _target(sym))


@pytest.mark.parametrize("layout", [ChunkKind.FINAL_PRED, ChunkKind.FINAL_CTX])
def test_damaged_predicted_payloads_are_format_errors(layout):
    """Every cut and every change of a count is refused; other damage either is refused or
    decodes to levels inside the feasible intervals (the file's CRCs catch those) — never
    anything else."""
    rng = np.random.default_rng(3)
    sym, mu = _pixels(rng, 16, 16, 0.9) if layout == ChunkKind.FINAL_PRED else _smooth_pixels(rng, 24, 24)
    lo, hi = np.clip(sym - 20, 0, 255), np.clip(sym + 20, 0, 255)
    out, kind = _round_trip(sym, mu, 8, lo=lo, hi=hi)
    assert kind == layout
    payload, ctx = out.payload, _ctx(mu, 8, lo=lo, hi=hi)
    for cut in range(len(payload)):
        with pytest.raises(FormatError):
            CODER.decode(ctx, payload[:cut], kind)
    with pytest.raises(FormatError):
        CODER.decode(ctx, payload + b"\0\0\0\0", kind)
    size = 3 * 2 * 2
    counts = (0, 4 + size) + ((8 + 2 * size,) if kind == ChunkKind.FINAL_CTX else ())  # + the spatial block's
    for at in counts:  # the side-information counts
        bad = bytearray(payload)
        bad[at] ^= 1
        with pytest.raises(FormatError):
            CODER.decode(ctx, bytes(bad), kind)
    for _ in range(60):
        bad = bytearray(payload)
        bad[int(rng.integers(0, len(bad)))] ^= int(rng.integers(1, 256))
        try:
            got = CODER.decode(ctx, bytes(bad), kind).pixels
        except FormatError:
            continue
        assert got.shape == sym.shape and got.dtype == np.uint8
        assert ((got >= lo) & (got <= hi)).all()
