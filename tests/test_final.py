"""The final step (diffcodec.final): exact round trips, channel prediction where it pays, never
worse than the plain layout, and damaged payloads refused."""

from __future__ import annotations

import numpy as np
import pytest

from diffcodec import container as fmt
from diffcodec.codec import TileGrid
from diffcodec.entropy import encode_gaussian
from diffcodec.errors import FormatError
from diffcodec.final import decode_final, encode_final


def _pixels(rng, h, w, correlation):
    """Pixels whose residuals around mu share a common part with weight ``correlation``."""
    mu = rng.uniform(20, 235, (3, h, w))
    common = rng.normal(0, 6, (1, h, w))
    own = rng.normal(0, 6, (3, h, w))
    sym = np.clip(np.rint(mu + correlation * common + (1 - correlation) * own), 0, 255).astype(np.int64)
    return sym, mu


def _plain_bytes(sym, mu, grid):
    codes = grid.fit(sym - mu)
    stream = encode_gaussian(sym.astype(np.int32), mu, grid.expand(codes), 0, 255)
    return len(fmt.StepPayload(0.0, 0, 255, codes, stream).to_bytes())


@pytest.mark.parametrize("tile", [0, 16])
def test_correlated_residuals_take_the_predicted_layout(tile):
    rng = np.random.default_rng(1)
    sym, mu = _pixels(rng, 40, 52, 0.9)
    grid = TileGrid(3, 40, 52, tile)
    coded = encode_final(sym, mu, grid, 123.0)
    assert coded.kind == fmt.FINAL_PRED
    assert len(coded.payload) < 0.8 * _plain_bytes(sym, mu, grid)  # a shared residual is sent once
    np.testing.assert_array_equal(decode_final(coded.kind, coded.payload, mu, grid), sym)
    assert fmt.PredictedFinalPayload.from_bytes(coded.payload, grid.size).ideal_bits == 123.0


def test_never_larger_than_plain_and_grey_is_plain():
    rng = np.random.default_rng(2)
    for correlation in (0.0, 0.3, 0.6):
        sym, mu = _pixels(rng, 24, 20, correlation)
        grid = TileGrid(3, 24, 20, 8)
        coded = encode_final(sym, mu, grid, 0.0)
        assert len(coded.payload) <= _plain_bytes(sym, mu, grid)
        np.testing.assert_array_equal(decode_final(coded.kind, coded.payload, mu, grid), sym)
    grey, mu = sym[:1], mu[:1]
    grid = TileGrid(1, 24, 20, 8)
    coded = encode_final(grey, mu, grid, 0.0)
    assert coded.kind == fmt.FINAL
    np.testing.assert_array_equal(decode_final(coded.kind, coded.payload, mu, grid), grey)
    with pytest.raises(FormatError, match="RGB"):
        decode_final(fmt.FINAL_PRED, coded.payload, mu, grid)


def test_edge_values_round_trip():
    sym = np.zeros((3, 9, 7), dtype=np.int64)
    sym[:, ::2] = 255
    mu = np.full(sym.shape, 127.5)
    grid = TileGrid(3, 9, 7, 0)
    coded = encode_final(sym, mu, grid, 0.0)
    np.testing.assert_array_equal(decode_final(coded.kind, coded.payload, mu, grid), sym)


def test_damaged_predicted_payloads_are_format_errors():
    rng = np.random.default_rng(3)
    sym, mu = _pixels(rng, 16, 16, 0.9)
    grid = TileGrid(3, 16, 16, 8)
    coded = encode_final(sym, mu, grid, 0.0)
    assert coded.kind == fmt.FINAL_PRED
    payload = coded.payload
    for cut in range(len(payload)):
        with pytest.raises(FormatError):
            decode_final(fmt.FINAL_PRED, payload[:cut], mu, grid)
    with pytest.raises(FormatError):
        decode_final(fmt.FINAL_PRED, payload + b"\0\0\0\0", mu, grid)
    for at in (4, 8 + grid.size):  # the side-information counts
        bad = bytearray(payload)
        bad[at] ^= 1
        with pytest.raises(FormatError):
            decode_final(fmt.FINAL_PRED, bytes(bad), mu, grid)
    outcomes = {"ok": 0, "error": 0}
    for i in range(60):  # flipped bytes elsewhere: an error, or some symbols (the CRCs catch these)
        bad = bytearray(payload)
        bad[int(rng.integers(0, len(bad)))] ^= int(rng.integers(1, 256))
        try:
            out = decode_final(fmt.FINAL_PRED, bytes(bad), mu, grid)
            assert out.shape == sym.shape and out.dtype == np.uint8
            outcomes["ok"] += 1
        except FormatError:
            outcomes["error"] += 1
    assert outcomes["error"] > 0
    with pytest.raises(FormatError):  # the plain layout's symbol range is checked
        decode_final(fmt.FINAL, fmt.StepPayload(0.0, 0, 10, b"\0" * grid.size, b"").to_bytes(), mu, grid)
