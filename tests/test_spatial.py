"""The context layouts' pieces (diffcodec.coders.spatial): the passes of both schemes (the
checkerboard, the 2 x 2 phases) partition the dimensions, the neighbour sums are what they say,
a pass reads only pixels of the passes before it, and its beliefs read nothing the decoder has
not decoded yet."""

from __future__ import annotations

import numpy as np
import pytest

from diffcodec.coders import spatial
from diffcodec.coders.chanpred import SPATIAL_BYTES, Layout, Payload, fit_coefficients
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


@pytest.mark.parametrize("h,w", [(1, 1), (2, 3), (5, 7), (8, 8)])
def test_quincunx_passes_cover_every_dimension_once(h, w):
    steps = list(spatial.passes(3, h, w, spatial.QUINCUNX))
    assert [(s.p, s.c) for s in steps] == [(p, c) for p in range(4) for c in range(3)]
    np.testing.assert_array_equal(np.sort(np.concatenate([s.dims for s in steps])), np.arange(3 * h * w))
    seen = np.zeros((h, w), dtype=bool)
    for s in steps[::3]:
        np.testing.assert_array_equal(s.known, seen)  # the pixels of the passes before, exactly
        assert not (s.sel & seen).any()
        seen |= s.sel
    assert seen.all() and steps[0].sel[0, 0]
    if min(h, w) > 1:
        assert steps[3].sel[1, 1] and steps[6].sel[0, 1] and steps[9].sel[1, 0]


@pytest.mark.parametrize("scheme", [spatial.CHECKERBOARD, spatial.QUINCUNX])
def test_a_pass_reads_only_pixels_of_the_passes_before(scheme):
    """Every neighbour a pass's sums read (inside the image) was coded in an earlier pass: the
    sums lose nothing to the mask, so the masked features equal the unmasked ones there."""
    offsets = {"axial": ((-1, 0), (1, 0), (0, -1), (0, 1)), "diagonal": spatial.DIAGONAL, "knight": spatial.KNIGHT}
    h, w = 9, 11
    for step in spatial.passes(1, h, w, scheme):
        for y, x in zip(*np.nonzero(step.sel)):
            for g in scheme.groups[step.p]:
                for dy, dx in offsets[g]:
                    if 0 <= y + dy < h and 0 <= x + dx < w:
                        assert step.known[y + dy, x + dx], (scheme.name, step.p, g, dy, dx)


@pytest.mark.parametrize("name,offsets", [("axial", ((-1, 0), (1, 0), (0, -1), (0, 1))),
                                          ("diagonal", ((-1, -1), (-1, 1), (1, -1), (1, 1))),
                                          ("knight", ((-2, -1), (-2, 1), (-1, -2), (-1, 2), (1, -2), (1, 2), (2, -1),
                                                      (2, 1)))])
def test_neighbour_sums_are_the_sums_of_their_neighbours(name, offsets):
    rng = np.random.default_rng(0)
    r = rng.normal(size=(6, 9)).astype(np.float32)
    got = spatial.NEIGHBOUR_SUMS[name](r)
    for y in range(6):
        for x in range(9):
            want = sum(float(r[y + dy, x + dx]) for dy, dx in offsets if 0 <= y + dy < 6 and 0 <= x + dx < 9)
            assert got[y, x] == pytest.approx(want, abs=1e-12)


def test_block_lengths_are_the_formats():
    assert spatial.CHECKERBOARD.block_bytes() == SPATIAL_BYTES[Layout.CONTEXT] == SPATIAL_BYTES[Layout.TEXTURE] == 6
    assert spatial.QUINCUNX.block_bytes() == SPATIAL_BYTES[Layout.NEIGHBOURS] == (3 + 6 + 9) * 3 + 9
    assert spatial.scheme_for(Layout.NEIGHBOURS) is spatial.QUINCUNX
    assert spatial.scheme_for(Layout.TEXTURE) is spatial.CHECKERBOARD
    # the quincunx block: pass 1's channel 0 reads the diagonal sums of channels 0, 1, 2, ...
    codes = list(range(100, 154))
    weights, mults = spatial.unblock(spatial.block(codes, list(range(120, 129))), spatial.QUINCUNX)
    assert [len(x) for x in weights] == [3, 3, 3, 6, 6, 6, 9, 9, 9]
    np.testing.assert_allclose(np.concatenate(weights), (np.array(codes) - 128) / 256)
    np.testing.assert_allclose(mults, 2.0 ** ((np.arange(120, 129) - 128) / 8))


def test_fitted_weights_are_least_squares():
    rng = np.random.default_rng(3)
    feats = rng.normal(0, 4, (5, 4000))
    true = np.array([0.2, -0.1, 0.05, 0.0, 0.3])
    target = true @ feats + rng.normal(0, 1, 4000)
    got = spatial.WEIGHT.value(np.array(spatial.fit_weights(target, feats)))
    np.testing.assert_allclose(got, true, atol=0.01)
    # dependent features (a sum read twice) and no data at all give codes, not errors
    twice = spatial.fit_weights(target, np.stack([feats[0], feats[0]]))
    assert spatial.WEIGHT.value(np.array(twice)).sum() == pytest.approx(np.dot(feats[0], target) / np.dot(feats[0], feats[0]), abs=0.01)
    assert spatial.fit_weights(np.zeros(0), np.zeros((3, 0))) == [128, 128, 128]


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
    np.testing.assert_allclose(np.concatenate(weights), [-8 / 256, 0.0, 12 / 256])
    np.testing.assert_allclose(mults, [1.0, 0.5, 2.0])


@pytest.mark.parametrize("scheme", [spatial.CHECKERBOARD, spatial.QUINCUNX])
def test_beliefs_read_only_what_was_decoded_before(scheme):
    """The decoder fills what it knows pass by pass; the beliefs of each pass must be the same
    whatever the not-yet-decoded values hold (here: zeros or garbage), so the decoder's beliefs
    equal the encoder's, which were made with everything known."""
    rng = np.random.default_rng(2)
    h, w = 12, 10
    grid = TileGrid(3, h, w, 4)
    m = rng.uniform(0, 255, (3, h, w))
    resid = rng.normal(0, 3, (3, h, w)).astype(np.float32)
    mid = rng.normal(0, 3, (3, h, w)).astype(np.float32)
    n = scheme.block_bytes() - 3 * (scheme.passes - 1)
    fields = Payload(widths=rng.integers(100, 200, grid.size, dtype=np.uint8).tobytes(),
                     predictors=fit_coefficients([None, resid[1], resid[2]], resid, grid),
                     spatial=spatial.block(list(rng.integers(90, 170, n)), list(rng.integers(110, 140, 3 * (scheme.passes - 1)))),
                     streams=[])

    def run(start: spatial.Known) -> list:
        out = []
        for step, mean, std in spatial.context_beliefs(m, start, fields, grid, scheme=scheme):
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
    for (a_mean, a_std), (step, mean, std) in zip(clean, spatial.context_beliefs(m, full, fields, grid, scheme=scheme)):
        np.testing.assert_array_equal(a_mean, mean)
        np.testing.assert_array_equal(a_std, std)


@pytest.mark.parametrize("h,w", [(1, 1), (2, 3), (5, 7), (6, 9)])
def test_quincunx_features_are_the_masked_neighbour_sums(h, w):
    """The 2 x 2 phases' features, read on the quarter-size phase images, are the whole-image
    neighbour sums of every channel's residuals with the passes not yet coded masked out."""
    rng = np.random.default_rng(4)
    known = spatial.Known(rng.normal(size=(3, h, w)).astype(np.float32), rng.normal(size=(3, h, w)).astype(np.float32))
    for step in spatial.passes(3, h, w, spatial.QUINCUNX):
        if step.p == 0:
            continue
        got = spatial.neighbour_features(known, step, spatial.QUINCUNX).whole()
        want = [spatial.NEIGHBOUR_SUMS[g](np.where(step.known, known.mid[k], 0.0))[step.sel]
                for g in spatial.QUINCUNX.groups[step.p] for k in range(3)]
        assert got.shape == (len(want), step.sel.sum())
        np.testing.assert_allclose(got, np.stack(want), rtol=0, atol=1e-12)


@pytest.mark.parametrize("block", [1, 3, 1 << 12])
def test_quincunx_features_in_blocks_give_the_same_floats(monkeypatch, block):
    """The neighbour sums are made a few phase rows at a time (never a whole pass's [F, N]):
    the blocks tile the pass in order, and the means and fitted weights are those of the whole."""
    monkeypatch.setattr(spatial, "FEATURE_BLOCK", block)
    rng = np.random.default_rng(5)
    h, w = 9, 7
    known = spatial.Known(rng.normal(size=(3, h, w)).astype(np.float32), rng.normal(size=(3, h, w)).astype(np.float32))
    base = rng.normal(size=(h, w))
    for step in spatial.passes(3, h, w, spatial.QUINCUNX):
        if step.p == 0:
            continue
        feats = spatial.neighbour_features(known, step, spatial.QUINCUNX)
        spans = [(a, b) for a, b, _ in feats.blocks()]
        assert spans[0][0] == 0 and spans[-1][1] == step.sel.sum()
        assert all(b0 == a1 for (_, b0), (a1, _) in zip(spans, spans[1:]))
        rows = (h - spatial.PHASES[step.p][0] + 1) // 2
        assert len(spans) == {1: rows, 3: rows, 1 << 12: 1}[block]  # a phase row is 3 or 4 pixels
        whole = feats.whole()
        weights = rng.normal(size=len(feats))
        want = base[step.sel]
        for wk, fk in zip(weights, whole):
            want = want + wk * fk
        np.testing.assert_array_equal(spatial.pass_mean(base, feats, step, weights), want)
        target = weights @ whole + rng.normal(0, 0.01, whole.shape[1])
        assert spatial.fit_weights(target, feats) == spatial.fit_weights(target, whole)
