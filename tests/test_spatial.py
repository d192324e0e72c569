"""The checkerboard context layout's pieces (diffcodec.coders.spatial): the passes partition the
dimensions, the neighbour sums are what they say, and a pass's beliefs read nothing the decoder
has not decoded yet."""

from __future__ import annotations

import numpy as np
import pytest

from diffcodec.coders import spatial
from diffcodec.coders.chanpred import Payload, fit_coefficients
from diffcodec.sideinfo import TileGrid


@pytest.mark.parametrize("h,w", [(1, 1), (5, 7), (8, 8)])
def test_passes_cover_every_dimension_once_anchors_first(h, w):
    steps = list(spatial.passes(3, h, w))
    assert [(s.p, s.c) for s in steps] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    dims = np.concatenate([s.dims for s in steps])
    np.testing.assert_array_equal(np.sort(dims), np.arange(3 * h * w))
    anchor = spatial.anchors(h, w)
    assert anchor[0, 0] and anchor.sum() == (h * w + 1) // 2
    # every axial neighbour of an anchor is an other, and of an other an anchor
    assert not (anchor[1:] & anchor[:-1]).any() and not (anchor[:, 1:] & anchor[:, :-1]).any()
    assert not ((~anchor[1:]) & (~anchor[:-1])).any() and not ((~anchor[:, 1:]) & (~anchor[:, :-1])).any()


def test_axial_sum_is_the_sum_of_the_four_neighbours():
    rng = np.random.default_rng(0)
    r = rng.normal(size=(6, 9)).astype(np.float32)
    got = spatial.axial_sum(r)
    for y in range(6):
        for x in range(9):
            want = sum(float(r[y + dy, x + dx]) for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1))
                       if 0 <= y + dy < 6 and 0 <= x + dx < 9)
            assert got[y, x] == pytest.approx(want, abs=1e-12)


def test_fitted_weight_and_offset():
    rng = np.random.default_rng(1)
    feature = rng.normal(0, 4, (40, 40))
    target = 0.3 * feature + rng.normal(0, 1, (40, 40))
    where = ~spatial.anchors(40, 40)
    w = spatial.WEIGHT.value(spatial.fit_weight(target, feature, where))
    assert abs(w - 0.3) < 0.01  # least squares, within the code's resolution
    assert spatial.fit_weight(target, np.zeros_like(feature), where) == 128  # no feature: weight 0
    # the offset search finds the minimum of a convex cost, also off the coarse grid
    best = spatial.fit_offset(lambda k: (np.log2(k) * 8 + 10) ** 2)
    assert best == 128 - 10
    weights, mults = spatial.unblock(spatial.block([120, 128, 140], [128, 120, 136]))
    np.testing.assert_allclose(weights, [-8 / 256, 0.0, 12 / 256])
    np.testing.assert_allclose(mults, [1.0, 0.5, 2.0])


def test_beliefs_read_only_what_was_decoded_before():
    """The decoder fills what it knows pass by pass; the beliefs of each pass must be the same
    whatever the not-yet-decoded values hold (here: zeros or garbage), so the decoder's beliefs
    equal the encoder's, which were made with everything known."""
    rng = np.random.default_rng(2)
    h, w = 12, 10
    grid = TileGrid(3, h, w, 4)
    m = rng.uniform(0, 255, (3, h, w))
    resid = rng.normal(0, 3, (3, h, w)).astype(np.float32)
    mid = rng.normal(0, 3, (3, h, w)).astype(np.float32)
    fields = Payload(widths=rng.integers(100, 200, grid.size, dtype=np.uint8).tobytes(),
                     predictors=fit_coefficients([None, resid[1], resid[2]], resid, grid),
                     spatial=spatial.block([150, 100, 128], [120, 128, 131]), streams=[])

    def run(start: spatial.Known) -> list:
        out = []
        for step, mean, std in spatial.context_beliefs(m, start, fields, grid):
            out.append((mean.copy(), std.copy()))
            start.resid[step.c][step.sel] = resid[step.c][step.sel]  # what decoding the pass tells
            start.mid[step.c][step.sel] = mid[step.c][step.sel]
        return out

    clean = run(spatial.Known.zeros(m.shape))
    garbage = spatial.Known(rng.normal(0, 50, m.shape).astype(np.float32), rng.normal(0, 50, m.shape).astype(np.float32))
    for (a_mean, a_std), (b_mean, b_std) in zip(clean, run(garbage)):
        np.testing.assert_array_equal(a_mean, b_mean)
        np.testing.assert_array_equal(a_std, b_std)
    # and with everything known from the start (the encoder), the same floats again
    full = spatial.Known(resid.copy(), mid.copy())
    for (a_mean, a_std), (step, mean, std) in zip(clean, spatial.context_beliefs(m, full, fields, grid)):
        np.testing.assert_array_equal(a_mean, mean)
        np.testing.assert_array_equal(a_std, std)
