"""Feasible intervals, quantizer cells and belief masses (diffcodec.intervals)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm

from diffcodec.intervals import Intervals, Quantizer, level_mass, level_value, value_level


def test_level_value_round_trip():
    v = np.arange(256)
    np.testing.assert_allclose(value_level(level_value(v)), v, atol=1e-12)
    assert level_value(0) == -1.0 and level_value(255) == 1.0


@pytest.mark.parametrize("mean,std", [(127.3, 4.0), (0.2, 0.7), (254.9, 30.0), (-40.0, 3.0), (400.0, 2.0)])
def test_level_masses_sum_to_one_and_match_scipy(mean, std):
    v = np.arange(256)
    m = level_mass(v, v, np.full(256, mean), np.full(256, std))
    assert m.sum() == pytest.approx(1.0, abs=1e-12)
    inner = v[1:-1]
    ref = np.where(inner - 0.5 > mean, norm.sf(inner - 0.5, mean, std) - norm.sf(inner + 0.5, mean, std),
                   norm.cdf(inner + 0.5, mean, std) - norm.cdf(inner - 0.5, mean, std))
    np.testing.assert_allclose(m[1:-1], ref, rtol=1e-9, atol=1e-300)
    assert m[0] == pytest.approx(norm.cdf(0.5, mean, std), rel=1e-9)
    # the mass of a range is the sum of its levels' masses
    assert level_mass(10, 20, mean, std) == pytest.approx(m[10:21].sum(), rel=1e-9, abs=1e-300)


@pytest.mark.parametrize("shape,mshape", [((300_001,), (300_001,)), ((70_001, 3), (70_001, 1)),
                                          ((3, 300, 257), (3, 300, 257)), ((3, 300, 257), (257,))])
def test_level_mass_in_blocks_is_the_elementwise_formula(shape, mshape):
    """Large inputs are evaluated in cache-sized blocks (rows, or rows of rows); every element
    is still the same float as evaluated alone."""
    from diffcodec import intervals
    rng = np.random.default_rng(1)
    a = rng.integers(-2, 258, shape)
    b = np.minimum(a + rng.integers(0, 9, shape), 257)
    mean, std = rng.uniform(-10, 265, mshape), np.exp(rng.uniform(-2, 4, mshape))
    blocked = level_mass(a, b, mean, std)
    assert blocked.shape == shape and np.prod(shape) > intervals.MASS_BLOCK
    whole = intervals._level_mass(a, b, mean, std)
    assert np.array_equal(blocked, whole)
    i = tuple(d - 2 for d in shape)
    one = intervals._level_mass(a[i], b[i], np.broadcast_to(mean, shape)[i], np.broadcast_to(std, shape)[i])
    assert blocked[i] == one


def test_level_mass_far_tail_keeps_precision():
    # both bin edges deep in the upper tail: computed from the upper tail, not as 1 - 1
    m = level_mass(200, 200, 100.0, 5.0)
    assert m > 0 and m == pytest.approx(norm.sf(199.5, 100, 5) - norm.sf(200.5, 100, 5), rel=1e-6)


@pytest.mark.parametrize("a", [0.003, 0.05, 0.4, 1.0, 3.7])
def test_quantizer_cells_partition_the_levels(a):
    """Every level belongs to exactly the cell symbol() names, cells are contiguous and
    increasing, and first(k) is the smallest level of cell k."""
    rng = np.random.default_rng(int(a * 1000))
    n = 64
    q = Quantizer(a, rng.uniform(-20, 275, n), rng.uniform(-0.5, 0.5, n))
    v = np.arange(256)
    for i in range(n):
        qi = Quantizer(a, np.full(256, q.m[i]), np.full(256, q.u[i]))  # dim i, every level
        k = qi.symbol(v)
        assert k.dtype == np.int32 and np.all(np.diff(k) >= 0)
        assert np.all(qi.first(k) <= v) and np.all(qi.first(k.astype(np.int64) + 1) > v)
        # agrees with the real-valued definition away from boundaries
        real = a * (v - q.m[i]) - q.u[i] + 0.5
        safe = np.abs(real - np.round(real)) > 1e-9
        np.testing.assert_array_equal(k[safe], np.floor(real[safe]).astype(int))


def test_quantizer_blocks_do_not_change_the_result(monkeypatch):
    import diffcodec.intervals as iv

    rng = np.random.default_rng(7)
    n = 1000
    q = Quantizer(0.37, rng.uniform(0, 255, n), rng.uniform(-0.5, 0.5, n))
    v = rng.integers(0, 256, n)
    whole = q.symbol(v)
    ints = Intervals(n, rng.integers(0, 100, n), rng.integers(150, 256, n))
    cells = q.cells(whole, ints)
    monkeypatch.setattr(iv, "BLOCK", 7)
    np.testing.assert_array_equal(q.symbol(v), whole)
    again = q.cells(whole, ints)
    np.testing.assert_array_equal(again.lo, cells.lo) and np.testing.assert_array_equal(again.hi, cells.hi)
    assert ((cells.lo <= np.maximum(v, ints.lo)) | (v < ints.lo)).all()


def test_quantizer_refuses_non_positive_slope():
    with pytest.raises(ValueError):
        Quantizer(0.0, np.zeros(1), np.zeros(1))


def test_intervals_defaults_and_widths():
    ints = Intervals(5)
    assert ints.lo.dtype == np.int16 and (ints.lo == 0).all() and (ints.hi == 255).all()
    assert ints.mean_log2_width() == 8.0
    narrowed = Intervals(2, [3, 7], [3, 10])
    np.testing.assert_array_equal(narrowed.widths, [1, 4])
    assert narrowed.mean_log2_width() == pytest.approx((0 + 2) / 2)


@pytest.mark.parametrize("c,h,w,tile", [(3, 37, 53, 16), (1, 20, 9, 8), (3, 12, 12, 0)])
def test_per_channel_and_sliced_tile_maps_equal_the_whole_expansion(c, h, w, tile):
    """The coders expand side information one channel, or one slice of the flat C x H x W
    order, at a time; the floats must be those of the whole-image expansion."""
    from diffcodec.coders.chanpred import coefficients
    from diffcodec.sideinfo import COEF, SCALE, TileGrid

    grid = TileGrid(c, h, w, tile)
    codes = np.random.default_rng(h * w).integers(0, 256, grid.size).astype(np.uint8)
    whole = SCALE.value(grid.expand(codes))
    for ch in range(c):
        np.testing.assert_array_equal(SCALE.value(grid.expand_channel(codes, ch)), whole[ch])
    flat = grid.flat_values(codes.tobytes(), SCALE)
    assert len(flat) == whole.size
    for a, b in [(0, whole.size), (5, 6), (h * w - 3, h * w + 40), (whole.size - 7, whole.size + 10)]:
        np.testing.assert_array_equal(flat[a:b], whole.reshape(-1)[a:b])
    if c == 3:
        coef = coefficients(codes.tobytes(), grid)
        full = COEF.value(grid.expand(codes))
        for i in range(3):
            np.testing.assert_array_equal(coef[i], full[i])


def test_channel_values_and_tile_counts():
    """One channel's values of a per-tile parameter equal that channel of the whole expansion;
    the per-tile pixel counts equal sums of an image of ones."""
    from diffcodec.sideinfo import SCALE, TileGrid

    grid = TileGrid(3, 37, 53, 16)
    codes = np.random.default_rng(5).integers(0, 256, grid.size).astype(np.uint8)
    whole = SCALE.value(grid.expand(codes))
    for c in range(3):
        np.testing.assert_array_equal(grid.channel_values(codes.tobytes(), SCALE, c), whole[c])
    np.testing.assert_array_equal(grid.tile_counts(), grid.tile_sums(np.ones((3, 37, 53))))
