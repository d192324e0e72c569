"""Texture classes (diffcodec.coders.texture): the activity's closed form, equal classes by rank
with ties in raster order, the multiplier search, and the texture layout paying exactly where
the residuals' spread follows the activity (and costing nothing where it does not)."""

from __future__ import annotations

import numpy as np
import pytest

from diffcodec.coders import spatial, texture
from diffcodec.kinds import ChunkKind
from diffcodec.sideinfo import TileGrid
from test_final import _round_trip


def _activity_by_the_definition(m: np.ndarray) -> np.ndarray:
    """Pixel by pixel: |4-neighbour Laplacian| (neighbours past the edge are the edge's), the
    channel mean, then the sum over the BOX x BOX window (rows and columns past the edge again
    the edge's)."""
    c, h, w = m.shape

    def at(y, x):
        return min(max(y, 0), h - 1), min(max(x, 0), w - 1)

    lap = np.zeros((h, w))
    for y in range(h):
        for x in range(w):
            lap[y, x] = np.mean([abs(4 * m[i, y, x] - sum(m[i][at(y + dy, x + dx)]
                                                           for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1))))
                                 for i in range(c)])
    r = texture.BOX // 2
    return np.array([[sum(lap[at(y + dy, x + dx)] for dy in range(-r, r + 1) for dx in range(-r, r + 1))
                      for x in range(w)] for y in range(h)])


def test_activity_of_a_single_bright_pixel():
    """|Laplacian| of a lone pixel of 10 (every channel): 40 at it, 10 at its four neighbours;
    the activity is the 5 x 5 box sum of that."""
    assert texture.BOX == 5
    m = np.zeros((3, 7, 7))
    m[:, 3, 3] = 10.0
    a = texture.activity(m)
    expected = {(3, 3): 80.0, (1, 3): 70.0, (5, 3): 70.0, (1, 1): 60.0, (0, 3): 10.0, (0, 0): 0.0, (6, 6): 0.0}
    assert {p: a[p] for p in expected} == expected


def test_activity_replicates_the_edges():
    """A lone pixel in the corner: the padding repeats it, so its Laplacian is 20 (not 40) and
    its neighbours' 10; the box at the corner counts the corner 9 times and each neighbour 3."""
    m = np.zeros((3, 6, 6))
    m[:, 0, 0] = 10.0
    a = texture.activity(m)
    assert (a[0, 0], a[3, 3], a[5, 5]) == (9 * 20.0 + 2 * 3 * 10.0, 0.0, 0.0)


def test_activity_follows_its_definition():
    m = np.random.default_rng(3).normal(100, 30, (3, 9, 11))
    np.testing.assert_allclose(texture.activity(m), _activity_by_the_definition(m), rtol=1e-12)


def test_activity_is_the_channel_mean():
    rng = np.random.default_rng(0)
    m = rng.normal(0, 20, (3, 9, 7))
    parts = [texture.activity(np.repeat(m[c:c + 1], 3, axis=0)) for c in range(3)]
    np.testing.assert_allclose(texture.activity(m), sum(parts) / 3, rtol=1e-12)


def test_classes_are_equal_parts_by_rank():
    rng = np.random.default_rng(1)
    m = rng.normal(128, 30, (3, 16, 12))
    cls = texture.classes(m)
    a = texture.activity(m)
    assert cls.dtype == np.uint8 and cls.shape == (16, 12)
    assert np.bincount(cls.ravel(), minlength=texture.CLASSES).tolist() == [16 * 12 // texture.CLASSES] * texture.CLASSES
    for k in range(texture.CLASSES - 1):  # busier classes hold busier pixels
        assert a[cls == k].max() <= a[cls == k + 1].min()


def test_classes_of_ties_go_by_raster_order():
    """A flat estimate: every activity is 0, the classes follow the raster order (both sides
    sort the same floats the same stable way)."""
    cls = texture.classes(np.full((3, 4, 6), 77.0))
    np.testing.assert_array_equal(cls.ravel(), np.arange(24) * texture.CLASSES // 24)


def test_multipliers_of_a_block():
    block = bytes([128] * 8 + [136] * 8 + [120 + k for k in range(8)])
    mult = texture.multipliers(block)
    assert mult.shape == (3, texture.CLASSES)
    np.testing.assert_array_equal(mult[0], 1.0)
    np.testing.assert_array_equal(mult[1], 2.0)
    np.testing.assert_allclose(mult[2], 2.0 ** ((np.arange(8) - 8) / 8))


@pytest.mark.parametrize("target", [-130.0, -40.3, -13.0, -5.2, 0.0, 0.4, 3.0, 9.9, 14.0, 31.0, 200.0])
def test_fit_code_finds_the_minimum_of_a_convex_cost(target):
    """Coarse codes, further out while the best is at an end, then +-1 and +-2: the best code of
    a convex cost (clipped to the codes' range), ties to the smaller change."""
    if abs(target) > 100:
        assert texture.fit_code(lambda mult: (np.log2(mult) * 8 - target) ** 2) == (255 if target > 0 else 0)
        return
    code = texture.fit_code(lambda mult: (np.log2(mult) * 8 - target) ** 2)
    assert code - 128 == int(np.floor(target + 0.5)) or abs(code - 128 - target) == 0.5


def test_fit_code_keeps_a_flat_cost_at_one():
    assert texture.fit_code(lambda mult: 5.0) == 128


def _textured(rng, h, w, busy_std=9.0, flat_std=1.5):
    """An estimate with a busy half (a random pattern) and a flat half, and levels around it
    whose spread is ``busy_std`` in the busy half and ``flat_std`` in the flat one."""
    m = np.full((3, h, w), 120.0)
    m[:, :, : w // 2] += rng.normal(0, 25, (3, h, w // 2))
    std = np.where(np.arange(w)[None, None, :] < w // 2, busy_std, flat_std)
    v = np.clip(np.rint(m + rng.normal(0, 1, m.shape) * std), 0, 255).astype(np.int64)
    return v, m


def _fits(v, m, tile):
    grid = TileGrid(3, v.shape[1], v.shape[2], tile)
    lo, hi = np.zeros_like(v), np.full_like(v, 255)
    cells = spatial.Cells(m, v, lo, hi, v, v)

    def residual(c, sel, mean, std):
        return v[c][sel] - m[c][sel]

    from diffcodec.coders.chanpred import fit_coefficients
    resid = [v[c] - m[c] for c in range(3)]
    ctx = spatial.fit_context(grid, cells, fit_coefficients(resid, resid, grid), residual)
    return ctx, spatial.fit_texture(grid, cells, ctx, residual)


def test_texture_pays_where_the_spread_follows_the_activity():
    ctx, tex = _fits(*_textured(np.random.default_rng(3), 32, 48), tile=0)
    assert tex.bits < 0.93 * ctx.bits
    mult = texture.multipliers(tex.texture)
    assert (mult[:, -1] > 2 * mult[:, 0]).all()  # the busiest class's beliefs far wider than the flattest's
    assert (tex.widths, tex.predictors, tex.block) == (ctx.widths, ctx.predictors, ctx.block)


def test_texture_costs_nothing_where_the_spread_is_even():
    """Even spread: a final step's residuals do not depend on the widths, so the texture fit
    (identity among its candidates, every pixel sampled) is never worse than the context fit."""
    ctx, tex = _fits(*_textured(np.random.default_rng(4), 32, 48, busy_std=4.0, flat_std=4.0), tile=16)
    assert tex.bits <= ctx.bits * (1 + 1e-12)
    assert (np.abs(np.frombuffer(tex.texture, dtype=np.uint8).astype(int) - 128) <= 3).all()


def test_final_step_round_trips_in_the_texture_layout():
    v, m = _textured(np.random.default_rng(5), 40, 56)
    out, kind = _round_trip(v, m, 0)  # one tile: the widths cannot follow the busy half
    assert kind == ChunkKind.FINAL_TEX
    assert out.stats["texture_symbol_bits"] < 0.93 * out.stats["context_symbol_bits"]
    assert abs(out.coded_bits - out.stats["texture_symbol_bits"]) <= 0.01 * out.coded_bits + 6 * 32
